"""Sans-IO governance: the Calls and plans of Governance and AsyncGovernance.

What can be decided without the current state is decided here, in Python:
role gates (they read the call's metadata) and telemetry policies. What needs
the current state goes to the transition script: the states the rules allow
into the target, and for each whether a gate denies, whether a manual approval
must be consumed and which approval records to write. The script reads the
current state, picks its step and writes, all in one call, so a transition
never reads first and never retries. Operations of several round trips
(rollback, diff, replay, verify, evaluate_policies, listing) are plans: the
shells drive them, so they are written once for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import msgspec

from .changes import Change, config_hash, diff
from .codec import decode_fields, decode_state_hash, from_micros, state_fields, stored, text, to_micros
from .core import Call, Core, Plan, _settled, check_version_number, new_etag, new_ids
from .errors import (
    CorruptDataError,
    InvalidTransitionError,
    NotFoundError,
    PolicyViolationError,
    RedgovError,
    ValidationError,
)
from .gates import AutomaticGate, Gate, ManualGate, RoleGate
from .keys import ExperimentKeys, Scope
from .policies import RUNNING_STATES, TELEMETRY_KEYS, ConflictPrevention, Policy, PolicyContext, TrafficLimit, check_telemetry
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
from .validate import check_data, check_name, check_scope_part, check_state

__all__ = ["DEFAULT_IDEMPOTENCY_WINDOW", "GovernanceCore", "TransitionRequest", "compare"]

DEFAULT_IDEMPOTENCY_WINDOW = timedelta(hours=24)
#: experiments listed per round trip
LIST_PAGE = 200
_POLICY_DECODER = msgspec.json.Decoder(PolicyEvaluation)


class TransitionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One item of ``transition_many``: the arguments of one ``Governance.transition`` call.

    Fields: ``experiment``, ``to`` (the target LifecycleState), ``actor``, ``reason``,
    ``metadata``, ``telemetry``, ``tenant``, ``environment``, ``expected_etag`` and
    ``idempotency_key``, each meaning what it means for ``transition``.
    """

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


def _actor(value: object, what: str) -> str | None:
    return None if value is None else check_name(value, what)


def _reason(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"reason must be a string or None, got {type(value).__name__} {value!r}")
    return value


class _Target:
    """What a transition into one target needs from the rules and gates (computed once per target)."""

    __slots__ = ("dynamic", "manual_only", "sources", "steps")

    def __init__(self, core: GovernanceCore, target: LifecycleState) -> None:
        self.sources: list[tuple[str, str | None, tuple[RoleGate, ...]]] = []
        for source in core.rules.sources(target):
            manual = next((g.name for g in core.gates if isinstance(g, ManualGate) and g.applies(source, target)),
                          None)
            roles = tuple(g for g in core.gates if isinstance(g, RoleGate) and g.applies(source, target))
            self.sources.append((source.value, manual, roles))
        #: role gates decide per call; otherwise the steps string and details are fixed
        self.dynamic = any(roles for _, _, roles in self.sources)
        self.manual_only: dict[str, Any] = {}
        parts = []
        for number, (name, manual, roles) in enumerate(self.sources, start=1):
            if manual is not None or roles:
                parts.append(f"{name}:{number}")
                if manual is not None and not roles:
                    self.manual_only[str(number)] = {"manual": manual}
            else:
                parts.append(f"{name}:0")
        self.steps = "|" + "|".join(parts) + "|" if parts else "|"


