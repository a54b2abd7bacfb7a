--[[ create_version: add the next configuration version (number assigned here); optionally follow it.
KEYS[1] scope log          {T}:log
KEYS[2] version ids        {T}:x:<exp>:versions
KEYS[3] state hash         {T}:x:<exp>:state
KEYS[4] state-write ids    {T}:x:<exp>:states
ARGV[1] experiment name
ARGV[2] '1': the state's config_version follows the new version (a state write), '0': it does not
ARGV[3] new etag (used when following)
ARGV[4] now, epoch microseconds
ARGV[5] actor ('' = none)
ARGV[6] ConfigurationVersion record, JSON (the entry's v field is authoritative; lifecycle_state is
        the entry's 'from' field, the state when the version was made)
Returns: {version number, revision (0 when the state was not written), current state ('' = none)}
Errors: REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
local log_key, versions_key, state_key, writes_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local experiment, follow, etag, now, actor, record = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local bad = expect_types({log_key, 'stream', versions_key, 'zset', state_key, 'hash', writes_key, 'list'})
if bad then return redis.error_reply(bad) end
local top = redis.call('ZRANGE', versions_key, -1, -1, 'WITHSCORES')
local number = tostring((tonumber(top[2]) or 0) + 1)
local current = redis.call('HGET', state_key, 's')
local extra = {}
if current then extra = {'from', current} end
local revision = 0
local id
if follow == '1' and current then
  revision = redis.call('HINCRBY', state_key, 'r', 1)
  redis.call('HSET', state_key, 'v', number, 't', now, 'e', etag)
  if actor == '' then redis.call('HDEL', state_key, 'b') else redis.call('HSET', state_key, 'b', actor) end
  id = redis.call('XADD', log_key, '*', 'k', 'version', 'x', experiment, 'r', record, 'v', number,
    'rev', revision, 'etag', etag, unpack(extra))
  redis.call('RPUSH', writes_key, id)
else
  id = redis.call('XADD', log_key, '*', 'k', 'version', 'x', experiment, 'r', record, 'v', number, unpack(extra))
end
redis.call('ZADD', versions_key, number, id)
return {tonumber(number), revision, current or ''}
