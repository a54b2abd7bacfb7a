--[[ transition: move one experiment to a new lifecycle state, atomically.
KEYS[1] experiment base  {T}:x:<exp>; the script uses <base>:state, :states, :transitions, :approvals,
        :pending, :links, :policies, :policy and :idem:<ARGV[10]>
KEYS[2] scope tag        {T}; the script uses <tag>:log, :tid, :index and :tr:<ARGV[8]>:approvals
ARGV[1] experiment name
ARGV[2] target state
ARGV[3] initial state (the current state when none is stored)
ARGV[4] expected etag ('' = any)
ARGV[5] new etag
ARGV[6] now, epoch microseconds
ARGV[7] actor ('' = none)
ARGV[8] transition id (key-safe; new: Governance makes it from a uuid4, so it is not checked for reuse)
ARGV[9] idempotency window, ms
ARGV[10] idempotency key, key-encoded ('' = none); its key holds '<target>|<entry id>'
ARGV[11] plan, JSON: {from = {<state> = {deny?, manual?, approvals = list of i}}, policies = list of {i, name},
         groups = list of {name, others = list of experiments, ok = i, fail = i}}; i indexes ARGV[12..]
ARGV[12..] records, JSON: [12] the StateTransition (from_state is the entry's 'from' field), then
         the approval and policy records the plan refers to
Returns: {revision, transition entry id, from state}, or {0, entry id, {entry fields}} replaying the
         transition an idempotency key already made
Errors: REDGOV_CONFLICT, REDGOV_INVALID_TRANSITION, REDGOV_APPROVAL_REQUIRED,
        REDGOV_POLICY_VIOLATION <failed group indexes> <current state> <detail> (every evaluation of the
        attempt is recorded), REDGOV_CORRUPT
]]
-- @include lib/guard.lua
-- @include lib/records.lua
local base, tag = KEYS[1], KEYS[2]
local state_key, writes_key, transitions_key = base .. ':state', base .. ':states', base .. ':transitions'
local approvals_key, pending_key, links_key = base .. ':approvals', base .. ':pending', base .. ':links'
local policies_key, policy_latest_key = base .. ':policies', base .. ':policy'
local log_key, tid_key, index_key = tag .. ':log', tag .. ':tid', tag .. ':index'
local experiment, target, initial, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local etag, now, actor, transition_id = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local idem_window, idem, plan = ARGV[9], ARGV[10], cjson.decode(ARGV[11])
local linked_key = tag .. ':tr:' .. transition_id .. ':approvals'
local idem_key = nil
if idem ~= '' then idem_key = base .. ':idem:' .. idem end
local records_at = 12 -- ARGV[12 + i] is record i (0 = the transition)

if idem_key then
  local seen, corrupt = read('GET', idem_key)
  if corrupt then return redis.error_reply(corrupt) end
  if seen then
    local bar = string.find(seen, '|', 1, true)
    local seen_target, seen_id = string.sub(seen, 1, bar - 1), string.sub(seen, bar + 1)
    if seen_target ~= target then
      return redis.error_reply('REDGOV_CONFLICT experiment ' .. experiment .. ': the idempotency key was used for a '
        .. 'move to ' .. seen_target .. ', not ' .. target)
    end
    local first = redis.call('XRANGE', log_key, seen_id, seen_id)[1]
    if first then
      return {0, seen_id, first[2]}
    end
  end
end

-- reads (each also checks its key's type) come before any write
local stored, corrupt = read('HMGET', state_key, 's', 'e', 'b')
if corrupt then return redis.error_reply(corrupt) end
local current, current_etag = stored[1] or initial, stored[2]
if expected ~= '' and current_etag ~= expected then
  return redis.error_reply('REDGOV_CONFLICT experiment ' .. experiment .. ': expected etag ' .. expected
    .. ', found ' .. (current_etag or 'none (no state)'))
end

local step = plan['from'][current]
if not step then
  return redis.error_reply('REDGOV_INVALID_TRANSITION experiment ' .. experiment .. ': ' .. current .. ' -> '
    .. target .. ' is not allowed')
end
if step['deny'] then
  return redis.error_reply('REDGOV_APPROVAL_REQUIRED experiment ' .. experiment .. ': ' .. current .. ' -> '
    .. target .. ': ' .. step['deny'])
end
local pending_field = current .. '>' .. target
local approval_id = nil
if step['manual'] then
  local found, corrupt = read('HGET', pending_key, pending_field)
  if corrupt then return redis.error_reply(corrupt) end
  approval_id = found
  if not approval_id then
    return redis.error_reply('REDGOV_APPROVAL_REQUIRED experiment ' .. experiment .. ': ' .. current .. ' -> '
      .. target .. ' needs a recorded manual approval (' .. step['manual'] .. ')')
  end
end

-- the keys written below that no read above has type-checked
local has_policies = #plan['policies'] > 0 or #plan['groups'] > 0
local spec = {log_key, 'stream', writes_key, 'list', transitions_key, 'list', index_key, 'hash', tid_key, 'hash'}
if has_policies then
  spec[#spec + 1], spec[#spec + 2], spec[#spec + 3], spec[#spec + 4] = policies_key, 'list', policy_latest_key, 'hash'
end
if approval_id or #step['approvals'] > 0 then
  spec[#spec + 1], spec[#spec + 2], spec[#spec + 3], spec[#spec + 4] = links_key, 'hash', linked_key, 'list'
  spec[#spec + 1], spec[#spec + 2] = approvals_key, 'list'
end
local bad = expect_types(spec)
if bad then return redis.error_reply(bad) end

local from_field = {'from', current}
local function write_policies(pairs)
  for _, pair in ipairs(pairs) do
    local evaluation = add_entry(log_key, policies_key, 'policy', experiment, ARGV[records_at + pair[1]], from_field)
    redis.call('HSET', policy_latest_key, pair[2], evaluation)
  end
end
local group_results, failed, detail = {}, {}, nil
for g, group in ipairs(plan['groups']) do
  local busy = nil
  if #group['others'] > 0 then
    local states, corrupt = read('HMGET', index_key, unpack(group['others']))
    if corrupt then return redis.error_reply(corrupt) end
    for i, other in ipairs(group['others']) do
      if not busy and (states[i] == 'Running' or states[i] == 'Ramping') then
        busy = other .. ' is ' .. states[i]
      end
    end
  end
  if busy then
    failed[#failed + 1] = g - 1
    group_results[g] = {group['fail'], group['name']}
    detail = detail or (group['name'] .. ': conflicting experiment ' .. busy)
  else
    group_results[g] = {group['ok'], group['name']}
  end
end
if #failed > 0 then
  -- refused: the evaluations are kept for audit; state, history and approvals are untouched
  write_policies(plan['policies'])
  write_policies(group_results)
  return redis.error_reply('REDGOV_POLICY_VIOLATION ' .. table.concat(failed, ',') .. ' ' .. current
    .. ' experiment ' .. experiment .. ': ' .. detail)
end

-- every check passed: write
local revision = redis.call('HINCRBY', state_key, 'r', 1)
if actor == '' then
  redis.call('HSET', state_key, 's', target, 't', now, 'e', etag)
  if stored[3] then redis.call('HDEL', state_key, 'b') end
else
  redis.call('HSET', state_key, 's', target, 't', now, 'e', etag, 'b', actor)
end
if not stored[1] then
  redis.call('HSET', state_key, 'v', '0', 'm', '{}')
end
redis.call('HSET', index_key, experiment, target)

local transition_fields = {'from', current, 'rev', revision, 'etag', etag}
if approval_id then
  transition_fields[7], transition_fields[8] = 'ap', approval_id -- the approval it consumed
end
local id = add_entry(log_key, transitions_key, 'transition', experiment, ARGV[records_at], transition_fields)
redis.call('RPUSH', writes_key, id)
redis.call('HSET', tid_key, transition_id, id)

-- approvals are given for moves out of the state being left: the used one is consumed, the others lapse
redis.call('DEL', pending_key)
if approval_id then
  redis.call('HSET', links_key, approval_id, transition_id)
  redis.call('RPUSH', linked_key, approval_id)
end
for _, i in ipairs(step['approvals']) do
  local approval = add_entry(log_key, approvals_key, 'approval', experiment, ARGV[records_at + i], from_field)
  redis.call('RPUSH', linked_key, approval)
end
write_policies(plan['policies'])
write_policies(group_results)
if idem_key then
  redis.call('SET', idem_key, target .. '|' .. id, 'PX', idem_window)
end
return {revision, id, current}