class GovernanceCore:
    """Validation, Calls and plans for one Governance configuration."""

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
        auto_create: bool = False,
        require_telemetry: bool = False,
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
        self.auto_create = bool(auto_create)
        self.require_telemetry = bool(require_telemetry)
        known = dict.fromkeys(TELEMETRY_KEYS)
        for policy in self.policies:
            for key in policy.telemetry_keys:
                known[check_name(key, f"{policy.name}.telemetry_keys entry")] = None
        self.telemetry_keys: tuple[str, ...] = tuple(known)
        if clock is not None and not callable(clock):
            raise ValidationError(f"clock must be a callable returning a timezone-aware datetime, got {clock!r}")
        self.clock = clock or utcnow
        if not isinstance(idempotency_window, timedelta) or idempotency_window <= timedelta(0):
            raise ValidationError(f"idempotency_window must be a positive timedelta, got {idempotency_window!r}")
        self.idempotency_window = idempotency_window
        self._window_ms = int(idempotency_window.total_seconds() * 1000)
        self._targets: dict[LifecycleState, _Target] = {}

    def __repr__(self) -> str:
        return (f"GovernanceCore(prefix={self.core.prefix!r}, gates={len(self.gates)}, "
                f"policies={len(self.policies)})")

    # -- helpers ------------------------------------------------------------------------

    def now(self) -> datetime:
        moment = self.clock()
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise ValidationError(f"clock() must return a timezone-aware datetime, got {moment!r}")
        return moment if moment.tzinfo is UTC else moment.astimezone(UTC)

    def _names(self, experiment: object, tenant: object, environment: object) -> tuple[str, str | None, str | None]:
        return (check_name(experiment, "experiment"), check_scope_part(tenant, "tenant"),
                check_scope_part(environment, "environment"))

    def _idem(self, exp: ExperimentKeys, key: object, intent: str) -> tuple[tuple[str, ...], str]:
        """(extra keys, intent) of an idempotency key (none: ((), ''))."""
        if key is None:
            return (), ""
        check_name(key, "idempotency_key")
        return (exp.idempotency(key),), intent  # type: ignore[arg-type]

    def _target(self, target: LifecycleState) -> _Target:
        found = self._targets.get(target)
        if found is None:
            found = self._targets[target] = _Target(self, target)
        return found

    def manual_gate_name(self, target: LifecycleState) -> str:
        for gate in self.gates:
            if isinstance(gate, ManualGate) and gate.to_state is target:
                return gate.name
        return "manual"

    # -- create -----------------------------------------------------------------------------

    def create(self, experiment: str, *, tenant: str | None, environment: str | None, actor: str | None,
               configuration: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None,
               idempotency_key: str | None = None) -> Call[ExperimentState]:
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        actor = _actor(actor, "actor")
        meta = check_data(metadata, "metadata")
        now, etag, tid = self.now(), new_etag(), new_id()
        initial = self.initial_state
        version_record = b""
        follows = 0
        if configuration is not None:
            config = check_data(configuration, "configuration")
            version_record = stored(ConfigurationVersion(
                experiment=experiment, version=1, configuration=config, configuration_hash=config_hash(config),
                created_at=now, created_by=actor, description="initial configuration", lifecycle_state=initial,
                tenant=tenant, environment=environment))
            follows = 1 if self.auto_versioning else 0
        state = ExperimentState(experiment=experiment, state=initial, config_version=follows, last_modified=now,
                                last_modified_by=actor, etag=etag, metadata=meta, tenant=tenant,
                                environment=environment)
        transition = stored(StateTransition(
            experiment=experiment, from_state=None, to_state=initial, transition_id=tid, timestamp=now,
            actor=actor, reason="created", tenant=tenant, environment=environment))
        scope, exp = self.core.keys(experiment, tenant, environment)
        extra, intent = self._idem(exp, idempotency_key, "creating the experiment")
        args = (experiment, initial.value, etag, to_micros(now), actor or "", ENCODER.encode(meta), follows, intent,
                self._window_ms, stored(state), transition, version_record, tid)

        def parse(reply: list[Any]) -> ExperimentState:
            if int(reply[0]) == 3:  # the first call with this idempotency key
                entry = decode_fields(text(reply[2]), {"k": b"state", "x": experiment.encode(), "r": reply[4],
                                                       "rev": reply[1], "etag": reply[3]}, scope.log)
                first: ExperimentState = msgspec.structs.replace(entry.record, tenant=tenant, environment=environment)
                return first
            return msgspec.structs.replace(state, revision=int(reply[1]))

        return self.core.write("create", scope, exp, args, parse, extra_keys=extra)

    # -- transition ---------------------------------------------------------------------------

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

    def transition(self, experiment: str, to: LifecycleState | str, *, actor: str | None = None,
                   reason: str | None = None, metadata: Mapping[str, Any] | None = None,
                   telemetry: Mapping[str, Any] | None = None, tenant: str | None = None,
                   environment: str | None = None, expected_etag: str | None = None,
                   idempotency_key: str | None = None) -> Call[StateTransition]:
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        target = check_state(to, "target state")
        actor = _actor(actor, "actor")
        meta = check_data(metadata, "metadata")
        measured = check_telemetry(telemetry, self.telemetry_keys)
        if expected_etag is not None and (not isinstance(expected_etag, str) or not expected_etag):
            raise ValidationError(f"expected_etag must be a non-empty string or None, got {expected_etag!r}")
        if reason is not None:
            _reason(reason)
        now = self.now()
        etag, op, tid = new_ids()
        scope, exp = self.core.keys(experiment, tenant, environment)
        target_name = target._value_
        extra, intent = self._idem(exp, idempotency_key, f"a transition to {target_name}") \
            if idempotency_key is not None else ((), "")
        evaluations = self._evaluate(experiment, target, None, measured, now, tenant, environment,
                                     in_script=True) if self.policies else []
        blocking = [e for e in evaluations if e.severity is Severity.CRITICAL and not e.compliant]
        if blocking:
            return self._refuse(experiment, target, evaluations, blocking, scope, exp, extra, intent)

        transition = StateTransition(experiment=experiment, from_state=None, to_state=target, transition_id=tid,
                                     timestamp=now, actor=actor, reason=reason, metadata=meta, tenant=tenant,
                                     environment=environment)
        record = stored(transition)
        info = self._target(target)
        plan: dict[str, Any] = {}
        records: list[bytes] = []
        if info.dynamic:
            plan["details"] = self._details(info, experiment, target, tid, actor, meta, now, tenant, environment,
                                            records)
        elif info.manual_only:
            plan["details"] = info.manual_only
        if plan.get("details"):
            plan["tid"] = tid
        if evaluations:
            plan["policies"] = [[len(records) + i + 1, e.policy] for i, e in enumerate(evaluations)]
            records.extend(stored(e) for e in evaluations)
        groups = self._groups(experiment, target, measured, now, tenant, environment, records, scope, len(extra))
        if groups:
            plan["groups"] = groups
            extra += tuple(scope.experiment(name).state for group in groups for name, _ in group.get("others", ()))
        if self.core.retain:
            plan["retain"] = self.core.retain
        if self.auto_create:
            plan["initial"] = self.initial_state.value
        if intent:
            plan.update(idem=1, intent=intent, window=self._window_ms)
        args = (experiment, target_name, expected_etag or "", etag, to_micros(now), actor or "", info.steps,
                ENCODER.encode(plan) if plan else b"", record, *records)

        def parse(reply: list[Any]) -> StateTransition:
            if int(reply[0]) == 4:  # the first call with this idempotency key was refused by a policy
                _replay_refusal(reply, experiment, scope.log)
            if int(reply[0]) == 3:  # the first call with this idempotency key
                entry = decode_fields(text(reply[2]), {"k": b"transition", "x": experiment.encode(), "r": reply[5],
                                                       "from": reply[3], "rev": reply[1], "etag": reply[4]},
                                      scope.log)
                return entry.record  # type: ignore[no-any-return]
            return msgspec.structs.replace(transition, from_state=LifecycleState(text(reply[3])),
                                           revision=int(reply[1]), etag=etag)

        def recover(error: RedgovError) -> StateTransition:
            if isinstance(error, PolicyViolationError):
                failed_text, current_text, detail = str(error).split(" ", 2)
                current = LifecycleState(current_text)
                failed = set() if failed_text == "-" else {int(i) for i in failed_text.split(",")}
                attempt = [msgspec.structs.replace(e, current_state=current) for e in evaluations]
                for i, group in enumerate(groups):
                    index = group["fail"] if i in failed else group["ok"]
                    attempt.append(msgspec.structs.replace(
                        decode_fields("-", {"k": b"policy", "x": experiment.encode(), "r": records[index - 1]},
                                      scope.log).record, current_state=current))
                raise PolicyViolationError(detail, attempt) from error
            raise error

        return self.core.write("transition", scope, exp, args, parse, recover=recover, extra_keys=extra,
                               lean=not plan, op=op)

    def _details(self, info: _Target, experiment: str, target: LifecycleState, tid: str, actor: str | None,
                 metadata: Mapping[str, Any], now: datetime, tenant: str | None, environment: str | None,
                 records: list[bytes]) -> dict[str, Any]:
        """The step details of this call: role gates decided on its metadata, manual gates named."""
        details: dict[str, Any] = {}
        approval_index: dict[Gate, int] = {}
        for number, (_source, manual, roles) in enumerate(info.sources, start=1):
            if manual is None and not roles:
                continue
            step: dict[str, Any] = {"approvals": []}
            if manual is not None:
                step["manual"] = manual
            for gate in roles:
                ok, why = gate.decide(metadata)
                if not ok:
                    step.setdefault("deny", f"{gate.name}: {why}")
                    continue
                if gate not in approval_index:
                    records.append(stored(ApprovalRecord(
                        experiment=experiment, to_state=target, approved=True, transition_id=tid, approver=actor,
                        reason=why, timestamp=now, gate=gate.name, metadata={"actorRole": metadata.get("actorRole")},
                        tenant=tenant, environment=environment)))
                    approval_index[gate] = len(records)
                step["approvals"].append(approval_index[gate])
            details[str(number)] = step
        return details

    def _groups(self, experiment: str, target: LifecycleState, telemetry: Mapping[str, Any], now: datetime,
                tenant: str | None, environment: str | None, records: list[bytes], scope: Scope,
                idem_keys: int) -> list[dict[str, Any]]:
        """The policies the transition script decides, each with both verdicts: the ConflictPrevention groups
        of a move into Running or Ramping, and the TrafficLimits that need the stored stable time."""
        groups: list[dict[str, Any]] = []
        for policy in self.policies:
            need = policy.stored_stability(telemetry) if isinstance(policy, TrafficLimit) else None
            if need is None:
                continue
            reasons = policy.verdicts(telemetry)
            group: dict[str, Any] = {"name": policy.name, "since": to_micros(now - need), "why": reasons[1]}
            if policy.severity is not Severity.CRITICAL:
                group["soft"] = 1
            for (outcome, compliant), reason in zip((("ok", True), ("fail", False)), reasons):
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
                _replay_refusal(reply, experiment, scope.log)
            raise PolicyViolationError(message, call.parse(reply))

        return Call(call.keys, call.args, parse, call.script, None, call.state_key, call.scope)

    def _record(self, experiment: str, evaluations: Sequence[PolicyEvaluation], scope: Scope, exp: ExperimentKeys,
                move: str, extra: tuple[str, ...], intent: str, refusal: str) -> Call[list[PolicyEvaluation]]:
        args: list[Any] = [experiment, self.initial_state.value if self.auto_create else "", move, self.core.retain,
                           intent, self._window_ms, refusal]
        for evaluation in evaluations:
            args += [evaluation.policy, stored(evaluation)]

        def parse(reply: list[Any]) -> list[PolicyEvaluation]:
            state = LifecycleState(text(reply[1]))
            return [msgspec.structs.replace(e, current_state=state) for e in evaluations]

        return self.core.write("record_evaluations", scope, exp, tuple(args), parse, extra_keys=extra)

    # -- approvals --------------------------------------------------------------------------

    def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None,
                approved: bool, tenant: str | None, environment: str | None,
                idempotency_key: str | None = None) -> Call[ApprovalRecord]:
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        target = check_state(to, "target state")
        check_name(approver, "approver")
        _reason(reason)
        if not isinstance(approved, bool):
            raise ValidationError(f"approved must be True or False, got {approved!r}")
        sources = self.rules.sources(target)
        if not sources:
            raise InvalidTransitionError(f"experiment {experiment}: no rule allows a move to {target.value}, "
                                         "so it cannot be approved")
        record = ApprovalRecord(experiment=experiment, to_state=target, approved=approved, approver=approver,
                                reason=reason, timestamp=self.now(), gate=self.manual_gate_name(target),
                                tenant=tenant, environment=environment)
        scope, exp = self.core.keys(experiment, tenant, environment)
        extra, intent = self._idem(exp, idempotency_key,
                                   f"{'an approval' if approved else 'a rejection'} of the move to {target.value}")
        args = (experiment, target.value, "|" + "|".join(s.value for s in sources) + "|", "1" if approved else "0",
                self.initial_state.value if self.auto_create else "", self.core.retain, stored(record), intent,
                self._window_ms)

        def parse(reply: list[Any]) -> ApprovalRecord:
            if int(reply[0]) == 3:
                entry = decode_fields(text(reply[1]), {"k": b"approval", "x": experiment.encode(), "r": reply[3],
                                                       "from": reply[2]}, scope.log)
                return entry.record  # type: ignore[no-any-return]
            return msgspec.structs.replace(record, from_state=LifecycleState(text(reply[2])))

        return self.core.write("approve", scope, exp, args, parse, extra_keys=extra)

    # -- versions ---------------------------------------------------------------------------

    def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None,
                       description: str | None, tenant: str | None, environment: str | None,
                       is_rollback: bool = False, rolled_back_from: int | None = None,
                       idempotency_key: str | None = None) -> Call[ConfigurationVersion]:
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        actor = _actor(actor, "actor")
        if description is not None and not isinstance(description, str):
            raise ValidationError(f"description must be a string or None, got {description!r}")
        if configuration is None:
            raise ValidationError("configuration must be a mapping, got None")
        config = check_data(configuration, "configuration")
        now, etag = self.now(), new_etag()
        version = ConfigurationVersion(
            experiment=experiment, version=1, configuration=config, configuration_hash=config_hash(config),
            created_at=now, created_by=actor, description=description, is_rollback=is_rollback,
            rolled_back_from=rolled_back_from, tenant=tenant, environment=environment)
        scope, exp = self.core.keys(experiment, tenant, environment)
        kind = f"a rollback to version {rolled_back_from}" if is_rollback else "a new configuration version"
        extra, intent = self._idem(exp, idempotency_key, kind)
        args = (experiment, "1" if self.auto_versioning else "0", "0" if self.auto_create else "1", etag,
                to_micros(now), actor or "", self.core.retain, stored(version), intent, self._window_ms)

        def parse(reply: list[Any]) -> ConfigurationVersion:
            if int(reply[0]) == 3:
                fields = {"k": b"version", "x": experiment.encode(), "r": reply[5], "v": reply[1]}
                if reply[3]:
                    fields["from"] = reply[3]
                return decode_fields("-", fields, scope.log).record  # type: ignore[no-any-return]
            current = text(reply[3])
            return msgspec.structs.replace(version, version=int(reply[1]),
                                           lifecycle_state=LifecycleState(current) if current else None)

        return self.core.write("create_version", scope, exp, args, parse, extra_keys=extra)

    def rollback(self, experiment: str, to_version: int, *, actor: str | None, tenant: str | None,
                 environment: str | None, idempotency_key: str | None = None) -> Plan[ConfigurationVersion]:
        number = check_version_number(to_version, "to_version")
        old = yield from self.core.version(experiment, number, tenant, environment)
        if old is None:
            raise NotFoundError(f"experiment {experiment} has no configuration version {number}")
        call = self.create_version(experiment, old.configuration, actor=actor,
                                   description=f"rollback to version {number}", tenant=tenant,
                                   environment=environment, is_rollback=True, rolled_back_from=number,
                                   idempotency_key=idempotency_key)
        result: ConfigurationVersion = yield call
        return result

    def diff(self, experiment: str, from_version: int, to_version: int, *, tenant: str | None,
             environment: str | None) -> Plan[list[Change]]:
        configurations = []
        for number in (check_version_number(from_version, "from_version"),
                       check_version_number(to_version, "to_version")):
            found = yield from self.core.version(experiment, number, tenant, environment)
            if found is None:
                raise NotFoundError(f"experiment {experiment} has no configuration version {number}")
            configurations.append(found.configuration)
        return diff(configurations[0], configurations[1])

    # -- policies ---------------------------------------------------------------------------

    def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None,
                          target: LifecycleState | str | None, tenant: str | None,
                          environment: str | None) -> Plan[list[PolicyEvaluation]]:
        """Evaluate every policy (each conflict group against its members' states) and persist the evaluations."""
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        goal = None if target is None else check_state(target, "target state")
        measured = check_telemetry(telemetry, self.telemetry_keys)
        members = self.conflict_group_members(experiment)
        states = yield self.states_of(members, tenant, environment)
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
        scope, exp = self.core.keys(experiment, tenant, environment)
        recorded: list[PolicyEvaluation] = yield self._record(experiment, evaluations, scope, exp, "", (), "", "")
        return recorded

    def running_since(self, experiment: str, tenant: str | None, environment: str | None) -> Call[datetime | None]:
        """When the experiment last entered Running or Ramping (field rs of its state hash; a state without
        it, as a restored one, gives its last state write: a lower bound of the stable time)."""
        key = self.core.scope(tenant, environment).experiment(experiment).state

        def parse(reply: Any) -> datetime | None:
            for field, value in zip(("rs", "t"), reply):
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
                  environment: str | None) -> Call[dict[str, LifecycleState | None]]:
        """The current state name of each experiment (one call: a script reading their state hashes)."""
        scope = self.core.scope(tenant, environment)
        keys = tuple(scope.experiment(name).state for name in experiments)
        settled = _settled(keys)

        def parse(reply: Any) -> dict[str, LifecycleState | None]:
            out: dict[str, LifecycleState | None] = {}
            for name, key, values in zip(experiments, keys, settled(reply)):
                state = decode_state_hash(values, key, name, tenant, environment)
                out[name] = None if state is None else state.state
            return out

        return Call(keys, tuple(("HMGET", key, *state_fields()) for key in keys), parse, batch=True)

    # -- reading ------------------------------------------------------------------------------

    def allowed_transitions(self, experiment: str, *, tenant: str | None,
                            environment: str | None) -> Plan[list[LifecycleState]]:
        state = yield self.core.get_state(experiment, tenant, environment)
        if state is None:
            if not self.auto_create:
                raise NotFoundError(f"experiment {experiment} does not exist (create it first)")
            return self.rules.allowed(self.initial_state)
        return self.rules.allowed(state.state)

    def experiments(self, *, tenant: str | None, environment: str | None,
                    state: LifecycleState | str | None = None) -> Plan[list[ExperimentState]]:
        """The experiments of a scope (only those in ``state``), by name: the index read in pages."""
        wanted = None if state is None else check_state(state, "state")
        scope = self.core.scope(tenant, environment)
        out: list[ExperimentState] = []
        after = "-"
        while True:
            names = yield Call((scope.index,), ("ZRANGEBYLEX", scope.index, after, "+", "LIMIT", 0, LIST_PAGE),
                               _names_reply(scope.index))
            if not names:
                break
            keys = tuple(scope.experiment(name).state for name in names)

            def parse(reply: Any, names: list[str] = names, keys: tuple[str, ...] = keys) -> list[ExperimentState]:
                found = []
                for name, key, values in zip(names, keys, _settled(keys)(reply)):
                    decoded = decode_state_hash(values, key, name, tenant, environment)
                    if decoded is not None:
                        found.append(decoded)
                return found

            page = yield Call(keys, tuple(("HMGET", key, *state_fields()) for key in keys), parse, batch=True)
            out.extend(s for s in page if wanted is None or s.state is wanted)
            if len(names) < LIST_PAGE:
                break
            after = "(" + names[-1]
        return out

    def replay(self, experiment: str, *, until: datetime | None, tenant: str | None,
               environment: str | None) -> Plan[ExperimentState | None]:
        if until is not None and (not isinstance(until, datetime) or until.tzinfo is None):
            raise ValidationError(f"until must be a timezone-aware datetime, got {until!r}")
        states = yield from self.core.state_writes(experiment, tenant, environment, until)
        return states[-1] if states else None

    def verify(self, experiment: str, *, tenant: str | None, environment: str | None) -> Plan[list[str]]:
        replayed = yield from self.replay(experiment, until=None, tenant=tenant, environment=environment)
        stored_state = yield self.core.get_state(experiment, tenant, environment)
        return compare(replayed, stored_state)


