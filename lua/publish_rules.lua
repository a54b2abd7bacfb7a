--[[ publish_rules: store a new version of a scope's rules, unless it equals the current one.
KEYS[1] the scope's rules hash {T}:rules
KEYS[2] the scope's log {T}:log
KEYS[3] the scope's ops bucket {T}:ops:<minute>
ARGV[1] operation id ('' = no dedupe)
ARGV[2] the definition's rules hash ('sha256:<hex>')
ARGV[3] the RulesVersion record, JSON (its version is the entry field n and the number in r:<n>)
ARGV[4..] the compiled definition, in triples: target state, steps into it, their gates as JSON ('' = none)
Returns: {1, version, log entry id} for a new version; {0, current version, ''} when the definition equals
         the current one (nothing written); a re-send {2, ...the first reply}
Errors: REDGOV_CORRUPT, REDGOV_DENIED
The versions are kept whole (r:<n>): one field per publish, which people make; the steps and gates of the
current version replace the previous ones (s:<to>, d:<to>), read by lib/gates.lua.
]]
-- @include lib/common.lua
local rules_key, log_key, ops_key = KEYS[1], KEYS[2], KEYS[3]
local op, hash, record = ARGV[1], ARGV[2], ARGV[3]
local COMPILED = 4

if op ~= '' then
  local seen, err = read('HGET', ops_key, op)
  if err then return err end
  if seen then return {2, unpack(util().split(seen, '\n'))} end
end
local current, err = read('HMGET', rules_key, 'n', 'h')
if err then return err end
if current[1] and not is_count(current[1]) then return util().bad_value(rules_key, 'n', current[1], 'a version') end
if current[2] == hash then return {0, current[1], ''} end
err = util().expect_all(log_key, 'stream', ops_key, 'hash')
if err then return err end

local version = redis.call('HINCRBY', rules_key, 'n', 1)
local id = redis.call('XADD', log_key, '*', 'k', 'rules', 'x', '', 'r', record, 'n', version)
local fields = {'h', hash, 'r:' .. version, record}
local stale = {}
for i = COMPILED, #ARGV, 3 do
  local target, steps, details = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  fields[#fields + 1], fields[#fields + 2] = 's:' .. target, steps
  if details ~= '' then
    fields[#fields + 1], fields[#fields + 2] = 'd:' .. target, details
  else
    stale[#stale + 1] = 'd:' .. target
  end
end
redis.call('HSET', rules_key, unpack(fields))
if #stale > 0 then redis.call('HDEL', rules_key, unpack(stale)) end
if op ~= '' then
  redis.call('HSET', ops_key, op, version .. '\n' .. id)
  if redis.call('PTTL', ops_key) == -1 then redis.call('PEXPIRE', ops_key, 180000) end
end
return {1, version, id}
