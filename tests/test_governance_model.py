"""Model-based test: random Governance operations against a pure-Python model.

A hypothesis ``RuleBasedStateMachine`` drives one ``Governance`` over the experiments "a", "b"
and "c", and a model made of dicts and lists that knows the lifecycle rules (``redgov.rules``)
and nothing else of redgov: gates, policies, approvals, requests, versions, revisions,
retention and the order of the checks are modelled here.

The Governance has three ManualGates: into Approved (one approval), into Running (two, from
distinct approvers) and into RolledBack (one, self-approval allowed); a RoleGate into Ramping, an
AutomaticGate into PendingApproval; ErrorRate, TrafficLimit and a ConflictPrevention group of "a"
and "b". Approvers are "ann", "ben", "alice" and "bob", and "alice" and "bob" are also the actors of
transitions and requesters of moves, so four-eyes refusals happen: ``approve`` by the requester of
a gated move, a transition whose actor approved it (SeparationOfDutiesError).

The approval semantics modelled (lua/lib/gates.lua, lua/approve.lua, lua/transition.lua):
approvals are kept per move out of the current state, one per approver (a later one replaces
the earlier, which stays in history, unlinked); the requester of a move is the actor of
``request`` or, for every move out of PendingApproval, the actor of the move into it; a rejection
closes the move's request and withdraws its approvals. A gated transition counts the distinct
approvers who are not the requester (unless self-approval), refuses an actor who is one of them,
needs ``approvals`` of them and consumes them all (linked to it). Every write of the state field
(transition, ``Backplane.save_state``), a new configuration version and a rollback lapse every
open approval and request. Retention (``retain_history``) trims the history but never an open
approval from force: one trimmed while open stays in the log, and with the transition that consumes
it.

Rules are also published (``Governance.publish``) at some step; from then on the writes may go
through a second ``Governance`` built with no definition of its own (it follows the published
one, with the same outcomes), and a Governance with a different definition is refused
(RulesMismatchError) and writes nothing.

The order of checks modelled is the implementation's: a Critical telemetry violation refuses
first, except that a move the rules forbid is an invalid transition even then; then the expected
etag, the rule, a denying role gate, the manual approvals (four eyes, then the count) and the
conflict groups. After every step the model and redgov are compared: the outcome (exception type
or success), the state, the history (the part retention keeps), the approvals (config version,
and which transition consumed each), ``approvals_for_transition``, the awaiting moves, the
versions and the persisted policy evaluations. Invariants: the revision goes up by exactly one per
write, an etag never repeats for an experiment, ``replay() == state()`` and ``verify() == []``,
history only grows (without retention), the state stays reachable from the initial state, and
``manual_gates_were_satisfied``: read back from redgov alone (plus the model's record of who
requested the move), every transition of the history that passed a ManualGate has the required
distinct approvals linked, none by its actor or requester (unless self-approval), each given after
the experiment's last state write before the transition and for the configuration version then
current (with retention, approvals consumed and trimmed afterwards are gone from redgov: the model
counts them). The clock is a fake advancing one second per call, so every timestamp is predicted
exactly (``save_state`` stamps half a second past the last tick).

Both machines (without retention, and with retain_history=10) run on ``memory://`` and on the real
Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import pytest
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
    PendingMove,
    PolicyViolationError,
    RedgovError,
    RoleGate,
    RulesMismatchError,
    SeparationOfDutiesError,
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
ROLE_GATE = "roleBased:*->Ramping"
POLICY_NAMES = ("errorRate", "trafficLimit", "conflictPrevention")
APPROVERS = ("ann", "ben", "alice", "bob")  # alice and bob are also actors and requesters: four eyes
REQUESTERS = ("alice", "bob", "ann", "carol")
START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
RETAIN_SMALL = 10  # the retention variant: trims every few writes while approvals stay open


@dataclass(frozen=True)
class MGate:
    """The model's copy of a ManualGate (every one applies from any state)."""

    name: str
    need: int
    self_ok: bool


MANUAL = {
    S.APPROVED: MGate("manual:*->Approved", 1, False),
    S.RUNNING: MGate("manual:*->Running", 2, False),
    S.ROLLED_BACK: MGate("manual:*->RolledBack", 1, True),
}


def make_gates() -> list[Any]:
    return [ManualGate(to_state="Approved"), ManualGate(to_state="Running", approvals=2),
            ManualGate(to_state="RolledBack", self_approval=True), RoleGate("sre", to_state="Ramping"),
            AutomaticGate(to_state="PendingApproval")]


def make_policies() -> list[Any]:
    return [ErrorRate(0.1), TrafficLimit(50), ConflictPrevention("a", "b")]


def gate_name(target: LifecycleState) -> str:
    """The gate an ``approve`` record names: the ManualGate into ``target``, else "manual"."""
    gate = MANUAL.get(target)
    return gate.name if gate is not None else "manual"


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
approvers = st.sampled_from(APPROVERS)
requesters = st.sampled_from(REQUESTERS)
picks = st.integers(min_value=0, max_value=11)
configurations = st.dictionaries(st.sampled_from(("percent", "variant", "seed")),
                                 st.integers(min_value=0, max_value=100) | st.sampled_from(("x", "y")),
                                 max_size=3)
create_metadata = st.none() | st.fixed_dictionaries({"owner": st.sampled_from(("t1", "t2"))})


