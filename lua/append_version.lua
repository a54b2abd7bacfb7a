--[[ append_version: add an immutable ConfigurationVersion.
KEYS[1] scope log     {T}:log
KEYS[2] version ids   {T}:x:<exp>:versions (zset scored by version number)
ARGV[1] experiment name
ARGV[2] version number, or 0 to take the next one (latest + 1)
ARGV[3] ConfigurationVersion record, JSON (the entry's v field is authoritative)
Returns: {version number, log entry id}
Errors: REDGOV_CONFLICT <version exists>, REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
local log_key, versions_key = KEYS[1], KEYS[2]
local experiment, number, record = ARGV[1], ARGV[2], ARGV[3]

local bad = expect_types({log_key, 'stream', versions_key, 'zset'})
if bad then return redis.error_reply(bad) end

if number == '0' then
  local top = redis.call('ZRANGE', versions_key, -1, -1, 'WITHSCORES')
  number = tostring((tonumber(top[2]) or 0) + 1)
elseif redis.call('ZCOUNT', versions_key, number, number) > 0 then
  return redis.error_reply('REDGOV_CONFLICT experiment ' .. experiment .. ' already has version ' .. number
    .. '; versions are immutable')
end

local id = redis.call('XADD', log_key, '*', 'k', 'version', 'x', experiment, 'r', record, 'v', number)
redis.call('ZADD', versions_key, number, id)
return {tonumber(number), id}
