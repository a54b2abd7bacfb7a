--[[ create_version: add the next configuration version (its number assigned here); optionally follow it.
KEYS[1..11] standard keys (lib/common.lua)
KEYS[12..] the idempotency record {T}:i:<exp>:<key> (when ARGV[11] is not ''), then the experiment's lease
        {T}:k:<exp> (when ARGV[13] is not '': always the last key)
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set (it also gets it whenever it has none)
ARGV[3] experiment name
ARGV[4] '1': the state's config_version follows the new version (a state write), '0': it does not
ARGV[5] '1': the experiment must exist, '0': a version of an experiment without state is allowed
ARGV[6] new etag (used when following)
ARGV[7] now, epoch microseconds
ARGV[8] actor ('' = none)
ARGV[9] retain: history entries kept for the experiment (0 = all)
ARGV[10] ConfigurationVersion record, JSON (the version number, the state it was made in and a
        followed write's revision and etag are entry fields)
ARGV[11] idempotency intent ('' = no key)
ARGV[12] idempotency window, ms
ARGV[13] fencing token: refuse unless the experiment's lease holds it ('' = not fenced)
Returns: {1, version number, revision (0: the state was not written), current state ('' = none)};
         a re-send {2, ...}; an idempotency replay {3, number, revision, state, etag, version record}
Errors: REDGOV_NOT_FOUND, REDGOV_LEASE, REDGOV_CORRUPT, REDGOV_DENIED. A refusal is remembered under the
        operation id like a success.
The experiment's open approvals and requests lapse (they were given for the configuration this replaces).
]]
-- @include lib/common.lua
-- @include lib/idem.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local op, expire, experiment, follow, must_exist = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local etag, now, actor, retain, record = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local intent, window, fence = ARGV[11], ARGV[12], ARGV[13]
local idem_key = nil
if intent ~= '' then idem_key = KEYS[12] end
local what = 'experiment ' .. experiment

local function main()
  local replay, err = hist().prior(op, idem_key, intent, what)
  if replay or err then return replay or err end

  local stored
  stored, err = read('HMGET', state_key, 's', 'r', 'b', 'pn', 'v')
  if err then return err end
  local current = stored[1]
  if current and not is_state(current) then return util().bad_value(state_key, 's', current, 'a lifecycle state') end
  if not current and must_exist == '1' then return refuse('NOT_FOUND', what .. ' does not exist (create it first)') end
  if stored[2] and not is_count(stored[2]) then return util().bad_value(state_key, 'r', stored[2], 'a revision') end
  if fence ~= '' then
    err = util().fenced(KEYS[#KEYS], fence, what)
    if err then return err end
  end
  local number
  number, err = retention().highest_version()
  if err then return err end
  number = number + 1
  local length
  length, err = read('LLEN', history_key)
  if err then return err end
  err = util().expect_all(log_key, 'stream', index_key, 'zset')
  if err then return err end
  local trim
  trim, err = retention().plan(retain, 1, length)
  if err then return err end

  local revision = 0
  local id
  if current and stored[4] then lapse(current, stored[5] or '0', nil, stored[4]) end -- approvals were for the old configuration
  if follow == '1' and current then
    revision = tonumber(stored[2] or '0') + 1
    redis.call('HSET', state_key, 'v', number, 't', now, 'e', etag, 'r', revision)
    if actor ~= '' then redis.call('HSET', state_key, 'b', actor)
    elseif stored[3] then redis.call('HDEL', state_key, 'b') end
    id = hist().add_entry('V', experiment, record, {'v', number, 'from', current, 'rev', revision, 'etag', etag}, number)
  elseif current then
    id = hist().add_entry('v', experiment, record, {'v', number, 'from', current}, number)
  else
    id = hist().add_entry('v', experiment, record, {'v', number}, number)
  end
  hist().register(experiment)
  if trim then retention().apply(trim) end
  local reply = {1, number, revision, current or ''}
  op_done(op, reply, expire)
  if idem_key then idem().done(idem_key, intent, {1, number, revision, current or '', etag, record}, window) end
  return reply
end

return finish(op, main(), expire)
