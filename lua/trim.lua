--[[ trim: remove an experiment's history entries up to a log entry id (after the SQL copy has them).
KEYS[1..11] standard keys (lib/common.lua)
ARGV[1] cut: entries with an id at or below it are removed
ARGV[2] the most entries removed by this call (>= 1; TRIM_MOST of lib/retain.lua at most): the caller
        repeats until fewer come back
Returns: {entries removed, entries left in the experiment's history}
Errors: REDGOV_CORRUPT, REDGOV_DENIED
]]
-- @include lib/common.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local cut, most = ARGV[1], tonumber(ARGV[2])
if not is_id(cut) or not most or most < 1 then
  return refuse('CORRUPT', 'trim of ' .. history_key .. ': bad arguments (cut ' .. tostring(cut) .. ', most '
    .. tostring(ARGV[2]) .. ')')
end

local function at_or_below(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  local cut_ms, cut_seq = string.match(cut, '^(%d+)%-(%d+)$')
  ms, seq, cut_ms, cut_seq = tonumber(ms), tonumber(seq), tonumber(cut_ms), tonumber(cut_seq)
  return ms < cut_ms or (ms == cut_ms and seq <= cut_seq)
end

local _, err = read('HGET', state_key, 's')
if err then return err end
local items
items, err = read('LRANGE', history_key, 0, math.min(most, retention().MOST) - 1)
if err then return err end
local count = 0
for i, item in ipairs(items) do
  local id = string.sub(item, 2)
  if not is_id(id) then return util().bad_value(history_key, 'item ' .. (i - 1), item, 'a kind code and a log entry id') end
  if not at_or_below(id) then break end
  count = i
end
if count > 0 then
  local plan
  plan, err = retention().take(count)
  if err then return err end
  retention().apply(plan)
end
return {count, redis.call('LLEN', history_key)}
