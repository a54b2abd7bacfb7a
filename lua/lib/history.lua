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

-- ops_expire: give the ops bucket its time to live: `expire` '1' when the client made it this minute,
-- and whenever it has none (a bucket deleted and made again within its minute, by a restore or by hand,
-- would otherwise never expire)
local function ops_expire(expire)
  if expire == '1' or redis.call('PTTL', ops_key) == -1 then redis.call('PEXPIRE', ops_key, OPS_TTL_MS) end
end

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

-- op_done: remember reply (its parts after the status) as this operation's outcome
local function op_done(op, reply, expire)
  if op == '' then return end
  redis.call('HSET', ops_key, op, table.concat(reply, '\n', 2))
  ops_expire(expire)
end

-- finish: what every write script returns through: a governance refusal is remembered under the
-- operation id like a success (a re-send gets the same answer, even when time or other writes would
-- decide it differently now). Not remembered: a damaged key or an ACL refusal (nothing was decided),
-- and a RULES_CHANGED refusal (the client decides again under the new rules, as a new operation).
local function finish(op, result, expire)
  if op == '' or type(result) ~= 'table' or not result['err'] then return result end
  local text = result['err']
  local code = string.match(text, '^REDGOV_([A-Z_]+)')
  if code and code ~= 'CORRUPT' and code ~= 'DENIED' and code ~= 'RULES_CHANGED' then
    local stored = redis.pcall('HSET', ops_key, op, '!' .. text)
    if type(stored) ~= 'table' then ops_expire(expire) end
  end
  return result
end

-- pending fields of the state hash (see keys.py): approvals of a move 'p:<from>><to>', one line each
-- '<entry id>\t<approver>\t<valid until ms or empty>\t<config version>'; requests 'q:<from>><to>' or
-- 'q:<from>>*' (every move out of <from>: entering PendingApproval) as '<by>\t<at µs>\t<reason>', '' = a
-- request closed by a rejection; 'lv' the configuration version whose approvals a new version lapsed
-- (named in the refusal); 'pn' lists the open fields after a flag, '<1|2> <field> <field>...' (2:
-- retention kept an open approval's log entry past the cut), so a lapse deletes exactly them.

-- opened: pn with `field` listed (pn: its stored value or nil), or nil when it is listed already
local function opened(pn, field)
  if not pn or not string.find(pn, ' ', 1, true) then return '1 ' .. field end -- none yet (or older data)
  if string.find(pn .. ' ', ' ' .. field .. ' ', 1, true) then return nil end
  return pn .. ' ' .. field
end

-- lapse: every open approval and request of moves out of state `from` ends (the experiment left it,
-- its state was overwritten or restored, or its configuration changed); `version`: the configuration
-- version the approvals were given for, when a new version lapses them (else the note is cleared).
-- `pending` is the stored pn (see above); a log entry that retention kept for an open approval (its
-- line ends in '\tk', lib/retain.lua) leaves the log now, unless `keep` (entry id -> true: the
-- approvals a transition consumes, linked to it) holds it.
local function lapse(from, version, keep, pending)
  local fields = {'pn'}
  for name in string.gmatch(pending, '%S+') do
    if #fields > 1 or string.find(name, ':', 1, true) then fields[#fields + 1] = name end
  end
  if #fields == 1 then -- older data (a count, no names): every field a move out of `from` may have
    fields[2] = 'q:' .. from .. '>*'
    for name in string.gmatch(STATE_NAMES, '%a+') do
      fields[#fields + 1] = 'p:' .. from .. '>' .. name
      fields[#fields + 1] = 'q:' .. from .. '>' .. name
    end
  end
  if string.sub(pending, 1, 1) == '2' then
    local held = redis.call('HMGET', state_key, unpack(fields))
    for i = 2, #fields do
      if held[i] and string.sub(fields[i], 1, 2) == 'p:' then
        for id in string.gmatch(held[i], '([^\t\n]+)\t[^\t\n]*\t[^\t\n]*\t[^\t\n]*\tk') do
          if not (keep and keep[id]) then redis.call('XDEL', log_key, id) end
        end
      end
    end
  end
  if version then
    redis.call('HSET', state_key, 'lv', version)
  else
    fields[#fields + 1] = 'lv'
  end
  redis.call('HDEL', state_key, unpack(fields))
end

-- enter: the one way an experiment's state field changes (transition, save_state, create, restore): the
-- approvals and requests of the state left lapse (`pending`: the stored pn, nil = none; `keep`: the
-- approvals the move consumes, see lapse) and the entry times join `fields`, the state write's HSET
-- arguments (the caller sends them in one call): es when it entered its state, rs when it last entered
-- Running or Ramping
local function enter(fields, from, to, now, pending, keep)
  if pending and from then lapse(from, nil, keep, pending) end
  fields[#fields + 1], fields[#fields + 2] = 'es', now
  if (to == 'Running' or to == 'Ramping') and from ~= 'Running' and from ~= 'Ramping' then
    fields[#fields + 1], fields[#fields + 2] = 'rs', now
  end
  return fields
end

local hist_made = nil
-- hist(): prior, kind_of, add_entry, and the index effects of an entry (index, link, register, consume),
-- which the write scripts and restore_index.lua share (made on first use)
local function hist()
  if hist_made then return hist_made end
  local state_key, log_key, history_key, ops_key, approvals_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local policies_key, versions_key, latest_key, links_key, index_key = KEYS[6], KEYS[7], KEYS[8], KEYS[10], KEYS[11]
  local H = {}

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

  -- consume: transition.lua's effect when it uses a manual approval: the approval names its transition
  -- and the transition lists it (with the role-gate approvals it writes, linked after it)
  function H.consume(approval_id, transition_id)
    redis.call('HSET', links_key, 'a:' .. approval_id, transition_id)
  end

  hist_made = H
  return H
end
