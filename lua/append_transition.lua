--[[ append_transition: add a StateTransition to the history.
KEYS[1] scope log         {T}:log
KEYS[2] transition ids    {T}:x:<exp>:transitions
KEYS[3] transition index  {T}:tid
ARGV[1] experiment name
ARGV[2] transition id (unique in the scope)
ARGV[3] StateTransition record, JSON
Returns: log entry id
Errors: REDGOV_CONFLICT <transition id exists>, REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
local log_key, list_key, tid_key = KEYS[1], KEYS[2], KEYS[3]
local experiment, transition_id, record = ARGV[1], ARGV[2], ARGV[3]

local bad = expect_types({log_key, 'stream', list_key, 'list', tid_key, 'hash'})
if bad then return redis.error_reply(bad) end
if redis.call('HEXISTS', tid_key, transition_id) == 1 then
  return redis.error_reply('REDGOV_CONFLICT transition ' .. transition_id .. ' is already recorded')
end

local id = redis.call('XADD', log_key, '*', 'k', 'transition', 'x', experiment, 'r', record)
redis.call('RPUSH', list_key, id)
redis.call('HSET', tid_key, transition_id, id)
return id
