--[[ read_rules: the scope's current rules version and one version's record, read together.
KEYS[1] the scope's rules hash {T}:rules
ARGV[1] the version wanted ('' = the current one)
Returns: {current version (0 = none published), the RulesVersion record of the version wanted or '' (none)}
Errors: REDGOV_CORRUPT, REDGOV_DENIED
]]
-- @include lib/common.lua
local rules_key, wanted = KEYS[1], ARGV[1]
local current, err = read('HGET', rules_key, 'n')
if err then return err end
if current and not is_count(current) then return util().bad_value(rules_key, 'n', current, 'a version') end
current = current or '0'
if wanted == '' then wanted = current end
if wanted == '0' then return {current, ''} end
local record
record, err = read('HGET', rules_key, 'r:' .. wanted)
if err then return err end
return {current, record or ''}
