--[[ append_approval: add an ApprovalRecord to the history.
KEYS[1] scope log                {T}:log
KEYS[2] approval ids             {T}:x:<exp>:approvals
KEYS[3..] approvals of its transition  {T}:tr:<transition id>:approvals (only when linked)
ARGV[1] experiment name
ARGV[2] ApprovalRecord record, JSON
Returns: log entry id
Errors: REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
local log_key, list_key, linked_key = KEYS[1], KEYS[2], KEYS[3]
local experiment, record = ARGV[1], ARGV[2]

local spec = {log_key, 'stream', list_key, 'list'}
if linked_key then
  spec[5], spec[6] = linked_key, 'list'
end
local bad = expect_types(spec)
if bad then return redis.error_reply(bad) end

local id = redis.call('XADD', log_key, '*', 'k', 'approval', 'x', experiment, 'r', record)
redis.call('RPUSH', list_key, id)
if linked_key then
  redis.call('RPUSH', linked_key, id)
end
return id
