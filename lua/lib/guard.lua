-- expect_types: refuse (before any write) when a key holds another Redis type.
-- spec is a flat list: key1, type1, key2, type2, ...; 'none' (absent) always passes.
local function expect_types(spec)
  for i = 1, #spec, 2 do
    local found = redis.call('TYPE', spec[i])['ok']
    if found ~= 'none' and found ~= spec[i + 1] then
      return 'REDGOV_CORRUPT key ' .. spec[i] .. ' holds a ' .. found .. ', expected a ' .. spec[i + 1]
    end
  end
  return nil
end

-- read: a read command whose wrong-type error names the key; returns reply, error text
local function read(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply['err'] then
    return nil, 'REDGOV_CORRUPT key ' .. key .. ': ' .. tostring(reply['err'])
  end
  return reply, nil
end