# -- the model ----------------------------------------------------------------------------
# Every entry of an experiment's history list (transitions, approvals, versions, evaluations and
# state snapshots) is one object in MExperiment.log, in the order written; retention removes the
# oldest (MExperiment.cut of them), so what redgov still holds is log[cut:].


@dataclass(eq=False)
class MEntry:
    position: int = -1  # index in MExperiment.log


@dataclass(eq=False)
class MTransition(MEntry):
    from_state: LifecycleState | None = None
    to_state: LifecycleState = INITIAL
    timestamp: datetime = START
    actor: str | None = None
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    transition_id: str | None = None  # known from transition()'s return; None for create's entry
    requester: str | None = None  # who had requested the move when it was made ('' : an actor-less request)
    linked: list[MApproval] = field(default_factory=list)  # consumed manual approvals, then role approvals
    checked_cut: int = -1  # its linked approvals were compared at this cut (they change only when it moves)


@dataclass(eq=False)
class MApproval(MEntry):
    from_state: LifecycleState = INITIAL
    to_state: LifecycleState = INITIAL
    approved: bool = True
    gate: str = "manual"
    approver: str | None = None
    timestamp: datetime = START
    approval_id: str | None = None  # known from approve()'s return; None for a role gate's record
    config_version: int = 0
    transition: MTransition | None = None  # the transition it is linked to
    kept: bool = False  # retention reached it while it was open: it stays in the log, out of the lists


@dataclass(eq=False)
class MVersion(MEntry):
    number: int = 0
    configuration: dict[str, Any] = field(default_factory=dict)
    lifecycle_state: LifecycleState | None = None
    created_at: datetime = START
    created_by: str | None = None
    description: str | None = None
    is_rollback: bool = False
    rolled_back_from: int | None = None


@dataclass(eq=False)
class MEvaluation(MEntry):
    policy: str = ""
    compliant: bool = True
    current: LifecycleState | None = None
    target: LifecycleState | None = None


@dataclass(eq=False)
class MSnapshot(MEntry):
    """A whole-state entry: create's, or a ``Backplane.save_state``."""


@dataclass(frozen=True)
class MRequest:
    by: str  # '' when the transition into PendingApproval had no actor
    at: datetime
    reason: str | None


CLOSED = MRequest("", START, None)  # a request closed by a rejection


