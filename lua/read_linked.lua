--[[ read_linked: the approvals linked to a transition (role gates it passed, the manual approval it
consumed, approvals appended with its id).
KEYS[1] links     {T}:links
KEYS[2] scope log {T}:log
ARGV[1] transition id
Returns: {{id, {field, value, ...}}, ...} in the order they were linked ({id, {}} when no longer in the log)
Errors: REDGOV_CORRUPT <key>, REDGOV_DENIED
]]
-- @include lib/common.lua
local links, log, transition_id = KEYS[1], KEYS[2], ARGV[1]
local joined, err = read('HGET', links, 't:' .. transition_id)
if err then return err end
if not joined then return {} end
err = util().expect(log, 'stream')
if err then return err end
local out = {}
for _, id in ipairs(util().split(joined, ' ')) do
  if not is_id(id) then return util().bad_value(links, 't:' .. transition_id, joined, 'approval entry ids') end
  local entry = redis.call('XRANGE', log, id, id)[1]
  out[#out + 1] = entry or {id, {}}
end
return out
