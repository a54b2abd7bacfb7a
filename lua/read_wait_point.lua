--[[ read_wait_point: an experiment's state and its scope log's newest entry id, read together (atomically).
KEYS[1] the experiment's state hash {T}:s:<exp>
KEYS[2] the scope log {T}:log
ARGV[1..] the state fields to read (codec.state_fields)
Returns: {the state fields' values, the log's newest entry id ('0-0' when the log is empty)}
Errors: REDGOV_CORRUPT, REDGOV_DENIED
wait_for reads from there: nothing written after the state it read can be missed.
]]
-- @include lib/common.lua
local values, err = read('HMGET', KEYS[1], unpack(ARGV))
if err then return err end
local newest
newest, err = read('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if err then return err end
if newest[1] then return {values, newest[1][1]} end
return {values, '0-0'}
