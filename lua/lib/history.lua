-- history.lua: the standard keys of a per-experiment write, its re-send dedupe, and (hist(), made on
-- first use) adding entries to the experiment's history. Needs common.lua, and idem.lua before it where a
-- script takes idempotency keys.
-- Every per-experiment write script takes the experiment's standard keys first (keys.ExperimentKeys):
--   1 state  2 log  3 history  4 ops bucket  5 approvals  6 policies  7 versions  8 latest  9 base
--   10 links  11 index
-- A script may take only 1-4 on its lean path (the header says when); the others are then nil.
local state_key, log_key, history_key, ops_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local approvals_key, policies_key, versions_key, latest_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local base_key, links_key, index_key = KEYS[9], KEYS[10], KEYS[11]

local OPS_TTL_MS = 180000 -- a re-send is recognised for two minutes after its bucket's minute at least

-- op_seen: the first reply of this operation when it already ran (a re-send), as {2, parts...};
-- a refusal that was recorded comes back as its error reply. The record is written again (the same
-- value): a replicated write after the original, so a WAIT that follows the re-send also covers it.
local function op_seen(op)
  if op == '' then return nil, nil end
  local found = redis.pcall('HGET', ops_key, op)
  if not found then return nil, nil end
  if type(found) == 'table' then return nil, failed_on(ops_key, found['err']) end
  redis.call('HSET', ops_key, op, found)
  if string.sub(found, 1, 1) == '!' then return nil, redis.error_reply(string.sub(found, 2)) end
  local out = util().split(found, '\n')
  table.insert(out, 1, 2)
  return out, nil
end

-- op_done: remember reply (its parts after the status) as this operation's outcome; expire is '1' on
-- the first write of a process into this bucket (the bucket then gets its time to live)
local function op_done(op, reply, expire)
  if op == '' then return end
  redis.call('HSET', ops_key, op, table.concat(reply, '\n', 2))
  if expire == '1' then redis.call('PEXPIRE', ops_key, OPS_TTL_MS) end
end

local hist_made = nil
-- hist(): op_refused, kind_of, add_entry, and the index effects of an entry (index, link, register, and
-- for approvals pend, lapse, consume), which the write scripts and restore_index.lua share (made on
-- first use)
local function hist()
  if hist_made then return hist_made end
  local state_key, log_key, history_key, ops_key, approvals_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local policies_key, versions_key, latest_key, links_key, index_key = KEYS[6], KEYS[7], KEYS[8], KEYS[10], KEYS[11]
  local H = {}

  -- op_refused: remember a refusal that wrote something (its evaluations), so a re-send repeats it
  function H.op_refused(op, text)
    if op == '' then return end
    redis.call('HSET', ops_key, op, '!' .. text)
    redis.call('PEXPIRE', ops_key, OPS_TTL_MS)
  end

  -- prior: the first outcome when this call already ran: a re-send of its operation, or a repeat of its
  -- idempotency key (idem.lua); nil, nil for a new call
  function H.prior(op, idem_key, intent, what)
    local replay, err = op_seen(op)
    if replay or err or not idem_key then return replay, err end
    return idem().seen(idem_key, intent, what)
  end

  -- kind_of: the entry kind of a history code: S state snapshot, T transition that wrote the state,
  -- t transition (history only), A approval, V version that wrote the state, v version, P evaluation
  function H.kind_of(code)
    if code == 'T' or code == 't' then return 'transition' end
    if code == 'P' then return 'policy' end
    if code == 'A' then return 'approval' end
    if code == 'V' or code == 'v' then return 'version' end
    if code == 'S' then return 'state' end
    return nil
  end

  -- index: what every write does to the indexes for a new entry (restore_index.lua does the same for
  -- entries it restores): the experiment's history, its approvals or evaluations list, the latest
  -- evaluation of a policy (`detail`: the policy name), the versions by number (`detail`: the number)
  function H.index(code, entry, detail)
    redis.call('RPUSH', history_key, code .. entry)
    if code == 'A' then
      redis.call('RPUSH', approvals_key, entry)
    elseif code == 'P' then
      redis.call('RPUSH', policies_key, entry)
      if detail then redis.call('HSET', latest_key, detail, entry) end
    elseif code == 'V' or code == 'v' then
      redis.call('ZADD', versions_key, detail, entry)
    end
  end

  -- add_entry: XADD one record (with extra entry fields, a flat list) to the scope log and index it
  -- (see index); returns the entry id
  function H.add_entry(code, experiment, record, fields, detail)
    local entry = redis.call('XADD', log_key, '*', 'k', H.kind_of(code), 'x', experiment, 'r', record,
      unpack(fields))
    H.index(code, entry, detail)
    return entry
  end

  -- link: add approval entry ids to a transition's linked approvals (field t:<tid> of links)
  function H.link(transition_id, approval_ids)
    if #approval_ids == 0 then return end
    local field = 't:' .. transition_id
    local old = redis.call('HGET', links_key, field)
    local joined = table.concat(approval_ids, ' ')
    if old then joined = old .. ' ' .. joined end
    redis.call('HSET', links_key, field, joined)
  end

  -- register: the experiment's name in the scope index (a sorted set read by name, in pages)
  function H.register(experiment)
    redis.call('ZADD', index_key, 'NX', 0, experiment)
  end

  -- pend: approve.lua's effect on the pending approvals: an approval of the move from `from` to `to`
  -- records entry `id` as pending (the newest wins; '<id>|<valid until ms>' when it expires); a
  -- rejection withdraws a pending one
  function H.pend(from, to, id, approved, pending, valid_until)
    local field = 'p:' .. from .. '>' .. to
    if approved then
      if valid_until and valid_until ~= '' then id = id .. '|' .. valid_until end
      redis.call('HSET', state_key, field, id)
      if not pending then redis.call('HINCRBY', state_key, 'pn', 1) end
    elseif pending then
      redis.call('HDEL', state_key, field)
      redis.call('HINCRBY', state_key, 'pn', -1)
    end
  end

  -- lapse: transition.lua's effect when an experiment leaves state `from`: the approvals of moves out of
  -- it lapse (the consumed one was used)
  function H.lapse(from)
    local fields = {'pn'}
    for name in string.gmatch(STATE_NAMES, '%a+') do
      fields[#fields + 1] = 'p:' .. from .. '>' .. name
    end
    redis.call('HDEL', state_key, unpack(fields))
  end

  -- consume: transition.lua's effect when it uses a manual approval: the approval names its transition
  -- and the transition lists it (with the role-gate approvals it writes, linked after it)
  function H.consume(approval_id, transition_id)
    redis.call('HSET', links_key, 'a:' .. approval_id, transition_id)
  end

  hist_made = H
  return H
end
