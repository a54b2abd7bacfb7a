"""Model-based test: random Governance operations against a pure-Python model.

A hypothesis ``RuleBasedStateMachine`` drives one ``Governance`` (a manual gate
into Approved, a role gate into Ramping, an automatic gate into PendingApproval;
ErrorRate, TrafficLimit and a ConflictPrevention group of "a" and "b") over the
experiments "a", "b" and "c", and a model made of dicts and lists that knows the
lifecycle rules (``redgov.rules``) and nothing else of redgov: gates, policies,
approvals, versions, revisions and the order of the checks are modelled here.

The order of checks modelled is the implementation's: a Critical telemetry
violation refuses first, except that a move the rules forbid is an invalid
transition even then; then the expected etag, the rule, a denying gate, a
missing manual approval and the conflict groups. After every step the model and
redgov are compared: the outcome (exception type or success), the state, the
history, the approvals (and which transition consumed each), the versions and
the persisted policy evaluations. Invariants: the revision goes up by exactly
one per write, an etag never repeats for an experiment, ``replay() == state()``
and ``verify() == []``, history only grows, the state stays reachable from the
initial state. The clock is a fake advancing one second per call, so every
timestamp is predicted exactly.

It runs on ``memory://`` (many examples) and on the real Redis (fewer).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import redgov
from redgov import (
    ApprovalRecord,
    ApprovalRequiredError,
    AutomaticGate,
    ConflictError,
    ConflictPrevention,
    ErrorRate,
    ExperimentState,
    Governance,
    InvalidTransitionError,
    LifecycleState,
    ManualGate,
    NotFoundError,
    PolicyViolationError,
    RedgovError,
    RoleGate,
    TrafficLimit,
)
from redgov.rules import Rules

from .conftest import delete_prefix

S = LifecycleState
T = TypeVar("T")

RULES = Rules()  # the default table: the only piece of redgov the model borrows
INITIAL = S.DRAFT
REACHABLE = RULES.reachable(INITIAL)
RUNNING_STATES = (S.RUNNING, S.RAMPING)

EXPERIMENTS = ("a", "b", "c")
GROUP = ("a", "b")  # ConflictPrevention("a", "b")
MAX_ERROR_RATE = 0.1  # the model's copies of ErrorRate(0.1), TrafficLimit(50)
MAX_TRAFFIC = 50.0
ROLE_OK = "sre"
MANUAL_GATE = "manual:*->Approved"
ROLE_GATE = "roleBased:*->Ramping"
POLICY_NAMES = ("errorRate", "trafficLimit", "conflictPrevention")
START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A deterministic clock: every call is one second after the previous one."""

    def __init__(self) -> None:
        self.ticks = 0

    def __call__(self) -> datetime:
        self.ticks += 1
        return START + timedelta(seconds=self.ticks)


# -- strategies -------------------------------------------------------------------------

experiments = st.sampled_from(EXPERIMENTS)
group_first = st.sampled_from(("a", "b", "a", "b", "c"))  # the conflict group more often
states = st.sampled_from(list(LifecycleState))
roles = st.sampled_from((None, "sre", "sre", "dev", "admin"))
# None (missing) counts as compliant; 0.1 and 50 sit exactly on the limits (compliant)
error_rates = st.sampled_from((None, None, None, 0.0, 0.1, 0.1000001, 0.5))
traffic = st.sampled_from((None, None, None, 0, 50, 50.5, 100))
actors = st.sampled_from((None, "alice", "bob"))
picks = st.integers(min_value=0, max_value=11)
configurations = st.dictionaries(st.sampled_from(("percent", "variant", "seed")),
                                 st.integers(min_value=0, max_value=100) | st.sampled_from(("x", "y")),
                                 max_size=3)
create_metadata = st.none() | st.fixed_dictionaries({"owner": st.sampled_from(("t1", "t2"))})


# -- the model ----------------------------------------------------------------------------


@dataclass
class MTransition:
    from_state: LifecycleState | None
    to_state: LifecycleState
    timestamp: datetime
    actor: str | None
    reason: str | None
    metadata: dict[str, Any]
    transition_id: str | None  # known from transition()'s return; None for create's entry


@dataclass
class MApproval:
    from_state: LifecycleState
    to_state: LifecycleState
    approved: bool
    gate: str
    approver: str | None
    timestamp: datetime
    approval_id: str | None  # known from approve()'s return; None for a role gate's record
    transition: int | None = None  # index into history of the transition it is linked to


