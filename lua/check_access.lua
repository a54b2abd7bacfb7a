--[[ check_access: whether this user's ACL allows every command redgov runs on a scope's keys (Redis >= 7.0).
KEYS[1..11] standard keys of a probe experiment of the scope (lib/common.lua)
KEYS[12] an idempotency record of that experiment
KEYS[13] its lease (a string)
Returns: '' when everything is allowed (or the server cannot tell), else '<COMMAND> <key>', the first refused
]]
if not redis.acl_check_cmd then return '' end
local function check(command, key, ...)
  local ok, allowed = pcall(redis.acl_check_cmd, command, key, ...)
  if ok and allowed then return nil end
  return command .. ' ' .. key
end
local H, X, L, Z, S = 'hash', 'stream', 'list', 'zset', 'string'
local plan = {{1, H}, {2, X}, {3, L}, {4, H}, {5, L}, {6, L}, {7, Z}, {8, H}, {9, H}, {10, H}, {11, Z}, {12, S},
  {13, S}}
for _, item in ipairs(plan) do
  local key, kind, refused = KEYS[item[1]], item[2], nil
  if kind == H then
    refused = check('HGET', key, 'f') or check('HMGET', key, 'f') or check('HSET', key, 'f', 'v')
      or check('HDEL', key, 'f') or check('HINCRBY', key, 'f', '1') or check('HEXISTS', key, 'f')
      or check('HGETALL', key) or check('PEXPIRE', key, '1')
  elseif kind == X then
    refused = check('XADD', key, '*', 'f', 'v') or check('XRANGE', key, '-', '+') or check('XDEL', key, '0-1')
      or check('XREVRANGE', key, '+', '-') or check('XLEN', key)
  elseif kind == L then
    refused = check('LLEN', key) or check('LRANGE', key, '0', '1') or check('RPUSH', key, 'v')
      or check('LPOP', key) or check('LTRIM', key, '0', '1')
  elseif kind == Z then
    refused = check('ZADD', key, '0', 'm') or check('ZRANGE', key, '0', '1') or check('ZREM', key, 'm')
      or check('ZCARD', key) or check('ZCOUNT', key, '0', '1') or check('ZRANGEBYSCORE', key, '0', '1')
      or check('ZREVRANGEBYSCORE', key, '1', '0') or check('ZRANGEBYLEX', key, '-', '+')
  else
    refused = check('GET', key) or check('SET', key, 'v', 'PXAT', '1') or check('DEL', key)
  end
  if refused then return refused end
end
local ok, allowed = pcall(redis.acl_check_cmd, 'XREAD', 'STREAMS', KEYS[2], '0')
if not (ok and allowed) then return 'XREAD ' .. KEYS[2] end
return ''
