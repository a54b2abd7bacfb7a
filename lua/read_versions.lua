--[[ read_versions: configuration versions by number, in ascending order.
KEYS[1] version ids {T}:x:<exp>:versions
KEYS[2] scope log   {T}:log
ARGV[1] 'all' | 'latest' | a version number
Returns: {{id, {field, value, ...}}, ...} (empty when none match)
Errors: REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
-- @include lib/entries.lua
local versions_key, log_key = KEYS[1], KEYS[2]
local which = ARGV[1]
local bad = expect_types({versions_key, 'zset', log_key, 'stream'})
if bad then return redis.error_reply(bad) end
local ids
if which == 'all' then
  ids = redis.call('ZRANGE', versions_key, 0, -1)
elseif which == 'latest' then
  ids = redis.call('ZRANGE', versions_key, -1, -1)
else
  ids = redis.call('ZRANGEBYSCORE', versions_key, which, which)
end
return fetch_entries(log_key, ids)
