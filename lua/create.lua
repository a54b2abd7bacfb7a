--[[ create: create an experiment in its initial state, with its first history entries.
KEYS[1] state hash        {T}:x:<exp>:state
KEYS[2] scope log         {T}:log
KEYS[3] state-write ids   {T}:x:<exp>:states
KEYS[4] transition ids    {T}:x:<exp>:transitions
KEYS[5] transition index  {T}:tid
KEYS[6] scope index       {T}:index
KEYS[7] version ids       {T}:x:<exp>:versions
ARGV[1] experiment name
ARGV[2] initial state
ARGV[3] etag
ARGV[4] now, epoch microseconds
ARGV[5] actor ('' = none)
ARGV[6] metadata, JSON
ARGV[7] config version the state starts with (1 when a first version is written and followed, else 0)
ARGV[8] transition id
ARGV[9] ExperimentState record, JSON
ARGV[10] StateTransition record (from None to the initial state), JSON
ARGV[11] ConfigurationVersion record number 1, JSON ('' = none)
Returns: {revision, state entry id}
Errors: REDGOV_CONFLICT <exists>, REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
-- @include lib/records.lua
local state_key, log_key, writes_key, transitions_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tid_key, index_key, versions_key = KEYS[5], KEYS[6], KEYS[7]
local experiment, initial, etag, now, actor = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local metadata, config_version, transition_id = ARGV[6], ARGV[7], ARGV[8]
local state_record, transition_record, version_record = ARGV[9], ARGV[10], ARGV[11]

local bad = expect_types({state_key, 'hash', log_key, 'stream', writes_key, 'list', transitions_key, 'list',
  tid_key, 'hash', index_key, 'hash', versions_key, 'zset'})
if bad then return redis.error_reply(bad) end
local current = redis.call('HGET', state_key, 'e')
if current then
  return redis.error_reply('REDGOV_CONFLICT experiment ' .. experiment .. ' already exists (etag ' .. current .. ')')
end
if version_record ~= '' and redis.call('ZCARD', versions_key) > 0 then
  return redis.error_reply('REDGOV_CONFLICT experiment ' .. experiment .. ' already has versions')
end

local revision = redis.call('HINCRBY', state_key, 'r', 1)
redis.call('HSET', state_key, 's', initial, 'v', config_version, 't', now, 'm', metadata, 'e', etag)
if actor ~= '' then redis.call('HSET', state_key, 'b', actor) end
redis.call('HSET', index_key, experiment, initial)
local id = add_entry(log_key, writes_key, 'state', experiment, state_record, {'rev', revision, 'etag', etag})
local tid = add_entry(log_key, transitions_key, 'transition', experiment, transition_record, {})
redis.call('HSET', tid_key, transition_id, tid)
if version_record ~= '' then
  local vid = redis.call('XADD', log_key, '*', 'k', 'version', 'x', experiment, 'r', version_record, 'v', 1)
  redis.call('ZADD', versions_key, 1, vid)
end
return {revision, id}
