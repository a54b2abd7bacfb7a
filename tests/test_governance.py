"""Governance API: rules, gates, policies, approvals, versions, replay, watch, batch."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

import pytest

import redgov
from redgov import (
    ApprovalRequiredError,
    AutomaticGate,
    Backplane,
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
    RoleGate,
    Severity,
    TimeWindow,
    TrafficLimit,
    TransitionRequest,
    ValidationError,
)
from redgov.aio import AsyncGovernance
from redgov.rules import DEFAULT_RULES

S = LifecycleState


class Clock:
    """A settable clock for Governance(clock=...)."""

    def __init__(self, start: datetime = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def make(backplane: Backplane) -> Callable[..., Governance]:
    def build(**kwargs: object) -> Governance:
        return Governance(backplane, **kwargs)  # type: ignore[arg-type]

    return build


@pytest.fixture
def gov(make: Callable[..., Governance]) -> Governance:
    return make()


def walk(gov: Governance, experiment: str, *states: S, **kwargs: object) -> None:
    for state in states:
        gov.transition(experiment, state, **kwargs)  # type: ignore[arg-type]


# -- rules -----------------------------------------------------------------------


def test_all_81_pairs_of_the_default_table(gov: Governance, backplane: Backplane) -> None:
    for source, target in itertools.product(S, S):
        name = f"{source.value}-{target.value}"
        assert backplane.save_state(ExperimentState(experiment=name, state=source)).ok
        if target in DEFAULT_RULES[source]:
            moved = gov.transition(name, target, actor="ana")
            assert (moved.from_state, moved.to_state) == (source, target)
            state = gov.state(name)
            assert state is not None and state.state is target and state.revision == 2
        else:
            with pytest.raises(InvalidTransitionError, match=f"{source.value} -> {target.value}"):
                gov.transition(name, target)
            state = gov.state(name)
            assert state is not None and state.state is source and state.revision == 1
            assert gov.history(name) == []


def test_create_starts_at_initial_state_with_a_history_entry(gov: Governance) -> None:
    state = gov.create("exp", actor="ana", metadata={"team": "checkout"})
    assert state.state is S.DRAFT and state.revision == 1 and state.metadata == {"team": "checkout"}
    assert gov.state("exp") == state
    (created,) = gov.history("exp")
    assert created.from_state is None and created.to_state is S.DRAFT and created.actor == "ana"
    with pytest.raises(ConflictError, match="already exists"):
        gov.create("exp")


def test_writes_to_an_experiment_never_created_are_not_found(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED)])
    for write in (lambda: gov.transition("ghost", S.PENDING_APPROVAL), lambda: gov.transition("ghost", S.RUNNING),
                  lambda: gov.approve("ghost", S.PENDING_APPROVAL, approver="lead"),
                  lambda: gov.create_version("ghost", {"a": 1}), lambda: gov.rollback("ghost", 1),
                  lambda: gov.evaluate_policies("ghost"), lambda: gov.allowed_transitions("ghost")):
        with pytest.raises(NotFoundError, match="ghost"):
            write()
    assert gov.state("ghost") is None and gov.history("ghost") == [] and gov.experiments() == []
    assert gov.backplane.approvals("ghost") == [] and gov.backplane.versions("ghost") == []


def test_auto_create_starts_a_missing_experiment_from_the_initial_state(make: Callable[..., Governance]) -> None:
    gov = make(initial_state=S.APPROVED, auto_create=True)
    moved = gov.transition("exp", S.RUNNING)
    assert moved.from_state is S.APPROVED
    state = gov.state("exp")
    assert state is not None and state.state is S.RUNNING and state.revision == 1
    assert gov.verify("exp") == []


def test_custom_rules_replace_the_table(make: Callable[..., Governance]) -> None:
    gov = make(rules={"Draft": ["Running"], "Running": ["Archived"]})
    gov.create("exp")
    assert gov.allowed_transitions("exp") == [S.RUNNING]
    with pytest.raises(InvalidTransitionError):
        gov.transition("exp", S.PENDING_APPROVAL)
    gov.transition("exp", S.RUNNING)
    assert gov.allowed_transitions("exp") == [S.ARCHIVED]


def test_revision_grows_by_one_per_write_and_etags_never_repeat(gov: Governance) -> None:
    gov.create("exp")
    walk(gov, "exp", S.PENDING_APPROVAL, S.APPROVED, S.RUNNING)
    etags = set()
    for i in range(10):
        gov.transition("exp", S.PAUSED if i % 2 == 0 else S.RUNNING)
        state = gov.state("exp")
        assert state is not None and state.revision == 5 + i
        etags.add(state.etag)
    assert len(etags) == 10


def test_expected_etag_guards_the_transition(gov: Governance) -> None:
    state = gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL, expected_etag=state.etag)
    with pytest.raises(ConflictError, match=state.etag):
        gov.transition("exp", S.DRAFT, expected_etag=state.etag)
    current = gov.state("exp")
    assert current is not None and current.state is S.PENDING_APPROVAL


def test_state_check_does_not_report_a_stale_state(gov: Governance) -> None:
    gov.create("exp")
    gov.transition("exp", S.ARCHIVED)
    with pytest.raises(InvalidTransitionError, match="Archived -> Draft"):
        gov.transition("exp", S.DRAFT)


# -- gates ------------------------------------------------------------------------


def test_automatic_gate_approves_and_records_nothing(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(gates=[AutomaticGate(to_state=S.PENDING_APPROVAL)])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    assert backplane.approvals("exp") == []


def test_manual_gate_approval_is_consumed_exactly_once(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    with pytest.raises(ApprovalRequiredError, match="manual approval"):
        gov.transition("exp", S.APPROVED)
    approval = gov.approve("exp", S.APPROVED, approver="lead", reason="looks good")
    assert approval.from_state is S.PENDING_APPROVAL and approval.transition_id is None
    moved = gov.transition("exp", S.APPROVED)
    linked = backplane.approvals_for_transition(moved.transition_id)
    assert [a.approval_id for a in linked] == [approval.approval_id]
    assert linked[0].transition_id == moved.transition_id and linked[0].approver == "lead"
    assert backplane.approvals("exp")[0].transition_id == moved.transition_id
    # back to PendingApproval: a second move to Approved needs a new approval
    gov.transition("exp", S.RUNNING)
    gov.transition("exp", S.ARCHIVED)
    other = make(gates=[ManualGate(to_state=S.APPROVED)], rules={"Archived": ["PendingApproval"],
                                                                   "PendingApproval": ["Approved"]})
    other.transition("exp", S.PENDING_APPROVAL)
    with pytest.raises(ApprovalRequiredError):
        other.transition("exp", S.APPROVED)


def test_an_approval_lapses_when_the_experiment_leaves_the_state(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    gov.approve("exp", S.APPROVED, approver="ann")
    gov.transition("exp", S.DRAFT)
    gov.transition("exp", S.PENDING_APPROVAL)
    with pytest.raises(ApprovalRequiredError):
        gov.transition("exp", S.APPROVED)  # the approval was for the earlier review


def test_rejection_withdraws_a_pending_approval(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    gov.approve("exp", S.APPROVED, approver="a")
    rejected = gov.approve("exp", S.APPROVED, approver="b", approved=False, reason="wait")
    assert rejected.approved is False
    with pytest.raises(ApprovalRequiredError):
        gov.transition("exp", S.APPROVED)
    assert [a.approved for a in backplane.approvals("exp")] == [True, False]


def test_approval_applies_to_the_move_it_was_given_for(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.ARCHIVED)])
    gov.create("exp")
    gov.approve("exp", S.ARCHIVED, approver="lead")  # for Draft -> Archived
    gov.transition("exp", S.PENDING_APPROVAL)
    gov.transition("exp", S.REJECTED)
    with pytest.raises(ApprovalRequiredError):
        gov.transition("exp", S.ARCHIVED)  # Rejected -> Archived was not approved


def test_approve_refuses_a_move_no_rule_allows(gov: Governance, backplane: Backplane) -> None:
    gov.create("exp")
    with pytest.raises(InvalidTransitionError, match="Draft -> Running"):
        gov.approve("exp", S.RUNNING, approver="x")
    custom = Governance(backplane, rules={"Draft": ["Archived"]})
    with pytest.raises(InvalidTransitionError, match="no rule allows"):
        custom.approve("exp", S.RUNNING, approver="x")
    assert backplane.approvals("exp") == []


def test_role_gate(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(gates=[RoleGate("sre", "platform", to_state=S.RAMPING, from_state=S.RUNNING)])
    gov.create("exp")
    walk(gov, "exp", S.PENDING_APPROVAL, S.APPROVED, S.RAMPING)  # from Approved: gate does not apply
    gov.transition("exp", S.RUNNING)
    with pytest.raises(ApprovalRequiredError, match="no actorRole"):
        gov.transition("exp", S.RAMPING)
    with pytest.raises(ApprovalRequiredError, match="'dev' is not one of sre, platform"):
        gov.transition("exp", S.RAMPING, metadata={"actorRole": "dev"})
    moved = gov.transition("exp", S.RAMPING, actor="sam", metadata={"actorRole": "sre"})
    (approval,) = backplane.approvals_for_transition(moved.transition_id)
    assert approval.approved and approval.approver == "sam" and approval.from_state is S.RUNNING
    assert approval.gate == "roleBased:Running->Ramping"


# -- policies --------------------------------------------------------------------


def test_critical_violation_changes_nothing_but_persists_evaluations(
    make: Callable[..., Governance], backplane: Backplane
) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED)], policies=[ErrorRate(0.05), TrafficLimit(10)])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    gov.approve("exp", S.APPROVED, approver="lead")
    before = (gov.state("exp"), gov.history("exp"), backplane.approvals("exp"))
    with pytest.raises(PolicyViolationError) as info:
        gov.transition("exp", S.APPROVED, telemetry={"errorRate": 0.2, "trafficPercentage": 5})
    evaluations = info.value.evaluations
    assert isinstance(evaluations, tuple)
    assert {(e.policy, e.compliant) for e in evaluations} == {("errorRate", False), ("trafficLimit", True)}
    assert all(e.current_state is S.PENDING_APPROVAL and e.target_state is S.APPROVED for e in evaluations)
    assert (gov.state("exp"), gov.history("exp"), backplane.approvals("exp")) == before
    assert backplane.policy_evaluations("exp")[-2:] == list(evaluations)
    latest = backplane.latest_policy_evaluation("exp", "errorRate")
    assert latest is not None and not latest.compliant and "0.2" in (latest.reason or "")
    gov.transition("exp", S.APPROVED, telemetry={"errorRate": 0.01})  # the approval was not consumed


def test_invalid_move_wins_over_a_policy_refusal(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(policies=[ErrorRate(0.05)])
    gov.create("exp")
    with pytest.raises(InvalidTransitionError):
        gov.transition("exp", S.RUNNING, telemetry={"errorRate": 0.9})
    assert backplane.policy_evaluations("exp") == []


def test_passing_transition_persists_its_evaluations(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(policies=[ErrorRate(0.05), TrafficLimit(10, timedelta(minutes=30))])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL, telemetry={"trafficPercentage": 50, "runningDuration": 3600})
    evaluations = backplane.policy_evaluations("exp")
    assert [(e.policy, e.compliant) for e in evaluations] == [("errorRate", True), ("trafficLimit", True)]
    assert all(e.current_state is S.DRAFT for e in evaluations)


@pytest.mark.parametrize(
    ("telemetry", "compliant"),
    [
        ({}, True),
        ({"trafficPercentage": 10}, True),
        ({"trafficPercentage": 11}, False),
        ({"trafficPercentage": 50, "runningDuration": 1799}, False),
        ({"trafficPercentage": 50, "runningDuration": timedelta(minutes=30)}, True),
    ],
)
def test_traffic_limit(make: Callable[..., Governance], telemetry: dict[str, object], compliant: bool) -> None:
    gov = make(policies=[TrafficLimit(10, timedelta(minutes=30))])
    gov.create("exp")
    if compliant:
        gov.transition("exp", S.PENDING_APPROVAL, telemetry=telemetry)
    else:
        with pytest.raises(PolicyViolationError, match="exceeds 10%"):
            gov.transition("exp", S.PENDING_APPROVAL, telemetry=telemetry)


def test_time_window_is_recorded_not_blocking_and_wraps_midnight(
    make: Callable[..., Governance], backplane: Backplane
) -> None:
    clock = Clock(datetime(2026, 3, 2, 23, 30, tzinfo=UTC))
    gov = make(policies=[TimeWindow(time(22, 0), time(6, 0), name="night")], clock=clock)
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    inside = backplane.latest_policy_evaluation("exp", "night")
    assert inside is not None and inside.compliant and inside.severity is Severity.ERROR
    clock.now = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
    gov.transition("exp", S.DRAFT)  # Error severity: recorded, not blocking
    outside = backplane.latest_policy_evaluation("exp", "night")
    assert outside is not None and not outside.compliant and "outside 22:00-06:00" in (outside.reason or "")
    assert outside.timestamp == clock.now


def test_time_window_can_be_made_critical(make: Callable[..., Governance]) -> None:
    clock = Clock(datetime(2026, 3, 2, 18, 0, tzinfo=UTC))
    gov = make(policies=[TimeWindow(time(9), time(17), severity=Severity.CRITICAL)], clock=clock)
    gov.create("exp")
    with pytest.raises(PolicyViolationError, match="outside 09:00-17:00"):
        gov.transition("exp", S.PENDING_APPROVAL)


def test_conflict_prevention_inside_the_script(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(policies=[ConflictPrevention("a", "b", name="checkout")])
    for name in ("a", "b", "c"):
        gov.create(name)
        walk(gov, name, S.PENDING_APPROVAL, S.APPROVED)
    gov.transition("a", S.RUNNING)
    gov.transition("c", S.RUNNING)  # not in the group
    before = (gov.state("b"), gov.history("b"))
    with pytest.raises(PolicyViolationError, match="conflicting experiment a is Running") as info:
        gov.transition("b", S.RAMPING)
    (failed,) = [e for e in info.value.evaluations if not e.compliant]
    assert failed.policy == "checkout" and failed.severity is Severity.CRITICAL and failed.current_state is S.APPROVED
    assert (gov.state("b"), gov.history("b")) == before
    assert backplane.latest_policy_evaluation("b", "checkout") == failed
    gov.transition("a", S.PAUSED)
    gov.transition("b", S.RUNNING)
    with pytest.raises(PolicyViolationError, match="b is Running"):
        gov.transition("a", S.RUNNING)


def test_evaluate_policies_persists_what_it_evaluates(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(policies=[ErrorRate(0.1), ConflictPrevention("a", "b")])
    gov.create("a")
    walk(gov, "a", S.PENDING_APPROVAL, S.APPROVED, S.RUNNING)
    gov.create("b")
    found = gov.evaluate_policies("b", telemetry={"errorRate": 0.5}, target=S.RUNNING)
    assert {(e.policy, e.compliant) for e in found} == {("errorRate", False), ("conflictPrevention", False)}
    assert all(e.current_state is S.DRAFT for e in found)
    assert backplane.policy_evaluations("b") == found


# -- versions ----------------------------------------------------------------------


def test_versions_rollback_and_diff(gov: Governance, backplane: Backplane) -> None:
    gov.create("exp", configuration={"rollout": {"steps": [{"percent": 5}, {"percent": 50}]}, "color": "red"})
    state = gov.state("exp")
    assert state is not None and state.config_version == 1
    v2 = gov.create_version("exp", {"rollout": {"steps": [{"percent": 5}, {"percent": 25}, {"percent": 100}]}},
                            actor="ana", description="smaller steps")
    assert v2.version == 2 and v2.lifecycle_state is S.DRAFT and len(v2.configuration_hash) == 64
    state = gov.state("exp")
    assert state is not None and state.config_version == 2 and state.revision == 2
    assert gov.diff("exp", 1, 2) == [
        redgov.Change("modified", "rollout.steps[1].percent", 50, 25),
        redgov.Change("added", "rollout.steps[2]", None, {"percent": 100}),
        redgov.Change("removed", "color", "red", None),
    ]
    back = gov.rollback("exp", 1, actor="ana")
    assert (back.version, back.is_rollback, back.rolled_back_from) == (3, True, 1)
    v1 = backplane.version("exp", 1)
    assert v1 is not None
    assert back.configuration == v1.configuration and back.configuration_hash == v1.configuration_hash
    assert gov.diff("exp", 1, 3) == []
    with pytest.raises(NotFoundError, match="version 9"):
        gov.rollback("exp", 9)
    with pytest.raises(NotFoundError):
        gov.diff("exp", 1, 9)
    assert [v.version for v in backplane.versions("exp")] == [1, 2, 3]
    assert gov.verify("exp") == []


def test_config_hash_is_canonical(gov: Governance) -> None:
    gov.create("x")
    a = gov.create_version("x", {"a": 1, "b": [1, 2]})
    b = gov.create_version("x", {"b": [1, 2], "a": 1})
    assert a.configuration_hash == b.configuration_hash


def test_without_auto_versioning_the_state_does_not_follow(make: Callable[..., Governance]) -> None:
    gov = make(auto_versioning=False)
    gov.create("exp", configuration={"a": 1})
    gov.create_version("exp", {"a": 2})
    state = gov.state("exp")
    assert state is not None and state.config_version == 0 and state.revision == 1


# -- replay, idempotency, watch, batch ----------------------------------------------


def test_replay_until_gives_the_state_as_of_then(make: Callable[..., Governance]) -> None:
    clock = Clock()
    gov = make(clock=clock)
    gov.create("exp")
    walk(gov, "exp", S.PENDING_APPROVAL, S.APPROVED)
    middle = clock.now
    walk(gov, "exp", S.RUNNING, S.PAUSED)
    then = gov.replay("exp", until=middle)
    assert then is not None and then.state is S.APPROVED and then.revision == 3
    assert gov.replay("exp") == gov.state("exp")
    assert gov.replay("exp", until=datetime(2000, 1, 1, tzinfo=UTC)) is None
    assert gov.replay("nothing") is None and gov.verify("nothing") == []


def test_verify_reports_a_tampered_state(gov: Governance, backplane: Backplane) -> None:
    gov.create("exp")
    key = backplane.core.scope(None, None).experiment("exp").state
    backplane.client.hset(key, "s", "Running")
    assert any(line.startswith("state:") for line in gov.verify("exp"))


def test_idempotent_retry_writes_once(gov: Governance) -> None:
    gov.create("exp")
    first = gov.transition("exp", S.PENDING_APPROVAL, idempotency_key="req-1")
    again = gov.transition("exp", S.PENDING_APPROVAL, idempotency_key="req-1")
    assert again == first
    state = gov.state("exp")
    assert state is not None and state.revision == 2 and len(gov.history("exp")) == 2
    gov.create("other")
    assert gov.transition("other", S.PENDING_APPROVAL, idempotency_key="req-1").experiment == "other"
    with pytest.raises(ConflictError, match="idempotency key was used for a transition to PendingApproval, "
                                            "not a transition to Draft"):
        gov.transition("exp", S.DRAFT, idempotency_key="req-1")


def test_watch_sees_events_and_resumes(gov: Governance) -> None:
    gov.create("a")
    gov.create("b")
    events = list(gov.watch(from_id="0", timeout=0.2))
    assert [(e.kind, e.experiment) for e in events] == [("state", "a"), ("transition", "a"),
                                                        ("state", "b"), ("transition", "b")]
    assert isinstance(events[1].record, redgov.StateTransition)
    gov.transition("a", S.PENDING_APPROVAL)
    later = list(gov.watch(from_id=events[-1].id, experiments=["a"], timeout=0.2))
    assert [(e.kind, e.record.to_state) for e in later] == [("transition", S.PENDING_APPROVAL)]
    assert list(gov.watch(timeout=0.1)) == []  # "$": only new events


def test_batch_transitions(gov: Governance) -> None:
    for i in range(5):
        gov.create(f"e{i}")
    results = gov.transition_many(
        [TransitionRequest(experiment=f"e{i}", to=S.PENDING_APPROVAL) for i in range(5)]
        + [TransitionRequest(experiment="e0", to=S.RUNNING)]
    )
    assert all(isinstance(r, redgov.StateTransition) for r in results[:5])
    assert isinstance(results[5], InvalidTransitionError)
    assert gov.transition_many([]) == []
    before = [gov.state(f"e{i}") for i in range(5)]
    with pytest.raises(redgov.ValidationError, match=r"requests\[1\] must be a TransitionRequest, got dict"):
        gov.transition_many([TransitionRequest(experiment="e1", to=S.DRAFT), {"experiment": "e2", "to": "Draft"}])
    assert [gov.state(f"e{i}") for i in range(5)] == before  # nothing was sent


# -- bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda g: g.transition("exp", "Flying"), "'Flying' is not one of"),
        (lambda g: g.transition(3, S.DRAFT), "experiment must be a string"),
        (lambda g: g.transition("exp", S.PENDING_APPROVAL, telemetry={"errorRate": "high"}), "errorRate"),
        (lambda g: g.transition("exp", S.PENDING_APPROVAL, telemetry={"trafficPercentage": True}), "trafficPercentage"),
        (lambda g: g.transition("exp", S.PENDING_APPROVAL, metadata=["x"]), "metadata must be a mapping"),
        (lambda g: g.transition("exp", S.PENDING_APPROVAL, idempotency_key=""), "idempotency_key"),
        (lambda g: g.approve("exp", S.APPROVED, approver=""), "approver"),
        (lambda g: g.create_version("exp", ["not", "a", "dict"]), "configuration must be a mapping"),
        (lambda g: g.rollback("exp", 0), "to_version"),
        (lambda g: g.create("exp", metadata={"x": object()}), "cannot be stored"),
    ],
)
def test_bad_input_writes_nothing(gov: Governance, call: Callable[[Governance], object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        call(gov)
    assert not list(gov.backplane.client.scan_iter(match="{" + gov.backplane.prefix + ":*"))


def test_bad_configuration_of_gates_and_policies() -> None:
    with pytest.raises(ValidationError):
        ManualGate(to_state="Nowhere")
    with pytest.raises(ValidationError):
        RoleGate(to_state=S.RUNNING)
    with pytest.raises(ValidationError):
        ErrorRate(1.5)
    with pytest.raises(ValidationError):
        ConflictPrevention("only-one")
    with pytest.raises(ValidationError, match="unique"):
        Governance(redgov.connect("memory://"), policies=[ErrorRate(0.1), ErrorRate(0.2)])


# -- async twin ---------------------------------------------------------------------


def test_async_governance_mirrors_the_sync_api() -> None:
    for name, method in inspect.getmembers(Governance, inspect.isfunction):
        if name.startswith("_") or name in {"close"}:
            continue
        twin = getattr(AsyncGovernance, name)
        assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), name
        assert inspect.signature(twin).parameters == inspect.signature(method).parameters, name


def test_async_governance_end_to_end(url: str, prefix: str) -> None:
    async def body() -> None:
        bp = redgov.aio.connect(url, prefix=prefix)
        gov = AsyncGovernance(bp, gates=[ManualGate(to_state=S.APPROVED)], policies=[ErrorRate(0.1)])
        try:
            await gov.create("exp", configuration={"a": 1})
            await gov.transition("exp", S.PENDING_APPROVAL)
            with pytest.raises(ApprovalRequiredError):
                await gov.transition("exp", S.APPROVED)
            await gov.approve("exp", S.APPROVED, approver="lead")
            moved = await gov.transition("exp", S.APPROVED)
            assert [a.approver for a in await bp.approvals_for_transition(moved.transition_id)] == ["lead"]
            with pytest.raises(PolicyViolationError):
                await gov.transition("exp", S.RUNNING, telemetry={"errorRate": 0.9})
            await gov.create_version("exp", {"a": 2})
            assert (await gov.rollback("exp", 1)).rolled_back_from == 1
            assert [c.path for c in await gov.diff("exp", 1, 2)] == ["a"]
            assert await gov.allowed_transitions("exp") == [S.RUNNING, S.RAMPING, S.ARCHIVED]
            assert len(await gov.history("exp")) == 3
            assert await gov.verify("exp") == []
            assert (await gov.replay("exp")) == (await gov.state("exp"))
            results = await gov.transition_many([TransitionRequest(experiment="exp", to=S.RUNNING)])
            assert isinstance(results[0], redgov.StateTransition)
            with pytest.raises(redgov.ValidationError, match="must be a TransitionRequest"):
                await gov.transition_many(["exp"])  # type: ignore[list-item]
            found = await gov.evaluate_policies("exp", telemetry={"errorRate": 0.5})
            assert not found[0].compliant
            events = [e async for e in gov.watch(from_id="0", timeout=0.2)]
            assert events and events[0].kind == "state"
        finally:
            if not url.startswith("memory"):
                keys = [k async for k in bp.client.scan_iter(match="{" + prefix + ":*")]
                if keys:
                    await bp.client.delete(*keys)
            await gov.close()

    asyncio.run(body())




def test_a_key_whose_first_call_was_refused_repeats_the_refusal_with_the_stored_evaluations(
        make: Callable[..., Governance]) -> None:
    gov = make(policies=[ConflictPrevention("a", "b")])
    for name in ("a", "b"):
        gov.create(name, idempotency_key=f"create-{name}")
        gov.transition(name, S.PENDING_APPROVAL)
        gov.transition(name, S.APPROVED)
    gov.transition("a", S.RUNNING)
    with pytest.raises(PolicyViolationError) as first:
        gov.transition("b", S.RUNNING, idempotency_key="start-b")
    stored = gov.backplane.policy_evaluations("b")
    gov.transition("a", S.PAUSED)  # the conflict is gone, but the key's outcome is final
    with pytest.raises(PolicyViolationError) as again:
        gov.transition("b", S.RUNNING, idempotency_key="start-b")
    assert again.value.evaluations == first.value.evaluations
    assert [e.evaluation_id for e in again.value.evaluations][-1] == stored[-1].evaluation_id
    assert gov.backplane.policy_evaluations("b") == stored  # nothing written by the repeat
    assert gov.state("b").state is S.APPROVED  # type: ignore[union-attr]
    assert gov.create("a", idempotency_key="create-a").experiment == "a"  # a create repeated: its result


def test_an_etag_conflict_names_the_current_etag_and_state(gov: Governance) -> None:
    created = gov.create("exp")
    moved = gov.transition("exp", S.PENDING_APPROVAL, expected_etag=created.etag)
    assert moved.etag == gov.state("exp").etag and moved.revision == 2  # type: ignore[union-attr]
    with pytest.raises(ConflictError) as conflict:
        gov.transition("exp", S.DRAFT, expected_etag=created.etag)
    assert conflict.value.current_etag == moved.etag
    assert conflict.value.current_state is S.PENDING_APPROVAL
    again = gov.transition("exp", S.DRAFT, expected_etag=conflict.value.current_etag)  # no read needed
    assert again.from_state is S.PENDING_APPROVAL