def _replay_refusal(reply: list[Any], experiment: str, log_key: str) -> NoReturn:
    """Raise the PolicyViolationError an idempotency key's first call got, with the evaluations it recorded."""
    rest = text(reply[1]).removeprefix("REDGOV_POLICY_VIOLATION ")
    _failed, current_text, detail = rest.split(" ", 2)
    current = LifecycleState(current_text)
    evaluations = [msgspec.structs.replace(
        decode_fields("-", {"k": b"policy", "x": experiment.encode(), "r": record}, log_key).record,
        current_state=current) for record in reply[2:]]
    raise PolicyViolationError(detail, evaluations)


def _names_reply(key: str) -> Callable[[Any], list[str]]:
    def parse(reply: Any) -> list[str]:
        try:
            return [text(name) for name in reply]
        except (TypeError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"scope index {key} cannot be decoded: {exc!r}") from None

    return parse


def compare(replayed: ExperimentState | None, stored_state: ExperimentState | None) -> list[str]:
    """Differences between the state folded from the log and the stored state (readable lines)."""
    if replayed is None and stored_state is None:
        return []
    if replayed is None:
        return [f"the log holds no state write, but a state is stored ({stored_state.state.value}, "  # type: ignore[union-attr]
                f"revision {stored_state.revision})"]  # type: ignore[union-attr]
    if stored_state is None:
        return [f"the log ends in {replayed.state.value} (revision {replayed.revision}), but no state is stored"]
    out = []
    for name in ExperimentState.__struct_fields__:
        a, b = getattr(replayed, name), getattr(stored_state, name)
        if a != b:
            out.append(f"{name}: the log says {_show(a)}, the stored state says {_show(b)}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, LifecycleState):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)
