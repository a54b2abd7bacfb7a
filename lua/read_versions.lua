--[[ read_versions: configuration versions by number.
KEYS[1] version ids {T}:v:<exp> (scored by version number)
KEYS[2] scope log   {T}:log
ARGV[1] 'latest' | 'number' (ARGV[2] is the number) | 'page' (numbers after ARGV[2], ascending, or
        before it with ARGV[3] = '-1'; '-' = from the first or the last)
ARGV[2] a version number, or where a page starts
ARGV[3] '1' ascending, '-1' descending
ARGV[4] most entries returned
Returns: {{number, id, {field, value, ...}}, ...}; an entry no longer in the log has no fields
Errors: REDGOV_CORRUPT <key>, REDGOV_DENIED
]]
-- @include lib/common.lua
local versions, log = KEYS[1], KEYS[2]
local which, at, direction, most = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local found, err
if which == 'latest' then
  found, err = read('ZRANGE', versions, -1, -1, 'WITHSCORES')
elseif which == 'number' then
  found, err = read('ZRANGEBYSCORE', versions, at, at, 'WITHSCORES')
elseif direction == '1' then
  if at == '-' then at = '-inf' else at = '(' .. at end
  found, err = read('ZRANGEBYSCORE', versions, at, '+inf', 'WITHSCORES', 'LIMIT', 0, most)
else
  if at == '-' then at = '+inf' else at = '(' .. at end
  found, err = read('ZREVRANGEBYSCORE', versions, at, '-inf', 'WITHSCORES', 'LIMIT', 0, most)
end
if err then return err end
err = util().expect(log, 'stream')
if err then return err end
local out = {}
for i = 1, #found, 2 do
  local id, score = found[i], found[i + 1]
  if not is_id(id) then return util().bad_value(versions, 'member', id, 'a log entry id') end
  if not is_count(score) then return util().bad_value(versions, id, score, 'a version number') end
  local entry = redis.call('XRANGE', log, id, id)[1]
  out[#out + 1] = {score, id, entry and entry[2] or {}}
end
return out