@dataclass
class MExperiment:
    state: LifecycleState | None = None
    revision: int = 0
    config_version: int = 0
    last_modified: datetime | None = None
    last_modified_by: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    log: list[MEntry] = field(default_factory=list)
    cut: int = 0  # entries retention removed from the head of the log
    highest_version: int = 0  # the highest version number given
    # open approvals of each move out of the current state: approver -> approval, in the order given
    # (a later approval by the same approver replaces theirs and goes last)
    pending: dict[tuple[LifecycleState, LifecycleState], dict[str, MApproval]] = field(default_factory=dict)
    requests: dict[LifecycleState, MRequest] = field(default_factory=dict)  # request(); CLOSED by a rejection
    request_all: MRequest | None = None  # entering PendingApproval: the request of every move out of it
    # what redgov returned so far: revision -> etag, and the history length
    etags: dict[int, str] = field(default_factory=dict)
    seen_revision: int = 0
    seen_history: int = 0
    seen_history_at: int = -1  # the log length when the history was last read
    verified: tuple[int, int, int] | None = None  # (revision, log length, cut) the gate invariant last read
    latest_checked: tuple[int, int] | None = None  # (evaluations, cut) when the latest ones were compared

    def write(self, now: datetime, actor: str | None) -> None:
        self.revision += 1
        self.last_modified = now
        self.last_modified_by = actor

    def kept_entries(self, kind: type[T]) -> list[T]:
        return [m for m in self.log[self.cut:] if isinstance(m, kind)]

    def lapse(self) -> None:
        """The state field was written, or the configuration changed: open approvals and requests end."""
        self.pending.clear()
        self.requests.clear()
        self.request_all = None

    def requester(self, target: LifecycleState) -> MRequest | None:
        found = self.requests.get(target, self.request_all)
        return None if found is CLOSED else found

    def is_open(self, approval: MApproval) -> bool:
        return self.pending.get((approval.from_state, approval.to_state), {}).get(approval.approver or "") is approval

    def valid_approvals(self, current: LifecycleState, target: LifecycleState, gate: MGate,
                        requester: MRequest | None) -> list[MApproval]:
        """The open approvals a gated transition would count (and consume), in the order linked."""
        return [m for approver, m in self.pending.get((current, target), {}).items()
                if gate.self_ok or requester is None or approver != requester.by]

    def visible(self, approval: MApproval) -> bool:
        """Whether redgov still holds the (consumed) approval: kept in the list, or kept open past the cut."""
        return approval.position >= self.cut or approval.kept


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
    retain: int | None = None  # retain_history of the backplane (None: keep everything)

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self.prefix = "g" + uuid.uuid4().hex[:12]
        self.clock = FakeClock()
        self.ticks = 0  # the model's own count of clock calls
        bp = redgov.connect(url, prefix=self.prefix, retain_history=self.retain)
        self.gov = Governance(bp, gates=make_gates(), policies=make_policies(), clock=self.clock,
                              auto_create=True)  # the model's experiments exist from the start, in Draft
        # after publishing: a Governance with no definition of its own follows the published one (on
        # another connection where the server is shared), and one with another definition is refused
        self.follower_bp = bp if url.startswith("memory://") else \
            redgov.connect(url, prefix=self.prefix, retain_history=self.retain)
        self.follower = Governance(self.follower_bp, clock=self.clock, auto_create=True)
        other_gates = [g if not (isinstance(g, ManualGate) and g.to_state is S.RUNNING)
                       else ManualGate(to_state="Running") for g in make_gates()]  # one approval, not two
        self.other = Governance(bp, gates=other_gates, policies=make_policies(), clock=FakeClock(), auto_create=True)
        self.published: redgov.RulesVersion | None = None
        self.writer = self.gov  # the Governance the writes go through
        self.model = {x: MExperiment() for x in EXPERIMENTS}

    def teardown(self) -> None:
        try:
            if not self.url.startswith("memory://"):
                delete_prefix(self.gov.backplane.client, self.prefix)
        finally:
            self.gov.close()
            if self.follower_bp is not self.gov.backplane:
                self.follower_bp.close()

    # -- model helpers ---------------------------------------------------------------------

    def _tick(self) -> datetime:
        self.ticks += 1
        return START + timedelta(seconds=self.ticks)

    def _current(self, x: str) -> LifecycleState:
        state = self.model[x].state
        return INITIAL if state is None else state

    def _via(self) -> str:
        return " (via follower)" if self.writer is self.follower else ""

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

    def _append(self, e: MExperiment, entries: list[MEntry], *, trim: bool = True) -> None:
        """Entries written to the history list, then retention (lib/retain.lua plan and apply): past
        retain + slack it removes the oldest down to retain, at most 64 and at most what was there."""
        if not entries:
            return
        length = len(e.log) - e.cut
        for m in entries:
            m.position = len(e.log)
            e.log.append(m)
        if not (self.retain and trim):
            return
        slack = min(32, max(1, self.retain // 32))
        if length + len(entries) <= self.retain + slack:
            return
        count = min(length + len(entries) - self.retain, length, 64)
        for m in e.log[e.cut:e.cut + count]:
            if isinstance(m, MApproval) and e.is_open(m):
                m.kept = True  # an open approval stays in force (and in the log) until consumed or lapsed
                event("retention: an open approval kept past the cut")
        e.cut += count
        event("retention: trimmed")

    def _evaluations(self, evaluations: list[tuple[str, bool]], current: LifecycleState,
                     target: LifecycleState) -> list[MEntry]:
        return [MEvaluation(policy=name, compliant=ok, current=current, target=target) for name, ok in evaluations]

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
        gate = MANUAL.get(target)
        requester = e.requester(target)
        valid = e.valid_approvals(current, target, gate, requester) if gate is not None else []

        outcome: Outcome
        written: list[MEntry] = []
        if not (error_ok and traffic_ok):  # Critical telemetry violation: persisted, then refused
            if not permitted:  # ... unless the rules forbid the move: then nothing is written
                outcome = Outcome(InvalidTransitionError)
            else:
                written = self._evaluations(evaluations, current, target)
                outcome = Outcome(PolicyViolationError, tuple(evaluations), current)
        elif expected_etag is not None and e.etags.get(e.revision) != expected_etag:
            outcome = Outcome(ConflictError)
        elif not permitted:
            outcome = Outcome(InvalidTransitionError)
        elif target is S.RAMPING and role != ROLE_OK:
            outcome = Outcome(ApprovalRequiredError)
        elif gate is not None and not gate.self_ok and actor is not None and any(m.approver == actor for m in valid):
            outcome = Outcome(SeparationOfDutiesError)  # four eyes: the actor approved this move
        elif gate is not None and len(valid) < gate.need:
            outcome = Outcome(ApprovalRequiredError)
        else:
            if grouped and target in RUNNING_STATES:
                others = [o for o in GROUP if o != x]
                busy = any(self.model[o].state in RUNNING_STATES for o in others)
                event(f"conflict group: {'busy' if busy else 'free'}")
                evaluations.append(("conflictPrevention", not busy))
            if not all(ok for _, ok in evaluations):
                written = self._evaluations(evaluations, current, target)
                outcome = Outcome(PolicyViolationError, tuple(evaluations), current)
            else:
                outcome = Outcome()

        got, error = _run(result)
        self._expect(f"transition {current.value}->{target.value}{self._via()}", outcome, got, error)
        if outcome.error is not None:
            self._append(e, written)
            return
        assert got is not None
        assert got.from_state is current and got.to_state is target and got.timestamp == now, got
        assert got.actor == actor and got.metadata == meta, got
        if gate is not None:
            event(f"gated transition to {target.value}: {len(valid)} approvals consumed")
        # success: the state write, the history entry, approvals consumed and created, the evaluations
        if e.state is None:
            e.metadata = {}
            e.config_version = 0
        e.state = target
        e.write(now, actor)
        mt = MTransition(from_state=current, to_state=target, timestamp=now, actor=actor, reason=reason,
                         metadata=meta, transition_id=got.transition_id,
                         requester=requester.by if requester is not None else None)
        for m in valid:  # consumed: linked to the transition
            m.transition = mt
            mt.linked.append(m)
        e.lapse()  # approvals and requests were for moves out of the state being left
        if target is S.PENDING_APPROVAL:  # entering it is the request of the moves out of it
            e.request_all = MRequest(actor or "", now, reason)
        written = [mt]
        if target is S.RAMPING:
            role_approval = MApproval(from_state=current, to_state=target, approved=True, gate=ROLE_GATE,
                                      approver=actor, timestamp=now, config_version=e.config_version, transition=mt)
            mt.linked.append(role_approval)
            written.append(role_approval)
        written += self._evaluations(evaluations, current, target)
        self._append(e, written)

    # -- rules -------------------------------------------------------------------------------------

    @rule(x=experiments, configuration=st.none() | configurations, actor=actors, metadata=create_metadata)
    def create(self, x: str, configuration: dict[str, Any] | None, actor: str | None,
               metadata: dict[str, Any] | None) -> None:
        e = self.model[x]
        now = self._tick()
        if e.state is not None:
            outcome = Outcome(ConflictError)  # duplicate create
        elif configuration is not None and e.highest_version > 0:
            outcome = Outcome(ConflictError)  # a first version cannot be written over versions given (or trimmed)
        else:
            outcome = Outcome()
        got, error = _run(lambda: self.writer.create(x, actor=actor, configuration=configuration, metadata=metadata))
        self._expect(f"create{self._via()}", outcome, got, error)
        if outcome.error is None:
            assert isinstance(got, ExperimentState)
            e.state = INITIAL
            e.write(now, actor)
            e.metadata = dict(metadata or {})
            e.config_version = 1 if configuration is not None else 0
            e.lapse()  # what was approved or requested before it existed (auto_create) lapses
            entries: list[MEntry] = [MSnapshot(), MTransition(from_state=None, to_state=INITIAL, timestamp=now,
                                                              actor=actor, reason="created")]
            if configuration is not None:
                entries.append(MVersion(number=1, configuration=configuration, lifecycle_state=INITIAL,
                                        created_at=now, created_by=actor, description="initial configuration"))
                e.highest_version = max(e.highest_version, 1)
            self._append(e, entries, trim=False)  # create.lua does not trim
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
        writer = self.writer
        self._model_transition(
            x, target, role, telemetry, expected_etag, actor, reason,
            lambda: writer.transition(x, target, actor=actor, reason=reason, metadata=metadata,
                                      telemetry=telemetry, expected_etag=expected_etag))
        self._check(x)

    @rule(x=experiments, to=states, approved=st.booleans(), approver=approvers)
    def approve_anything(self, x: str, to: LifecycleState, approved: bool, approver: str) -> None:
        self._approve(x, to, approved, approver)

    @rule(x=experiments, pick=picks, approved=st.sampled_from((True, True, True, False)), approver=approvers)
    def approve_next(self, x: str, pick: int, approved: bool, approver: str) -> None:
        """An approval (or rejection) of a move the rules allow from here, mostly a gated one."""
        allowed = RULES.allowed(self._current(x))
        if not allowed:
            self._approve(x, S.DRAFT, approved, approver)
            return
        gated = [t for t in allowed if t in MANUAL]
        target = gated[pick % len(gated)] if gated and pick % 4 else allowed[pick % len(allowed)]
        self._approve(x, target, approved, approver)

    def _approve(self, x: str, target: LifecycleState, approved: bool, approver: str, check: bool = True) -> None:
        e = self.model[x]
        now = self._tick()
        current = self._current(x)
        reason = "ok" if approved else "no"
        gate = MANUAL.get(target)
        requester = e.requester(target)
        if not RULES.permits(current, target):
            outcome = Outcome(InvalidTransitionError)
        elif approved and gate is not None and not gate.self_ok and requester is not None and \
                requester.by == approver:
            outcome = Outcome(SeparationOfDutiesError)  # the requester may not approve the move
        else:
            outcome = Outcome()
        writer = self.writer
        got, error = _run(lambda: writer.approve(x, target, approver=approver, reason=reason, approved=approved))
        self._expect(f"{'approve' if approved else 'reject'} {target.value}{self._via()}", outcome, got, error)
        if outcome.error is not None:
            if check:
                self._check(x)
            return
        assert isinstance(got, ApprovalRecord)
        assert (got.from_state, got.to_state, got.approved, got.timestamp, got.approver, got.config_version) == \
            (current, target, approved, now, approver, e.config_version), got
        m = MApproval(from_state=current, to_state=target, approved=approved, gate=gate_name(target),
                      approver=approver, timestamp=now, approval_id=got.approval_id, config_version=e.config_version)
        move = (current, target)
        if approved:
            given = e.pending.setdefault(move, {})
            if approver in given:
                event("approval replaces the approver's earlier one")
                del given[approver]
            given[approver] = m
        else:  # a rejection closes the move's request and withdraws its approvals
            if e.pending.pop(move, None):
                event("rejection withdraws approvals")
            e.requests[target] = CLOSED
        self._append(e, [m])
        if check:
            self._check(x)

    @rule(x=experiments, pick=picks, to=states, anywhere=st.sampled_from((False, False, False, True)),
          requester=requesters)
    def request(self, x: str, pick: int, to: LifecycleState, anywhere: bool, requester: str) -> None:
        """``request``, mostly of a gated move the rules allow from here."""
        current = self._current(x)
        allowed = RULES.allowed(current)
        gated = [t for t in allowed if t in MANUAL]
        if anywhere or not allowed:
            target = to
        else:
            target = gated[pick % len(gated)] if gated and pick % 4 else allowed[pick % len(allowed)]
        self._request(x, target, requester)
        self._check(x)

    def _request(self, x: str, target: LifecycleState, requester: str) -> None:
        e = self.model[x]
        current = self._current(x)
        now = self._tick()
        reason = f"please {target.value}"
        if e.state is None:
            outcome = Outcome(NotFoundError)  # a request needs a created experiment, even with auto_create
        elif not RULES.permits(current, target):
            outcome = Outcome(InvalidTransitionError)
        else:
            outcome = Outcome()
        writer = self.writer
        got, error = _run(lambda: writer.request(x, target, actor=requester, reason=reason))
        self._expect(f"request {target.value}{self._via()}", outcome, got, error)
        if outcome.error is None:
            e.requests[target] = MRequest(requester, now, reason)
        if outcome.error is None:
            assert isinstance(got, PendingMove)
            gate = MANUAL.get(target)
            given = len(e.valid_approvals(current, target, gate, e.requester(target))) if gate else 0
            want: tuple[Any, ...]
            if gate is not None:  # approved enough already or not: what the gate has of what it needs
                want = (current, target, gate.name, requester, now, reason, given, gate.need)
            else:  # not gated: gate "" and 0 needed
                want = (current, target, "", requester, now, reason, 0, 0)
            assert (got.from_state, got.to_state, got.gate, got.requested_by, got.requested_at, got.reason,
                    got.approvals_given, got.approvals_needed) == want, (got, want)

    @rule(x=experiments, pick=picks, who=st.sampled_from(("alice", "bob")),
          order=st.sampled_from(("request, approve", "approve, move", "approve, request, move")))
    def four_eyes(self, x: str, pick: int, who: str, order: str) -> None:
        """One person on both sides of a gated move: they request it, then approve it (refused); they
        approve it, then make it (refused); they approve it, then request it, and someone else makes it
        (their approval does not count). Unless the gate allows self-approval."""
        gated = [t for t in RULES.allowed(self._current(x)) if t in MANUAL]
        if not gated:  # from here no gated move: move on instead
            self.advance(x, pick, "sre", None, who)
            return
        target = gated[pick % len(gated)]
        if order == "request, approve":
            self._request(x, target, who)
            self._approve(x, target, True, who)
        elif order == "approve, move":
            self._approve(x, target, True, who, check=False)
            self._transition(x, target, "sre", None, None, who)
        else:
            self._approve(x, target, True, who, check=False)
            self._request(x, target, who)
            self._transition(x, target, "sre", None, None, "bob" if who == "alice" else "alice")

    @rule(x=group_first, pick=picks, role=st.sampled_from(("sre", "sre", "sre", "dev")),
          error_rate=st.sampled_from((None, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.5)), actor=actors)
    def advance(self, x: str, pick: int, role: str, error_rate: float | None, actor: str | None) -> None:
        """Forward along the lifecycle (approving first where a manual approval is needed, by others than
        the actor and the requester), so that experiments get to Running and Ramping and meet the group."""
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
        if target in MANUAL and pick % 3:
            self._approve_enough(x, target, actor, pick)
        self._transition(x, target, role, _telemetry(error_rate, 10 if pick % 2 else None), None, actor)

    def _approve_enough(self, x: str, target: LifecycleState, actor: str | None, pick: int) -> None:
        """Approvals of the gated move by enough others than the actor and the requester (with
        self-approval, the actor first)."""
        e = self.model[x]
        current = self._current(x)
        gate = MANUAL[target]
        requester = e.requester(target)
        have = {m.approver for m in e.valid_approvals(current, target, gate, requester)}
        if gate.self_ok:
            candidates = [a for a in (actor, *APPROVERS) if a is not None]
        else:
            candidates = [a for a in APPROVERS if a != actor and (requester is None or a != requester.by)]
        candidates = candidates[pick % len(candidates):] + candidates[:pick % len(candidates)]
        for approver in dict.fromkeys(candidates):
            if len(have) >= gate.need:
                break
            if approver not in have:
                self._approve(x, target, True, approver, check=False)
                have.add(approver)

    @rule(x=experiments, pick=picks, busy=st.sampled_from((0, 1, 3, 6, 10, 14)), actor=actors,
          move=st.sampled_from((True, True, True, False)))
    def approve_and_wait(self, x: str, pick: int, busy: int, actor: str | None, move: bool) -> None:
        """Approve a gated move, then write ``busy`` other entries that lapse nothing (approvals and
        rejections of moves no gate guards), then (mostly) make the move: with retention the approvals
        are trimmed from the history while open, and must stay in force."""
        current = self._current(x)
        allowed = RULES.allowed(current)
        gated = [t for t in allowed if t in MANUAL]
        if not gated:  # from here no gated move: move on instead
            self.advance(x, pick, "sre", None, actor)
            return
        target = gated[pick % len(gated)]
        others = [t for t in allowed if t not in MANUAL]
        self._approve_enough(x, target, actor, pick)
        for i in range(busy if others else 0):
            self._approve(x, others[(pick + i) % len(others)], i % 3 != 2, APPROVERS[(pick + i) % 4], check=False)
        self._check(x)
        if move:
            self._transition(x, target, "sre", None, None, actor)

    @rule(x=group_first, pick=picks, role=st.sampled_from(("sre", "sre", "sre", "dev")),
          error_rate=st.sampled_from((None, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.5)), actor=actors)
    def advance_again(self, x: str, pick: int, role: str, error_rate: float | None, actor: str | None) -> None:
        self.advance(x, pick, role, error_rate, actor)  # more weight: forward moves are the rare ones

    @rule(x=st.sampled_from(GROUP), pick=picks, actor=actors)
    def advance_group(self, x: str, pick: int, actor: str | None) -> None:
        self.advance(x, pick, "sre", None, actor)

    @rule(x=experiments, configuration=configurations, actor=actors)
    def create_version(self, x: str, configuration: dict[str, Any], actor: str | None) -> None:
        writer = self.writer
        got, error = _run(lambda: writer.create_version(x, configuration, actor=actor, description="change"))
        self._model_version(x, configuration, actor, "change", None, got, error)

    @rule(x=experiments, number=st.integers(min_value=1, max_value=7), actor=actors)
    def rollback(self, x: str, number: int, actor: str | None) -> None:
        e = self.model[x]
        writer = self.writer
        got, error = _run(lambda: writer.rollback(x, number, actor=actor))
        kept = {v.number: v for v in e.kept_entries(MVersion)}
        if number not in kept:  # never written, or removed by retention
            self._expect("rollback", Outcome(NotFoundError), got, error)  # no clock call: refused before
            self._check(x)
            return
        self._model_version(x, kept[number].configuration, actor, f"rollback to version {number}", number, got, error)

    def _model_version(self, x: str, configuration: dict[str, Any], actor: str | None, description: str,
                       rolled_back_from: int | None, got: Any, error: RedgovError | None) -> None:
        e = self.model[x]
        now = self._tick()
        self._expect(("version" if rolled_back_from is None else "rollback") + self._via(), Outcome(), got, error)
        e.highest_version += 1
        number = e.highest_version
        assert got.version == number, got
        if e.state is not None:  # auto-versioning: the state follows the new version
            if e.pending or e.requests or e.request_all:
                event("a new configuration version lapses approvals")
            e.lapse()
            e.config_version = number
            e.write(now, actor)
        self._append(e, [MVersion(number=number, configuration=dict(configuration), lifecycle_state=e.state,
                                  created_at=now, created_by=actor, description=description,
                                  is_rollback=rolled_back_from is not None, rolled_back_from=rolled_back_from)])
        self._check(x)

    @rule(x=experiments, to=states, same=st.booleans(), fresh=st.sampled_from((True, True, True, False)),
          actor=actors)
    def save_state(self, x: str, to: LifecycleState, same: bool, fresh: bool, actor: str | None) -> None:
        """``Backplane.save_state`` with the current etag (or a stale one): any save lapses what is open."""
        e = self.model[x]
        if e.state is None:
            return
        stored = self.gov.state(x)
        assert stored is not None
        target = e.state if same else to
        moment = START + timedelta(seconds=self.ticks, milliseconds=500)  # between two clock ticks
        record = msgspec.structs.replace(stored, state=target, last_modified=moment, last_modified_by=actor)
        old = [etag for revision, etag in e.etags.items() if revision != e.revision]
        etag = stored.etag if fresh else (old[0] if old else "0" * 24)
        result = self.gov.backplane.save_state(record, expected_etag=etag)
        event(f"save_state: {'saved' if fresh else 'conflict'}")
        if not fresh:
            assert not result.ok and result.conflict, result
            self._check(x)
            return
        assert result.ok and result.state is not None and result.state.revision == e.revision + 1, result
        if e.pending or e.requests or e.request_all:
            event("save_state lapses approvals")
        e.state = target
        e.write(moment, actor)
        e.lapse()
        self._append(e, [MSnapshot()])
        self._check(x)

    # -- published rules ---------------------------------------------------------------------------

    @rule(actor=st.sampled_from(("root", "alice")))
    def publish(self, actor: str) -> None:
        """The machine's Governance publishes its definition: from now on it governs every write (and
        publishing it again writes nothing)."""
        if self.published is not None:
            self._publish_again()
            return
        now = self._tick()
        got, error = _run(lambda: self.gov.publish(actor=actor, reason="model"))
        self._expect("publish", Outcome(), got, error)
        assert got is not None
        assert (got.version, got.created_at, got.created_by) == (1, now, actor), got
        assert got.definition == self.gov.core.definition()
        self.published = got

    @rule(follow=st.booleans())
    def choose_writer(self, follow: bool) -> None:
        """Once published, the writes go through the definition-less follower, or back through the
        machine's Governance."""
        if self.published is not None:
            self.writer = self.follower if follow else self.gov

    def _publish_again(self) -> None:
        """The same definition again: nothing is written, the current version comes back."""
        self._tick()
        got, error = _run(lambda: self.gov.publish(actor="someone", reason="again"))
        self._expect("publish again", Outcome(), got, error)
        assert self.published is not None and got is not None
        assert (got.version, got.rules_hash, got.created_by, got.created_at) == \
            (1, self.published.rules_hash, self.published.created_by, self.published.created_at), got
        assert [v.version for v in self.follower.rules_history()] == [1]
        followed = self.follower.published_rules()
        assert followed is not None and followed.definition == self.published.definition

    @rule(x=experiments, op=st.sampled_from(("transition", "approve", "request", "create_version", "create")),
          to=states)
    def mismatched_write(self, x: str, op: str, to: LifecycleState) -> None:
        """A Governance whose definition differs from the published one is refused and writes nothing."""
        if self.published is None:
            return  # before publishing it would write under its own rules
        other = self.other
        calls: dict[str, Callable[[], Any]] = {
            "transition": lambda: other.transition(x, to, actor="mallory"),
            "approve": lambda: other.approve(x, to, approver="mallory"),
            "request": lambda: other.request(x, to, actor="mallory"),
            "create_version": lambda: other.create_version(x, {"rogue": 1}, actor="mallory"),
            "create": lambda: other.create(x, actor="mallory"),
        }
        got, error = _run(calls[op])
        self._expect(f"mismatched {op}", Outcome(RulesMismatchError), got, error)
        assert isinstance(error, RulesMismatchError) and error.errors, error
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
        assert gov.verify(x) == []  # the state folded from the log is the stored one
        assert gov.allowed_transitions(x) == RULES.allowed(self._current(x))

        history = gov.history(x)
        expected_history = e.kept_entries(MTransition)
        assert [(t.from_state, t.to_state) for t in history] == [(m.from_state, m.to_state) for m in expected_history]
        assert [(t.timestamp, t.actor, t.reason, t.metadata) for t in history] == \
            [(m.timestamp, m.actor, m.reason, m.metadata) for m in expected_history]
        for t, mt in zip(history, expected_history, strict=True):
            if mt.transition_id is not None:
                assert t.transition_id == mt.transition_id
        assert len({t.transition_id for t in history}) == len(history)

        approvals = bp.approvals(x)
        expected_approvals = e.kept_entries(MApproval)
        assert len(approvals) == len(expected_approvals), (approvals, expected_approvals)
        for a, ma in zip(approvals, expected_approvals, strict=True):
            assert (a.from_state, a.to_state, a.approved, a.gate, a.approver, a.timestamp, a.config_version) == \
                (ma.from_state, ma.to_state, ma.approved, ma.gate, ma.approver, ma.timestamp, ma.config_version), \
                (a, ma)
            if ma.approval_id is not None:
                assert a.approval_id == ma.approval_id
            if ma.transition is None:
                assert a.transition_id is None, (a, ma)
            else:
                assert a.transition_id == ma.transition.transition_id, (a, ma)
        # what each transition consumed and wrote: its manual approvals, then its role approvals
        for mt in [m for m in e.log if isinstance(m, MTransition)]:
            if not mt.linked or mt.checked_cut == e.cut:
                continue
            mt.checked_cut = e.cut
            assert mt.transition_id is not None
            found = bp.approvals_for_transition(mt.transition_id)
            expected = [m for m in mt.linked if e.visible(m)] if mt.position >= e.cut else []
            if len(expected) < len(mt.linked):
                event("retention: a transition's linked approvals partly removed")
            assert [(a.gate, a.approver, a.timestamp) for a in found] == \
                [(m.gate, m.approver, m.timestamp) for m in expected], (found, expected)
            for a, m in zip(found, expected, strict=True):
                assert a.transition_id == mt.transition_id
                if m.approval_id is not None:
                    assert a.approval_id == m.approval_id

        # the approval inbox: the requested moves a ManualGate still blocks
        inbox = []
        if e.state is not None:
            for target in sorted(RULES.allowed(e.state), key=lambda s: s.value):
                gate = MANUAL.get(target)
                requester = e.requester(target)
                if gate is None or requester is None:
                    continue
                given = len(e.valid_approvals(e.state, target, gate, requester))
                if given < gate.need:
                    inbox.append((e.state, target, gate.name, requester.by or None, requester.at,
                                  requester.reason or None, given, gate.need))
        awaiting = gov.awaiting_approval(experiment=x)
        if inbox:
            event("awaiting approval: some")
        assert [(p.from_state, p.to_state, p.gate, p.requested_by, p.requested_at, p.reason, p.approvals_given,
                 p.approvals_needed) for p in awaiting] == inbox, (awaiting, inbox)

        versions = bp.versions(x)
        expected_versions = sorted(e.kept_entries(MVersion), key=lambda v: v.number)
        assert [(v.version, v.configuration) for v in versions] == \
            [(m.number, m.configuration) for m in expected_versions]
        assert [(v.lifecycle_state, v.is_rollback, v.rolled_back_from, v.created_at, v.created_by, v.description)
                for v in versions] == \
            [(m.lifecycle_state, m.is_rollback, m.rolled_back_from, m.created_at, m.created_by, m.description)
             for m in expected_versions]

        evaluations = bp.policy_evaluations(x)
        assert [(p.policy, p.compliant, p.current_state, p.target_state) for p in evaluations] == \
            [(m.policy, m.compliant, m.current, m.target) for m in e.kept_entries(MEvaluation)], evaluations
        if e.latest_checked == (len(evaluations), e.cut):
            return  # no evaluation written or trimmed since the latest ones were compared
        e.latest_checked = (len(evaluations), e.cut)
        for name in POLICY_NAMES:
            latest = bp.latest_policy_evaluation(x, name)
            mine = [m for m in e.log if isinstance(m, MEvaluation) and m.policy == name]
            if not mine or mine[-1].position < e.cut:
                assert latest is None, latest
            else:
                assert latest is not None
                assert (latest.compliant, latest.current_state, latest.target_state) == \
                    (mine[-1].compliant, mine[-1].current, mine[-1].target), (name, latest, mine[-1])

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
            if e.seen_history_at == len(e.log):
                continue  # nothing written to it since its history was read
            e.seen_history_at = len(e.log)
            length = len(self.gov.history(x))
            assert length == len(e.kept_entries(MTransition))
            if self.retain is None:
                assert length >= e.seen_history  # history only grows
            e.seen_history = length

    @invariant()
    def manual_gates_were_satisfied(self) -> None:
        """No transition passed a ManualGate without the required distinct, non-requesting approvals
        given after the experiment entered its state (its last state write before the move) and at
        the configuration version then current: read back from redgov; the model only says who had
        requested the move, and how many of its approvals retention removed since."""
        bp = self.gov.backplane
        for x in EXPERIMENTS:
            e = self.model[x]
            stamp = (e.revision, len(e.log), e.cut)
            if e.verified == stamp:
                continue  # nothing written to it since it was read
            e.verified = stamp
            gated = [t for t in self.gov.history(x) if t.from_state is not None and t.to_state in MANUAL]
            if not gated:
                continue
            writes = {s.revision: s for s in bp.state_writes(x)}
            made = {m.transition_id: m for m in e.log if isinstance(m, MTransition) and m.transition_id}
            for t in gated:
                gate = MANUAL[t.to_state]
                mt = made[t.transition_id]
                left = writes.get(t.revision - 1)
                assert left is not None and left.state is t.from_state, (t, left)
                linked = [a for a in bp.approvals_for_transition(t.transition_id) if a.gate == gate.name]
                names = [a.approver for a in linked]
                assert len(set(names)) == len(names), linked  # distinct approvers
                removed = sum(1 for m in mt.linked if m.gate == gate.name and not e.visible(m))
                assert removed == 0 or self.retain is not None
                assert len(linked) + removed >= gate.need, (t, linked, removed)
                for a in linked:
                    assert a.approved and a.transition_id == t.transition_id, a
                    assert (a.from_state, a.to_state) == (t.from_state, t.to_state), (a, t)
                    assert left.last_modified < a.timestamp < t.timestamp, (left, a, t)
                    assert a.config_version == left.config_version, (a, left)
                    if not gate.self_ok:
                        assert a.approver != t.actor, (a, t)
                        assert a.approver != mt.requester, (a, mt.requester)

    @precondition(lambda self: self.ticks % 7 == 0)
    @invariant()
    def every_replay_matches(self) -> None:
        for x in EXPERIMENTS:
            assert self.gov.replay(x) == self.gov.state(x)
            assert self.gov.verify(x) == []


class RetainedGovernanceMachine(GovernanceMachine):
    """The same machine with retain_history=10: retention trims while approvals stay open."""

    retain = RETAIN_SMALL

    @rule(x=experiments, pick=picks, busy=st.sampled_from((6, 10, 14)), actor=actors)
    def approve_and_wait_long(self, x: str, pick: int, busy: int, actor: str | None) -> None:
        """More weight, and longer waits: the open approvals are trimmed before the move."""
        self.approve_and_wait(x, pick, busy, actor, True)


# -- memory:// : the TestCases hypothesis generates ---------------------------------------------
# A pass takes seconds; a failure is shrunk for up to 5 minutes (hypothesis's own limit), so the
# tests may run past the suite's 300 s timeout to report the shrunk steps instead of being cut off.
SHRINK_TIMEOUT = pytest.mark.timeout(600)

MEMORY_SETTINGS = settings(max_examples=30, stateful_step_count=40, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])


class MemoryGovernanceMachine(GovernanceMachine):
    def __init__(self) -> None:
        super().__init__("memory://")


class MemoryRetainedGovernanceMachine(RetainedGovernanceMachine):
    def __init__(self) -> None:
        super().__init__("memory://")


TestGovernanceModelMemory = MemoryGovernanceMachine.TestCase
TestGovernanceModelMemory.settings = MEMORY_SETTINGS
TestGovernanceModelMemory.pytestmark = [SHRINK_TIMEOUT]  # type: ignore[attr-defined]
TestGovernanceModelMemoryRetained = MemoryRetainedGovernanceMachine.TestCase
TestGovernanceModelMemoryRetained.settings = MEMORY_SETTINGS
TestGovernanceModelMemoryRetained.pytestmark = [SHRINK_TIMEOUT]  # type: ignore[attr-defined]


# -- the real Redis: same machines, fewer examples ------------------------------------------------

REDIS_SETTINGS = settings(max_examples=20, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


@SHRINK_TIMEOUT
def test_governance_model_real_redis(redis_url: str) -> None:
    """The same machine against the conftest server (which may be a private one)."""
    run_state_machine_as_test(lambda: GovernanceMachine(redis_url), settings=REDIS_SETTINGS)  # type: ignore[arg-type]


@SHRINK_TIMEOUT
def test_governance_model_real_redis_retained(redis_url: str) -> None:
    """The retention variant against the conftest server."""
    run_state_machine_as_test(lambda: RetainedGovernanceMachine(redis_url), settings=REDIS_SETTINGS)  # type: ignore[arg-type]
