--[[ restore_index: index log entries already restored (with their original ids) for one experiment.
KEYS[1..11] standard keys (lib/common.lua)
ARGV[1] experiment name
ARGV[2] the experiment's state as 'field value ...' pairs folded from its entries ('' = none):
        its fields, '\n'-separated: s, v, t, b, m, e, r (written after the entries)
ARGV[3..] the experiment's log entry ids, in log order
Returns: the number of entries indexed (by this call or by an earlier send of it)
Errors: REDGOV_CORRUPT <an entry that cannot be indexed>
Open approvals and requests are not restored: like every write of the state field, a restore lapses them.
Safe to re-send (a Cluster client re-sends after a lost reply): the ids arrive in log order, so
an id at or below the newest one the experiment's history already holds was indexed before and
is passed over; the state write is a plain HSET.
]]
-- @include lib/common.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local experiment, state = ARGV[1], ARGV[2]
local IDS = 3

-- the newest entry already indexed ('<code><ms>-<seq>'), as {ms, seq}; nil: none
local function id_of(text)
  local ms, seq = string.match(text or '', '(%d+)%-(%d+)$')
  if ms then return {tonumber(ms), tonumber(seq)} end
  return nil
end
local newest = id_of(redis.call('LINDEX', history_key, -1))

-- what each write script does to the indexes, entry by entry (the same functions as the writes)
for i = IDS, #ARGV do
  local id = ARGV[i]
  local at = id_of(id)
  -- at or below the newest indexed: done by an earlier send of this call
  local done = newest and at and (at[1] < newest[1] or (at[1] == newest[1] and at[2] <= newest[2]))
  if not done then
  local found = redis.call('XRANGE', log_key, id, id)[1]
  if not found then return refuse('CORRUPT', 'log entry ' .. id .. ' of ' .. log_key .. ' is not in the log') end
  local fields = found[2]
  local kind, rev = retention().entry_field(fields, 'k'), retention().entry_field(fields, 'rev')
  local code
  if kind == 'state' then code = 'S'
  elseif kind == 'transition' then if rev then code = 'T' else code = 't' end
  elseif kind == 'approval' then code = 'A'
  elseif kind == 'policy' then code = 'P'
  elseif kind == 'version' then if rev then code = 'V' else code = 'v' end
  else return refuse('CORRUPT', 'log entry ' .. id .. ' of ' .. log_key .. ' has kind ' .. tostring(kind)) end
  local rec = nil
  if code == 'A' or code == 'P' or code == 't' or (code == 'T' and retention().entry_field(fields, 'ap')) then
    local err -- the record is read only where the write scripts used a field of it
    rec, err = retention().decode_record(id, retention().entry_field(fields, 'r'))
    if err then return err end
  end
  local detail = nil -- what index() needs beside the code: a policy's name, a version's number
  if code == 'P' then detail = tostring(rec['policy'])
  elseif code == 'V' or code == 'v' then detail = retention().entry_field(fields, 'v') end
  hist().index(code, id, detail) -- exactly what the write that made the entry did to these indexes
  if code == 'A' then
    local from = retention().entry_field(fields, 'from')
    if type(rec['transition_id']) == 'string' then
      hist().link(rec['transition_id'], {id})
    end -- approve.lua's open approvals are not restored: a restore lapses them, as every state write does
  elseif code == 't' then -- create.lua and append_transition.lua: their transition ids are unique per scope
    redis.call('HSET', links_key, 'x:' .. tostring(rec['transition_id']), id)
  elseif code == 'T' then
    -- transition.lua: the manual approvals it consumed are linked
    local consumed = retention().entry_field(fields, 'ap')
    if consumed then
      local ids = util().split(consumed, ' ')
      for _, approval_id in ipairs(ids) do hist().consume(approval_id, tostring(rec['transition_id'])) end
      hist().link(tostring(rec['transition_id']), ids)
    end
  end
  end
end
hist().register(experiment)
if state ~= '' then
  local parts = util().split(state, '\n')
  local before = redis.call('HMGET', state_key, 's', 'pn')
  redis.call('HSET', state_key, unpack(parts))
  -- a restore writes the state field: what was open on the state before lapses (enter, lib/history.lua)
  if before[1] and before[2] then lapse(before[1], nil, nil, before[2]) end
end
return #ARGV - IDS + 1
