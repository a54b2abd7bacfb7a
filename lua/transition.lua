--[[ transition: move one experiment to a new lifecycle state, atomically.
KEYS[1..4] standard keys (lib/common.lua): state, log, history, ops bucket
KEYS[5..] without a plan: the scope's rules hash {T}:rules. With a plan: standard keys 5-11, the rules hash
        (KEYS[12]), then the idempotency record {T}:i:<exp>:<key> (plan.idem: KEYS[13]), the state hashes
        of the other experiments of the conflict groups (plan.groups) and the experiment's lease
        {T}:k:<exp> (plan.lease)
ARGV[1] operation id (the same on every re-send of this call; '' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set (it also gets it whenever it has none)
ARGV[3] experiment name
ARGV[4] target state
ARGV[5] expected etag ('' = any)
ARGV[6] new etag
ARGV[7] now, epoch microseconds
ARGV[8] actor ('' = none)
ARGV[9] the rules version the call was decided under ('0' = the scope had published none)
ARGV[10] the client's steps into the target (lib/gates.lua), used while the scope has published no rules
ARGV[11] plan, JSON ('' = none): retain (history kept, 0 = all), initial (state of an experiment not
        created yet, absent = it must exist), details (the client's gates of the steps, lib/gates.lua;
        used while nothing is published), roles ('|role|...|', the actor's roles for role gates), ra
        (role gate name -> the number of the approval record it writes when it approves), req (the
        number of the request line '<by>\t<at µs>\t<reason>' that entering PendingApproval records),
        policies: list of (i, policy name) pairs (evaluations decided in Python), groups: the policies
        decided here, each {name, ok: i, fail: i, soft?: 1 when a failure only records, and either others:
        list of (experiment, key number) pairs (conflict prevention: none of them may be Running or
        Ramping) or since: epoch µs, why: text (a stable time: the experiment must have been Running or
        Ramping since at most then; field rs of its state, else t)}, tid (transition id), idem (the
        idempotency record is KEYS[13]), intent, window (ms), lease: (token, key number) (refuse unless the
        experiment's lease holds that fencing token)
ARGV[12] the StateTransition record, JSON (from_state, revision and etag are entry fields)
ARGV[13..] the approval, evaluation and request records the plan names by number (record i is ARGV[12 + i])
Returns: {1, revision, entry id, from state}; a re-send {2, ...the same}; an idempotency replay
         {3, revision, entry id, from state, etag, transition record}, or {4, policy refusal, the
         evaluation records it wrote...} when the key's first call was refused by a policy
Errors: REDGOV_NOT_FOUND, REDGOV_LEASE, REDGOV_CONFLICT (an etag conflict names the current etag and state),
        REDGOV_RULES_CHANGED <current version>, REDGOV_INVALID_TRANSITION, REDGOV_APPROVAL_REQUIRED,
        REDGOV_SEPARATION, REDGOV_POLICY_VIOLATION <failed group numbers, 0-based> <current state> <detail>
        (the evaluations are recorded), REDGOV_CORRUPT, REDGOV_DENIED. A refusal is remembered under the
        operation id like a success (lib/history.lua finish).
State hash fields rs: when the experiment last entered Running or Ramping (epoch µs; read only while it is in
them); es: when it entered its current state (epoch µs; an AutomaticGate with after waits from there).
]]
-- @include lib/common.lua
-- @include lib/idem.lua
-- @include lib/history.lua
-- @include lib/retain.lua
-- @include lib/gates.lua
local op, expire, experiment, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expected, etag, now, actor, decided = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local client_steps, plan_json, record = ARGV[10], ARGV[11], ARGV[12]
local RECORDS = 12 -- record i is ARGV[RECORDS + i]
local what = 'experiment ' .. experiment -- (Lua interns short strings: this costs next to nothing)

local function main()
  -- a re-send, or a key used before: the first outcome, nothing written
  local replay, err = op_seen(op)
  if replay or err then return replay or err end
  -- the lean path (no plan) allocates no table of its own: each costs time on every call
  local plan, idem_key, rules_key = nil, nil, KEYS[5]
  if plan_json ~= '' then
    plan = cjson.decode(plan_json)
    rules_key = KEYS[12]
    if plan['idem'] then
      idem_key = KEYS[13]
      replay, err = idem().seen(idem_key, plan['intent'], what)
      if replay or err then return replay or err end
    end
  end

  -- reads (each proves its key's type: redis.pcall, inlined on this hot path) and checks, before any write
  local stored = redis.pcall('HMGET', state_key, 's', 'e', 'b', 'r', 'pn', 'v')
  if stored['err'] then return failed_on(state_key, stored['err']) end
  local current = stored[1]
  if not current then
    if not (plan and plan['initial']) then return refuse('NOT_FOUND', what .. ' does not exist (create it first)') end
    current = plan['initial']
    err = util().expect(index_key, 'zset') -- registered below: its type is proved before the first write
    if err then return err end
  end
  local revision = tonumber(stored[4] or '0')
  if not revision or revision < 0 or revision % 1 ~= 0 or revision > 9007199254740992 then
    return util().bad_value(state_key, 'r', stored[4], 'a revision')
  end
  revision = revision + 1
  if plan and plan['lease'] then
    err = util().fenced(KEYS[plan['lease'][2]], plan['lease'][1], what)
    if err then return err end
  end
  if expected ~= '' and stored[2] ~= expected then
    return refuse('CONFLICT', what .. ': expected etag ' .. expected .. ', found ' .. (stored[2] or 'none')
      .. ' (' .. (stored[1] or 'no state') .. ')')
  end
  -- the rules: the published ones when the scope has them, judged here whatever the client sent
  local steps, published
  steps, published, err = gates().governing(rules_key, decided, target, client_steps)
  if err then return err end
  local step_number = gates().step_of(steps, current)
  if not step_number then
    if not is_state(current) then return util().bad_value(state_key, 's', current, 'a lifecycle state') end
    return refuse('INVALID_TRANSITION', what .. ': ' .. current .. ' -> ' .. target .. ' is not allowed')
  end
  local step = nil
  if step_number ~= '0' then
    if not plan then return refuse('CORRUPT', what .. ': a gated move was sent without its plan') end
    step, err = gates().details(rules_key, published, target, step_number, plan['details'])
    if err then return err end
  end
  local role_approvals = nil
  if step and step['roles'] then
    local denied
    role_approvals, denied = checks().roles(step['roles'], plan['roles'] or '', plan['ra'])
    if denied then return refuse('APPROVAL_REQUIRED', what .. ': ' .. current .. ' -> ' .. target .. ': ' .. denied) end
    if #role_approvals == 0 then role_approvals = nil end
  end
  if step and step['after'] then -- an AutomaticGate with after: the experiment must have waited in its state
    local span, gate, wait = step['after'][1], step['after'][2], step['after'][3]
    local times
    times, err = read('HMGET', state_key, 'es', 't')
    if err then return err end
    local entered = times[1] or times[2] or now -- no es (older data, a restore): the last state write
    if not string.match(entered, '^%d+$') then
      return util().bad_value(state_key, times[1] and 'es' or 't', entered, 'a time in µs')
    end
    if tonumber(entered) > tonumber(now) - span then
      return refuse('APPROVAL_REQUIRED', what .. ': ' .. current .. ' -> ' .. target .. ': ' .. gate
        .. ' approves it once the experiment has been ' .. current .. ' for ' .. wait .. '; allowed from @us:'
        .. string.format('%d', tonumber(entered) + span))
    end
  end
  local consumed = nil
  if step and step['manual'] then
    consumed, err = checks().manual(what, current, target, step, actor)
    if err then return err end
  end
  local policies, groups = plan and plan['policies'], plan and plan['groups']
  if policies and #policies == 0 then policies = nil end
  if groups and #groups == 0 then groups = nil end
  if role_approvals then
    err = util().expect_all(approvals_key, 'list', links_key, 'hash')
    if err then return err end
  elseif consumed then
    err = util().expect(links_key, 'hash')
    if err then return err end
  end
  if policies or groups then
    err = util().expect_all(policies_key, 'list', latest_key, 'hash')
    if err then return err end
  end

  local running = current == 'Running' or current == 'Ramping'
  -- the policies decided on stored state: conflict groups (the other experiments' states), stable times
  local group_results, failed, detail = nil, nil, nil
  if groups then
    group_results, failed = {}, {}
    for g, group in ipairs(groups) do
      local bad = nil
      if group['since'] then
        local times
        times, err = read('HMGET', state_key, 'rs', 't')
        if err then return err end
        local field = times[1] and 'rs' or 't' -- no rs (a restored state): the last state write
        local since = times[1] or times[2]
        if since and not tonumber(since) then return util().bad_value(state_key, field, since, 'a time') end
        if not running or not since or tonumber(since) > group['since'] then bad = group['why'] end
      else
        for _, other in ipairs(group['others']) do
          local other_state
          other_state, err = read('HGET', KEYS[other[2]], 's')
          if err then return err end
          if not bad and (other_state == 'Running' or other_state == 'Ramping') then
            bad = 'conflicting experiment ' .. other[1] .. ' is ' .. other_state
          end
        end
      end
      if bad then
        failed[#failed + 1] = g - 1
        group_results[g] = {group['fail'], group['name']}
        if not group['soft'] then detail = detail or (group['name'] .. ': ' .. bad) end
      else
        group_results[g] = {group['ok'], group['name']}
      end
    end
    if not detail then failed = nil end -- only soft failures: recorded, the move goes ahead
  end
  local trim = nil
  local length = redis.pcall('LLEN', history_key) -- proves the history's type before the first write
  if type(length) == 'table' then return failed_on(history_key, length['err']) end
  if plan and (plan['retain'] or 0) > 0 then
    local adding = 1 + (role_approvals and #role_approvals or 0)
    if failed then adding = 0 end
    adding = adding + (policies and #policies or 0) + (groups and #groups or 0)
    trim, err = retention().plan(plan['retain'], adding, length)
    if err then return err end
  end

  -- every check passed: write
  local write_policies = nil
  if policies or groups then
    write_policies = function(pairs_list)
      if not pairs_list then return end
      for _, pair in ipairs(pairs_list) do
        hist().add_entry('P', experiment, ARGV[RECORDS + pair[1]], {'from', current}, pair[2])
      end
    end
  end
  if failed then
    -- refused: the evaluations are kept for audit; state, history and approvals are untouched
    err = util().expect_all(log_key, 'stream')
    if err then return err end
    write_policies(policies)
    write_policies(group_results)
    if trim then retention().apply(trim) end
    local text = 'REDGOV_POLICY_VIOLATION ' .. table.concat(failed, ',') .. ' ' .. current .. ' ' .. what .. ': '
      .. detail
    if idem_key then
      local written = {}
      for _, pair in ipairs(policies or {}) do written[#written + 1] = ARGV[RECORDS + pair[1]] end
      for _, pair in ipairs(group_results) do written[#written + 1] = ARGV[RECORDS + pair[1]] end
      idem().refused(idem_key, plan['intent'], text, plan['window'], written)
    end
    return redis.error_reply(text)
  end

  local id
  if consumed then -- the transition names the manual approvals it consumed
    id = redis.pcall('XADD', log_key, '*', 'k', 'transition', 'x', experiment, 'r', record,
      'from', current, 'rev', revision, 'etag', etag, 'ap', table.concat(consumed, ' '))
  else
    id = redis.pcall('XADD', log_key, '*', 'k', 'transition', 'x', experiment, 'r', record,
      'from', current, 'rev', revision, 'etag', etag)
  end
  if type(id) == 'table' then return failed_on(log_key, id['err']) end -- the first write: nothing was written
  redis.call('RPUSH', history_key, 'T' .. id)
  -- approvals and requests are for moves out of the state being left: the used ones are consumed, the
  -- others lapse (enter); one HSET writes the state with its entry times
  local keep = nil
  if consumed then
    keep = {}
    for _, approval_id in ipairs(consumed) do keep[approval_id] = true end
  end
  if actor == '' then
    redis.call('HSET', state_key, unpack(enter({'s', target, 't', now, 'e', etag, 'r', revision}, current, target,
      now, stored[5], keep)))
    if stored[3] then redis.call('HDEL', state_key, 'b') end
  else
    redis.call('HSET', state_key, unpack(enter({'s', target, 't', now, 'e', etag, 'r', revision, 'b', actor},
      current, target, now, stored[5], keep)))
  end
  if not stored[1] then
    redis.call('HSET', state_key, 'v', '0', 'm', '{}')
    hist().register(experiment)
  end
  if plan and plan['req'] then -- entering PendingApproval: the request for every move out of it
    redis.call('HSET', state_key, 'q:' .. target .. '>*', ARGV[RECORDS + plan['req']], 'pn', '1 q:' .. target .. '>*')
  end
  if consumed or role_approvals then
    local linked = {}
    for _, approval_id in ipairs(consumed or {}) do
      hist().consume(approval_id, plan['tid'])
      linked[#linked + 1] = approval_id
    end
    for _, i in ipairs(role_approvals or {}) do
      linked[#linked + 1] = hist().add_entry('A', experiment, ARGV[RECORDS + i], {'from', current, 'cv', stored[6] or '0'})
    end
    hist().link(plan['tid'], linked)
  end
  if write_policies then
    write_policies(policies)
    write_policies(group_results)
  end
  if trim then retention().apply(trim) end

  if op ~= '' then -- op_done, inlined
    redis.call('HSET', ops_key, op, revision .. '\n' .. id .. '\n' .. current)
    ops_expire(expire)
  end
  if idem_key then
    idem().done(idem_key, plan['intent'], {1, revision, id, current, etag, record}, plan['window'])
  end
  return {1, revision, id, current}
end

return finish(op, main(), expire)
