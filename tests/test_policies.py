"""Telemetry and policies: strict keys, required telemetry, measured stable time, groups, timezones, reprs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import redgov
from redgov import (
    Backplane,
    ConflictPrevention,
    CorruptDataError,
    ErrorRate,
    Governance,
    LifecycleState,
    Policy,
    PolicyViolationError,
    Severity,
    TimeWindow,
    TrafficLimit,
    ValidationError,
)
from redgov.policies import PolicyContext

S = LifecycleState
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


class Clock:
    """A clock that stands still until moved."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class LatencyBudget(Policy):
    """A custom policy reading its own telemetry key."""

    kind = "latencyBudget"
    telemetry_keys = ("p99Latency",)

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        latency = ctx.telemetry.get("p99Latency")
        if latency is None:
            return True, "no p99Latency telemetry"
        return latency <= 250, f"p99 {latency}ms"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(backplane: Backplane, clock: Clock) -> Callable[..., Governance]:
    def build(**kwargs: Any) -> Governance:
        return Governance(backplane, clock=clock, **kwargs)

    return build


def running(gov: Governance, experiment: str) -> None:
    gov.create(experiment)
    for state in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
        gov.transition(experiment, state)


def written(backplane: Backplane, experiment: str) -> tuple[int, int]:
    return len(backplane.transitions(experiment)), len(backplane.policy_evaluations(experiment))


# -- strict telemetry -------------------------------------------------------------------


