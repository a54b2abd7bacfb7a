"""Sans-IO policy plans of GovernanceCore: evaluating, recording and refusing.

Telemetry policies are judged in Python before the transition script runs; the
policies that depend on stored state (ConflictPrevention groups, a TrafficLimit's
stable time) become *groups* of the transition plan, each with both verdicts'
records, decided by the script. ``evaluate_policies`` reads the states it needs
first, judges everything here and records the evaluations in one script call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

import msgspec

from .calls import Call, Plan, settled
from .codec import decode_fields, decode_state_hash, from_micros, state_fields, stored, text, to_micros
from .errors import (
    ConflictError,
    CorruptDataError,
    NotFoundError,
    PolicyViolationError,
)
from .govreads import GovernanceSettings
from .keys import ExperimentKeys, Scope
from .policies import RUNNING_STATES, ConflictPrevention, PolicyContext, TrafficLimit, check_telemetry
from .records import (
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    Severity,
    StateTransition,
)
from .validate import check_state

__all__ = ["PolicyPlans", "replay_refusal"]

#: evaluate_policies reads and decides again when a state it decided from changed before the record
EVALUATE_ATTEMPTS = 5


class PolicyPlans(GovernanceSettings):
    """The policy half of ``GovernanceCore`` (a mixin)."""

    def _evaluate(self, experiment: str, target: LifecycleState | None, current: LifecycleState | None,
                  telemetry: Mapping[str, Any], now: datetime, tenant: str | None,
                  environment: str | None, *, running_since: datetime | None = None,
                  in_script: bool = False) -> list[PolicyEvaluation]:
        """Evaluations of every policy decidable here: all but the conflict groups of a move into Running
        or Ramping, and (``in_script``: the transition script decides them) stable times of stored state."""
        ctx = PolicyContext(experiment, target, current, telemetry, now, running_since,
                            self.require_telemetry)
        out = []
        for policy in self.policies:
            if isinstance(policy, ConflictPrevention):
                if not policy.covers(experiment) or target in RUNNING_STATES:
                    continue  # not this experiment's group, or decided against the members' states
            elif in_script and isinstance(policy, TrafficLimit) and policy.stored_stability(telemetry) is not None:
                continue  # the stable time is the stored state's: decided inside the script
            compliant, reason = policy.decide(ctx)
            out.append(PolicyEvaluation(
                experiment=experiment, policy=policy.name, compliant=compliant, severity=policy.severity,
                reason=reason, timestamp=now, current_state=current, target_state=target,
                metadata={"type": policy.kind, **({"telemetry": dict(telemetry)} if telemetry else {})},
                tenant=tenant, environment=environment))
        return out

    def _groups(self, experiment: str, target: LifecycleState, telemetry: Mapping[str, Any], now: datetime,
                tenant: str | None, environment: str | None, records: list[bytes], scope: Scope,
                idem_keys: int) -> list[dict[str, Any]]:
        """The policies the transition script decides, each with both verdicts: the ConflictPrevention groups
        of a move into Running or Ramping, and the TrafficLimits that need the stored stable time."""
        groups: list[dict[str, Any]] = []
        for policy in self.policies:
            if not isinstance(policy, TrafficLimit):
                continue
            need = policy.stored_stability(telemetry)
            if need is None:
                continue
            reasons = policy.verdicts(telemetry)
            group: dict[str, Any] = {"name": policy.name, "since": to_micros(now - need), "why": reasons[1]}
            if policy.severity is not Severity.CRITICAL:
                group["soft"] = 1
            for (outcome, compliant), reason in zip((("ok", True), ("fail", False)), reasons, strict=True):
                records.append(stored(PolicyEvaluation(
                    experiment=experiment, policy=policy.name, compliant=compliant, severity=policy.severity,
                    reason=reason, timestamp=now, target_state=target,
                    metadata={"type": policy.kind, "telemetry": dict(telemetry)},
                    tenant=tenant, environment=environment)))
                group[outcome] = len(records)
            groups.append(group)
        if target not in RUNNING_STATES:
            return groups
        key_number = 12 + idem_keys  # KEYS[12] is the idempotency record when there is one
        for policy in self.policies:
            if not (isinstance(policy, ConflictPrevention) and policy.covers(experiment)):
                continue
            others = []
            for name in policy.others(experiment):
                others.append([name, key_number])
                key_number += 1
            group = {"name": policy.name, "others": others}
            if policy.severity is not Severity.CRITICAL:
                group["soft"] = 1
            for outcome, compliant in (("ok", True), ("fail", False)):
                reason = ("no conflicting experiment is Running or Ramping" if compliant else
                          f"another experiment of {', '.join(policy.experiments)} is Running or Ramping")
                records.append(stored(PolicyEvaluation(
                    experiment=experiment, policy=policy.name, compliant=compliant, severity=policy.severity,
                    reason=reason, timestamp=now, target_state=target,
                    metadata={"type": policy.kind, "experiments": list(policy.experiments)},
                    tenant=tenant, environment=environment)))
                group[outcome] = len(records)
            groups.append(group)
        return groups

    def _refuse(self, experiment: str, target: LifecycleState, evaluations: Sequence[PolicyEvaluation],
                blocking: Sequence[PolicyEvaluation], scope: Scope, exp: ExperimentKeys, extra: tuple[str, ...],
                intent: str) -> Call[StateTransition]:
        """A Critical telemetry policy refused: persist the evaluations, then raise."""
        names = "; ".join(f"{e.policy}: {e.reason}" for e in blocking)
        message = f"experiment {experiment}: {names}"
        sources = "|".join(s.value for s in self.rules.sources(target))
        call = self._record(experiment, evaluations, scope, exp, f"{target.value}|{sources}|", extra, intent,
                            message)

        def parse(reply: Any) -> NoReturn:
            if int(reply[0]) == 4:  # the first call with this idempotency key was refused
                replay_refusal(reply, experiment, scope.log)
            raise PolicyViolationError(message, call.parse(reply) or [])

        return Call(call.keys, call.args, parse, call.script, None, call.state_key, call.scope)

    def _record(self, experiment: str, evaluations: Sequence[PolicyEvaluation], scope: Scope, exp: ExperimentKeys,
                move: str, extra: tuple[str, ...], intent: str, refusal: str,
                guards: Sequence[tuple[str, str]] = ()) -> Call[list[PolicyEvaluation] | None]:
        """The record_evaluations call; ``guards``: (state key, revision read) the verdicts were decided
        from; the call answers None (and writes nothing) when one of them changed since."""
        args: list[Any] = [experiment, self.initial_state.value if self.auto_create else "", move, self.core.retain,
                           intent, self._window_ms, refusal, len(guards), *(revision for _key, revision in guards)]
        for evaluation in evaluations:
            args += [evaluation.policy, stored(evaluation)]

        def parse(reply: list[Any]) -> list[PolicyEvaluation] | None:
            if int(reply[0]) == 5:
                return None
            state = LifecycleState(text(reply[1]))
            return [msgspec.structs.replace(e, current_state=state) for e in evaluations]

        return self.core.write("record_evaluations", scope, exp, tuple(args), parse,
                               extra_keys=extra + tuple(key for key, _revision in guards))

    def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None,
                          target: LifecycleState | str | None, tenant: str | None,
                          environment: str | None) -> Plan[list[PolicyEvaluation]]:
        """Evaluate every policy (each conflict group against its members' states) and persist the evaluations."""
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        goal = None if target is None else check_state(target, "target state")
        measured = check_telemetry(telemetry, self.telemetry_keys)
        members = self.conflict_group_members(experiment)
        scope, exp = self.core.keys(experiment, tenant, environment)
        for _attempt in range(EVALUATE_ATTEMPTS):
            stored_states = yield self.states_of(members, tenant, environment)
            recorded = yield from self._evaluate_once(experiment, goal, measured, members, stored_states, scope,
                                                      exp, tenant, environment)
            if recorded is not None:
                return recorded
        raise ConflictError(f"experiment {experiment}: the states its policies are decided from changed during "
                            f"each of {EVALUATE_ATTEMPTS} evaluations; nothing was recorded, try again")

    def _evaluate_once(self, experiment: str, goal: LifecycleState | None, measured: Mapping[str, float],
                       members: Sequence[str], stored_states: Mapping[str, ExperimentState | None], scope: Scope,
                       exp: ExperimentKeys, tenant: str | None,
                       environment: str | None) -> Plan[list[PolicyEvaluation] | None]:
        """One evaluation from the states read; recorded unless a state it was decided from changed
        since (then None: the caller reads again)."""
        states = {n: None if s is None else s.state for n, s in stored_states.items()}
        current = states.get(experiment)
        if current is None and not self.auto_create:
            raise NotFoundError(f"experiment {experiment} does not exist (create it first)")
        since = None
        if current in RUNNING_STATES and any(isinstance(p, TrafficLimit) and p.stored_stability(measured)
                                             for p in self.policies):
            since = yield self.running_since(experiment, tenant, environment)
        now = self.now()
        evaluations = self._evaluate(experiment, goal, current, measured, now, tenant, environment,
                                     running_since=since)
        if goal in RUNNING_STATES:
            for policy in self.policies:
                if isinstance(policy, ConflictPrevention) and policy.covers(experiment):
                    compliant, reason = policy.judge(experiment, {n: states.get(n) for n in policy.experiments})
                    evaluations.append(PolicyEvaluation(
                        experiment=experiment, policy=policy.name, compliant=compliant, severity=policy.severity,
                        reason=reason, timestamp=now, current_state=current, target_state=goal,
                        metadata={"type": policy.kind, "experiments": list(policy.experiments)},
                        tenant=tenant, environment=environment))
        # the script records them only if no state they were decided from changed (its revision)
        decided_from = members if goal in RUNNING_STATES else (experiment,)
        guards = [(scope.experiment(name).state,
                   "" if stored_states.get(name) is None else str(stored_states[name].revision))  # type: ignore[union-attr]
                  for name in decided_from]
        recorded: list[PolicyEvaluation] | None = yield self._record(experiment, evaluations, scope, exp, "", (), "",
                                                                     "", guards)
        return recorded

    def running_since(self, experiment: str, tenant: str | None, environment: str | None) -> Call[datetime | None]:
        """When the experiment last entered Running or Ramping (field rs of its state hash; a state without
        it, as a restored one, gives its last state write: a lower bound of the stable time)."""
        key = self.core.scope(tenant, environment).experiment(experiment).state

        def parse(reply: Any) -> datetime | None:
            for field, value in zip(("rs", "t"), reply, strict=True):
                if value is not None:
                    try:
                        return from_micros(int(value))
                    except (TypeError, ValueError, OverflowError):
                        raise CorruptDataError(f"key {key} field {field} holds {value!r}, expected a time") from None
            return None

        return Call((key,), ("HMGET", key, "rs", "t"), parse)

    def conflict_group_members(self, experiment: str) -> tuple[str, ...]:
        members: list[str] = [experiment]
        for policy in self.policies:
            if isinstance(policy, ConflictPrevention) and policy.covers(experiment):
                members += [e for e in policy.experiments if e not in members]
        return tuple(members)

    def states_of(self, experiments: Sequence[str], tenant: str | None,
                  environment: str | None) -> Call[dict[str, ExperimentState | None]]:
        """The current state of each experiment (one round trip: their HMGETs pipelined)."""
        scope = self.core.scope(tenant, environment)
        keys = tuple(scope.experiment(name).state for name in experiments)
        check = settled(keys)

        def parse(reply: Any) -> dict[str, ExperimentState | None]:
            return {name: decode_state_hash(values, key, name, tenant, environment)
                    for name, key, values in zip(experiments, keys, check(reply), strict=True)}

        return Call(keys, tuple(("HMGET", key, *state_fields()) for key in keys), parse, batch=True)


def replay_refusal(reply: list[Any], experiment: str, log_key: str) -> NoReturn:
    """Raise the PolicyViolationError an idempotency key's first call got, with the evaluations it recorded."""
    rest = text(reply[1]).removeprefix("REDGOV_POLICY_VIOLATION ")
    _failed, current_text, detail = rest.split(" ", 2)
    current = LifecycleState(current_text)
    evaluations = [msgspec.structs.replace(
        decode_fields("-", {"k": b"policy", "x": experiment.encode(), "r": record}, log_key).record,
        current_state=current) for record in reply[2:]]
    raise PolicyViolationError(detail, evaluations)
