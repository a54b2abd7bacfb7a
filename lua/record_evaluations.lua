--[[ record_evaluations: persist policy evaluations (of evaluate_policies, or of a refused transition).
KEYS[1..11] standard keys (lib/common.lua)
KEYS[12..] the idempotency record {T}:i:<exp>:<key> (when ARGV[7] is not ''), then the state hashes the
          evaluations were decided from (ARGV[10] of them)
ARGV[1] operation id ('' = no dedupe)
ARGV[2] '1' when the ops bucket needs its expiry set (it also gets it whenever it has none)
ARGV[3] experiment name
ARGV[4] initial state of an experiment not created yet ('' = it must exist)
ARGV[5] the move refused: '<target>|<source>|<source>|' ('' = no rule check)
ARGV[6] retain: history entries kept for the experiment (0 = all)
ARGV[7] idempotency intent ('' = no key)
ARGV[8] idempotency window, ms
ARGV[9] the policy refusal the evaluations explain, recorded for the idempotency key ('' = none)
ARGV[10] n: how many state hashes guard the evaluations
ARGV[11..] the revision (field r) each guard had when read ('' = no state), n of them: one that differs
        now means the verdicts were decided from stale states, and nothing is written; then pairs:
        policy name, PolicyEvaluation record JSON (current_state is the entry's 'from' field)
Returns: {1, current state}; a re-send {2, ...the same}; {4, refusal, evaluation records...} replaying
         an idempotency key whose first call was refused; {5} a guarded state changed (nothing written)
Errors: REDGOV_NOT_FOUND, REDGOV_INVALID_TRANSITION (nothing written), REDGOV_CORRUPT, REDGOV_DENIED
A refusal is remembered under the operation id like a success.
]]
-- @include lib/common.lua
-- @include lib/idem.lua
-- @include lib/history.lua
-- @include lib/retain.lua
local op, expire, experiment, initial, move = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retain, intent, window, refusal = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local GUARDS = 10
local guards = tonumber(ARGV[10])
local PAIRS = GUARDS + 1 + guards
local idem_key = nil
local first_guard = 12
if intent ~= '' then
  idem_key = KEYS[12]
  first_guard = 13
end
local what = 'experiment ' .. experiment

local function main()
  local replay, err = hist().prior(op, idem_key, intent, what)
  if replay or err then return replay or err end
  for k = 1, guards do
    local seen
    seen, err = read('HGET', KEYS[first_guard + k - 1], 'r')
    if err then return err end
    if (seen or '') ~= ARGV[GUARDS + k] then return {5} end
  end

  local current
  current, err = read('HGET', state_key, 's')
  if err then return err end
  if not current then
    if initial == '' then return refuse('NOT_FOUND', what .. ' does not exist (create it first)') end
    current = initial
  elseif not is_state(current) then
    return util().bad_value(state_key, 's', current, 'a lifecycle state')
  end
  if move ~= '' then
    local bar = string.find(move, '|', 1, true)
    local target = string.sub(move, 1, bar - 1)
    if not string.find(move, '|' .. current .. '|', bar, true) then
      return refuse('INVALID_TRANSITION', what .. ': ' .. current .. ' -> ' .. target .. ' is not allowed')
    end
  end
  local length
  length, err = read('LLEN', history_key)
  if err then return err end
  err = util().expect_all(log_key, 'stream', policies_key, 'list', latest_key, 'hash', index_key, 'zset')
  if err then return err end
  local trim
  trim, err = retention().plan(retain, (#ARGV - PAIRS + 1) / 2, length)
  if err then return err end

  for i = PAIRS, #ARGV, 2 do
    hist().add_entry('P', experiment, ARGV[i + 1], {'from', current}, ARGV[i])
  end
  hist().register(experiment)
  if trim then retention().apply(trim) end
  local reply = {1, current}
  op_done(op, reply, expire)
  if idem_key then
    if refusal ~= '' then
      local written = {}
      for i = PAIRS, #ARGV, 2 do written[#written + 1] = ARGV[i + 1] end
      idem().refused(idem_key, intent, 'REDGOV_POLICY_VIOLATION - ' .. current .. ' ' .. refusal, window, written)
    else
      idem().done(idem_key, intent, {1, current, ''}, window)
    end
  end
  return reply
end

return finish(op, main(), expire)
