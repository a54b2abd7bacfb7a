-- fetch_entries: the log entries with the given ids, in that order, as
-- {id, {field, value, ...}}; an id no longer in the log (trimmed) gives {id, {}}.
local function fetch_entries(log_key, ids)
  local out = {}
  for i = 1, #ids do
    local found = redis.call('XRANGE', log_key, ids[i], ids[i])
    if found[1] then
      out[i] = found[1]
    else
      out[i] = {ids[i], {}}
    end
  end
  return out
end
