-- retain.lua: removing an experiment's oldest history entries, with everything that indexes them;
-- the state-writing ones are folded into the base hash (the state at the cut, where replay starts).
-- With retain > 0 a write that takes the history past retain + slack (1/32 of retain, 1 to 32) trims
-- it back to retain; `redgov trim` removes entries up to an exported id. retention().take reads and
-- checks everything first (before the script's first write); .apply writes. Made on first use.
-- Needs common.lua and history.lua (all 11 standard keys).

local retention_made = nil
local function retention()
  if retention_made then return retention_made end
  -- bound here, not captured from the chunk: a closure capturing many upvalues costs time on every call
  local state_key, log_key, history_key = KEYS[1], KEYS[2], KEYS[3]
  local approvals_key, policies_key, versions_key, latest_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
  local base_key, links_key = KEYS[9], KEYS[10]
  local R = {}

  R.MOST = 64 -- entries removed by one call at most (bounded work per call)

  function R.entry_field(fields, name)
    for i = 1, #fields, 2 do
      if fields[i] == name then return fields[i + 1] end
    end
    return nil
  end

  function R.decode_record(id, raw)
    if type(raw) ~= 'string' then
      return nil, refuse('CORRUPT', 'log entry ' .. id .. ' of ' .. log_key .. ' has no record')
    end
    local ok, decoded = pcall(cjson.decode, raw)
    if not ok or type(decoded) ~= 'table' then
      return nil, refuse('CORRUPT', 'log entry ' .. id .. ' of ' .. log_key .. ' holds a record that is not JSON')
    end
    return decoded, nil
  end

  -- take: the oldest `count` history items, each read back and checked
  function R.take(count)
    local items, err = read('LRANGE', history_key, 0, count - 1)
    if err then return nil, err end
    err = util().expect_all(approvals_key, 'list', policies_key, 'list', versions_key, 'zset', latest_key, 'hash',
      links_key, 'hash')
    if err then return nil, err end
    local counters
    counters, err = read('HMGET', base_key, 'nh', 'na', 'np', 'vmax', 'cut')
    if err then return nil, err end
    for i, name in ipairs({'nh', 'na', 'np', 'vmax'}) do
      if counters[i] and not is_count(counters[i]) then return nil, util().bad_value(base_key, name, counters[i], 'a count') end
    end
    if counters[5] and not is_id(counters[5]) then return nil, util().bad_value(base_key, 'cut', counters[5], 'an entry id') end
    local plan = {}
    for i, item in ipairs(items) do
      local code, id = string.sub(item, 1, 1), string.sub(item, 2)
      if not hist().kind_of(code) or not is_id(id) then
        return nil, util().bad_value(history_key, 'item ' .. (i - 1), item, 'a kind code and a log entry id')
      end
      local found
      found, err = read('XRANGE', log_key, id, id)
      if err then return nil, err end
      local step = {code = code, id = id}
      local fields = found[1] and found[1][2]
      if fields then -- an entry trimmed from the log already (redgov trim) is only unindexed
        if code ~= 'S' then
          step.record, err = R.decode_record(id, R.entry_field(fields, 'r'))
          if err then return nil, err end
        end
        step.raw, step.rev, step.etag = R.entry_field(fields, 'r'), R.entry_field(fields, 'rev'), R.entry_field(fields, 'etag')
        step.from, step.v = R.entry_field(fields, 'from'), R.entry_field(fields, 'v')
        if (code == 'S' or code == 'T' or code == 'V') and not (is_count(step.rev) and step.etag) then
          return nil, refuse('CORRUPT', 'log entry ' .. id .. ' of ' .. log_key .. ' writes the state but has no rev/etag')
        end
        if code == 'V' and not is_count(step.v) then
          return nil, refuse('CORRUPT', 'log entry ' .. id .. ' of ' .. log_key .. ' has no version number')
        end
      end
      plan[i] = step
    end
    return plan, nil
  end

  -- plan: what a write adding `adding` entries to a history of `length` must remove (nil: nothing)
  function R.plan(retain, adding, length)
    if retain <= 0 then return nil, nil end
    local slack = math.min(32, math.max(1, math.floor(retain / 32)))
    if length + adding <= retain + slack then return nil, nil end
    local count = math.min(length + adding - retain, length, R.MOST)
    if count <= 0 then return nil, nil end
    return R.take(count)
  end

  function R.text_of(value)
    if type(value) == 'string' then return value end
    return ''
  end

  -- before: whether log entry id a precedes b
  function R.before(a, b)
    local ams, aseq = string.match(a, '^(%d+)%-(%d+)$')
    local bms, bseq = string.match(b, '^(%d+)%-(%d+)$')
    if not ams or not bms then return false end
    if #ams ~= #bms then return #ams < #bms end
    if ams ~= bms then return ams < bms end
    return tonumber(aseq) < tonumber(bseq)
  end

  -- keep_open: whether the approval entry of `step` is still open (in its move's p: field of the state);
  -- then its line there is marked kept ('\tk': it leaves the log when it is consumed, replaced or lapses)
  function R.keep_open(step, rec)
    if not step.from or type(rec['to_state']) ~= 'string' then return false end
    local field = 'p:' .. step.from .. '>' .. rec['to_state']
    local held = redis.call('HGET', state_key, field)
    if not held then return false end
    local lines, open = {}, false
    for line in string.gmatch(held, '[^\n]+') do
      if string.sub(line, 1, #step.id + 1) == step.id .. '\t' then
        open = true
        if string.sub(line, -2) ~= '\tk' then line = line .. '\tk' end
      end
      lines[#lines + 1] = line
    end
    if open then
      local pn = redis.call('HGET', state_key, 'pn') or ('1 ' .. field)
      redis.call('HSET', state_key, field, table.concat(lines, '\n'), 'pn', '2' .. string.sub(pn, 2)) -- 2: kept ones
    end
    return open
  end

  -- apply: remove the planned entries and their index entries; fold the state writes into the base
  -- (vmax keeps the highest version number removed, so no number is ever given twice)
  function R.apply(plan)
    local counts = {A = 0, P = 0}
    local ids, versions, base = {}, {}, {}
    local cleared, last = false, nil
    for _, step in ipairs(plan) do
      local code, id, rec = step.code, step.id, step.record
      last = id
      if code == 'A' and step.raw and R.keep_open(step, rec) then
        id = nil -- an open approval stays in the log (and in force) until it is consumed or lapses
      else
        ids[#ids + 1] = id
      end
      if counts[code] then counts[code] = counts[code] + 1 end
      if code == 'V' or code == 'v' then
        versions[#versions + 1] = id
        if is_count(step.v) and tonumber(step.v) > tonumber(base.vmax or '0') then base.vmax = step.v end
      end
      if step.raw then
        if code == 'S' then
          base = {snap = step.raw, vmax = base.vmax}
          cleared = true
        elseif code == 'T' then
          base.s, base.t, base.by = R.text_of(rec['to_state']), R.text_of(rec['timestamp']), R.text_of(rec['actor'])
        elseif code == 'V' then
          base.v, base.t, base.by = step.v, R.text_of(rec['created_at']), R.text_of(rec['created_by'])
        end
        if code == 'S' or code == 'T' or code == 'V' then
          base.etag, base.rev = step.etag, step.rev
        end
        if (code == 'T' or code == 't') and type(rec['transition_id']) == 'string' then
          local joined = redis.call('HGET', links_key, 't:' .. rec['transition_id'])
          for _, linked in ipairs(joined and util().split(joined, ' ') or {}) do
            -- the manual approvals it consumed precede it: kept past the cut while open, they go with it
            if is_id(linked) and R.before(linked, id) then redis.call('XDEL', log_key, linked) end
          end
          redis.call('HDEL', links_key, 't:' .. rec['transition_id'], 'x:' .. rec['transition_id'])
        elseif code == 'A' and id then
          redis.call('HDEL', links_key, 'a:' .. id)
          local tid = rec['transition_id']
          if type(tid) == 'string' then
            local field = 't:' .. tid
            local joined = redis.call('HGET', links_key, field)
            if joined then
              local kept = {}
              for _, other in ipairs(util().split(joined, ' ')) do
                if other ~= id then kept[#kept + 1] = other end
              end
              if #kept > 0 then redis.call('HSET', links_key, field, table.concat(kept, ' '))
              else redis.call('HDEL', links_key, field) end
            end
          end
        elseif code == 'P' and type(rec['policy']) == 'string' then
          if redis.call('HGET', latest_key, rec['policy']) == id then
            redis.call('HDEL', latest_key, rec['policy'])
          end
        end
      end
    end
    redis.call('LTRIM', history_key, #plan, -1)
    if counts.A > 0 then redis.call('LPOP', approvals_key, counts.A) end
    if counts.P > 0 then redis.call('LPOP', policies_key, counts.P) end
    if #versions > 0 then redis.call('ZREM', versions_key, unpack(versions)) end
    if #ids > 0 then redis.call('XDEL', log_key, unpack(ids)) end
    if cleared then redis.call('HDEL', base_key, 's', 'v', 't', 'by') end
    if base.vmax then
      local old = redis.call('HGET', base_key, 'vmax')
      if old and is_count(old) and tonumber(old) > tonumber(base.vmax) then base.vmax = old end
    end
    local set = {'HSET', base_key, 'cut', last}
    for name, value in pairs(base) do
      set[#set + 1], set[#set + 2] = name, value
    end
    redis.call(unpack(set))
    redis.call('HINCRBY', base_key, 'nh', #plan)
    if counts.A > 0 then redis.call('HINCRBY', base_key, 'na', counts.A) end
    if counts.P > 0 then redis.call('HINCRBY', base_key, 'np', counts.P) end
  end

  -- highest_version: the highest version number the experiment has used (0 = none), or an error
  function R.highest_version()
    local top, err = read('ZRANGE', versions_key, -1, -1, 'WITHSCORES')
    if err then return nil, err end
    local number = 0
    if top[2] then
      if not is_id(top[1]) then return nil, util().bad_value(versions_key, 'member', top[1], 'a log entry id') end
      if not is_count(top[2]) then return nil, util().bad_value(versions_key, 'score', top[2], 'a version number') end
      number = tonumber(top[2])
    end
    local trimmed
    trimmed, err = read('HGET', base_key, 'vmax')
    if err then return nil, err end
    if trimmed then
      if not is_count(trimmed) then return nil, util().bad_value(base_key, 'vmax', trimmed, 'a version number') end
      if tonumber(trimmed) > number then number = tonumber(trimmed) end
    end
    return number, nil
  end

  retention_made = R
  return R
end
