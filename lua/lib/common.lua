-- common.lua: refusals, reads that name the key they fail on, value checks. Functions return an
-- error reply (or nil) instead of raising, so a script refuses before its first write and leaves
-- nothing behind.
--
-- Redis runs a script's whole chunk on every call, and every closure it makes costs time (about a
-- microsecond with its upvalues). So only what the hot paths use is defined at the top; the rest is
-- made on first use: util() returns split, bad_value, expect, expect_all, fenced.

local STATE_NAMES = ' Draft PendingApproval Approved Running Ramping Paused RolledBack Archived Rejected '

local function refuse(code, text)
  return redis.error_reply('REDGOV_' .. code .. ' ' .. text)
end

-- a server error met on key: the ACL (DENIED) or what the key holds (CORRUPT)
local function failed_on(key, message)
  message = tostring(message)
  if string.find(message, 'NOPERM', 1, true) or string.find(message, 'user executing the script', 1, true) then
    return refuse('DENIED', 'the ACL of this user does not allow this on ' .. key .. ' (' .. message
      .. '); nothing was written')
  end
  return refuse('CORRUPT', 'key ' .. key .. ': ' .. message)
end

-- read: a read command; returns reply, nil or nil, error reply
local function read(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply['err'] then
    return nil, failed_on(key, reply['err'])
  end
  return reply, nil
end

-- first_write: the script's first write, through pcall: a refusal (wrong type, ACL) leaves nothing
local function first_write(key, ...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply['err'] then
    return nil, failed_on(key, reply['err'])
  end
  return reply, nil
end

local function is_id(value)
  return type(value) == 'string' and string.match(value, '^%d+%-%d+$') ~= nil
end

local function is_count(value)
  return type(value) == 'string' and #value < 16 and string.match(value, '^%d+$') ~= nil
end

local function is_state(value)
  return type(value) == 'string' and string.match(value, '^%a+$') ~= nil
    and string.find(STATE_NAMES, ' ' .. value .. ' ', 1, true) ~= nil
end

local util_made = nil
-- util(): the helpers cold paths use, made on first use
local function util()
  if util_made then return util_made end
  local U = {}

  -- split: text cut at each sep, empty parts kept
  function U.split(text, sep)
    local out, start = {}, 1
    while true do
      local at = string.find(text, sep, start, true)
      if not at then
        out[#out + 1] = string.sub(text, start)
        return out
      end
      out[#out + 1] = string.sub(text, start, at - 1)
      start = at + #sep
    end
  end

  -- bad_value: the refusal for a stored value that is not what it should be
  function U.bad_value(key, field, value, expected)
    return refuse('CORRUPT', 'key ' .. key .. ' field ' .. field .. ' holds '
      .. string.format('%q', string.sub(tostring(value), 1, 60)) .. ', expected ' .. expected)
  end

  -- expect: refuse when key holds another Redis type ('none', absent, always passes)
  function U.expect(key, kind)
    local found = redis.pcall('TYPE', key)
    if found['err'] then return failed_on(key, found['err']) end
    found = found['ok']
    if found ~= 'none' and found ~= kind then
      return refuse('CORRUPT', 'key ' .. key .. ' holds a ' .. tostring(found) .. ', expected a ' .. kind)
    end
    return nil
  end

  -- expect_all: expect() for each of several (key, type) pairs given flat
  function U.expect_all(...)
    local n = select('#', ...)
    for i = 1, n, 2 do
      local key, kind = select(i, ...)
      local err = U.expect(key, kind)
      if err then return err end
    end
    return nil
  end

  -- fenced: refuse (LEASE) unless the lease at key (lease.lua's '<token> <owner>', which expires with the
  -- lease) holds token
  function U.fenced(key, token, what)
    local held, err = read('GET', key)
    if err then return err end
    local current = held and string.match(held, '^(%d+) ')
    if current == token then return nil end
    if held and not current then return U.bad_value(key, '(value)', held, "'<token> <owner>'") end
    if current then
      return refuse('LEASE', what .. ': the lease with token ' .. token .. ' was taken over (the current token is '
        .. current .. '); nothing was written')
    end
    return refuse('LEASE', what .. ': the lease with token ' .. token .. ' has expired and no lease is held; '
      .. 'nothing was written')
  end

  util_made = U
  return U
end