@dataclass
class MVersion:
    number: int
    configuration: dict[str, Any]
    lifecycle_state: LifecycleState | None
    created_at: datetime
    created_by: str | None
    description: str | None
    is_rollback: bool = False
    rolled_back_from: int | None = None


@dataclass
class MExperiment:
    state: LifecycleState | None = None
    revision: int = 0
    config_version: int = 0
    last_modified: datetime | None = None
    last_modified_by: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    history: list[MTransition] = field(default_factory=list)
    approvals: list[MApproval] = field(default_factory=list)
    pending: dict[tuple[LifecycleState, LifecycleState], int] = field(default_factory=dict)
    versions: list[MVersion] = field(default_factory=list)
    evaluations: int = 0
    # policy name -> (compliant, current_state, target_state) of the latest persisted evaluation
    latest: dict[str, tuple[bool, LifecycleState | None, LifecycleState | None]] = field(default_factory=dict)
    # what redgov returned so far: revision -> etag, and the history length
    etags: dict[int, str] = field(default_factory=dict)
    seen_revision: int = 0
    seen_history: int = 0

    def write(self, now: datetime, actor: str | None) -> None:
        self.revision += 1
        self.last_modified = now
        self.last_modified_by = actor

    def record_evaluations(self, evaluations: list[tuple[str, bool]], current: LifecycleState,
                           target: LifecycleState) -> None:
        for name, compliant in evaluations:
            self.evaluations += 1
            self.latest[name] = (compliant, current, target)


@dataclass(frozen=True)
class Outcome:
    """What the model expects a call to do: raise ``error`` or succeed."""

    error: type[RedgovError] | None = None
    # for PolicyViolationError: (policy, compliant) of every evaluation it carries, and the current state
    evaluations: tuple[tuple[str, bool], ...] = ()
    current: LifecycleState | None = None


def _run(call: Callable[[], T]) -> tuple[T | None, RedgovError | None]:
    try:
        return call(), None
    except RedgovError as exc:
        return None, exc


def _telemetry(error_rate: float | None, traffic_percentage: float | None) -> dict[str, float] | None:
    out: dict[str, float] = {}
    if error_rate is not None:
        out["errorRate"] = error_rate
    if traffic_percentage is not None:
        out["trafficPercentage"] = traffic_percentage
    return out or None


# -- the machine ----------------------------------------------------------------------------


