--[[ read_entry: the log entry a hash field points at (the latest evaluation of a policy).
KEYS[1] id hash   {T}:l:<exp>
KEYS[2] scope log {T}:log
ARGV[1] field (a policy name)
Returns: {} when the field is absent, else {{id, {field, value, ...}}} ({{id, {}}} when no longer in the log)
Errors: REDGOV_CORRUPT <key>, REDGOV_DENIED
]]
-- @include lib/common.lua
local hash, log, field = KEYS[1], KEYS[2], ARGV[1]
local id, err = read('HGET', hash, field)
if err then return err end
if not id then return {} end
if not is_id(id) then return util().bad_value(hash, field, id, 'a log entry id') end
err = util().expect(log, 'stream')
if err then return err end
local entry = redis.call('XRANGE', log, id, id)[1]
return {entry or {id, {}}}
