--[[ save_state: compare-and-set one experiment's state and log the write.
KEYS[1] experiment base  {T}:x:<exp>; the script uses <base>:state and <base>:states (state-write ids)
KEYS[2] scope tag        {T}; the script uses <tag>:log and <tag>:index
ARGV[1] mode: 'create' (must not exist) | 'match' (etag must equal ARGV[2]) | 'overwrite'
ARGV[2] expected etag (mode 'match')
ARGV[3] new etag
ARGV[4] experiment name
ARGV[5] state name
ARGV[6] config version
ARGV[7] last modified, epoch microseconds
ARGV[8] last modified by ('' = none)
ARGV[9] metadata, JSON
ARGV[10] ExperimentState record, JSON (stored verbatim; the entry's rev field is authoritative)
Returns: {revision, log entry id}
Errors: REDGOV_CONFLICT <detail>, REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
local base, tag = KEYS[1], KEYS[2]
local state_key, writes_key, log_key, index_key = base .. ':state', base .. ':states', tag .. ':log', tag .. ':index'
local mode, expected, etag = ARGV[1], ARGV[2], ARGV[3]
local experiment, state, config_version = ARGV[4], ARGV[5], ARGV[6]
local modified_at, modified_by, metadata, record = ARGV[7], ARGV[8], ARGV[9], ARGV[10]

-- the state hash's type is checked by the HMGET below, before any write
local bad = expect_types({log_key, 'stream', writes_key, 'list', index_key, 'hash'})
if bad then return redis.error_reply(bad) end

local stored, corrupt = read('HMGET', state_key, 'e', 'b')
if corrupt then return redis.error_reply(corrupt) end
local current = stored[1]
if mode == 'create' and current then
  return redis.error_reply('REDGOV_CONFLICT experiment ' .. experiment .. ' already exists (etag ' .. current .. ')')
end
if mode == 'match' and current ~= expected then
  return redis.error_reply('REDGOV_CONFLICT experiment ' .. experiment .. ': expected etag ' .. expected
    .. ', found ' .. (current or 'none (no state)'))
end

local revision = redis.call('HINCRBY', state_key, 'r', 1)
if modified_by ~= '' then
  redis.call('HSET', state_key, 's', state, 'v', config_version, 't', modified_at, 'm', metadata, 'e', etag,
    'b', modified_by)
else
  redis.call('HSET', state_key, 's', state, 'v', config_version, 't', modified_at, 'm', metadata, 'e', etag)
  if stored[2] then redis.call('HDEL', state_key, 'b') end
end
local id = redis.call('XADD', log_key, '*', 'k', 'state', 'x', experiment, 'r', record,
  'rev', revision, 'etag', etag)
redis.call('RPUSH', writes_key, id)
redis.call('HSET', index_key, experiment, state)
return {revision, id}
