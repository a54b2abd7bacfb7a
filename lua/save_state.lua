--[[ save_state: compare-and-set one experiment's state and log the write (the seed's interface).
KEYS[1..11] standard keys (lib/common.lua)
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set
ARGV[3] experiment name
ARGV[4] mode: 'create' (must not exist) | 'match' (the etag must equal ARGV[5]) | 'overwrite'
ARGV[5] expected etag (mode 'match')
ARGV[6] new etag
ARGV[7] state name
ARGV[8] config version
ARGV[9] last modified, epoch microseconds
ARGV[10] last modified by ('' = none)
ARGV[11] metadata, JSON
ARGV[12] retain: history entries kept for the experiment (0 = all)
ARGV[13] ExperimentState record, JSON (stored verbatim; revision and etag are entry fields)
Returns: {1, revision, log entry id}; a re-send {2, ...the same}
Errors: REDGOV_CONFLICT <detail>, REDGOV_CORRUPT, REDGOV_DENIED
]]
-- @include lib/common.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local op, expire, experiment, mode, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local etag, state, config_version, modified_at = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local modified_by, metadata, retain, record = ARGV[10], ARGV[11], tonumber(ARGV[12]), ARGV[13]
local what = 'experiment ' .. experiment

local replay, err = op_seen(op)
if replay or err then return replay or err end
local stored
stored, err = read('HMGET', state_key, 'e', 'b', 'r')
if err then return err end
local current = stored[1]
if mode == 'create' and current then
  return refuse('CONFLICT', what .. ' already exists (etag ' .. current .. ')')
end
if mode == 'match' and current ~= expected then
  return refuse('CONFLICT', what .. ': expected etag ' .. expected .. ', found ' .. (current or 'none (no state)'))
end
if stored[3] and not is_count(stored[3]) then return util().bad_value(state_key, 'r', stored[3], 'a revision') end
local length
length, err = read('LLEN', history_key)
if err then return err end
err = util().expect_all(log_key, 'stream', index_key, 'zset')
if err then return err end
local trim
trim, err = retention().plan(retain, 1, length)
if err then return err end

local revision = tonumber(stored[3] or '0') + 1
redis.call('HSET', state_key, 's', state, 'v', config_version, 't', modified_at, 'm', metadata, 'e', etag,
  'r', revision)
if modified_by ~= '' then redis.call('HSET', state_key, 'b', modified_by)
elseif stored[2] then redis.call('HDEL', state_key, 'b') end
local id = hist().add_entry('S', experiment, record, {'rev', revision, 'etag', etag})
hist().register(experiment)
if trim then retention().apply(trim) end
local reply = {1, revision, id}
op_done(op, reply, expire)
return reply
