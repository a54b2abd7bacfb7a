"""Sans-IO governance: the Calls and plans of Governance and AsyncGovernance.

What can be decided without the current state is decided here, in Python:
role gates (they read the call's metadata) and telemetry policies. What needs
the current state goes to the transition script: the states the rules allow
into the target, and for each whether a gate denies, whether a manual approval
must be consumed and which approval records to write. The script reads the
current state, picks its step and writes, all in one call, so a transition
never reads first and never retries. Operations of several round trips
(rollback, diff, replay, verify, evaluate_policies, listing) are plans: the
shells drive them, so they are written once for both. The policy plans are in
``govpolicies``, the read plans in ``govreads``; ``GovernanceCore`` joins them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from .calls import Call, Plan, new_etag, new_ids
from .changes import Change, config_hash, diff
from .codec import decode_fields, from_millis, stored, text, to_micros
from .core import Core
from .errors import (
    InvalidTransitionError,
    NotFoundError,
    PolicyViolationError,
    RedgovError,
    ValidationError,
)
from .gates import AutomaticGate, Gate, ManualGate, RoleGate
from .govleases import LeasePlans, check_lease
from .govpolicies import PolicyPlans, replay_refusal
from .govreads import ReadPlans, compare
from .govrules import RulesPlans, compile_target
from .keys import ExperimentKeys
from .policies import TELEMETRY_KEYS, Policy, check_telemetry
from .records import (
    ENCODER,
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    Lease,
    LifecycleState,
    PendingMove,
    Severity,
    StateTransition,
    new_id,
    utcnow,
)
from .rules import Rules
from .validate import (
    check_data,
    check_etag,
    check_name,
    check_scope_part,
    check_state,
    check_version_number,
)

__all__ = ["DEFAULT_IDEMPOTENCY_WINDOW", "GovernanceCore", "TransitionRequest", "compare"]

DEFAULT_IDEMPOTENCY_WINDOW = timedelta(hours=24)
#: longest ``approve(valid_for=...)`` accepted
MAX_VALID_FOR = timedelta(days=366)


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


def _actor_roles(metadata: Mapping[str, Any]) -> list[str]:
    """The roles a call claims for role gates: ``metadata["actorRoles"]`` (a list) and ``["actorRole"]``."""
    roles: list[str] = []
    many = metadata.get("actorRoles")
    if many is not None:
        if not isinstance(many, (list, tuple)) or not all(isinstance(r, str) for r in many):
            raise ValidationError(f"metadata actorRoles must be a list of role names, got {many!r}")
        roles.extend(many)
    one = metadata.get("actorRole")
    if one is not None:
        if not isinstance(one, str):
            raise ValidationError(f"metadata actorRole must be a role name, got {one!r}")
        roles.append(one)
    return [r for r in dict.fromkeys(roles) if r and "|" not in r]


def request_line(actor: str | None, now: datetime, reason: str | None) -> bytes:
    """A request as the state hash keeps it (lua/lib/history.lua): ``<by>\t<at µs>\t<reason>``."""
    return f"{actor or ''}\t{to_micros(now)}\t{reason or ''}".encode()


def _reason(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"reason must be a string or None, got {type(value).__name__} {value!r}")
    return value


class _Target:
    """What a transition into one target needs from the rules and gates (compiled once per target)."""

    __slots__ = ("details", "gated", "roles", "steps")

    def __init__(self, core: GovernanceCore, target: LifecycleState) -> None:
        #: the steps into the target and their gates, as lib/gates.lua reads them (govrules.compile_target)
        self.steps, self.details = compile_target(core.rules, core.gates, target)
        #: any step has gates: the call needs its plan
        self.gated = bool(self.details)
        #: the role gates of any move into the target (their approval records are made per call)
        self.roles: tuple[RoleGate, ...] = tuple(
            dict.fromkeys(g for g in core.gates if isinstance(g, RoleGate) and g.to_state is target))


class GovernanceCore(PolicyPlans, ReadPlans, LeasePlans, RulesPlans):
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
        #: the scope rules version this definition stands for (0: the scope published none); every
        #: governed write carries it and its script refuses it when no longer current
        self.rules_version = 0
        #: per scope tag, the GovernanceCore governing it (govrules.RulesPlans)
        self.views: dict[str, GovernanceCore] = {}

    def derive(self, parts: Any, version: int) -> GovernanceCore:
        """A GovernanceCore like this one under published rules version ``version``: with the published
        ``parts`` (govdefinition.Parts), or this one's own definition when ``parts`` is None."""
        own = parts is None
        derived = GovernanceCore(
            self.core, rules=self.rules if own else parts.rules, gates=self.gates if own else parts.gates,
            policies=self.policies if own else parts.policies,
            initial_state=self.initial_state if own else parts.initial_state,
            auto_versioning=self.auto_versioning, clock=self.clock, idempotency_window=self.idempotency_window,
            auto_create=self.auto_create,
            require_telemetry=self.require_telemetry if own else parts.require_telemetry)
        derived.rules_version = version
        return derived

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

    def _fence(self, lease: Lease | None, experiment: str, tenant: str | None, environment: str | None) -> str | None:
        """The fencing token a write with ``lease=`` checks (None: not fenced); the lease must be this
        experiment's (same name and scope)."""
        if lease is None:
            return None
        lease = check_lease(lease)
        if (lease.experiment, lease.tenant, lease.environment) != (experiment, tenant, environment):
            raise ValidationError(f"the lease is for experiment {lease.experiment!r} (tenant {lease.tenant!r}, "
                                  f"environment {lease.environment!r}), not for {experiment!r} (tenant {tenant!r}, "
                                  f"environment {environment!r})")
        return str(lease.token)

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
        extra = (scope.rules, *extra)
        args = (experiment, initial.value, etag, to_micros(now), actor or "", ENCODER.encode(meta), follows, intent,
                self._window_ms, stored(state), transition, version_record, tid, str(self.rules_version))

        def parse(reply: list[Any]) -> ExperimentState:
            if int(reply[0]) == 3:  # the first call with this idempotency key
                entry = decode_fields(text(reply[2]), {"k": b"state", "x": experiment.encode(), "r": reply[4],
                                                       "rev": reply[1], "etag": reply[3]}, scope.log)
                first: ExperimentState = msgspec.structs.replace(entry.record, tenant=tenant, environment=environment)
                return first
            return msgspec.structs.replace(state, revision=int(reply[1]))

        return self.core.write("create", scope, exp, args, parse, extra_keys=extra)

    # -- transition ---------------------------------------------------------------------------

    @staticmethod
    def check_requests(requests: Iterable[TransitionRequest]) -> list[TransitionRequest]:
        """``requests`` as a list (ValidationError for an item that is not a TransitionRequest)."""
        out = list(requests)
        for index, r in enumerate(out):
            if not isinstance(r, TransitionRequest):
                raise ValidationError(f"requests[{index}] must be a TransitionRequest, got {type(r).__name__}")
        return out

    def transition_many(self, requests: Iterable[TransitionRequest],
                        views: Mapping[tuple[str | None, str | None], GovernanceCore] | None = None,
                        ) -> list[Call[StateTransition]]:
        """One ``transition`` call per request, each built by the GovernanceCore governing its scope
        (``views``, by (tenant, environment); this one where absent). ValidationError, before any is sent,
        for an item that is not a TransitionRequest or is not valid."""
        calls = []
        for r in self.check_requests(requests):
            view = (views or {}).get((r.tenant, r.environment), self)
            calls.append(view.transition(r.experiment, r.to, actor=r.actor, reason=r.reason, metadata=r.metadata,
                                         telemetry=r.telemetry, tenant=r.tenant, environment=r.environment,
                                         expected_etag=r.expected_etag, idempotency_key=r.idempotency_key))
        return calls

    def transition(self, experiment: str, to: LifecycleState | str, *, actor: str | None = None,
                   reason: str | None = None, metadata: Mapping[str, Any] | None = None,
                   telemetry: Mapping[str, Any] | None = None, tenant: str | None = None,
                   environment: str | None = None, expected_etag: str | None = None,
                   idempotency_key: str | None = None, lease: Lease | None = None) -> Call[StateTransition]:
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        target = check_state(to, "target state")
        fence = self._fence(lease, experiment, tenant, environment)
        actor = _actor(actor, "actor")
        meta = check_data(metadata, "metadata")
        measured = check_telemetry(telemetry, self.telemetry_keys)
        check_etag(expected_etag)
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
        if info.gated:
            plan["details"] = info.details
            plan["tid"] = tid
            if info.roles:
                roles = _actor_roles(meta)
                if roles:
                    plan["roles"] = "|" + "|".join(roles) + "|"
                granted = self._role_records(info, experiment, target, tid, actor, meta, now, tenant, environment,
                                             records)
                if granted:
                    plan["ra"] = granted
        if target is LifecycleState.PENDING_APPROVAL:  # entering it is the request for the moves out of it
            records.append(request_line(actor, now, reason))
            plan["req"] = len(records)
        if evaluations:
            plan["policies"] = [[len(records) + i + 1, e.policy] for i, e in enumerate(evaluations)]
            records.extend(stored(e) for e in evaluations)
        extra = (scope.rules, *extra)
        groups = self._groups(experiment, target, measured, now, tenant, environment, records, scope, len(extra))
        if groups:
            plan["groups"] = groups
            extra += tuple(scope.experiment(name).state for group in groups for name, _ in group.get("others", ()))
        if fence is not None:
            extra += (exp.lease(),)
            plan["lease"] = [fence, 11 + len(extra)]
        if self.core.retain:
            plan["retain"] = self.core.retain
        if self.auto_create:
            plan["initial"] = self.initial_state.value
        if intent:
            plan.update(idem=1, intent=intent, window=self._window_ms)
        args = (experiment, target_name, expected_etag or "", etag, to_micros(now), actor or "",
                str(self.rules_version), info.steps, ENCODER.encode(plan) if plan else b"", record, *records)

        def parse(reply: list[Any]) -> StateTransition:
            if int(reply[0]) == 4:  # the first call with this idempotency key was refused by a policy
                replay_refusal(reply, experiment, scope.log)
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

        if not plan:  # the lean path: state, log, history, ops and the rules hash
            return self.core.write("transition", scope, exp, args, parse, recover=recover,
                                   extra_keys=(scope.rules,), lean=True, op=op)
        return self.core.write("transition", scope, exp, args, parse, recover=recover, extra_keys=extra, op=op)

    def _role_records(self, info: _Target, experiment: str, target: LifecycleState, tid: str, actor: str | None,
                      metadata: Mapping[str, Any], now: datetime, tenant: str | None, environment: str | None,
                      records: list[bytes]) -> dict[str, int]:
        """The approval record of each role gate into ``target`` that the call's roles satisfy, by gate name
        (their numbers among ``records``); the script judges the roles again from the governing rules."""
        granted: dict[str, int] = {}
        for gate in info.roles:
            ok, why = gate.decide(metadata)
            if not ok or gate.name in granted:
                continue
            records.append(stored(ApprovalRecord(
                experiment=experiment, to_state=target, approved=True, transition_id=tid, approver=actor,
                reason=why, timestamp=now, gate=gate.name,
                metadata={k: metadata[k] for k in ("actorRole", "actorRoles") if k in metadata},
                tenant=tenant, environment=environment)))
            granted[gate.name] = len(records)
        return granted

    # -- approvals --------------------------------------------------------------------------

    def _move(self, experiment: str, to: LifecycleState | str, tenant: str | None, environment: str | None,
              what: str) -> tuple[str, str | None, str | None, LifecycleState, tuple[str, str]]:
        """The validated names and target of an approval or a request, and the client's compiled steps
        and gates into the target (used by the script while the scope has published no rules)."""
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        target = check_state(to, "target state")
        if not self.rules.sources(target):
            raise InvalidTransitionError(f"experiment {experiment}: no rule allows a move to {target.value}, "
                                         f"so it cannot be {what}")
        info = self._target(target)
        return experiment, tenant, environment, target, (info.steps, ENCODER.encode(info.details).decode()
                                                         if info.details else "")

    def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None,
                approved: bool, tenant: str | None, environment: str | None,
                idempotency_key: str | None = None, valid_for: timedelta | None = None) -> Call[ApprovalRecord]:
        if not isinstance(approved, bool):
            raise ValidationError(f"approved must be True or False, got {approved!r}")
        experiment, tenant, environment, target, compiled = self._move(
            experiment, to, tenant, environment, "approved" if approved else "rejected")
        if valid_for is not None and (not isinstance(valid_for, timedelta)
                                      or not timedelta(milliseconds=1) <= valid_for <= MAX_VALID_FOR):
            raise ValidationError(f"valid_for must be a timedelta from 1 ms to {MAX_VALID_FOR.days} days or None, "
                                  f"got {valid_for!r}")
        check_name(approver, "approver")
        _reason(reason)
        record = ApprovalRecord(experiment=experiment, to_state=target, approved=approved, approver=approver,
                                reason=reason, timestamp=self.now(), gate=self.manual_gate_name(target),
                                tenant=tenant, environment=environment)
        scope, exp = self.core.keys(experiment, tenant, environment)
        extra, intent = self._idem(exp, idempotency_key,
                                   f"{'an approval' if approved else 'a rejection'} of the move to {target.value}")
        args = (experiment, target.value, "approve" if approved else "reject",
                self.initial_state.value if self.auto_create else "", self.core.retain, stored(record), intent,
                self._window_ms, "" if valid_for is None else str(max(1, int(valid_for.total_seconds() * 1000))),
                str(self.rules_version), *compiled, approver)

        def parse(reply: list[Any]) -> ApprovalRecord:
            if int(reply[0]) == 3:
                fields = {"k": b"approval", "x": experiment.encode(), "r": reply[3], "from": reply[2],
                          "cv": reply[5]}
                if len(reply) > 6:
                    fields["g"] = reply[6]
                if reply[4]:
                    fields["vu"] = reply[4]
                entry = decode_fields(text(reply[1]), fields, scope.log)
                return entry.record  # type: ignore[no-any-return]
            until = from_millis(int(reply[3])) if reply[3] else None
            gate = text(reply[5]) if len(reply) > 5 else record.gate
            return msgspec.structs.replace(record, from_state=LifecycleState(text(reply[2])), valid_until=until,
                                           config_version=int(reply[4]), gate=gate)

        return self.core.write("approve", scope, exp, args, parse, extra_keys=(scope.rules, *extra))

    def request(self, experiment: str, to: LifecycleState | str, *, actor: str, reason: str | None,
                tenant: str | None, environment: str | None,
                idempotency_key: str | None = None) -> Plan[PendingMove]:
        """Ask for the move to ``to`` (approve.lua in mode 'request'), then read it back as the inbox shows it."""
        experiment, tenant, environment, target, compiled = self._move(experiment, to, tenant, environment,
                                                                       "requested")
        check_name(actor, "actor")
        _reason(reason)
        scope, exp = self.core.keys(experiment, tenant, environment)
        extra, intent = self._idem(exp, idempotency_key, f"a request of the move to {target.value}")
        now = self.now()
        args = (experiment, target.value, "request", "",  # a request needs a created experiment
                self.core.retain, request_line(actor, now, reason), intent, self._window_ms, "",
                str(self.rules_version), *compiled, actor)
        yield self.core.write("approve", scope, exp, args, lambda reply: None, extra_keys=(scope.rules, *extra))
        moves = yield from self.pending(experiment, tenant=tenant, environment=environment, requested_only=False,
                                        satisfied=True)
        for move in moves:
            if move.to_state is target:
                return move
        state = yield self.core.get_state(experiment, tenant, environment)
        if state is None:
            raise NotFoundError(f"experiment {experiment} does not exist (create it first)")
        return PendingMove(experiment=experiment, from_state=state.state, to_state=target, gate="", state=state,
                           tenant=tenant, environment=environment, requested_by=actor, requested_at=now,
                           reason=reason, approvals_given=0, approvals_needed=0)

    # -- versions ---------------------------------------------------------------------------

    def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None,
                       description: str | None, tenant: str | None, environment: str | None,
                       is_rollback: bool = False, rolled_back_from: int | None = None,
                       idempotency_key: str | None = None, lease: Lease | None = None) -> Call[ConfigurationVersion]:
        experiment, tenant, environment = self._names(experiment, tenant, environment)
        fence = self._fence(lease, experiment, tenant, environment)
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
                to_micros(now), actor or "", self.core.retain, stored(version), intent, self._window_ms, fence or "")
        if fence is not None:
            extra += (exp.lease(),)

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
                 environment: str | None, idempotency_key: str | None = None,
                 lease: Lease | None = None) -> Plan[ConfigurationVersion]:
        number = check_version_number(to_version, "to_version")
        old = yield from self.core.version(experiment, number, tenant, environment)
        if old is None:
            raise NotFoundError(f"experiment {experiment} has no configuration version {number}")
        call = self.create_version(experiment, old.configuration, actor=actor,
                                   description=f"rollback to version {number}", tenant=tenant,
                                   environment=environment, is_rollback=True, rolled_back_from=number,
                                   idempotency_key=idempotency_key, lease=lease)
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
