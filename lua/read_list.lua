--[[ read_list: the log entries a list of ids points at, in list order.
KEYS[1] id list   {T}:x:<exp>:<kind> or {T}:tr:<transition id>:approvals
KEYS[2] scope log {T}:log
Returns: {{id, {field, value, ...}}, ...}; a trimmed entry comes back as {id, {}}
Errors: REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
-- @include lib/entries.lua
local list_key, log_key = KEYS[1], KEYS[2]
local bad = expect_types({list_key, 'list', log_key, 'stream'})
if bad then return redis.error_reply(bad) end
return fetch_entries(log_key, redis.call('LRANGE', list_key, 0, -1))
