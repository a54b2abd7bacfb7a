--[[ append_version: add an immutable ConfigurationVersion with the given number (the seed's interface).
KEYS[1..11] standard keys (lib/common.lua)
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set (it also gets it whenever it has none)
ARGV[3] experiment name
ARGV[4] version number
ARGV[5] retain: history entries kept for the experiment (0 = all)
ARGV[6] ConfigurationVersion record, JSON (the entry's v field is authoritative)
Returns: {1, version number, log entry id}; a re-send {2, ...the same}
Errors: REDGOV_CONFLICT <version exists>, REDGOV_CORRUPT, REDGOV_DENIED
A refusal is remembered under the operation id like a success.
]]
-- @include lib/common.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local op, expire, experiment, number = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retain, record = tonumber(ARGV[5]), ARGV[6]
local what = 'experiment ' .. experiment

local function main()
  local replay, err = op_seen(op)
  if replay or err then return replay or err end
  local found
  found, err = read('ZCOUNT', versions_key, number, number)
  if err then return err end
  if found > 0 then
    return refuse('CONFLICT', what .. ' already has version ' .. number .. '; versions are immutable')
  end
  local trimmed
  trimmed, err = read('HGET', base_key, 'vmax')
  if err then return err end
  if trimmed and is_count(trimmed) and tonumber(number) <= tonumber(trimmed) then
    return refuse('CONFLICT', what .. ': version ' .. number .. ' is not above ' .. trimmed
      .. ', the highest version removed from Redis by retention; versions are immutable')
  end
  local length
  length, err = read('LLEN', history_key)
  if err then return err end
  err = util().expect_all(log_key, 'stream', index_key, 'zset', state_key, 'hash')
  if err then return err end
  local trim
  trim, err = retention().plan(retain, 1, length)
  if err then return err end

  local id = hist().add_entry('v', experiment, record, {'v', number}, number)
  hist().register(experiment)
  if trim then retention().apply(trim) end
  local reply = {1, number, id}
  op_done(op, reply, expire)
  return reply
end

return finish(op, main(), expire)
