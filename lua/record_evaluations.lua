--[[ record_evaluations: persist policy evaluations (of a refused transition or of evaluate_policies).
KEYS[1] state hash          {T}:x:<exp>:state
KEYS[2] scope log           {T}:log
KEYS[3] evaluation ids      {T}:x:<exp>:policies
KEYS[4] latest per policy   {T}:x:<exp>:policy
ARGV[1] experiment name
ARGV[2] initial state ('' = none: current_state stays None when no state is stored)
ARGV[3] target state and the states allowed to move to it: '<target>|<s1>,<s2>' ('' = no rule check)
ARGV[4..] pairs: policy name, PolicyEvaluation record JSON (current_state is the entry's 'from' field)
Returns: the current state ('' when none)
Errors: REDGOV_INVALID_TRANSITION (nothing written), REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
-- @include lib/records.lua
local state_key, log_key, list_key, latest_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local experiment, initial, move = ARGV[1], ARGV[2], ARGV[3]

local bad = expect_types({state_key, 'hash', log_key, 'stream', list_key, 'list', latest_key, 'hash'})
if bad then return redis.error_reply(bad) end
local current = redis.call('HGET', state_key, 's') or initial
if move ~= '' then
  local bar = string.find(move, '|', 1, true)
  local target, sources = string.sub(move, 1, bar - 1), string.sub(move, bar + 1)
  if not string.find(',' .. sources .. ',', ',' .. current .. ',', 1, true) then
    return redis.error_reply('REDGOV_INVALID_TRANSITION experiment ' .. experiment .. ': ' .. current .. ' -> '
      .. target .. ' is not allowed')
  end
end
local extra = {}
if current ~= '' then extra = {'from', current} end
for i = 4, #ARGV, 2 do
  local id = add_entry(log_key, list_key, 'policy', experiment, ARGV[i + 1], extra)
  redis.call('HSET', latest_key, ARGV[i], id)
end
return current
