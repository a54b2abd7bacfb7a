"""Sans-IO governance: builds the Calls of Governance and AsyncGovernance.

What can be decided without the current state is decided here, in Python:
role gates (they read the call's metadata) and telemetry policies. What needs
the current state goes to the script as a *plan*: for each state the rules
allow to move to the target, whether a gate denies, whether a manual approval
must be consumed, and which approval records to write. The script looks up the
current state, picks its entry of the plan and writes, all in one call, so a
transition never reads first and never retries.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn

import msgspec

from .keys import encode_part
from .core import (
    Call,
    Core,
    check_name,
    check_scope_part,
    check_state,
    decode_fields,
    encode_record,
    new_etag,
    to_micros,
)
from .errors import InvalidTransitionError, NotFoundError, PolicyViolationError, RedgovError, ValidationError
from .gates import AutomaticGate, Gate, ManualGate, RoleGate
from .policies import RUNNING_STATES, ConflictPrevention, Policy, PolicyContext, check_telemetry
from .records import (
    ENCODER,
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    Severity,
    StateTransition,
    new_id,
    utcnow,
)
from .rules import Rules

__all__ = ["Change", "GovernanceCore", "GovernanceEvent", "TransitionRequest", "compare", "config_hash", "diff"]

DEFAULT_IDEMPOTENCY_WINDOW = timedelta(hours=24)
EventKind = Literal["state", "transition", "approval", "version", "policy"]


class GovernanceEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a scope's log, as ``watch`` yields it."""

    id: str
    kind: EventKind
    experiment: str
    tenant: str | None
    environment: str | None
    record: ExperimentState | StateTransition | ApprovalRecord | ConfigurationVersion | PolicyEvaluation


class Change(msgspec.Struct, frozen=True):
    """One path-level difference between two configurations."""

    kind: Literal["added", "modified", "removed"]
    path: str
    old: Any = None
    new: Any = None


class TransitionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One item of ``transition_many``."""

    experiment: str
    to: LifecycleState
    actor: str | None = None
    reason: str | None = None
    metadata: dict[str, Any] | None = None
    telemetry: dict[str, Any] | None = None
    tenant: str | None = None
    environment: str | None = None
    expected_etag: str | None = None
    idempotency_key: str | None = None


def config_hash(configuration: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (keys sorted, no spaces) of a configuration."""
    return hashlib.sha256(msgspec.json.encode(configuration, order="sorted")).hexdigest()


def diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """Path-level changes from ``old`` to ``new`` through nested dicts and lists."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[Change] = []
        for key in old:
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                changes.append(Change("removed", sub, old[key], None))
            else:
                changes.extend(diff(old[key], new[key], sub))
        for key in new:
            if key not in old:
                changes.append(Change("added", f"{path}.{key}" if path else str(key), None, new[key]))
        return changes
    if isinstance(old, list) and isinstance(new, list):
        changes = []
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(new):
                changes.append(Change("removed", sub, old[i], None))
            elif i >= len(old):
                changes.append(Change("added", sub, None, new[i]))
            else:
                changes.extend(diff(old[i], new[i], sub))
        return changes
    if type(old) is not type(new) or old != new:
        return [Change("modified", path, old, new)]
    return []


def _check_actor(value: object, what: str) -> str | None:
    if value is None:
        return None
    return check_name(value, what)


def _check_metadata(value: object, what: str = "metadata") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"{what} must be a mapping, got {type(value).__name__} {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise ValidationError(f"{what} keys must be strings, got {key!r}")
    return dict(value)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The plan JSON and the records it refers to (record 0 is the transition)."""

    plan: dict[str, Any]
    records: list[bytes]


