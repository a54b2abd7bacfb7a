--[[ append_transition: add a StateTransition to the history (the seed's interface; the state is not written).
KEYS[1..11] standard keys (lib/common.lua)
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set (it also gets it whenever it has none)
ARGV[3] experiment name
ARGV[4] transition id (appended ones are unique per scope)
ARGV[5] retain: history entries kept for the experiment (0 = all)
ARGV[6] StateTransition record, JSON
Returns: {1, log entry id}; a re-send {2, ...the same}
Errors: REDGOV_CONFLICT <transition id exists>, REDGOV_CORRUPT, REDGOV_DENIED
A refusal is remembered under the operation id like a success.
]]
-- @include lib/common.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local op, expire, experiment, transition_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retain, record = tonumber(ARGV[5]), ARGV[6]

local function main()
  local replay, err = op_seen(op)
  if replay or err then return replay or err end
  local seen
  seen, err = read('HEXISTS', links_key, 'x:' .. transition_id)
  if err then return err end
  if seen == 1 then
    return refuse('CONFLICT', 'transition ' .. transition_id .. ' is already recorded')
  end
  local length
  length, err = read('LLEN', history_key)
  if err then return err end
  err = util().expect_all(log_key, 'stream', index_key, 'zset', state_key, 'hash')
  if err then return err end
  local trim
  trim, err = retention().plan(retain, 1, length)
  if err then return err end

  local id = hist().add_entry('t', experiment, record, {})
  redis.call('HSET', links_key, 'x:' .. transition_id, id)
  hist().register(experiment)
  if trim then retention().apply(trim) end
  local reply = {1, id}
  op_done(op, reply, expire)
  return reply
end

return finish(op, main(), expire)
