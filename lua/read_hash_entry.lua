--[[ read_hash_entry: the log entry a hash field points at.
KEYS[1] id hash   {T}:x:<exp>:policy or {T}:tid
KEYS[2] scope log {T}:log
ARGV[1] field (a policy name, a transition id)
Returns: {{id, {field, value, ...}}} or {} when the field is absent
Errors: REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
-- @include lib/entries.lua
local hash_key, log_key = KEYS[1], KEYS[2]
local field = ARGV[1]
local bad = expect_types({hash_key, 'hash', log_key, 'stream'})
if bad then return redis.error_reply(bad) end
local id = redis.call('HGET', hash_key, field)
if not id then return {} end
return fetch_entries(log_key, {id})