class GovernanceCore:
    """Validation and Call building for one Governance configuration."""

    def __init__(
        self,
        core: Core,
        *,
        rules: Rules | Mapping[str, Iterable[str]] | None = None,
        gates: Sequence[Gate] = (),
        policies: Sequence[Policy] = (),
        initial_state: LifecycleState | str = LifecycleState.DRAFT,
        auto_versioning: bool = True,
        clock: Callable[[], datetime] | None = None,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> None:
        self.core = core
        self.rules = rules if isinstance(rules, Rules) else Rules(rules)
        for gate in gates:
            if not isinstance(gate, (AutomaticGate, ManualGate, RoleGate)):
                raise ValidationError(f"gates must be AutomaticGate, ManualGate or RoleGate objects, got {gate!r}")
        for policy in policies:
            if not isinstance(policy, Policy):
                raise ValidationError(f"policies must be Policy objects, got {policy!r}")
        names = [p.name for p in policies]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValidationError(f"policy names must be unique; repeated: {', '.join(duplicates)} (pass name=...)")
        self.gates = tuple(gates)
        self.policies = tuple(policies)
        self.initial_state = check_state(initial_state, "initial_state")
        self.auto_versioning = bool(auto_versioning)
        self.clock = clock or utcnow
        if not isinstance(idempotency_window, timedelta) or idempotency_window <= timedelta(0):
            raise ValidationError(f"idempotency_window must be a positive timedelta, got {idempotency_window!r}")
        self.idempotency_window = idempotency_window
        self._window_ms = int(idempotency_window.total_seconds() * 1000)
        self._skeletons: dict[LifecycleState, list[tuple[str, str | None, tuple[RoleGate, ...]]]] = {}
        self._plain_plans: dict[LifecycleState, bytes] = {}

    # -- helpers ----------------------------------------------------------------

    def now(self) -> datetime:
        moment = self.clock()
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise ValidationError(f"clock() must return a timezone-aware datetime, got {moment!r}")
        return moment.astimezone(UTC)

    def _scope_args(self, experiment: object, tenant: object, environment: object) -> tuple[str, str | None, str | None]:
        return (check_name(experiment, "experiment"), check_scope_part(tenant, "tenant"),
                check_scope_part(environment, "environment"))

    def manual_gate_name(self, target: LifecycleState) -> str:
        for gate in self.gates:
            if isinstance(gate, ManualGate) and gate.to_state is target:
                return gate.name
        return "manual"

    # -- create -------------------------------------------------------------------

    def create(self, experiment: str, *, tenant: str | None, environment: str | None, actor: str | None,
               configuration: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None) -> Call[ExperimentState]:
        experiment, tenant, environment = self._scope_args(experiment, tenant, environment)
        actor = _check_actor(actor, "actor")
        meta = _check_metadata(metadata)
        now, etag, tid = self.now(), new_etag(), new_id()
        initial = self.initial_state
        version_record = b""
        follows = 0
        if configuration is not None:
            config = _check_metadata(configuration, "configuration")
            _, version_record = encode_record(ConfigurationVersion(
                experiment=experiment, version=1, configuration=config, configuration_hash=config_hash(config),
                created_at=now, created_by=actor, description="initial configuration", lifecycle_state=initial,
                tenant=tenant, environment=environment))
            follows = 1 if self.auto_versioning else 0
        state, state_record = encode_record(ExperimentState(
            experiment=experiment, state=initial, config_version=follows, last_modified=now,
            last_modified_by=actor, etag=etag, metadata=meta, tenant=tenant, environment=environment))
        _, transition_record = encode_record(StateTransition(
            experiment=experiment, from_state=None, to_state=initial, transition_id=tid, timestamp=now,
            actor=actor, reason="created", tenant=tenant, environment=environment))
        scope = self.core.scope(tenant, environment)
        exp = scope.experiment(experiment)
        keys = (exp.state, scope.log, exp.states, exp.transitions, scope.tids, scope.index, exp.versions)
        args = (experiment, initial.value, etag, to_micros(now), actor or "", ENCODER.encode(meta), follows, tid,
                state_record, transition_record, version_record)

        def parse(reply: Any) -> ExperimentState:
            return msgspec.structs.replace(state, revision=int(reply[0]))

        return self.core._script("create", keys, args, parse)

    # -- transition ---------------------------------------------------------------

    def _evaluate(self, experiment: str, target: LifecycleState | None, current: LifecycleState | None,
                  telemetry: Mapping[str, float], now: datetime, tenant: str | None,
                  environment: str | None) -> list[PolicyEvaluation]:
        """Evaluations of every policy decidable in Python (all but in-script conflict checks)."""
        ctx = PolicyContext(experiment, target, current, telemetry, now)
        out = []
        for policy in self.policies:
            if isinstance(policy, ConflictPrevention):
                if not policy.covers(experiment):
                    continue
                if target in RUNNING_STATES:
                    continue  # decided inside the script
                compliant, reason = True, f"{target.value if target else 'no target'} is not Running or Ramping"
            else:
                compliant, reason = policy.evaluate(ctx)
            out.append(PolicyEvaluation(
                experiment=experiment, policy=policy.name, compliant=compliant, severity=policy.severity,
                reason=reason, timestamp=now, current_state=current, target_state=target,
                metadata={"type": policy.kind, **({"telemetry": dict(telemetry)} if telemetry else {})},
                tenant=tenant, environment=environment))
        return out

    def _skeleton(self, target: LifecycleState) -> list[tuple[str, str | None, tuple[RoleGate, ...]]]:
        """Per source state allowed into ``target``: its manual gate name and role gates (computed once)."""
        found = self._skeletons.get(target)
        if found is None:
            found = []
            for source in self.rules.sources(target):
                manual = next((g.name for g in self.gates if isinstance(g, ManualGate) and g.applies(source, target)),
                              None)
                roles = tuple(g for g in self.gates if isinstance(g, RoleGate) and g.applies(source, target))
                found.append((source.value, manual, roles))
            self._skeletons[target] = found
        return found

    def _encode_plan(self, target: LifecycleState, planned: _Plan) -> bytes:
        """The plan as JSON; with no role gate on the target and no record besides the transition,
        it depends on the target only, so it is encoded once."""
        if len(planned.records) > 1 or any(roles for _, _, roles in self._skeleton(target)):
            return ENCODER.encode(planned.plan)
        cached = self._plain_plans.get(target)
        if cached is None:
            cached = self._plain_plans[target] = ENCODER.encode(planned.plan)
        return cached

    def _plan(self, experiment: str, target: LifecycleState, tid: str, actor: str | None,
              metadata: Mapping[str, Any], now: datetime, tenant: str | None, environment: str | None,
              transition_record: bytes, evaluations: Sequence[PolicyEvaluation]) -> _Plan:
        records = [transition_record]
        approval_index: dict[Gate, int] = {}
        steps: dict[str, dict[str, Any]] = {}
        for source, manual, roles in self._skeleton(target):
            step: dict[str, Any] = {"approvals": []}
            if manual is not None:
                step["manual"] = manual
            for gate in roles:
                ok, reason = gate.decide(metadata)
                if not ok:
                    step.setdefault("deny", f"{gate.name}: {reason}")
                    continue
                if gate not in approval_index:
                    _, record = encode_record(ApprovalRecord(
                        experiment=experiment, to_state=target, approved=True, transition_id=tid,
                        approver=actor, reason=reason, timestamp=now, gate=gate.name,
                        metadata={"actorRole": metadata.get("actorRole")}, tenant=tenant,
                        environment=environment))
                    approval_index[gate] = len(records)
                    records.append(record)
                step["approvals"].append(approval_index[gate])
            steps[source] = step
        policies = []
        for evaluation in evaluations:
            policies.append([len(records), evaluation.policy])
            records.append(encode_record(evaluation)[1])
        groups = []
        if target in RUNNING_STATES:
            for policy in self.policies:
                if isinstance(policy, ConflictPrevention) and policy.covers(experiment):
                    group: dict[str, Any] = {"name": policy.name, "others": list(policy.others(experiment))}
                    for outcome, compliant in (("ok", True), ("fail", False)):
                        group[outcome] = len(records)
                        reason = ("no conflicting experiment is Running or Ramping" if compliant else
                                  f"another experiment of {', '.join(policy.experiments)} is Running or Ramping")
                        records.append(encode_record(PolicyEvaluation(
                            experiment=experiment, policy=policy.name, compliant=compliant,
                            severity=policy.severity, reason=reason, timestamp=now, target_state=target,
                            metadata={"type": policy.kind, "experiments": list(policy.experiments)},
                            tenant=tenant, environment=environment))[1])
                    groups.append(group)
        plan = {"from": steps, "policies": policies, "groups": groups}
        return _Plan(plan, records)

    def transition(
        self,
        experiment: str,
        to: LifecycleState | str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        telemetry: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        environment: str | None = None,
        expected_etag: str | None = None,
        idempotency_key: str | None = None,
    ) -> Call[StateTransition]:
        experiment, tenant, environment = self._scope_args(experiment, tenant, environment)
        target = check_state(to, "target state")
        actor = _check_actor(actor, "actor")
        meta = _check_metadata(metadata)
        measured = check_telemetry(telemetry)
        if expected_etag is not None and (not isinstance(expected_etag, str) or not expected_etag):
            raise ValidationError(f"expected_etag must be a non-empty string or None, got {expected_etag!r}")
        if idempotency_key is not None:
            check_name(idempotency_key, "idempotency_key")
        if reason is not None and not isinstance(reason, str):
            raise ValidationError(f"reason must be a string or None, got {reason!r}")
        now, etag, tid = self.now(), new_etag(), new_id()
        scope = self.core.scope(tenant, environment)
        exp = scope.experiment(experiment)
        evaluations = self._evaluate(experiment, target, None, measured, now, tenant, environment)
        blocking = [e for e in evaluations if e.severity is Severity.CRITICAL and not e.compliant]
        if blocking:
            return self._refuse(experiment, target, evaluations, blocking, tenant, environment)

        transition, transition_record = encode_record(StateTransition(
            experiment=experiment, from_state=None, to_state=target, transition_id=tid, timestamp=now, actor=actor,
            reason=reason, metadata=meta, tenant=tenant, environment=environment))
        planned = self._plan(experiment, target, tid, actor, meta, now, tenant, environment,
                             transition_record, evaluations)
        keys = (exp.base, scope.tag)
        idem = encode_part(idempotency_key) if idempotency_key is not None else ""
        args = (experiment, target, self.initial_state, expected_etag or "", etag, to_micros(now),
                actor or "", tid, self._window_ms, idem, self._encode_plan(target, planned), *planned.records)

        def parse(reply: Any) -> StateTransition:
            if int(reply[0]) == 0:  # idempotent replay of the first call
                entry = decode_fields(_text(reply[1]), _pairs(reply[2]), scope.log)
                record: StateTransition = entry.record
                return record
            return msgspec.structs.replace(transition, from_state=LifecycleState(_text(reply[2])))

        def recover(error: RedgovError) -> StateTransition:
            if isinstance(error, PolicyViolationError):
                failed_text, current_text, detail = str(error).split(" ", 2)
                current = LifecycleState(current_text)
                failed = {int(i) for i in failed_text.split(",")}
                attempt = [msgspec.structs.replace(e, current_state=current) for e in evaluations]
                for i, group in enumerate(planned.plan["groups"]):
                    index = group["fail"] if i in failed else group["ok"]
                    attempt.append(msgspec.structs.replace(
                        _decode_policy(planned.records[index]), current_state=current))
                raise PolicyViolationError(detail, attempt) from error
            raise error

        return self.core._script("transition", keys, args, parse, recover)

    def _refuse(self, experiment: str, target: LifecycleState, evaluations: Sequence[PolicyEvaluation],
                blocking: Sequence[PolicyEvaluation], tenant: str | None,
                environment: str | None) -> Call[StateTransition]:
        """A Critical telemetry policy refused: persist the evaluations, then raise."""
        sources = ",".join(s.value for s in self.rules.sources(target))
        call = self.record_evaluations(experiment, evaluations, tenant=tenant, environment=environment,
                                       check_move=f"{target.value}|{sources}")
        names = "; ".join(f"{e.policy}: {e.reason}" for e in blocking)

        def parse(reply: Any) -> NoReturn:
            recorded = call.parse(reply)
            raise PolicyViolationError(f"experiment {experiment}: {names}", recorded)

        return Call(call.keys, call.args, parse, script=call.script)

    def record_evaluations(self, experiment: str, evaluations: Sequence[PolicyEvaluation], *,
                           tenant: str | None, environment: str | None,
                           check_move: str = "") -> Call[list[PolicyEvaluation]]:
        scope = self.core.scope(tenant, environment)
        exp = scope.experiment(experiment)
        args: list[Any] = [experiment, self.initial_state.value if check_move else "", check_move]
        for evaluation in evaluations:
            args += [evaluation.policy, encode_record(evaluation)[1]]

        def parse(reply: Any) -> list[PolicyEvaluation]:
            current = _text(reply)
            if not current:
                return list(evaluations)
            state = LifecycleState(current)
            return [msgspec.structs.replace(e, current_state=state) for e in evaluations]

        keys = (exp.state, scope.log, exp.policies, exp.policy_latest)
        return self.core._script("record_evaluations", keys, tuple(args), parse)

    def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None,
                          target: LifecycleState | str | None, tenant: str | None, environment: str | None,
                          current: LifecycleState | None, others: Mapping[str, LifecycleState | None]
                          ) -> Call[list[PolicyEvaluation]]:
        """Evaluate every policy (conflict groups against ``others``' states) and persist the evaluations."""
        experiment, tenant, environment = self._scope_args(experiment, tenant, environment)
        goal = None if target is None else check_state(target, "target state")
        measured = check_telemetry(telemetry)
        now = self.now()
        evaluations = []
        for evaluation in self._evaluate(experiment, goal, current, measured, now, tenant, environment):
            evaluations.append(evaluation)
        if goal in RUNNING_STATES:
            for policy in self.policies:
                if isinstance(policy, ConflictPrevention) and policy.covers(experiment):
                    compliant, reason = policy.judge(experiment, others)
                    evaluations.append(PolicyEvaluation(
                        experiment=experiment, policy=policy.name, compliant=compliant, severity=policy.severity,
                        reason=reason, timestamp=now, current_state=current, target_state=goal,
                        metadata={"type": policy.kind, "experiments": list(policy.experiments)},
                        tenant=tenant, environment=environment))
        return self.record_evaluations(experiment, evaluations, tenant=tenant, environment=environment)

    def conflict_group_members(self, experiment: str) -> tuple[str, ...]:
        members: list[str] = [experiment]
        for policy in self.policies:
            if isinstance(policy, ConflictPrevention) and policy.covers(experiment):
                members += [e for e in policy.experiments if e not in members]
        return tuple(members)

    def states_of(self, experiments: Sequence[str], tenant: str | None,
                  environment: str | None) -> Call[dict[str, LifecycleState | None]]:
        scope = self.core.scope(tenant, environment)

        def parse(reply: Any) -> dict[str, LifecycleState | None]:
            return {name: LifecycleState(_text(v)) if v else None for name, v in zip(experiments, reply)}

        return Call((scope.index,), ("HMGET", scope.index, *experiments), parse)

    # -- approvals ----------------------------------------------------------------

    def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None,
                approved: bool, tenant: str | None, environment: str | None) -> Call[ApprovalRecord]:
        experiment, tenant, environment = self._scope_args(experiment, tenant, environment)
        target = check_state(to, "target state")
        check_name(approver, "approver")
        if not isinstance(approved, bool):
            raise ValidationError(f"approved must be True or False, got {approved!r}")
        sources = self.rules.sources(target)
        if not sources:
            raise InvalidTransitionError(f"experiment {experiment}: no rule allows a move to {target.value}, "
                                             "so it cannot be approved")
        record, data = encode_record(ApprovalRecord(
            experiment=experiment, to_state=target, approved=approved, approver=approver, reason=reason,
            timestamp=self.now(), gate=self.manual_gate_name(target), tenant=tenant, environment=environment))
        scope = self.core.scope(tenant, environment)
        exp = scope.experiment(experiment)
        keys = (exp.state, scope.log, exp.approvals, exp.pending)
        args = (experiment, target.value, self.initial_state.value, ",".join(s.value for s in sources),
                "1" if approved else "0", data)

        def parse(reply: Any) -> ApprovalRecord:
            return msgspec.structs.replace(record, from_state=LifecycleState(_text(reply[1])))

        return self.core._script("approve", keys, args, parse)

    # -- versions -------------------------------------------------------------------

    def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None,
                       description: str | None, tenant: str | None, environment: str | None,
                       is_rollback: bool = False, rolled_back_from: int | None = None) -> Call[ConfigurationVersion]:
        experiment, tenant, environment = self._scope_args(experiment, tenant, environment)
        actor = _check_actor(actor, "actor")
        config = _check_metadata(configuration, "configuration")
        now, etag = self.now(), new_etag()
        version, data = encode_record(ConfigurationVersion(
            experiment=experiment, version=0, configuration=config, configuration_hash=config_hash(config),
            created_at=now, created_by=actor, description=description, is_rollback=is_rollback,
            rolled_back_from=rolled_back_from, tenant=tenant, environment=environment))
        scope = self.core.scope(tenant, environment)
        exp = scope.experiment(experiment)
        keys = (scope.log, exp.versions, exp.state, exp.states)
        args = (experiment, "1" if self.auto_versioning else "0", etag, to_micros(now), actor or "", data)

        def parse(reply: Any) -> ConfigurationVersion:
            current = _text(reply[2])
            return msgspec.structs.replace(version, version=int(reply[0]),
                                           lifecycle_state=LifecycleState(current) if current else None)

        return self.core._script("create_version", keys, args, parse)

    # -- replay and watch -------------------------------------------------------------

    def replay(self, experiment: str, *, until: datetime | None, tenant: str | None,
               environment: str | None) -> Call[ExperimentState | None]:
        if until is not None and (not isinstance(until, datetime) or until.tzinfo is None):
            raise ValidationError(f"until must be a timezone-aware datetime, got {until!r}")
        inner = self.core.state_writes(experiment, tenant, environment, until)

        def parse(reply: Any) -> ExperimentState | None:
            states = inner.parse(reply)
            return states[-1] if states else None

        return Call(inner.keys, inner.args, parse, script=inner.script)

    def watch_read(self, *, tenant: str | None, environment: str | None, last_id: str, block_ms: int,
                   count: int) -> Call[list[GovernanceEvent]]:
        scope = self.core.scope(tenant, environment)

        def parse(reply: Any) -> list[GovernanceEvent]:
            out = []
            for _stream, items in _streams(reply):
                for entry_id, fields in items:
                    entry = decode_fields(_text(entry_id), _pairs(fields), scope.log)
                    out.append(GovernanceEvent(id=entry.id, kind=entry.kind, experiment=entry.experiment,  # type: ignore[arg-type]
                                               tenant=tenant, environment=environment, record=entry.record))
            return out

        args = ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", scope.log, last_id)
        return Call((scope.log,), args, parse)

    def last_id(self, *, tenant: str | None, environment: str | None) -> Call[str]:
        """The id of the scope's newest entry ('0-0' when none): where '$' starts watching."""
        scope = self.core.scope(tenant, environment)

        def parse(reply: Any) -> str:
            return _text(reply[0][0]) if reply else "0-0"

        return Call((scope.log,), ("XREVRANGE", scope.log, "+", "-", "COUNT", 1), parse)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _pairs(raw: Any) -> dict[str, bytes]:
    if isinstance(raw, Mapping):
        return {_text(k): v for k, v in raw.items()}
    return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}


