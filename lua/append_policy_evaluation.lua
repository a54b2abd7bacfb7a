--[[ append_policy_evaluation: add a PolicyEvaluation and make it its policy's latest.
KEYS[1] scope log            {T}:log
KEYS[2] evaluation ids       {T}:x:<exp>:policies
KEYS[3] latest per policy    {T}:x:<exp>:policy
ARGV[1] experiment name
ARGV[2] policy name
ARGV[3] PolicyEvaluation record, JSON
Returns: log entry id
Errors: REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
local log_key, list_key, latest_key = KEYS[1], KEYS[2], KEYS[3]
local experiment, policy, record = ARGV[1], ARGV[2], ARGV[3]

local bad = expect_types({log_key, 'stream', list_key, 'list', latest_key, 'hash'})
if bad then return redis.error_reply(bad) end

local id = redis.call('XADD', log_key, '*', 'k', 'policy', 'x', experiment, 'r', record)
redis.call('RPUSH', list_key, id)
redis.call('HSET', latest_key, policy, id)
return id
