-- idem.lua: application idempotency keys, made on first use: idem().seen, .done, .refused. A key's
-- record is '<intent>\n<reply parts>' (the last part the record written, so a replay does not need the
-- history, which retention may trim) or '<intent>\n!<refusal>\n<records>...' for a refusal that wrote
-- records (a policy refusal's evaluations). It expires after the key's window. Needs common.lua.

local idem_made = nil
local function idem()
  if idem_made then return idem_made end
  local I = {}

  -- seen: {3, parts...} replaying the key's first outcome, {4, refusal, records...} replaying its
  -- refusal, a conflict when the key was used for another operation, or nil (a new key)
  function I.seen(key, intent, what)
    if not key then return nil, nil end
    local found, err = read('GET', key)
    if err then return nil, err end
    if not found then return nil, nil end
    local parts = util().split(found, '\n')
    if #parts < 2 then
      return nil, refuse('CORRUPT', 'key ' .. key .. ' holds ' .. string.format('%q', string.sub(found, 1, 40))
        .. ', expected an idempotency record')
    end
    if parts[1] ~= intent then
      return nil, refuse('CONFLICT', what .. ': the idempotency key was used for ' .. parts[1] .. ', not ' .. intent)
    end
    redis.call('SET', key, found, 'KEEPTTL') -- replicated after the first call's writes: a WAIT covers them
    if string.sub(parts[2], 1, 1) == '!' then
      parts[1], parts[2] = 4, string.sub(parts[2], 2)
      return parts, nil
    end
    parts[1] = 3
    return parts, nil
  end

  -- done: remember reply (status first, then its parts, the record last)
  function I.done(key, intent, reply, window_ms)
    if not key then return end
    redis.call('SET', key, intent .. '\n' .. table.concat(reply, '\n', 2), 'PX', window_ms)
  end

  function I.refused(key, intent, text, window_ms, records)
    if not key then return end
    local value = intent .. '\n!' .. text
    if #records > 0 then value = value .. '\n' .. table.concat(records, '\n') end
    redis.call('SET', key, value, 'PX', window_ms)
  end

  idem_made = I
  return I
end
