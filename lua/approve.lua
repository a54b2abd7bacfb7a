--[[ approve: record an approval or a rejection of a move, or a request for it (lib/gates.lua judges them).
KEYS[1..11] standard keys (lib/common.lua)
KEYS[12] the scope's rules hash {T}:rules
KEYS[13..] the idempotency record {T}:i:<exp>:<key> (when ARGV[9] is not '')
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set (it also gets it whenever it has none)
ARGV[3] experiment name
ARGV[4] target state
ARGV[5] mode: 'approve', 'reject' (closes the move's request and withdraws its approvals) or 'request'
ARGV[6] initial state of an experiment not created yet ('' = it must exist)
ARGV[7] retain: history entries kept for the experiment (0 = all)
ARGV[8] the ApprovalRecord, JSON (from_state and config_version are the entry's 'from' and 'cv' fields); for
        a request, the request line '<by>\t<at µs>\t<reason>'
ARGV[9] idempotency intent ('' = no key)
ARGV[10] idempotency window, ms
ARGV[11] valid for, ms ('' = until consumed or lapsed): the approval stops satisfying its gate that long
        after now (server clock, TIME); kept as entry field vu and in the approvals of the move
ARGV[12] the rules version the call was decided under ('0' = the scope had published none)
ARGV[13] the client's steps into the target (lib/gates.lua), used while the scope has published no rules
ARGV[14] the client's gates of those steps, JSON ('' = none), used while nothing is published
ARGV[15] the approver, or the requester ('' = none)
Returns: {1, approval entry id ('' for a request), from state, valid until ms or '', config version, gate};
         a re-send {2, ...}; an idempotency replay {3, entry id, from state, approval record, valid until ms
         or '', config version, gate}. The gate is the name of the ManualGate guarding the move from the
         current state under the governing rules ('manual' when none does), kept as entry field g.
Errors: REDGOV_NOT_FOUND, REDGOV_RULES_CHANGED <current version>, REDGOV_INVALID_TRANSITION <no rule allows the
        move>, REDGOV_SEPARATION <the approver requested the move>, REDGOV_CORRUPT, REDGOV_DENIED. A refusal is
        remembered under the operation id like a success.
]]
-- @include lib/common.lua
-- @include lib/idem.lua
-- @include lib/history.lua
-- @include lib/retain.lua
-- @include lib/gates.lua
local op, expire, experiment, target, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local initial, retain, record, intent, window = ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10]
local valid_for, decided, client_steps, client_details, who = ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15]
local rules_key = KEYS[12]
local idem_key = nil
if intent ~= '' then idem_key = KEYS[13] end
local what = 'experiment ' .. experiment

local function main()
  local replay, err = hist().prior(op, idem_key, intent, what)
  if replay or err then return replay or err end

  local stored
  stored, err = read('HMGET', state_key, 's', 'v', 'pn')
  if err then return err end
  local current = stored[1]
  if not current then
    if initial == '' then return refuse('NOT_FOUND', what .. ' does not exist (create it first)') end
    current = initial
  elseif not is_state(current) then
    return util().bad_value(state_key, 's', current, 'a lifecycle state')
  end
  local version = stored[2] or '0'
  if not is_count(version) then return util().bad_value(state_key, 'v', version, 'a configuration version') end
  local steps, published
  steps, published, err = gates().governing(rules_key, decided, target, client_steps)
  if err then return err end
  local step_number = gates().step_of(steps, current)
  local doing = (mode == 'request') and 'requested' or (mode == 'approve' and 'approved' or 'rejected')
  if not step_number then
    return refuse('INVALID_TRANSITION', what .. ': ' .. current .. ' -> ' .. target
      .. ' is not allowed, so it cannot be ' .. doing)
  end
  local step = nil
  if step_number ~= '0' then
    local decoded = nil
    if client_details ~= '' then decoded = cjson.decode(client_details) end
    step, err = gates().details(rules_key, published, target, step_number, decoded)
    if err then return err end
  end
  local manual = step and step['manual']
  local gate_name = manual or 'manual'
  local list, request
  list, request, err = checks().pending(current, target) -- proves the fields before the first write
  if err then return err end
  if mode == 'approve' and manual and step['self'] ~= true and who ~= '' and request and request.by == who then
    return refuse('SEPARATION', what .. ': ' .. current .. ' -> ' .. target .. ': ' .. who .. ' requested this '
      .. 'move, so another person must approve it (' .. manual .. ' does not allow self-approval)')
  end
  local length
  length, err = read('LLEN', history_key)
  if err then return err end
  err = util().expect_all(log_key, 'stream', approvals_key, 'list', index_key, 'zset')
  if err then return err end
  local trim = nil
  if mode ~= 'request' then
    trim, err = retention().plan(retain, 1, length)
    if err then return err end
  end

  -- every check passed: write
  local id, valid_until = '', ''
  if mode == 'request' then
    redis.call('HSET', state_key, 'q:' .. current .. '>' .. target, record)
  else
    local fields = {'from', current, 'cv', version, 'g', gate_name}
    if valid_for ~= '' then
      local clock = redis.call('TIME')
      valid_until = string.format('%d', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
        + tonumber(valid_for))
      fields[#fields + 1], fields[#fields + 2] = 'vu', valid_until
    end
    id = hist().add_entry('A', experiment, record, fields)
    local field = 'p:' .. current .. '>' .. target
    if mode == 'approve' then -- one line per approver: a new approval by the same person replaces theirs
      local lines = {}
      for _, a in ipairs(list) do
        if a.approver == who and a.kept then
          redis.call('XDEL', log_key, a.id) -- replaced: retention kept it only while it was open
        elseif a.approver ~= who then
          lines[#lines + 1] = a.id .. '\t' .. a.approver .. '\t' .. a.until_ms .. '\t' .. a.version
            .. (a.kept and '\tk' or '')
        end
      end
      lines[#lines + 1] = id .. '\t' .. who .. '\t' .. valid_until .. '\t' .. version
      redis.call('HSET', state_key, field, table.concat(lines, '\n'))
    else -- a rejection closes the request ('' overrides a request for every move) and withdraws the approvals
      for _, a in ipairs(list) do
        if a.kept then redis.call('XDEL', log_key, a.id) end -- kept past the cut only while open
      end
      redis.call('HDEL', state_key, field)
      redis.call('HSET', state_key, 'q:' .. current .. '>' .. target, '')
    end
  end
  local listed = opened(stored[3], (mode == 'approve' and 'p:' or 'q:') .. current .. '>' .. target)
  if listed then redis.call('HSET', state_key, 'pn', listed) end -- the open fields, for a lapse
  hist().register(experiment)
  if trim then retention().apply(trim) end
  local reply = {1, id, current, valid_until, version, gate_name}
  op_done(op, reply, expire)
  if idem_key then idem().done(idem_key, intent, {1, id, current, record, valid_until, version, gate_name}, window) end
  return reply
end

return finish(op, main(), expire)