def _streams(reply: Any) -> list[tuple[Any, Any]]:
    """XREAD's reply as [(stream, [(id, fields), ...])], from RESP2 lists or RESP3 maps."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        return [(k, v[0] if v and isinstance(v[0], list) and len(v) == 1 and isinstance(v[0][0], list) else v)
                for k, v in reply.items()]
    return [(item[0], item[1]) for item in reply]


_POLICY_DECODER = msgspec.json.Decoder(PolicyEvaluation)


def _decode_policy(data: bytes) -> PolicyEvaluation:
    return _POLICY_DECODER.decode(data)


class WatchCursor:
    """Where a watch is in a scope's log, and the next XREAD to send."""

    def __init__(self, core: GovernanceCore, *, tenant: str | None, environment: str | None,
                 experiments: Iterable[str] | None, from_id: str, block_ms: int, timeout: float | None) -> None:
        if not isinstance(from_id, str) or not from_id:
            raise ValidationError(f"from_id must be '$', '0' or a stream id, got {from_id!r}")
        if isinstance(block_ms, bool) or not isinstance(block_ms, int) or block_ms < 1:
            raise ValidationError(f"block_ms must be a positive integer, got {block_ms!r}")
        self.core, self.tenant, self.environment = core, tenant, environment
        self.wanted = None if experiments is None else set(experiments)
        self.last = from_id
        self.block_ms = block_ms
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def start(self) -> Call[str] | None:
        """The call resolving '$' to the newest id, so nothing written meanwhile is missed."""
        if self.last != "$":
            return None
        return self.core.last_id(tenant=self.tenant, environment=self.environment)

    def active(self) -> bool:
        return self.deadline is None or time.monotonic() < self.deadline

    def next_read(self) -> Call[list[GovernanceEvent]]:
        wait = self.block_ms
        if self.deadline is not None:
            wait = max(1, min(wait, int((self.deadline - time.monotonic()) * 1000)))
        return self.core.watch_read(tenant=self.tenant, environment=self.environment, last_id=self.last,
                                    block_ms=wait, count=100)

    def accept(self, events: list[GovernanceEvent]) -> list[GovernanceEvent]:
        if events:
            self.last = events[-1].id
        return [e for e in events if self.wanted is None or e.experiment in self.wanted]


def require_version(found: ConfigurationVersion | None, experiment: str, number: int) -> ConfigurationVersion:
    if found is None:
        raise NotFoundError(f"experiment {experiment} has no configuration version {number}")
    return found


def compare(replayed: ExperimentState | None, stored: ExperimentState | None) -> list[str]:
    """Differences between the state folded from the log and the stored state."""
    if replayed is None and stored is None:
        return []
    if replayed is None or stored is None:
        return [f"replay gives {replayed!r} but the stored state is {stored!r}"]
    out = []
    for name in ExperimentState.__struct_fields__:
        a, b = getattr(replayed, name), getattr(stored, name)
        if a != b:
            out.append(f"{name}: replay {a!r} != stored {b!r}")
    return out


def check_version_number(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{what} must be a version number >= 1, got {value!r}")
    return value
