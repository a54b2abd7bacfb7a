--[[ save_state: compare-and-set one experiment's state and log the write (the seed's interface).
KEYS[1..11] standard keys (lib/common.lua)
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set (it also gets it whenever it has none)
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
Errors: REDGOV_CONFLICT <detail>, REDGOV_CORRUPT, REDGOV_DENIED. A refusal is remembered under the operation id.
Like every write of the state field it goes through enter() (lib/history.lua): the open approvals and
requests of the experiment lapse.
]]
-- @include lib/common.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local op, expire, experiment, mode, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local etag, state, config_version, modified_at = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local modified_by, metadata, retain, record = ARGV[10], ARGV[11], tonumber(ARGV[12]), ARGV[13]
local what = 'experiment ' .. experiment

local function main()
  local replay, err = op_seen(op)
  if replay or err then return replay or err end
  local stored = redis.pcall('HMGET', state_key, 'e', 'b', 'r', 's', 'pn')
  if stored['err'] then return failed_on(state_key, stored['err']) end
  local current = stored[1]
  if mode == 'create' and current then
    return refuse('CONFLICT', what .. ' already exists (etag ' .. current .. ')')
  end
  if mode == 'match' and current ~= expected then
    return refuse('CONFLICT', what .. ': expected etag ' .. expected .. ', found ' .. (current or 'none (no state)'))
  end
  local revision = tonumber(stored[3] or '0')
  if not revision or revision < 0 or revision % 1 ~= 0 or revision > 9007199254740992 then
    return util().bad_value(state_key, 'r', stored[3], 'a revision')
  end
  revision = revision + 1
  local length = redis.pcall('LLEN', history_key) -- proves the history's type before the first write
  if type(length) == 'table' then return failed_on(history_key, length['err']) end
  if not current then -- a new experiment is registered in the scope index
    err = util().expect(index_key, 'zset')
    if err then return err end
  end
  local trim
  trim, err = retention().plan(retain, 1, length)
  if err then return err end

  -- the first write proves the log's type: refused, it leaves nothing
  local id = redis.pcall('XADD', log_key, '*', 'k', 'state', 'x', experiment, 'r', record, 'rev', revision, 'etag', etag)
  if type(id) == 'table' then return failed_on(log_key, id['err']) end
  redis.call('RPUSH', history_key, 'S' .. id) -- hist().index('S', id), inlined on this hot path
  local fields = {'s', state, 'v', config_version, 't', modified_at, 'm', metadata, 'e', etag, 'r', revision}
  if modified_by ~= '' then fields[#fields + 1], fields[#fields + 2] = 'b', modified_by end
  -- every save writes the state field: what was approved or requested for it lapses (whatever it was)
  if stored[5] then lapse(stored[4] or state, nil, nil, stored[5]) end
  if stored[4] ~= state then enter(fields, stored[4], state, modified_at, nil, nil) end -- entry times
  redis.call('HSET', state_key, unpack(fields))
  if modified_by == '' and stored[2] then redis.call('HDEL', state_key, 'b') end
  if not current then hist().register(experiment) end
  if trim then retention().apply(trim) end
  local reply = {1, revision, id}
  op_done(op, reply, expire)
  return reply
end

return finish(op, main(), expire)
