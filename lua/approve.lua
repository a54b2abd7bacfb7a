--[[ approve: record an approval (or rejection) of a move, for a ManualGate to consume.
KEYS[1..11] standard keys (lib/common.lua)
KEYS[12..] the idempotency record {T}:i:<exp>:<key> (when ARGV[10] is not '')
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set
ARGV[3] experiment name
ARGV[4] target state
ARGV[5] states the rules allow to move to the target, '|'-separated with a leading and trailing '|'
ARGV[6] '1' approved, '0' rejected (a rejection withdraws a pending approval of the move)
ARGV[7] initial state of an experiment not created yet ('' = it must exist)
ARGV[8] retain: history entries kept for the experiment (0 = all)
ARGV[9] ApprovalRecord, JSON (from_state is the entry's 'from' field)
ARGV[10] idempotency intent ('' = no key)
ARGV[11] idempotency window, ms
ARGV[12] valid for, ms ('' = until consumed or lapsed): the approval stops satisfying its gate that long
        after now (server clock, TIME); kept as entry field vu and in the pending field ('<id>|<vu>')
Returns: {1, approval entry id, from state, valid until ms or ''}; a re-send {2, ...}; an idempotency replay
         {3, entry id, from state, approval record, valid until ms or ''}
Errors: REDGOV_NOT_FOUND, REDGOV_INVALID_TRANSITION <no rule allows the move>, REDGOV_CORRUPT, REDGOV_DENIED
]]
-- @include lib/common.lua
-- @include lib/idem.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local op, expire, experiment, target, sources = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local approved, initial, retain, record = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
local intent, window, valid_for = ARGV[10], ARGV[11], ARGV[12]
local idem_key = nil
if intent ~= '' then idem_key = KEYS[12] end
local what = 'experiment ' .. experiment

local replay, err = hist().prior(op, idem_key, intent, what)
if replay or err then return replay or err end

local stored
stored, err = read('HMGET', state_key, 's', 'pn')
if err then return err end
local current = stored[1]
if stored[2] and not string.match(stored[2], '^%-?%d+$') then return util().bad_value(state_key, 'pn', stored[2], 'a count') end
if not current then
  if initial == '' then return refuse('NOT_FOUND', what .. ' does not exist (create it first)') end
  current = initial
elseif not is_state(current) then
  return util().bad_value(state_key, 's', current, 'a lifecycle state')
end
if not string.find(sources, '|' .. current .. '|', 1, true) then
  return refuse('INVALID_TRANSITION', what .. ': ' .. current .. ' -> ' .. target
    .. ' is not allowed, so it cannot be approved')
end
local field = 'p:' .. current .. '>' .. target
local pending
pending, err = read('HGET', state_key, field)
if err then return err end
local length
length, err = read('LLEN', history_key)
if err then return err end
err = util().expect_all(log_key, 'stream', approvals_key, 'list', index_key, 'zset')
if err then return err end
local trim
trim, err = retention().plan(retain, 1, length)
if err then return err end

local valid_until = ''
local fields = {'from', current}
if valid_for ~= '' then
  local clock = redis.call('TIME')
  valid_until = string.format('%d', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    + tonumber(valid_for))
  fields = {'from', current, 'vu', valid_until}
end
local id = hist().add_entry('A', experiment, record, fields)
hist().pend(current, target, id, approved == '1', pending, valid_until)
hist().register(experiment)
if trim then retention().apply(trim) end
local reply = {1, id, current, valid_until}
op_done(op, reply, expire)
if idem_key then idem().done(idem_key, intent, {1, id, current, record, valid_until}, window) end
return reply