def test_a_misspelled_telemetry_key_is_refused_with_a_suggestion_and_writes_nothing(
        make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(policies=[ErrorRate(0.05)])
    gov.create("exp")
    before = written(backplane, "exp")
    with pytest.raises(ValidationError, match=r"telemetry\['errorrate'\].*did you mean 'errorRate'"):
        gov.transition("exp", S.PENDING_APPROVAL, telemetry={"errorrate": 0.9})
    with pytest.raises(ValidationError, match="did you mean 'trafficPercentage'"):
        gov.evaluate_policies("exp", telemetry={"trafficPercent": 5})
    assert written(backplane, "exp") == before
    assert gov.state("exp").state is S.DRAFT  # type: ignore[union-attr]


def test_builtin_keys_are_accepted_without_policies_and_custom_keys_only_with_their_policy(
        make: Callable[..., Governance], backplane: Backplane) -> None:
    plain = make()
    plain.create("exp")
    plain.transition("exp", S.PENDING_APPROVAL, telemetry={"errorRate": 0.5, "trafficPercentage": 90,
                                                           "runningDuration": 3})
    with pytest.raises(ValidationError, match="p99Latency"):
        plain.transition("exp", S.APPROVED, telemetry={"p99Latency": 100})
    custom = make(policies=[LatencyBudget(severity=Severity.CRITICAL)])
    with pytest.raises(PolicyViolationError, match="p99 400ms"):
        custom.transition("exp", S.APPROVED, telemetry={"p99Latency": 400})
    custom.transition("exp", S.APPROVED, telemetry={"p99Latency": 100})
    latest = backplane.latest_policy_evaluation("exp", "latencyBudget")
    assert latest is not None and latest.compliant and latest.metadata["telemetry"] == {"p99Latency": 100}


@pytest.mark.parametrize("bad", [{"errorRate": "high"}, {"errorRate": -1}, {"errorRate": float("nan")},
                                 {"errorRate": float("inf")}, {"trafficPercentage": True}, {3: 1}])
def test_bad_telemetry_values_name_the_key(make: Callable[..., Governance], bad: Mapping[Any, Any]) -> None:
    gov = make()
    gov.create("exp")
    with pytest.raises(ValidationError, match="telemetry"):
        gov.transition("exp", S.PENDING_APPROVAL, telemetry=bad)


def test_required_telemetry_makes_missing_telemetry_non_compliant(make: Callable[..., Governance],
                                                                  backplane: Backplane) -> None:
    lenient = make(policies=[ErrorRate(0.05), LatencyBudget(severity=Severity.WARNING)])
    lenient.create("exp")
    lenient.transition("exp", S.PENDING_APPROVAL)  # the seed's default: missing is compliant
    strict = make(policies=[ErrorRate(0.05), LatencyBudget(severity=Severity.WARNING),
                            TrafficLimit(10, timedelta(minutes=5))], require_telemetry=True)
    with pytest.raises(PolicyViolationError, match="required telemetry missing: errorRate") as refused:
        strict.transition("exp", S.APPROVED, telemetry={"trafficPercentage": 5})
    verdicts = {e.policy: (e.compliant, e.reason) for e in refused.value.evaluations}
    assert verdicts == {"errorRate": (False, "required telemetry missing: errorRate"),
                        "latencyBudget": (False, "required telemetry missing: p99Latency"),
                        "trafficLimit": (True, "traffic 5% <= 10%")}  # runningDuration is measured, not required
    assert gov_state(backplane, "exp") is S.PENDING_APPROVAL
    strict.transition("exp", S.APPROVED, telemetry={"errorRate": 0.01, "trafficPercentage": 5})
    latency = backplane.latest_policy_evaluation("exp", "latencyBudget")
    assert latency is not None and not latency.compliant  # a Warning: recorded, not refusing


def gov_state(backplane: Backplane, experiment: str) -> S | None:
    state = backplane.get_state(experiment)
    return None if state is None else state.state


# -- TrafficLimit measures its stable time -----------------------------------------------


def test_traffic_limit_measures_the_time_since_entering_running(make: Callable[..., Governance], clock: Clock,
                                                                backplane: Backplane) -> None:
    gov = make(policies=[TrafficLimit(10, timedelta(minutes=30))])
    running(gov, "exp")
    clock.advance(minutes=10)
    with pytest.raises(PolicyViolationError, match="exceeds 10% before 1800s of stable running") as refused:
        gov.transition("exp", S.RAMPING, telemetry={"trafficPercentage": 50})
    assert [(e.policy, e.compliant, e.current_state) for e in refused.value.evaluations] == [
        ("trafficLimit", False, S.RUNNING)]
    assert gov_state(backplane, "exp") is S.RUNNING
    stored = backplane.latest_policy_evaluation("exp", "trafficLimit")
    assert stored is not None and not stored.compliant  # the refusal's evaluation is kept for audit
    clock.advance(minutes=21)
    gov.transition("exp", S.RAMPING, telemetry={"trafficPercentage": 50})
    assert gov_state(backplane, "exp") is S.RAMPING
    # Running <-> Ramping keeps the stable time; Paused resets it
    gov.transition("exp", S.RUNNING, telemetry={"trafficPercentage": 50})
    gov.transition("exp", S.PAUSED)
    clock.advance(hours=2)
    gov.transition("exp", S.RUNNING)
    clock.advance(minutes=29)
    with pytest.raises(PolicyViolationError, match="before 1800s"):
        gov.transition("exp", S.RAMPING, telemetry={"trafficPercentage": 50})
    clock.advance(minutes=2)
    gov.transition("exp", S.RAMPING, telemetry={"trafficPercentage": 50})


def test_running_duration_telemetry_overrides_the_measured_time(make: Callable[..., Governance], clock: Clock) -> None:
    gov = make(policies=[TrafficLimit(10, timedelta(minutes=30))])
    running(gov, "exp")
    clock.advance(hours=5)
    with pytest.raises(PolicyViolationError, match="ran 60s, runningDuration telemetry"):
        gov.transition("exp", S.RAMPING, telemetry={"trafficPercentage": 50, "runningDuration": 60})
    gov.create("young")
    for state in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
        gov.transition("young", state)
    gov.transition("young", S.RAMPING, telemetry={"trafficPercentage": 50, "runningDuration": 3600})


def test_a_move_into_running_has_no_stable_time_yet(make: Callable[..., Governance]) -> None:
    gov = make(policies=[TrafficLimit(10, timedelta(minutes=30))])
    gov.create("exp")
    for state in (S.PENDING_APPROVAL, S.APPROVED):
        gov.transition("exp", state)
    with pytest.raises(PolicyViolationError, match="before 1800s"):
        gov.transition("exp", S.RUNNING, telemetry={"trafficPercentage": 50})
    gov.transition("exp", S.RUNNING, telemetry={"trafficPercentage": 5})


def test_a_warning_traffic_limit_records_and_lets_the_move_happen(make: Callable[..., Governance],
                                                                   backplane: Backplane) -> None:
    gov = make(policies=[TrafficLimit(10, timedelta(minutes=30), severity="Warning")])
    running(gov, "exp")
    moved = gov.transition("exp", S.RAMPING, telemetry={"trafficPercentage": 50})
    assert moved.to_state is S.RAMPING
    stored = backplane.latest_policy_evaluation("exp", "trafficLimit")
    assert stored is not None and not stored.compliant and stored.severity is Severity.WARNING


def test_evaluate_policies_measures_the_stable_time_too(make: Callable[..., Governance], clock: Clock) -> None:
    gov = make(policies=[TrafficLimit(10, timedelta(minutes=30))])
    running(gov, "exp")
    clock.advance(minutes=5)
    [early] = gov.evaluate_policies("exp", telemetry={"trafficPercentage": 50})
    assert not early.compliant and "ran 300s, since entering Running or Ramping" in (early.reason or "")
    clock.advance(minutes=30)
    [later] = gov.evaluate_policies("exp", telemetry={"trafficPercentage": 50})
    assert later.compliant and "2100s stable" in (later.reason or "")


def test_a_state_without_its_entry_time_falls_back_to_the_last_state_write(
        make: Callable[..., Governance], clock: Clock, backplane: Backplane) -> None:
    gov = make(policies=[TrafficLimit(10, timedelta(minutes=30))])
    running(gov, "exp")
    key = backplane.core.keys("exp", None, None)[1].state
    backplane.client.hdel(key, "rs")  # as a state rebuilt by restore has it
    clock.advance(minutes=31)
    gov.transition("exp", S.RAMPING, telemetry={"trafficPercentage": 50})
    backplane.client.hset(key, "rs", "soon")
    with pytest.raises(CorruptDataError, match=f"key {key} field rs"):
        gov.transition("exp", S.RUNNING, telemetry={"trafficPercentage": 50})
    with pytest.raises(CorruptDataError, match="field rs"):
        gov.evaluate_policies("exp", telemetry={"trafficPercentage": 50})


# -- conflict groups ---------------------------------------------------------------------


def test_overlapping_groups_are_each_judged_alone(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(policies=[ConflictPrevention("a", "b", name="ab"), ConflictPrevention("a", "c", name="ac")])
    running(gov, "c")
    gov.create("b")
    gov.create("a")
    for state in (S.PENDING_APPROVAL, S.APPROVED):
        gov.transition("a", state)
    verdicts = {e.policy: e.compliant for e in gov.evaluate_policies("a", target=S.RUNNING)}
    assert verdicts == {"ab": True, "ac": False}
    with pytest.raises(PolicyViolationError, match="ac: conflicting experiment c is Running") as refused:
        gov.transition("a", S.RUNNING)
    assert {e.policy: e.compliant for e in refused.value.evaluations} == {"ab": True, "ac": False}
    ab, ac = (backplane.latest_policy_evaluation("a", name) for name in ("ab", "ac"))
    assert ab is not None and ab.compliant and ac is not None and not ac.compliant


def test_a_non_critical_conflict_group_records_and_lets_the_move_happen(make: Callable[..., Governance],
                                                                         backplane: Backplane) -> None:
    gov = make(policies=[ConflictPrevention("a", "b", severity="Warning")])
    running(gov, "b")
    running(gov, "a")
    latest = backplane.latest_policy_evaluation("a", "conflictPrevention")
    assert latest is not None and not latest.compliant and latest.severity is Severity.WARNING
    assert gov_state(backplane, "a") is S.RUNNING


# -- TimeWindow timezones ----------------------------------------------------------------


@pytest.mark.parametrize("zone", [timezone(timedelta(hours=2)), ZoneInfo("Europe/Helsinki")])
def test_time_window_is_judged_in_its_timezone(make: Callable[..., Governance], clock: Clock, zone: Any,
                                               backplane: Backplane) -> None:
    clock.now = datetime(2026, 6, 2, 7, 30, tzinfo=UTC)  # 09:30 at +02:00, 10:30 in Helsinki (summer)
    window = TimeWindow(time(9, 0, tzinfo=zone), time(17, 0, tzinfo=zone), severity="Critical")
    gov = make(policies=[window])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)  # outside in UTC (07:30), inside where the window is
    clock.now = datetime(2026, 6, 2, 15, 30, tzinfo=UTC)  # 17:30 / 18:30 there, inside in UTC
    with pytest.raises(PolicyViolationError, match="outside 09:00-17:00"):
        gov.transition("exp", S.APPROVED)


def test_time_window_naive_times_are_utc_and_timezones_must_match() -> None:
    window = TimeWindow(time(9), time(17))
    assert window.contains(datetime(2026, 1, 1, 9, 0, tzinfo=UTC))
    assert not window.contains(datetime(2026, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=2))))  # 07:00 UTC
    with pytest.raises(ValidationError, match="share a timezone"):
        TimeWindow(time(9, tzinfo=UTC), time(17))


