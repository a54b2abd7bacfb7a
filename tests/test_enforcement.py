"""Enforcement: published rules, approvals bound to what was reviewed, four eyes, requests, no partial writes.

Each test reproduces a defect measured on the code before "Additions of 2026-12-07" (API.md):
governance was advisory (a client with no gates of its own passed every gate), an approval
outlived a new configuration, one account requested, approved and ran a move alone, a rejection
left the move's earlier approvals counted, retention removed a granted approval, ``save_state``
left approvals in place, a script refused after its first write (a partial result), and a refusal
was not remembered under its operation id. Real Redis and memory:// (the ``backplane`` fixture).

New names (``RulesMismatchError``, ``SeparationOfDutiesError``, ...) are read from ``redgov`` inside
the tests, so a missing one fails its own tests, not the module's collection.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

import redgov
from redgov import (
    ApprovalRequiredError,
    Backplane,
    ConfigError,
    CorruptDataError,
    ErrorRate,
    Governance,
    LifecycleState,
    ManualGate,
    PolicyViolationError,
    Severity,
    ValidationError,
)
from redgov.calls import Call

from .conftest import delete_prefix, new_prefix

S = LifecycleState
#: more than the 1 MiB a record may take once encoded (redgov.codec.MAX_RECORD_BYTES)
BIG = {"blob": "x" * 1_500_000}


# -- helpers -----------------------------------------------------------------------------------


def keys_of(bp: Backplane, experiment: str) -> Any:
    return bp.core.scope(None, None).experiment(experiment)


def log_length(bp: Backplane) -> int:
    return int(bp.client.xlen(bp.core.scope(None, None).log))


def log_kinds(bp: Backplane, kind: bytes, experiment: str) -> int:
    """How many entries of one kind the scope log holds for an experiment."""
    entries = bp.client.xrange(bp.core.scope(None, None).log)
    return sum(1 for _, fields in entries if fields.get(b"k") == kind and fields.get(b"x") == experiment.encode())


def snapshot(bp: Backplane, experiment: str) -> tuple[Any, ...]:
    """Everything a refused write must leave as it was (the ops bucket aside: a refusal is remembered)."""
    exp = keys_of(bp, experiment)
    return (bp.get_state(experiment), bp.transitions(experiment), bp.approvals(experiment),
            bp.versions(experiment), bp.client.lrange(exp.history, 0, -1), log_length(bp))


def walk(gov: Governance, experiment: str, *states: S, actor: str = "op") -> None:
    for state in states:
        gov.transition(experiment, state, actor=actor)


def names_version(message: str, number: int) -> bool:
    """The message names configuration version ``number`` ("version 1", "v1", "config_version 1" ...)."""
    return re.search(rf"(version|\bv)\s*[#:=]?\s*{number}\b", message, re.IGNORECASE) is not None


@pytest.fixture
def make(backplane: Backplane) -> Callable[..., Governance]:
    def build(**kwargs: Any) -> Governance:
        return Governance(backplane, **kwargs)

    return build


# -- 1. governance is advisory: published rules bind every client ------------------------------


def _publisher(bp: Backplane) -> Governance:
    return Governance(bp, gates=[ManualGate(to_state=S.APPROVED)],
                      policies=[ErrorRate(0.05, severity=Severity.CRITICAL)])


def test_a_governance_of_no_rules_follows_the_published_gate_and_policy(backplane: Backplane) -> None:
    published = _publisher(backplane).publish(actor="admin", reason="four eyes before Approved")
    assert published.version == 1 and published.created_by == "admin"
    plain = Governance(backplane)  # nothing of its own: the CLI without --config, a plain script
    plain.create("exp", actor="op")
    plain.transition("exp", S.PENDING_APPROVAL, actor="op")
    before = snapshot(backplane, "exp")
    with pytest.raises(ApprovalRequiredError):
        plain.transition("exp", S.APPROVED, actor="op")
    assert snapshot(backplane, "exp") == before

    plain.approve("exp", S.APPROVED, approver="lead")
    plain.transition("exp", S.APPROVED, actor="op")
    before = snapshot(backplane, "exp")
    with pytest.raises(PolicyViolationError):
        plain.transition("exp", S.RUNNING, actor="op", telemetry={"errorRate": 0.9})
    after = snapshot(backplane, "exp")
    assert after[:4] == before[:4]  # state, transitions, approvals, versions untouched (evaluations kept)
    state = plain.state("exp")
    assert state is not None and state.state is S.APPROVED
    plain.transition("exp", S.RUNNING, actor="op", telemetry={"errorRate": 0.01})


def test_a_governance_whose_rules_differ_is_refused_and_writes_nothing(backplane: Backplane) -> None:
    publisher = _publisher(backplane)
    publisher.publish(actor="admin")
    publisher.create("exp", actor="op")
    publisher.transition("exp", S.PENDING_APPROVAL, actor="op")
    other = Governance(backplane, policies=[ErrorRate(0.05)])  # no gate: other rules than the published ones
    before = snapshot(backplane, "exp")
    with pytest.raises(ConfigError) as caught:
        other.transition("exp", S.APPROVED, actor="op")
    assert isinstance(caught.value, redgov.RulesMismatchError)
    assert snapshot(backplane, "exp") == before
    with pytest.raises(redgov.RulesMismatchError):
        other.create("fresh", actor="op")
    assert backplane.get_state("fresh") is None and snapshot(backplane, "exp") == before


def test_publish_numbers_versions_and_an_equal_definition_writes_nothing(backplane: Backplane) -> None:
    publisher = _publisher(backplane)
    first = publisher.publish(actor="admin", reason="first")
    length = log_length(backplane)
    again = publisher.publish(actor="someone-else", reason="same rules")
    assert again == first and log_length(backplane) == length
    assert [v.version for v in publisher.rules_history()] == [1]

    stricter = Governance(backplane, gates=[ManualGate(to_state=S.APPROVED), ManualGate(to_state=S.RUNNING)],
                          policies=[ErrorRate(0.05, severity=Severity.CRITICAL)])
    second = stricter.publish(actor="admin", reason="gate Running too")
    assert second.version == 2 and second.rules_hash != first.rules_hash
    assert stricter.published_rules() == second and stricter.published_rules(version=1) == first
    third = publisher.publish(actor="admin", reason="back to the first definition")  # history only grows
    assert third.version == 3 and third.rules_hash == first.rules_hash
    assert [v.version for v in publisher.rules_history()] == [1, 2, 3]


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = new_prefix()
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, prefix)


def test_the_cli_without_config_follows_the_published_rules(redis_url: str, redis_prefix: str,
                                                            tmp_path: Path) -> None:
    with redgov.connect(redis_url, prefix=redis_prefix) as bp:
        _publisher(bp).publish(actor="admin")
        plain = Governance(bp)
        plain.create("EXP", actor="op")
        plain.transition("EXP", S.PENDING_APPROVAL, actor="op")
        env = {k: v for k, v in os.environ.items() if k not in ("REDGOV_URL", "REDGOV_EXPORT_URL")}
        done = subprocess.run([sys.executable, "-m", "redgov", "--url", redis_url, "--prefix", redis_prefix,
                               "transition", "EXP", "Approved"], check=False, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env=env)
        assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "refused" in done.stderr, done.stderr
        assert "approv" in done.stderr.lower(), done.stderr
        state = plain.state("EXP")
        assert state is not None and state.state is S.PENDING_APPROVAL and state.revision == 2


# -- 2. an approval is bound to the configuration that was reviewed ----------------------------


def _approved_for_running(gov: Governance, experiment: str, configuration: dict[str, Any]) -> None:
    gov.create(experiment, actor="op", configuration=configuration)
    walk(gov, experiment, S.PENDING_APPROVAL, S.APPROVED)


def test_a_new_configuration_version_lapses_the_approval(make: Callable[..., Governance],
                                                         backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.RUNNING)])
    _approved_for_running(gov, "exp", {"v": 1})
    gov.approve("exp", S.RUNNING, approver="lead", reason="reviewed v1")
    assert gov.create_version("exp", {"v": 2}, actor="op").version == 2
    before = snapshot(backplane, "exp")
    with pytest.raises(ApprovalRequiredError) as caught:
        gov.transition("exp", S.RUNNING, actor="op")
    assert names_version(str(caught.value), 1), str(caught.value)
    assert snapshot(backplane, "exp") == before
    gov.approve("exp", S.RUNNING, approver="lead", reason="reviewed v2")  # a review of v2 lets it run
    gov.transition("exp", S.RUNNING, actor="op")


def test_a_rollback_lapses_the_approval(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.RUNNING)])
    _approved_for_running(gov, "exp", {"v": 1})
    gov.create_version("exp", {"v": 2}, actor="op")
    gov.approve("exp", S.RUNNING, approver="lead", reason="reviewed v2")
    assert gov.rollback("exp", 1, actor="op").version == 3
    before = snapshot(backplane, "exp")
    with pytest.raises(ApprovalRequiredError) as caught:
        gov.transition("exp", S.RUNNING, actor="op")
    assert names_version(str(caught.value), 2), str(caught.value)
    assert snapshot(backplane, "exp") == before


def test_an_approval_record_carries_the_config_version_it_was_given_for(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.RUNNING)])
    _approved_for_running(gov, "exp", {"v": 1})
    gov.create_version("exp", {"v": 2}, actor="op")
    state = gov.state("exp")
    assert state is not None and state.config_version == 2
    record = gov.approve("exp", S.RUNNING, approver="lead")
    assert record.config_version == state.config_version
    assert [a.config_version for a in gov.backplane.approvals("exp")] == [2]


# -- 3. four eyes: no account passes a gate alone ---------------------------------------------


def test_the_requester_may_not_approve_and_an_approver_may_not_move(make: Callable[..., Governance],
                                                                    backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED), ManualGate(to_state=S.RUNNING)])
    gov.create("exp", actor="op")
    gov.transition("exp", S.PENDING_APPROVAL, actor="op", reason="please review")  # the request
    before = snapshot(backplane, "exp")
    with pytest.raises(ApprovalRequiredError) as caught:
        gov.approve("exp", S.APPROVED, approver="op")
    assert isinstance(caught.value, redgov.SeparationOfDutiesError)
    assert snapshot(backplane, "exp") == before

    gov.approve("exp", S.APPROVED, approver="lead")
    before = snapshot(backplane, "exp")
    with pytest.raises(redgov.SeparationOfDutiesError):
        gov.transition("exp", S.APPROVED, actor="lead")  # the approver may not make the move
    assert snapshot(backplane, "exp") == before
    gov.transition("exp", S.APPROVED, actor="op")

    gov.request("exp", S.RUNNING, actor="op", reason="ship it")
    with pytest.raises(redgov.SeparationOfDutiesError):
        gov.approve("exp", S.RUNNING, approver="op")
    gov.approve("exp", S.RUNNING, approver="lead")
    with pytest.raises(redgov.SeparationOfDutiesError):
        gov.transition("exp", S.RUNNING, actor="lead")
    moved = gov.transition("exp", S.RUNNING, actor="op")
    assert [a.approver for a in backplane.approvals_for_transition(moved.transition_id)] == ["lead"]


def test_two_approvals_need_two_distinct_approvers(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED, approvals=2)])
    gov.create("exp", actor="op")
    gov.transition("exp", S.PENDING_APPROVAL, actor="op")
    gov.approve("exp", S.APPROVED, approver="ann")
    before = snapshot(backplane, "exp")
    with pytest.raises(ApprovalRequiredError):
        gov.transition("exp", S.APPROVED, actor="op")  # one of two
    assert snapshot(backplane, "exp") == before
    gov.approve("exp", S.APPROVED, approver="ann")  # the same approver again counts once
    with pytest.raises(ApprovalRequiredError):
        gov.transition("exp", S.APPROVED, actor="op")
    state = gov.state("exp")
    assert state is not None and state.state is S.PENDING_APPROVAL
    gov.approve("exp", S.APPROVED, approver="bob")
    moved = gov.transition("exp", S.APPROVED, actor="op")
    assert {a.approver for a in backplane.approvals_for_transition(moved.transition_id)} == {"ann", "bob"}


def test_self_approval_allowed_lets_the_requester_approve_and_move(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED, self_approval=True)])
    gov.create("exp", actor="op")
    gov.transition("exp", S.PENDING_APPROVAL, actor="op")
    gov.approve("exp", S.APPROVED, approver="op")
    gov.transition("exp", S.APPROVED, actor="op")
    state = gov.state("exp")
    assert state is not None and state.state is S.APPROVED


# -- 4. rejection closes the request; requests are listed with who asked -----------------------


def _awaiting(gov: Governance, experiment: str) -> list[tuple[S, S]]:
    return [(m.from_state, m.to_state) for m in gov.awaiting_approval(experiment=experiment)]


def test_a_rejected_move_leaves_the_inbox(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("exp", actor="op")
    gov.transition("exp", S.PENDING_APPROVAL, actor="op")
    assert _awaiting(gov, "exp") == [(S.PENDING_APPROVAL, S.APPROVED)]
    gov.approve("exp", S.APPROVED, approver="lead")
    gov.approve("exp", S.APPROVED, approver="lead2", approved=False, reason="not ready")
    assert _awaiting(gov, "exp") == []
    assert gov.awaiting_approval() == []
    with pytest.raises(ApprovalRequiredError):
        gov.transition("exp", S.APPROVED, actor="op")


def test_a_rejection_withdraws_the_approvals_given_so_far(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED, approvals=2)])
    gov.create("exp", actor="op")
    gov.transition("exp", S.PENDING_APPROVAL, actor="op", reason="ready")
    gov.approve("exp", S.APPROVED, approver="ann")
    gov.approve("exp", S.APPROVED, approver="rex", approved=False, reason="not ready")
    assert _awaiting(gov, "exp") == []
    gov.request("exp", S.APPROVED, actor="op", reason="fixed")
    (move,) = gov.awaiting_approval(experiment="exp")
    assert (move.approvals_given, move.approvals_needed) == (0, 2)
    gov.approve("exp", S.APPROVED, approver="bob")  # ann's approval was withdrawn: one of two
    (move,) = gov.awaiting_approval(experiment="exp")
    assert (move.approvals_given, move.approvals_needed) == (1, 2)
    with pytest.raises(ApprovalRequiredError):
        gov.transition("exp", S.APPROVED, actor="op")
    gov.approve("exp", S.APPROVED, approver="cid")
    moved = gov.transition("exp", S.APPROVED, actor="op")
    assert {a.approver for a in gov.backplane.approvals_for_transition(moved.transition_id)} == {"bob", "cid"}


def test_awaiting_approval_lists_requested_moves_with_who_asked(make: Callable[..., Governance]) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED, approvals=2), ManualGate(to_state=S.RUNNING)])
    gov.create("exp", actor="op")
    gov.transition("exp", S.PENDING_APPROVAL, actor="op", reason="ready for review")
    (move,) = gov.awaiting_approval(experiment="exp")
    assert (move.from_state, move.to_state) == (S.PENDING_APPROVAL, S.APPROVED)
    assert (move.requested_by, move.reason) == ("op", "ready for review")
    assert isinstance(move.requested_at, datetime) and move.requested_at.tzinfo is not None
    assert (move.approvals_given, move.approvals_needed) == (0, 2)
    gov.approve("exp", S.APPROVED, approver="ann")
    (move,) = gov.awaiting_approval()
    assert (move.approvals_given, move.approvals_needed) == (1, 2)
    gov.approve("exp", S.APPROVED, approver="bob")
    gov.transition("exp", S.APPROVED, actor="op")

    assert gov.awaiting_approval(experiment="exp") == []  # Approved -> Running is gated but not requested
    pending = gov.request("exp", S.RUNNING, actor="op", reason="go live")
    assert (pending.to_state, pending.requested_by, pending.reason) == (S.RUNNING, "op", "go live")
    (move,) = gov.awaiting_approval(experiment="exp")
    assert (move.from_state, move.to_state) == (S.APPROVED, S.RUNNING)
    assert (move.requested_by, move.reason, move.approvals_given, move.approvals_needed) == ("op", "go live", 0, 1)
    assert move.requested_at is not None


# -- 5. retention keeps open approvals ---------------------------------------------------------


@pytest.fixture
def retained_bp(url: str, prefix: str) -> Iterator[Backplane]:
    bp = redgov.connect(url, prefix=prefix, retain_history=10)
    yield bp
    if not url.startswith("memory://"):
        delete_prefix(bp.client, prefix)
    bp.close()


def test_retention_never_removes_a_granted_approval(retained_bp: Backplane) -> None:
    gov = Governance(retained_bp, gates=[ManualGate(to_state=S.RUNNING)], policies=[ErrorRate(0.5)])
    gov.create("exp", actor="op")
    walk(gov, "exp", S.PENDING_APPROVAL, S.APPROVED)
    approval = gov.approve("exp", S.RUNNING, approver="lead")
    for _ in range(1000):  # other entries of the experiment, none changing its state
        gov.evaluate_policies("exp", telemetry={"errorRate": 0.01})
    assert len(retained_bp.client.lrange(keys_of(retained_bp, "exp").history, 0, -1)) <= 10 + 32  # trimmed
    moved = gov.transition("exp", S.RUNNING, actor="op")
    linked = retained_bp.approvals_for_transition(moved.transition_id)
    assert [a.approval_id for a in linked] == [approval.approval_id]


# -- 6. every way of changing the state lapses approvals ---------------------------------------


def test_save_state_lapses_the_approvals(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.RUNNING)])
    gov.create("exp", actor="op")
    walk(gov, "exp", S.PENDING_APPROVAL, S.APPROVED)
    gov.approve("exp", S.RUNNING, approver="lead")
    state = backplane.get_state("exp")
    assert state is not None
    saved = backplane.save_state(msgspec.structs.replace(state, state=S.DRAFT), expected_etag=state.etag)
    assert saved.ok, saved
    walk(gov, "exp", S.PENDING_APPROVAL, S.APPROVED)
    before = snapshot(backplane, "exp")
    with pytest.raises(ApprovalRequiredError):
        gov.transition("exp", S.RUNNING, actor="op")  # the approval was for the move before the save
    assert snapshot(backplane, "exp") == before


# -- 7. and 8. a script checks every key and input before its first write ----------------------


def test_a_refused_auto_create_leaves_no_partial_write(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(auto_create=True)
    scope = backplane.core.scope(None, None)
    backplane.client.set(scope.index, "not a sorted set")
    exp = keys_of(backplane, "ghost")
    with pytest.raises(CorruptDataError):
        gov.transition("ghost", S.PENDING_APPROVAL, actor="op")
    assert backplane.client.exists(exp.state) == 0
    assert log_length(backplane) == 0 and backplane.client.xrange(scope.log) == []
    assert backplane.client.llen(exp.history) == 0
    assert backplane.client.get(scope.index) == b"not a sorted set"


def test_a_stray_version_member_is_corrupt_and_no_version_is_written(make: Callable[..., Governance],
                                                                      backplane: Backplane) -> None:
    gov = make()
    gov.create("exp", actor="op", configuration={"v": 1})
    exp = keys_of(backplane, "exp")
    backplane.client.zadd(exp.versions, {"not-an-entry-id": 99})
    versions_logged, length = log_kinds(backplane, b"version", "exp"), log_length(backplane)
    state = gov.state("exp")
    with pytest.raises(CorruptDataError):
        gov.create_version("exp", {"v": 2}, actor="op")
    assert log_kinds(backplane, b"version", "exp") == versions_logged == 1
    assert log_length(backplane) == length and gov.state("exp") == state
    assert backplane.client.zcard(exp.versions) == 2  # the one version and the stray member, nothing added


def test_oversized_metadata_is_refused_before_anything_is_written(make: Callable[..., Governance],
                                                                  backplane: Backplane) -> None:
    gov = make()
    with pytest.raises(ValidationError):
        gov.create("big", actor="op", metadata=BIG)
    assert backplane.get_state("big") is None and log_length(backplane) == 0
    assert backplane.client.llen(keys_of(backplane, "big").history) == 0

    gov.create("exp", actor="op", configuration={"v": 1})
    before = snapshot(backplane, "exp")
    with pytest.raises(ValidationError):
        gov.transition("exp", S.PENDING_APPROVAL, actor="op", metadata=BIG)
    assert snapshot(backplane, "exp") == before
    with pytest.raises(ValidationError):
        gov.create_version("exp", BIG, actor="op")
    assert snapshot(backplane, "exp") == before
    assert backplane.client.zcard(keys_of(backplane, "exp").versions) == 1


# -- 9. a refusal is remembered under its operation id; the ops bucket always expires ---------


def test_a_resent_refused_call_gets_the_first_answer(make: Callable[..., Governance], backplane: Backplane) -> None:
    gov = make(gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("exp", actor="op")
    gov.transition("exp", S.PENDING_APPROVAL, actor="op")
    call = gov.core.transition("exp", S.APPROVED, actor="op")  # one operation id, fixed in the Call
    assert isinstance(call, Call)
    with pytest.raises(ApprovalRequiredError):
        backplane.run(call)
    gov.approve("exp", S.APPROVED, approver="lead")
    before = snapshot(backplane, "exp")
    with pytest.raises(ApprovalRequiredError):
        backplane.run(call)  # the very same call again: its first answer, not a new decision
    assert snapshot(backplane, "exp") == before
    gov.transition("exp", S.APPROVED, actor="op")  # a new call decides anew: the approval is there


def test_a_deleted_ops_bucket_gets_its_expiry_again(make: Callable[..., Governance], backplane: Backplane) -> None:
    remaining = 60 - time.time() % 60
    if remaining < 10:  # keep both writes in one minute's bucket (bounded: < 10 s)
        time.sleep(remaining + 0.2)
    gov = make()
    gov.create("exp", actor="op")
    scope = backplane.core.scope(None, None)
    bucket = scope.ops()
    assert backplane.client.pttl(bucket) > 0
    assert backplane.client.delete(bucket) == 1
    gov.transition("exp", S.PENDING_APPROVAL, actor="op")
    assert scope.ops() == bucket
    assert backplane.client.exists(bucket) == 1
    assert backplane.client.pttl(bucket) > 0


# -- published rules: custom policies, the asyncio twin, a publish raced by a write ---------------------


class _Quota(redgov.Policy):
    """A custom policy for the tests: compliant while telemetry 'quota' is at most ``limit``."""

    kind = "testQuota"
    telemetry_keys = ("quota",)

    def __init__(self, limit: float, *, name: str | None = None,
                 severity: redgov.Severity = redgov.Severity.CRITICAL) -> None:
        super().__init__(name=name, severity=severity)
        self.limit = limit

    def decide(self, ctx: Any) -> tuple[bool, str]:
        value = ctx.telemetry.get("quota")
        return (value is None or value <= self.limit), f"quota {value} (limit {self.limit})"


def test_a_published_custom_policy_is_followed_where_registered_and_refused_where_unknown(
        backplane: Backplane) -> None:
    from redgov import policies as policy_registry

    Governance(backplane, policies=[_Quota(3.0)]).create("exp", actor="op")
    registered = policy_registry.registered_policy("testQuota") is not None
    if not registered:
        redgov.register_policy(_Quota)
    try:
        Governance(backplane, policies=[_Quota(3.0)]).publish(actor="admin")
        plain = Governance(backplane)
        plain.transition("exp", S.PENDING_APPROVAL, actor="op", telemetry={"quota": 1})
        with pytest.raises(PolicyViolationError, match="quota 9"):
            plain.transition("exp", S.DRAFT, actor="op", telemetry={"quota": 9})
    finally:
        if not registered:
            policy_registry._KINDS.pop("testQuota", None)  # as a process that never registered it
    before = snapshot(backplane, "exp")
    with pytest.raises(redgov.ConfigError, match="testQuota"):
        Governance(backplane).transition("exp", S.DRAFT, actor="op")
    assert snapshot(backplane, "exp") == before


def test_the_asyncio_governance_publishes_follows_and_requests(redis_url: str, redis_prefix: str) -> None:
    import asyncio

    import redgov.aio

    async def main() -> None:
        async with redgov.aio.AsyncGovernance(redgov.aio.connect(redis_url, prefix=redis_prefix),
                                              gates=[ManualGate(to_state=S.RUNNING)]) as team:
            published = await team.publish(actor="admin", reason="async")
            assert (await team.published_rules()) == published
            assert [v.version for v in await team.rules_history()] == [1]
            plain = redgov.aio.AsyncGovernance(team.backplane)
            await plain.create("exp", actor="op")
            for state in (S.PENDING_APPROVAL, S.APPROVED):
                await plain.transition("exp", state, actor="op")
            move = await plain.request("exp", S.RUNNING, actor="op", reason="go")
            assert (move.requested_by, move.reason, move.approvals_given, move.approvals_needed) == ("op", "go", 0, 1)
            with pytest.raises(redgov.SeparationOfDutiesError):
                await plain.approve("exp", S.RUNNING, approver="op")
            with pytest.raises(ApprovalRequiredError):
                await plain.transition("exp", S.RUNNING, actor="op")
            await plain.approve("exp", S.RUNNING, approver="lead")
            assert (await plain.transition("exp", S.RUNNING, actor="op")).to_state is S.RUNNING

    asyncio.run(main())


def test_a_write_decided_before_a_publish_is_decided_again_under_the_new_rules(backplane: Backplane) -> None:
    plain = Governance(backplane)
    plain.create("exp", actor="op")
    plain.transition("exp", S.PENDING_APPROVAL, actor="op")  # the plain Governance saw no published rules
    Governance(backplane, gates=[ManualGate(to_state=S.APPROVED)]).publish(actor="admin")
    # the script refuses the stale decision (RULES_CHANGED), the Governance reads version 1 and decides again
    with pytest.raises(ApprovalRequiredError):
        plain.transition("exp", S.APPROVED, actor="op")
    assert backplane.get_state("exp").state is S.PENDING_APPROVAL


def test_an_approval_names_the_gate_that_guards_its_move(backplane: Backplane) -> None:
    """The gate is judged by the script from the move's source state (not the first gate into the target)."""
    gov = Governance(backplane, gates=[ManualGate(to_state=S.ARCHIVED, from_state=S.DRAFT)])
    gov.create("x", actor="op")
    walk(gov, "x", S.PENDING_APPROVAL, S.REJECTED)
    assert gov.approve("x", S.ARCHIVED, approver="lead").gate == "manual"  # Rejected -> Archived: no gate
    gov.create("y", actor="op")
    first = gov.approve("y", S.ARCHIVED, approver="lead", idempotency_key="y-archive")
    assert first.gate == "manual:Draft->Archived"
    assert gov.approve("y", S.ARCHIVED, approver="lead", idempotency_key="y-archive") == first
    assert [a.gate for a in backplane.approvals("x") + backplane.approvals("y")] == ["manual",
                                                                                   "manual:Draft->Archived"]
