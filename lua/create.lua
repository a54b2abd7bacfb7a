--[[ create: create an experiment in its initial state, with its first history entries.
KEYS[1..11] standard keys (lib/common.lua)
KEYS[12] the scope's rules hash {T}:rules
KEYS[13..] the idempotency record {T}:i:<exp>:<key> (when ARGV[10] is not '')
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set
ARGV[3] experiment name
ARGV[4] initial state
ARGV[5] etag
ARGV[6] now, epoch microseconds
ARGV[7] actor ('' = none)
ARGV[8] metadata, JSON
ARGV[9] config version the state starts with (1 when the first version is followed, else 0)
ARGV[10] idempotency intent ('' = no key)
ARGV[11] idempotency window, ms
ARGV[12] ExperimentState record, JSON (revision and etag are entry fields)
ARGV[13] StateTransition record (from None to the initial state), JSON
ARGV[14] ConfigurationVersion record number 1, JSON ('' = none)
ARGV[15] the transition's id (recorded in links, as an appended transition's is)
ARGV[16] the rules version the call was decided under ('0' = the scope had published none): the initial
        state is the published one
Returns: {1, revision, state entry id, etag}; a re-send {2, ...}; an idempotency replay
         {3, revision, state entry id, etag, state record}
Errors: REDGOV_CONFLICT <exists>, REDGOV_RULES_CHANGED <current version>, REDGOV_CORRUPT, REDGOV_DENIED.
        A refusal is remembered under the operation id like a success.
]]
-- @include lib/common.lua
-- @include lib/idem.lua
-- @include lib/history.lua
-- @include lib/retain.lua
-- @include lib/gates.lua
local op, expire, experiment, initial, etag, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local actor, metadata, config_version, intent, window = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local state_record, transition_record, version_record, transition_id = ARGV[12], ARGV[13], ARGV[14], ARGV[15]
local decided = ARGV[16]
local idem_key = nil
if intent ~= '' then idem_key = KEYS[13] end
local what = 'experiment ' .. experiment

local function main()
  local replay, err = hist().prior(op, idem_key, intent, what)
  if replay or err then return replay or err end

  local stored
  stored, err = read('HMGET', state_key, 'e', 'r', 'pn')
  if err then return err end
  if stored[1] then return refuse('CONFLICT', what .. ' already exists (etag ' .. stored[1] .. ')') end
  if stored[2] and not is_count(stored[2]) then return util().bad_value(state_key, 'r', stored[2], 'a revision') end
  local versions
  versions, err = retention().highest_version() -- also those retention removed: numbers are never reused
  if err then return err end
  if version_record ~= '' and versions > 0 then return refuse('CONFLICT', what .. ' already has versions') end
  err = util().expect_all(log_key, 'stream', history_key, 'list', index_key, 'zset', links_key, 'hash')
  if err then return err end
  err = gates().version(KEYS[12], decided)
  if err then return err end

  local revision = tonumber(stored[2] or '0') + 1
  -- what was approved or requested before it existed (auto_create) lapses with the first state write
  if stored[3] then lapse(initial, nil, nil, stored[3]) end
  redis.call('HSET', state_key, unpack(enter({'s', initial, 'v', config_version, 't', now, 'm', metadata, 'e', etag,
    'r', revision}, nil, initial, now, nil, nil)))
  if actor ~= '' then redis.call('HSET', state_key, 'b', actor) end
  hist().register(experiment)
  local id = hist().add_entry('S', experiment, state_record, {'rev', revision, 'etag', etag})
  redis.call('HSET', links_key, 'x:' .. transition_id, hist().add_entry('t', experiment, transition_record, {}))
  if version_record ~= '' then
    hist().add_entry('v', experiment, version_record, {'v', 1}, 1)
  end
  local reply = {1, revision, id, etag}
  op_done(op, reply, expire)
  if idem_key then idem().done(idem_key, intent, {1, revision, id, etag, state_record}, window) end
  return reply
end

return finish(op, main(), expire)
