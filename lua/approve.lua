--[[ approve: record an approval (or rejection) of a move, for a ManualGate to consume.
KEYS[1] state hash         {T}:x:<exp>:state
KEYS[2] scope log          {T}:log
KEYS[3] approval ids       {T}:x:<exp>:approvals
KEYS[4] pending approvals  {T}:x:<exp>:pending ('<from>><to>' -> approval entry id)
ARGV[1] experiment name
ARGV[2] target state
ARGV[3] initial state (the current state when none is stored)
ARGV[4] states the rules allow to move to the target, comma-separated
ARGV[5] '1' approved, '0' rejected (a rejection withdraws a pending approval)
ARGV[6] ApprovalRecord, JSON (from_state is the entry's 'from' field)
Returns: {approval entry id, from state}
Errors: REDGOV_INVALID_TRANSITION <no rule allows the move>, REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
-- @include lib/records.lua
local state_key, log_key, approvals_key, pending_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local experiment, target, initial, sources = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local approved, record = ARGV[5], ARGV[6]

local bad = expect_types({state_key, 'hash', log_key, 'stream', approvals_key, 'list', pending_key, 'hash'})
if bad then return redis.error_reply(bad) end
local current = redis.call('HGET', state_key, 's') or initial
if not string.find(',' .. sources .. ',', ',' .. current .. ',', 1, true) then
  return redis.error_reply('REDGOV_INVALID_TRANSITION experiment ' .. experiment .. ': ' .. current .. ' -> '
    .. target .. ' is not allowed, so it cannot be approved')
end
local id = add_entry(log_key, approvals_key, 'approval', experiment, record, {'from', current})
if approved == '1' then
  redis.call('HSET', pending_key, current .. '>' .. target, id)
else
  redis.call('HDEL', pending_key, current .. '>' .. target)
end
return {id, current}
