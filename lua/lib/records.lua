-- add_entry: append one record to the scope log and to an id list; returns the entry id.
-- extra is a flat list of additional entry fields (field, value, ...), possibly empty.
local function add_entry(log_key, list_key, kind, experiment, record, extra)
  local id = redis.call('XADD', log_key, '*', 'k', kind, 'x', experiment, 'r', record, unpack(extra))
  redis.call('RPUSH', list_key, id)
  return id
end
