--[[ lease: acquire, renew or release an experiment's lease, judged by the server's clock.
KEYS[1] the experiment's state hash {T}:s:<exp> (field lt: the last fencing token given)
KEYS[2] the lease {T}:k:<exp>, a string '<token> <owner>' whose expiry (PXAT) is the lease's
ARGV[1] mode: 'acquire' | 'renew' | 'release' | 'read'
ARGV[2] owner ('' for read)
ARGV[3] token ('' for acquire and read)
ARGV[4] ttl, ms ('' for release and read)
ARGV[5] experiment name (for messages)
Returns: acquire, renew: {token, expiry ms, 1 when newly acquired else 0}; release: {1 released, 0 nothing};
read: {token, expiry ms, owner} of the live lease, {} when there is none (read writes nothing)
Errors: REDGOV_NOT_FOUND (acquire: the experiment was never created),
        REDGOV_LEASE <held by another owner, or the given lease is no longer current>, REDGOV_CORRUPT, REDGOV_DENIED
The lease key exists exactly while the lease lasts: Redis expires it by its own clock, and the new expiry
is TIME + ttl. A re-send needs no ops bucket: acquiring again as the holder renews with the same token;
renewing and releasing are idempotent. A new token is max(last token + 1, now in ms): it grows on every
acquisition and goes on growing after a restore that lost field lt. The lease is one SET ... PXAT, so it
is never left without its expiry. Standalone (no lib), and errors are built where they happen (a function
made here would cost every call its closure): every read comes before the first write and proves its
key's type, so a wrong type or an ACL refusal fails the call before anything is written.
]]
local state_key, lease_key = KEYS[1], KEYS[2]
local mode, owner, token = ARGV[1], ARGV[2], ARGV[3]

local value = redis.call('GET', lease_key) -- present: the lease is live (Redis judged its expiry)
local current, holder = nil, nil
if value then
  current, holder = string.match(value, '^(%d+) (.+)$')
  if not current then
    return redis.error_reply('REDGOV_CORRUPT key ' .. lease_key .. ' holds ' .. string.format('%q',
      string.sub(value, 1, 60)) .. ", expected '<token> <owner>'")
  end
end

if mode == 'read' then
  if not current then
    return {}
  end
  local at = redis.call('TIME')
  local pttl = redis.call('PTTL', lease_key)
  return {tonumber(current), tonumber(at[1]) * 1000 + math.floor(tonumber(at[2]) / 1000) + pttl, holder}
end

if mode == 'release' then
  if holder == owner and current == token then
    redis.call('DEL', lease_key)
    return {1}
  end
  return {0} -- expired or taken over: nothing of ours to release
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local until_ms = now + tonumber(ARGV[4])
if mode == 'renew' then
  if holder == owner and current == token then
    redis.call('PEXPIREAT', lease_key, until_ms)
    return {tonumber(token), until_ms, 0}
  end
  local state = 'has expired'
  if current then
    state = 'was taken over: the lease is now held by ' .. holder .. ' with token ' .. current .. ' until @ms:'
      .. string.format('%d', now + redis.call('PTTL', lease_key))
  end
  return redis.error_reply('REDGOV_LEASE experiment ' .. ARGV[5] .. ': the lease held by ' .. owner
    .. ' with token ' .. token .. ' ' .. state)
end

-- acquire
if current and holder ~= owner then
  return redis.error_reply('REDGOV_LEASE experiment ' .. ARGV[5] .. ': the lease is held by ' .. holder
    .. ' with token ' .. current .. ' until @ms:' .. string.format('%d', now + redis.call('PTTL', lease_key))
    .. '; ' .. owner .. ' cannot acquire it')
end
if current then -- the holder acquiring again renews: the same token
  redis.call('PEXPIREAT', lease_key, until_ms)
  return {tonumber(current), until_ms, 0}
end
local stored = redis.call('HMGET', state_key, 's', 'lt')
if not stored[1] then
  return redis.error_reply('REDGOV_NOT_FOUND experiment ' .. ARGV[5] .. ' does not exist (create it first)')
end
if stored[2] and not string.match(stored[2], '^%d+$') then
  return redis.error_reply('REDGOV_CORRUPT key ' .. state_key .. ' field lt holds ' .. string.format('%q',
    string.sub(stored[2], 1, 60)) .. ', expected a token')
end
token = string.format('%d', math.max(tonumber(stored[2] or '0') + 1, now))
redis.call('HSET', state_key, 'lt', token)
redis.call('SET', lease_key, token .. ' ' .. owner, 'PXAT', until_ms)
return {tonumber(token), until_ms, 1}