class GovernanceMachine(RuleBasedStateMachine):
    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self.prefix = "g" + uuid.uuid4().hex[:12]
        self.clock = FakeClock()
        self.ticks = 0  # the model's own count of clock calls
        bp = redgov.connect(url, prefix=self.prefix)
        self.gov = Governance(
            bp,
            gates=[ManualGate(to_state="Approved"), RoleGate("sre", to_state="Ramping"),
                   AutomaticGate(to_state="PendingApproval")],
            policies=[ErrorRate(0.1), TrafficLimit(50), ConflictPrevention("a", "b")],
            clock=self.clock,
            auto_create=True,  # the model's experiments exist from the start, in the initial state
        )
        self.model = {x: MExperiment() for x in EXPERIMENTS}

    def teardown(self) -> None:
        try:
            if not self.url.startswith("memory://"):
                delete_prefix(self.gov.backplane.client, self.prefix)
        finally:
            self.gov.close()

    # -- model helpers ---------------------------------------------------------------------

    def _tick(self) -> datetime:
        self.ticks += 1
        return START + timedelta(seconds=self.ticks)

    def _current(self, x: str) -> LifecycleState:
        state = self.model[x].state
        return INITIAL if state is None else state

    def _expect(self, what: str, outcome: Outcome, result: object, error: RedgovError | None) -> None:
        got = type(error).__name__ if error is not None else "success"
        want = outcome.error.__name__ if outcome.error is not None else "success"
        event(f"{what}: {want}")
        assert got == want, f"{what}: expected {want}, got {got}: {error}"
        if isinstance(error, PolicyViolationError):
            carried = tuple((e.policy, e.compliant) for e in error.evaluations)
            assert carried == outcome.evaluations, (carried, outcome.evaluations)
            assert {e.current_state for e in error.evaluations} == {outcome.current}, error.evaluations
        assert self.clock.ticks == self.ticks, f"clock called {self.clock.ticks} times, model expects {self.ticks}"

    # -- the model of transition ----------------------------------------------------------------

    def _model_transition(self, x: str, target: LifecycleState, role: str | None, telemetry: dict[str, float] | None,
                          expected_etag: str | None, actor: str | None, reason: str | None,
                          result: Callable[[], Any]) -> None:
        e = self.model[x]
        now = self._tick()
        current = self._current(x)
        measured = telemetry or {}
        error_ok = measured.get("errorRate", 0.0) <= MAX_ERROR_RATE
        traffic_ok = measured.get("trafficPercentage", 0.0) <= MAX_TRAFFIC
        evaluations = [("errorRate", error_ok), ("trafficLimit", traffic_ok)]
        grouped = x in GROUP
        if grouped and target not in RUNNING_STATES:
            evaluations.append(("conflictPrevention", True))  # decided in Python: not a running target
        permitted = RULES.permits(current, target)
        meta = {"actorRole": role} if role is not None else {}

        outcome: Outcome
        if not (error_ok and traffic_ok):  # Critical telemetry violation: persisted, then refused
            if not permitted:  # ... unless the rules forbid the move: then nothing is written
                outcome = Outcome(InvalidTransitionError)
            else:
                e.record_evaluations(evaluations, current, target)
                outcome = Outcome(PolicyViolationError, tuple(evaluations), current)
        elif expected_etag is not None and e.etags.get(e.revision) != expected_etag:
            outcome = Outcome(ConflictError)
        elif not permitted:
            outcome = Outcome(InvalidTransitionError)
        elif target is S.RAMPING and role != ROLE_OK:
            outcome = Outcome(ApprovalRequiredError)
        elif target is S.APPROVED and (current, target) not in e.pending:
            outcome = Outcome(ApprovalRequiredError)
        else:
            if grouped and target in RUNNING_STATES:
                others = [o for o in GROUP if o != x]
                busy = any(self.model[o].state in RUNNING_STATES for o in others)
                event(f"conflict group: {'busy' if busy else 'free'}")
                evaluations.append(("conflictPrevention", not busy))
            if not all(ok for _, ok in evaluations):
                e.record_evaluations(evaluations, current, target)
                outcome = Outcome(PolicyViolationError, tuple(evaluations), current)
            else:
                outcome = Outcome()

        got, error = _run(result)
        self._expect(f"transition {current.value}->{target.value}", outcome, got, error)
        if outcome.error is not None:
            return
        assert got is not None
        assert got.from_state is current and got.to_state is target and got.timestamp == now, got
        assert got.actor == actor and got.metadata == meta, got
        # success: the state write, the history entry, approvals consumed and created, the evaluations
        if e.state is None:
            e.metadata = {}
            e.config_version = 0
        e.state = target
        e.write(now, actor)
        index = len(e.history)
        e.history.append(MTransition(current, target, now, actor, reason, meta, got.transition_id))
        if target is S.APPROVED:
            e.approvals[e.pending.pop((current, target))].transition = index
        e.pending.clear()  # approvals were given for the state being left: none carries over
        if target is S.RAMPING:
            e.approvals.append(MApproval(current, target, True, ROLE_GATE, actor, now, None, index))
        e.record_evaluations(evaluations, current, target)

    # -- rules -------------------------------------------------------------------------------------

    @rule(x=experiments, configuration=st.none() | configurations, actor=actors, metadata=create_metadata)
    def create(self, x: str, configuration: dict[str, Any] | None, actor: str | None,
               metadata: dict[str, Any] | None) -> None:
        e = self.model[x]
        now = self._tick()
        if e.state is not None:
            outcome = Outcome(ConflictError)  # duplicate create
        elif configuration is not None and e.versions:
            outcome = Outcome(ConflictError)  # a first version cannot be written over existing ones
        else:
            outcome = Outcome()
        got, error = _run(lambda: self.gov.create(x, actor=actor, configuration=configuration, metadata=metadata))
        self._expect("create", outcome, got, error)
        if outcome.error is None:
            assert isinstance(got, ExperimentState)
            e.state = INITIAL
            e.write(now, actor)
            e.metadata = dict(metadata or {})
            e.config_version = 1 if configuration is not None else 0
            e.history.append(MTransition(None, INITIAL, now, actor, "created", {}, None))
            if configuration is not None:
                e.versions.append(MVersion(1, configuration, INITIAL, now, actor, "initial configuration"))
            assert (got.state, got.revision, got.config_version) == (INITIAL, e.revision, e.config_version), got
        self._check(x)

    @rule(x=experiments, to=states, role=roles, error_rate=error_rates, traffic_percentage=traffic,
          actor=actors)
    def transition_anywhere(self, x: str, to: LifecycleState, role: str | None, error_rate: float | None,
                            traffic_percentage: float | None, actor: str | None) -> None:
        self._transition(x, to, role, _telemetry(error_rate, traffic_percentage), None, actor)

    @rule(x=experiments, pick=picks, role=roles, error_rate=error_rates, traffic_percentage=traffic,
          actor=actors, fresh_etag=st.booleans())
    def transition_allowed(self, x: str, pick: int, role: str | None, error_rate: float | None,
                           traffic_percentage: float | None, actor: str | None, fresh_etag: bool) -> None:
        """A move the rules allow (so the lifecycle gets somewhere), optionally guarded by the current etag."""
        allowed = RULES.allowed(self._current(x))
        if not allowed:
            return
        if S.ARCHIVED in allowed and len(allowed) > 1 and pick:  # Archived is terminal: rarely
            allowed.remove(S.ARCHIVED)
        e = self.model[x]
        etag = e.etags.get(e.revision) if fresh_etag else None
        self._transition(x, allowed[pick % len(allowed)], role, _telemetry(error_rate, traffic_percentage), etag, actor)

    @rule(x=experiments, pick=picks, to=states, allowed_target=st.booleans(), role=roles,
          error_rate=error_rates, traffic_percentage=traffic)
    def transition_stale(self, x: str, pick: int, to: LifecycleState, allowed_target: bool,
                         role: str | None, error_rate: float | None, traffic_percentage: float | None) -> None:
        """expected_etag is an etag this experiment had before (or never had)."""
        e = self.model[x]
        old = [etag for revision, etag in sorted(e.etags.items()) if revision != e.revision]
        stale = old[pick % len(old)] if old and pick % 4 else "0" * 24
        allowed = RULES.allowed(self._current(x))
        target = allowed[pick % len(allowed)] if allowed_target and allowed else to
        self._transition(x, target, role, _telemetry(error_rate, traffic_percentage), stale, "carol")

    def _transition(self, x: str, target: LifecycleState, role: str | None, telemetry: dict[str, float] | None,
                    expected_etag: str | None, actor: str | None) -> None:
        metadata = {"actorRole": role} if role is not None else None
        reason = f"to {target.value}"
        self._model_transition(
            x, target, role, telemetry, expected_etag, actor, reason,
            lambda: self.gov.transition(x, target, actor=actor, reason=reason, metadata=metadata,
                                        telemetry=telemetry, expected_etag=expected_etag))
        self._check(x)

    @rule(x=experiments, to=states, approved=st.booleans(), approver=st.sampled_from(("ann", "ben")))
    def approve_anything(self, x: str, to: LifecycleState, approved: bool, approver: str) -> None:
        self._approve(x, to, approved, approver)

    @rule(x=experiments, pick=picks, approved=st.sampled_from((True, True, True, False)),
          approver=st.sampled_from(("ann", "ben")))
    def approve_next(self, x: str, pick: int, approved: bool, approver: str) -> None:
        """An approval of a move the rules allow from here, mostly into Approved (the gated one)."""
        allowed = RULES.allowed(self._current(x))
        if not allowed:
            self._approve(x, S.DRAFT, approved, approver)
            return
        target = S.APPROVED if S.APPROVED in allowed and pick % 4 else allowed[pick % len(allowed)]
        self._approve(x, target, approved, approver)

    def _approve(self, x: str, target: LifecycleState, approved: bool, approver: str) -> None:
        e = self.model[x]
        now = self._tick()
        current = self._current(x)
        reason = "ok" if approved else "no"
        outcome = Outcome() if RULES.permits(current, target) else Outcome(InvalidTransitionError)
        got, error = _run(lambda: self.gov.approve(x, target, approver=approver, reason=reason, approved=approved))
        self._expect(f"approve {target.value} {approved}", outcome, got, error)
        if outcome.error is not None:
            return
        assert isinstance(got, ApprovalRecord)
        assert (got.from_state, got.to_state, got.approved, got.timestamp) == (current, target, approved, now), got
        gate = MANUAL_GATE if target is S.APPROVED else "manual"
        e.approvals.append(MApproval(current, target, approved, gate, approver, now, got.approval_id))
        if approved:
            e.pending[(current, target)] = len(e.approvals) - 1  # a later approval replaces an earlier one
        else:
            e.pending.pop((current, target), None)  # a rejection withdraws a pending approval
        self._check(x)

    @rule(x=group_first, pick=picks, role=st.sampled_from(("sre", "sre", "sre", "dev")),
          error_rate=st.sampled_from((None, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.5)), actor=actors)
    def advance(self, x: str, pick: int, role: str, error_rate: float | None, actor: str | None) -> None:
        """Forward along the lifecycle (approving first where a manual approval is needed), so that
        experiments get to Running and Ramping and meet the conflict group."""
        current = self._current(x)
        forward = {
            S.DRAFT: (S.PENDING_APPROVAL,),
            S.PENDING_APPROVAL: (S.APPROVED, S.APPROVED, S.APPROVED, S.REJECTED),
            S.APPROVED: (S.RUNNING, S.RAMPING),
            S.RUNNING: (S.RAMPING, S.RAMPING, S.PAUSED, S.ROLLED_BACK),
            S.RAMPING: (S.RUNNING, S.PAUSED, S.ROLLED_BACK),
            S.PAUSED: (S.RUNNING, S.RAMPING, S.ARCHIVED),
            S.ROLLED_BACK: (S.DRAFT,),
            S.REJECTED: (S.DRAFT,),
            S.ARCHIVED: (),
        }[current]
        if not forward:
            return
        target = forward[pick % len(forward)]
        if target is S.APPROVED and (current, target) not in self.model[x].pending and pick % 3:
            self._approve(x, target, True, "ann")
        self._transition(x, target, role, _telemetry(error_rate, 10 if pick % 2 else None), None, actor)

    @rule(x=group_first, pick=picks, role=st.sampled_from(("sre", "sre", "sre", "dev")),
          error_rate=st.sampled_from((None, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.5)), actor=actors)
    def advance_again(self, x: str, pick: int, role: str, error_rate: float | None, actor: str | None) -> None:
        self.advance(x, pick, role, error_rate, actor)  # more weight: forward moves are the rare ones

    @rule(x=st.sampled_from(GROUP), pick=picks, actor=actors)
    def advance_group(self, x: str, pick: int, actor: str | None) -> None:
        self.advance(x, pick, "sre", None, actor)

    @rule(x=experiments, configuration=configurations, actor=actors)
    def create_version(self, x: str, configuration: dict[str, Any], actor: str | None) -> None:
        got, error = _run(lambda: self.gov.create_version(x, configuration, actor=actor, description="change"))
        self._model_version(x, configuration, actor, "change", None, got, error)

    @rule(x=experiments, number=st.integers(min_value=1, max_value=7), actor=actors)
    def rollback(self, x: str, number: int, actor: str | None) -> None:
        e = self.model[x]
        got, error = _run(lambda: self.gov.rollback(x, number, actor=actor))
        if not 1 <= number <= len(e.versions):
            self._expect("rollback", Outcome(NotFoundError), got, error)  # no clock call: refused before
            self._check(x)
            return
        old = e.versions[number - 1]
        self._model_version(x, old.configuration, actor, f"rollback to version {number}", number, got, error)

    def _model_version(self, x: str, configuration: dict[str, Any], actor: str | None, description: str,
                       rolled_back_from: int | None, got: Any, error: RedgovError | None) -> None:
        e = self.model[x]
        now = self._tick()
        self._expect("version" if rolled_back_from is None else "rollback", Outcome(), got, error)
        number = len(e.versions) + 1
        e.versions.append(MVersion(number, dict(configuration), e.state, now, actor, description,
                                   rolled_back_from is not None, rolled_back_from))
        assert got.version == number, got
        if e.state is not None:  # auto-versioning: the state follows the new version
            e.config_version = number
            e.write(now, actor)
        self._check(x)

    # -- comparison ---------------------------------------------------------------------------------

    def _check(self, x: str) -> None:
        e = self.model[x]
        gov, bp = self.gov, self.gov.backplane
        actual = gov.state(x)
        if e.state is None:
            assert actual is None, actual
        else:
            assert actual is not None
            assert (actual.state, actual.revision, actual.config_version) == (e.state, e.revision, e.config_version), \
                (actual, e)
            assert (actual.last_modified, actual.last_modified_by, actual.metadata) == \
                (e.last_modified, e.last_modified_by, e.metadata), actual
            # the etag changes on every write and never comes back
            if actual.revision in e.etags:
                assert actual.etag == e.etags[actual.revision], (actual, e.etags)
            else:
                assert actual.etag not in e.etags.values(), (actual, e.etags)
                e.etags[actual.revision] = actual.etag
        assert gov.replay(x) == actual
        assert gov.verify(x) == []
        assert gov.allowed_transitions(x) == RULES.allowed(self._current(x))

        history = gov.history(x)
        assert [(t.from_state, t.to_state) for t in history] == [(m.from_state, m.to_state) for m in e.history]
        assert [(t.timestamp, t.actor, t.reason, t.metadata) for t in history] == \
            [(m.timestamp, m.actor, m.reason, m.metadata) for m in e.history]
        for t, mt in zip(history, e.history):
            if mt.transition_id is not None:
                assert t.transition_id == mt.transition_id
        assert len({t.transition_id for t in history}) == len(history)

        approvals = gov.backplane.approvals(x)
        assert len(approvals) == len(e.approvals), (approvals, e.approvals)
        linked: dict[int, list[ApprovalRecord]] = {}
        for a, ma in zip(approvals, e.approvals):
            assert (a.from_state, a.to_state, a.approved, a.gate, a.approver, a.timestamp) == \
                (ma.from_state, ma.to_state, ma.approved, ma.gate, ma.approver, ma.timestamp), (a, ma)
            if ma.approval_id is not None:
                assert a.approval_id == ma.approval_id
            if ma.transition is None:
                assert a.transition_id is None, (a, ma)
            else:
                assert a.transition_id == history[ma.transition].transition_id, (a, ma)
                linked.setdefault(ma.transition, []).append(a)
        for index, expected in linked.items():
            found = bp.approvals_for_transition(history[index].transition_id)
            # a consumed manual approval is linked when the transition runs, before its role approvals
            expected.sort(key=lambda a: a.gate != MANUAL_GATE)
            assert [a.approval_id for a in found] == [a.approval_id for a in expected], (found, expected)
            assert all(a.transition_id == history[index].transition_id for a in found)

        versions = gov.backplane.versions(x)
        assert [(v.version, v.configuration) for v in versions] == [(m.number, m.configuration) for m in e.versions]
        assert [(v.lifecycle_state, v.is_rollback, v.rolled_back_from, v.created_at, v.created_by, v.description)
                for v in versions] == \
            [(m.lifecycle_state, m.is_rollback, m.rolled_back_from, m.created_at, m.created_by, m.description)
             for m in e.versions]

        evaluations = bp.policy_evaluations(x)
        assert len(evaluations) == e.evaluations, (evaluations, e.evaluations)
        for name in POLICY_NAMES:
            latest = bp.latest_policy_evaluation(x, name)
            if name not in e.latest:
                assert latest is None, latest
            else:
                assert latest is not None
                assert (latest.compliant, latest.current_state, latest.target_state) == e.latest[name], \
                    (name, latest, e.latest[name])

    @invariant()
    def states_and_logs(self) -> None:
        for x in EXPERIMENTS:
            e = self.model[x]
            actual = self.gov.state(x)
            revision = 0 if actual is None else actual.revision
            assert revision >= e.seen_revision  # never goes back
            assert revision == e.revision
            e.seen_revision = revision
            if actual is not None:
                assert actual.state in REACHABLE
            length = len(self.gov.history(x))
            assert length >= e.seen_history  # history only grows
            e.seen_history = length

    @precondition(lambda self: self.ticks % 7 == 0)
    @invariant()
    def every_replay_matches(self) -> None:
        for x in EXPERIMENTS:
            assert self.gov.replay(x) == self.gov.state(x)
            assert self.gov.verify(x) == []


# -- memory:// : the TestCase hypothesis generates ---------------------------------------------


class MemoryGovernanceMachine(GovernanceMachine):
    def __init__(self) -> None:
        super().__init__("memory://")


TestGovernanceModelMemory = MemoryGovernanceMachine.TestCase
TestGovernanceModelMemory.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the real Redis: same machine, fewer examples ------------------------------------------------


def test_governance_model_real_redis(redis_url: str) -> None:
    """The same machine against the conftest server (which may be a private one)."""
    run_state_machine_as_test(
        lambda: GovernanceMachine(redis_url),  # type: ignore[arg-type]  # a factory is accepted
        settings=settings(max_examples=15, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