# -- reprs -------------------------------------------------------------------------------


def test_policy_reprs_show_their_thresholds() -> None:
    assert repr(ErrorRate(0.05)) == "ErrorRate(0.05)"
    assert repr(TrafficLimit(10, timedelta(minutes=30), name="ramp")) == \
        "TrafficLimit(10, min_stable_time=datetime.timedelta(seconds=1800), name='ramp')"
    assert repr(ConflictPrevention("a", "b", severity="Warning")) == \
        "ConflictPrevention('a', 'b', severity='Warning')"
    assert repr(TimeWindow(time(9), time(17))) == "TimeWindow(datetime.time(9, 0), datetime.time(17, 0))"


def test_an_evaluation_is_never_recorded_from_states_that_changed_before_the_record(backplane: Backplane) -> None:
    """evaluate_policies reads the group's states, decides in Python, then records in a script: a move of
    a member in between must not be recorded with the verdict of before (the script checks the
    revisions read; the plan reads and decides again)."""
    gov = Governance(backplane, policies=[ConflictPrevention("a", "b")])
    for name in ("a", "b"):
        gov.create(name)
        gov.transition(name, LifecycleState.PENDING_APPROVAL)
        gov.transition(name, LifecycleState.APPROVED)
    before = len(backplane.policy_evaluations("a"))
    plan = gov.core.evaluate_policies("a", telemetry=None, target=LifecycleState.RUNNING, tenant=None,
                                      environment=None)
    call = next(plan)
    call = plan.send(backplane.run(call))  # the states read: b is Approved, so no conflict yet
    gov.transition("b", LifecycleState.RUNNING)  # ... and now b runs, before the record
    attempts = 1
    while True:
        reply = backplane.run(call)
        if reply is None:
            attempts += 1
        try:
            call = plan.send(reply)
        except StopIteration as done:
            recorded = done.value
            break
    assert attempts == 2  # the first record was refused (nothing written), the second decided anew
    conflict = [e for e in recorded if e.policy == "conflictPrevention"]
    assert len(conflict) == 1 and conflict[0].compliant is False
    assert [e.compliant for e in backplane.policy_evaluations("a")[before:]] == [False]  # only the fresh verdict


def test_evaluations_whose_states_keep_changing_are_a_conflict(backplane: Backplane,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gov = Governance(backplane, policies=[ConflictPrevention("a", "b")])
    gov.create("a")
    before = backplane.policy_evaluations("a")
    real = gov.core.states_of

    def and_then_a_move(*args: Any, **kwargs: Any) -> Any:  # every read is followed by a write of a
        call = real(*args, **kwargs)
        parse = call.parse

        def moved(reply: Any) -> Any:
            read = parse(reply)
            backplane.client.hincrby(backplane.core.keys("a", None, None)[1].state, "r", 1)
            return read

        call.parse = moved
        return call

    monkeypatch.setattr(gov.core, "states_of", and_then_a_move)
    with pytest.raises(redgov.ConflictError, match="changed during each of 5 evaluations"):
        gov.evaluate_policies("a", target=LifecycleState.RUNNING)
    assert backplane.policy_evaluations("a") == before  # nothing recorded
