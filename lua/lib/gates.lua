-- gates.lua: the rules a write is judged by, and the gates of one move judged from them. Needs common.lua
-- and history.lua.
--
-- A scope that published rules keeps them in its rules hash (keys.py, govrules.py): 'n' the current
-- version, 's:<target>' the steps into <target> ('|<source>:<n>|...': the states the rules allow into
-- it, n > 0 naming a step with gates) and 'd:<target>' the steps' gates, JSON {"<n>": {manual?, need,
-- self, roles?: [[gate, '|role|...|', 'role, ...'], ...], after?: [span µs, gate, wait text]}}. A write
-- carries the version it was decided under ('0': none published) and the client's own steps and gates
-- for the target, used only while the scope has published nothing. A write decided under another
-- version is refused (RULES_CHANGED <current version>): the client reads the new rules and decides again.

local gates_made = nil
local function gates()
  if gates_made then return gates_made end
  local state_key = KEYS[1]
  local G = {}

  local function changed(current, decided)
    return refuse('RULES_CHANGED', current .. ' the rules of this scope are at version ' .. current
      .. '; the write was decided under version ' .. decided .. ' (nothing was written)')
  end

  -- governing: the steps into `target` the write is judged by, and whether they are the published ones;
  -- or an error reply (RULES_CHANGED, CORRUPT)
  function G.governing(rules_key, decided, target, client_steps)
    local found = redis.pcall('HMGET', rules_key, 'n', 's:' .. target)
    if found['err'] then return nil, nil, failed_on(rules_key, found['err']) end
    local current = found[1] or '0'
    if current ~= decided then return nil, nil, changed(current, decided) end
    if current == '0' then return client_steps, false, nil end
    return found[2] or '|', true, nil
  end

  -- version: refuse (RULES_CHANGED) unless the scope's rules are still at version `decided`
  function G.version(rules_key, decided)
    local found, err = read('HGET', rules_key, 'n')
    if err then return err end
    if (found or '0') ~= decided then return changed(found or '0', decided) end
    return nil
  end

  -- details: the gates of step `number` into `target` (published: read from the rules hash)
  function G.details(rules_key, published, target, number, client_details)
    if not published then return client_details and client_details[number], nil end
    local raw, err = read('HGET', rules_key, 'd:' .. target)
    if err then return nil, err end
    if not raw then return nil, nil end
    local ok, decoded = pcall(cjson.decode, raw)
    if not ok or type(decoded) ~= 'table' then
      return nil, util().bad_value(rules_key, 'd:' .. target, raw, 'the gates of the moves into ' .. target)
    end
    return decoded[number], nil
  end

  -- step_of: where `current` stands in `steps`: the step number ('0': no gates), or nil when the rules do
  -- not allow the move
  function G.step_of(steps, current)
    local at = string.find(steps, '|' .. current .. ':', 1, true) -- a plain find: no pattern made from data
    if not at then return nil end
    return string.match(steps, '^%d+', at + #current + 2)
  end

  gates_made = G
  return G
end

local checks_made = nil
-- checks(): judging the gates of one step: roles, the open approvals and request of a move, a ManualGate
-- (made on first use, only by writes whose step has gates)
local function checks()
  if checks_made then return checks_made end
  local state_key = KEYS[1]
  local G = {}

  -- roles: the role gates of a step judged on the actor's roles ('|role|...|'): the record numbers of the
  -- approvals they write (`records`: gate name -> record number, sent by the client), or the denial text
  function G.roles(step_roles, actor_roles, records)
    local granted = {}
    for _, gate in ipairs(step_roles) do
      local matched = nil
      for role in string.gmatch(actor_roles, '[^|]+') do
        if string.find(gate[2], '|' .. role .. '|', 1, true) then matched = role break end
      end
      if not matched then
        if actor_roles == '' then
          return nil, gate[1] .. ': no actorRole given; one of ' .. gate[3] .. ' is required'
        end
        local shown = string.gsub(string.sub(actor_roles, 2, -2), '|', "', '")
        return nil, gate[1] .. ": actor role '" .. shown .. "' is not one of " .. gate[3]
      end
      local number = records and records[gate[1]]
      if not number then return nil, gate[1] .. ': no approval record was sent for it' end
      granted[#granted + 1] = number
    end
    return granted, nil
  end

  -- parse_request: {by, at, reason} of a request field's value (`specific` for the move, else `any` for
  -- every move out of the state); nil when nobody asked or a rejection closed it
  local function parse_request(specific, any, current, target)
    local raw = specific or any
    if not raw or raw == '' then return nil, nil end
    local by, at, reason = string.match(raw, '^([^\t]*)\t([^\t]*)\t(.*)$')
    if not by then return nil, util().bad_value(state_key, 'q:' .. current .. '>' .. target, raw, 'a request') end
    return {by = by, at = at, reason = reason}, nil
  end

  -- parse_approvals: the open approvals of a p: field's value, each {id, approver, until (ms or ''),
  -- version, kept}
  local function parse_approvals(raw, field)
    local out = {}
    if not raw then return out, nil end
    for line in string.gmatch(raw, '[^\n]+') do
      local id, approver, until_ms, version = string.match(line, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)')
      if not id or not is_id(id) or (until_ms ~= '' and not is_count(until_ms)) then
        return nil, util().bad_value(state_key, field, line, "'<entry id>\\t<approver>\\t<until>\\t<version>'")
      end
      local kept = string.sub(line, -2) == '\tk' -- retention kept it past the cut (lib/retain.lua)
      out[#out + 1] = {id = id, approver = approver, until_ms = until_ms, version = version, kept = kept}
    end
    return out, nil
  end

  -- pending: the open approvals of the move from `current` to `target` and its request (one HMGET)
  function G.pending(current, target)
    local field = 'p:' .. current .. '>' .. target
    local found, err = read('HMGET', state_key, field, 'q:' .. current .. '>' .. target, 'q:' .. current .. '>*')
    if err then return nil, nil, err end
    local list, request
    list, err = parse_approvals(found[1], field)
    if err then return nil, nil, err end
    request, err = parse_request(found[2], found[3], current, target)
    if err then return nil, nil, err end
    return list, request, nil
  end

  -- manual: a ManualGate's verdict on the move: the approval entry ids it consumes, or an error reply.
  -- Distinct approvers count once; unless the gate allows self-approval the requester's approvals do not
  -- count and an actor who approved may not make the move (four eyes); an expired approval does not count.
  function G.manual(what, current, target, step, actor)
    local list, request, err = G.pending(current, target)
    if err then return nil, err end
    local own = step['self'] == true
    local now_ms = nil
    local used, seen, expired = {}, {}, nil
    for _, a in ipairs(list) do
      if a.until_ms ~= '' and not now_ms then
        local clock = redis.call('TIME')
        now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
      end
      if a.until_ms ~= '' and now_ms > tonumber(a.until_ms) then
        expired = a
      elseif own or not request or a.approver ~= request.by then
        if not seen[a.approver] then
          seen[a.approver] = true
          used[#used + 1] = a.id
        end
      end
    end
    local move = what .. ': ' .. current .. ' -> ' .. target
    if not own and actor ~= '' and seen[actor] then
      return nil, refuse('SEPARATION', move .. ': ' .. actor .. ' approved this move, so another person must make '
        .. 'it (' .. step['manual'] .. ' does not allow self-approval)')
    end
    local need = step['need'] or 1
    if #used >= need then return used, nil end
    local text
    if need == 1 then
      text = move .. ' needs a recorded manual approval (' .. step['manual'] .. ')'
    else
      text = move .. ' needs ' .. need .. ' approvals from distinct approvers (' .. step['manual'] .. '); '
        .. #used .. ' given'
    end
    if expired then text = text .. '; the approval ' .. expired.id .. ' expired at @ms:' .. expired.until_ms end
    if #used == 0 then
      local notes
      notes, err = read('HMGET', state_key, 'lv', 'v')
      if err then return nil, err end
      if notes[1] then
        text = text .. '; the approvals given for configuration version ' .. notes[1] .. ' lapsed when version '
          .. tostring(notes[2]) .. ' was written'
      end
    end
    return nil, refuse('APPROVAL_REQUIRED', text)
  end

  checks_made = G
  return G
end
