--[[ append_approval: add an ApprovalRecord to the history (the seed's interface).
KEYS[1..11] standard keys (lib/common.lua)
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set (it also gets it whenever it has none)
ARGV[3] experiment name
ARGV[4] the transition id it is linked to ('' = none)
ARGV[5] retain: history entries kept for the experiment (0 = all)
ARGV[6] ApprovalRecord record, JSON
Returns: {1, log entry id}; a re-send {2, ...the same}
Errors: REDGOV_CORRUPT, REDGOV_DENIED
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
  local length
  length, err = read('LLEN', history_key)
  if err then return err end
  err = util().expect_all(log_key, 'stream', approvals_key, 'list', links_key, 'hash', index_key, 'zset', state_key, 'hash')
  if err then return err end
  local trim
  trim, err = retention().plan(retain, 1, length)
  if err then return err end

  local id = hist().add_entry('A', experiment, record, {})
  if transition_id ~= '' then hist().link(transition_id, {id}) end
  hist().register(experiment)
  if trim then retention().apply(trim) end
  local reply = {1, id}
  op_done(op, reply, expire)
  return reply
end

return finish(op, main(), expire)
