--[[ transition: move one experiment to a new lifecycle state, atomically.
KEYS[1] state hash            {T}:x:<exp>:state
KEYS[2] scope log             {T}:log
KEYS[3] state-write ids       {T}:x:<exp>:states
KEYS[4] transition ids        {T}:x:<exp>:transitions
KEYS[5] transition index      {T}:tid
KEYS[6] scope index           {T}:index (experiment -> state)
KEYS[7] approval ids          {T}:x:<exp>:approvals
KEYS[8] pending approvals     {T}:x:<exp>:pending ('<from>><to>' -> approval entry id)
KEYS[9] approval links        {T}:x:<exp>:links (approval entry id -> transition id)
KEYS[10] policy eval ids      {T}:x:<exp>:policies
KEYS[11] latest per policy    {T}:x:<exp>:policy
KEYS[12] this transition's approvals  {T}:tr:<transition id>:approvals
KEYS[13..] idempotency key    {T}:x:<exp>:idem:<key> -> '<target>|<entry id>' (only when the caller gave one)
ARGV[1] experiment name
ARGV[2] target state
ARGV[3] initial state (the current state when none is stored)
ARGV[4] expected etag ('' = any)
ARGV[5] new etag
ARGV[6] now, epoch microseconds
ARGV[7] actor ('' = none)
ARGV[8] transition id
ARGV[9] idempotency window, ms
ARGV[10] plan, JSON: {from = {<state> = {deny?, manual?, approvals = list of i}}, policies = list of {i, name},
         groups = [{name, others = [exp], ok = i, fail = i}]}; i indexes ARGV[11..]
ARGV[11..] records, JSON: [11] the StateTransition (from_state is the entry's 'from' field), then
         the approval and policy records the plan refers to
Returns: {revision, transition entry id, from state}, or {0, entry id, {entry fields}} replaying the
         transition an idempotency key already made
Errors: REDGOV_CONFLICT, REDGOV_INVALID_TRANSITION, REDGOV_APPROVAL_REQUIRED,
        REDGOV_POLICY_VIOLATION <failed group indexes> <current state> <detail> (every evaluation of the
        attempt is recorded), REDGOV_CORRUPT
]]
-- @include lib/guard.lua
-- @include lib/records.lua
local state_key, log_key, writes_key, transitions_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tid_key, index_key, approvals_key, pending_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local links_key, policies_key, policy_latest_key, linked_key = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local idem_key = KEYS[13]
local experiment, target, initial, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local etag, now, actor, transition_id = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local idem_window, plan = ARGV[9], cjson.decode(ARGV[10])
local records_at = 11 -- ARGV[11 + i] is record i (0 = the transition)

local bad = expect_types({state_key, 'hash', log_key, 'stream', writes_key, 'list', transitions_key, 'list',
  tid_key, 'hash', index_key, 'hash', approvals_key, 'list', pending_key, 'hash', links_key, 'hash',
  policies_key, 'list', policy_latest_key, 'hash', linked_key, 'list'})
if bad then return redis.error_reply(bad) end

if idem_key then
  local seen = redis.call('GET', idem_key)
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

local stored = redis.call('HMGET', state_key, 's', 'e')
local current, current_etag = stored[1] or initial, stored[2]
if expected ~= '' and current_etag ~= expected then
  return redis.error_reply('REDGOV_CONFLICT experiment ' .. experiment .. ': expected etag ' .. expected
    .. ', found ' .. (current_etag or 'none (no state)'))
end
if redis.call('HEXISTS', tid_key, transition_id) == 1 then
  return redis.error_reply('REDGOV_CONFLICT transition ' .. transition_id .. ' is already recorded')
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
  approval_id = redis.call('HGET', pending_key, pending_field)
  if not approval_id then
    return redis.error_reply('REDGOV_APPROVAL_REQUIRED experiment ' .. experiment .. ': ' .. current .. ' -> '
      .. target .. ' needs a recorded manual approval (' .. step['manual'] .. ')')
  end
end

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
    local states = redis.call('HMGET', index_key, unpack(group['others']))
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
redis.call('HSET', state_key, 's', target, 't', now, 'e', etag)
redis.call('HSETNX', state_key, 'v', '0')
redis.call('HSETNX', state_key, 'm', '{}')
if actor == '' then
  redis.call('HDEL', state_key, 'b')
else
  redis.call('HSET', state_key, 'b', actor)
end
redis.call('HSET', index_key, experiment, target)

local transition_fields = {'from', current, 'rev', revision, 'etag', etag}
if approval_id then
  transition_fields[7], transition_fields[8] = 'ap', approval_id -- the approval it consumed
end
local id = add_entry(log_key, transitions_key, 'transition', experiment, ARGV[records_at], transition_fields)
redis.call('RPUSH', writes_key, id)
redis.call('HSET', tid_key, transition_id, id)

if approval_id then
  redis.call('HDEL', pending_key, pending_field)
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
