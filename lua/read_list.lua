--[[ read_list: the log entries a list of ids points at, in list order.
KEYS[1] id list   {T}:x:<exp>:<kind> or {T}:tr:<transition id>:approvals
KEYS[2] scope log {T}:log
KEYS[3..] approval links {T}:x:<exp>:links (approval lists only: adds the consuming transition id)
Returns: {{id, {field, value, ...}}, ...}; a trimmed entry comes back as {id, {}}; with links, each
         linked entry's field list ends with 'tid', <transition id>
Errors: REDGOV_CORRUPT <key>
]]
-- @include lib/guard.lua
-- @include lib/entries.lua
local list_key, log_key, links_key = KEYS[1], KEYS[2], KEYS[3]
local spec = {list_key, 'list', log_key, 'stream'}
if links_key then spec[5], spec[6] = links_key, 'hash' end
local bad = expect_types(spec)
if bad then return redis.error_reply(bad) end
local entries = fetch_entries(log_key, redis.call('LRANGE', list_key, 0, -1))
if links_key and #entries > 0 then
  for first = 1, #entries, 1000 do
    local ids = {}
    for i = first, math.min(first + 999, #entries) do ids[#ids + 1] = entries[i][1] end
    local tids = redis.call('HMGET', links_key, unpack(ids))
    for j = 1, #ids do
      local fields = entries[first + j - 1][2]
      if tids[j] and #fields > 0 then
        fields[#fields + 1] = 'tid'
        fields[#fields + 1] = tids[j]
      end
    end
  end
end
return entries
