"""Lost replies: every write is applied exactly once and reported as it happened.

A loopback proxy (tests/faults.py) sits between redgov and the real Redis. It
lets the server run a write script, throws the reply away and cuts the client
connection, so the client's retry (redgov's own with ``connect(retries=...)``,
or the ``Retry`` of a wrapped redis-py client) sends the same call again. The
call must return what the first application did, and the stored history must
show exactly one application. Other tests hold a reply past the socket
timeout, and retry whole calls in the application with ``idempotency_key``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import msgspec
import pytest
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

import redgov
from redgov import (
    ApprovalRecord,
    Backplane,
    ConfigurationVersion,
    ErrorRate,
    ExperimentState,
    Governance,
    LifecycleState,
    ManualGate,
    PolicyEvaluation,
    PolicyViolationError,
    RoleGate,
    Severity,
    StateTransition,
    TrafficLimit,
    TransitionRequest,
)

from .faults import Command, FaultProxy, command_length, evalsha, op_id, reply_length

S = LifecycleState

#: client kinds: redgov.connect with explicit retries, connect with its defaults, a wrapped redis-py
#: client with an explicit Retry, one with redis-py's default Retry (redis-py 8.1 speaks RESP3: HELLO 3),
#: and one speaking RESP2
CLIENTS = ["connect", "connect-defaults", "wrapped", "wrapped-default", "wrapped-resp2"]
WRITE_SCRIPTS = ("create", "transition", "approve", "create_version", "record_evaluations", "save_state",
                 "append_transition", "append_approval", "append_version", "append_policy_evaluation")
OK_TELEMETRY = {"errorRate": 0.01, "trafficPercentage": 10.0}


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    parsed = urlparse(redis_url)
    if parsed.scheme != "redis":
        pytest.fail(f"the fault proxy needs a TCP redis:// server, got {redis_url}")
    with FaultProxy((parsed.hostname or "127.0.0.1", parsed.port or 6379)) as running:
        yield running


@pytest.fixture
def faults(proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The proxy, disarmed before and after the test; its threads must not have failed."""
    proxy.disarm()
    proxy.counters.errors.clear()
    yield proxy
    proxy.disarm()
    assert proxy.settled(), "a cut did not finish"
    assert proxy.counters.errors == []


def cleanup(client: redis.Redis, prefix: str) -> None:
    """Delete the test's keys (the current layout ``<prefix>{...}`` and the older ``{<prefix>:...}``)."""
    for pattern in (prefix + "{*", "{" + prefix + ":*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])


@pytest.fixture
def direct(redis_url: str, prefix: str) -> Iterator[Backplane]:
    """Reads what is stored, straight from Redis (no proxy)."""
    bp = redgov.connect(redis_url, prefix=prefix)
    yield bp
    cleanup(bp.client, prefix)
    bp.close()


def open_backplane(kind: str, proxy: FaultProxy, prefix: str, **options: Any) -> Backplane:
    if kind == "connect":
        return redgov.connect(proxy.url, prefix=prefix, retries=3, **options)
    if kind == "connect-defaults":
        return redgov.connect(proxy.url, prefix=prefix, **options)
    if kind == "wrapped":
        client = redis.Redis(host=proxy.host, port=proxy.port, retry=Retry(ExponentialBackoff(), 3),
                             socket_timeout=5, **options)
        return Backplane(client, prefix=prefix)
    if kind == "wrapped-default":
        return Backplane(redis.Redis(host=proxy.host, port=proxy.port, socket_timeout=5, **options), prefix=prefix)
    if kind == "wrapped-resp2":
        client = redis.Redis(host=proxy.host, port=proxy.port, retry=Retry(ExponentialBackoff(), 3),
                             socket_timeout=5, protocol=2, **options)
        return Backplane(client, prefix=prefix)
    raise AssertionError(kind)


@pytest.fixture(params=CLIENTS)
def bp(request: pytest.FixtureRequest, faults: FaultProxy, prefix: str, direct: Backplane) -> Iterator[Backplane]:
    """A Backplane whose connections go through the proxy."""
    backplane = open_backplane(str(request.param), faults, prefix)
    yield backplane
    backplane.close()


def sha(backplane: Any, script: str) -> str:
    """The SHA1 of one of the backplane's scripts (what its EVALSHA names)."""
    return str(backplane._scripts[script].sha)


@contextmanager
def cut(proxy: FaultProxy, backplane: Any, script: str, n: int = 1) -> Iterator[None]:
    """Within the block, the next ``n`` replies of ``script`` are lost after the server ran it."""
    before = proxy.cuts
    budget = proxy.drop_next(n, evalsha(sha(backplane, script)))
    try:
        yield
    finally:
        proxy.disarm()
    assert budget.spent, f"the reply of {script} was never cut"
    assert proxy.settled()
    assert proxy.cuts - before == n


def counts(direct: Backplane, experiment: str) -> dict[str, Any]:
    """What is stored for an experiment, in numbers."""
    state = direct.get_state(experiment)
    return {
        "revision": None if state is None else state.revision,
        "transitions": len(direct.transitions(experiment)),
        "approvals": len(direct.approvals(experiment)),
        "versions": [v.version for v in direct.versions(experiment)],
        "evaluations": len(direct.policy_evaluations(experiment)),
        "state_writes": [s.revision for s in direct.state_writes(experiment)],
    }


def grew(before: dict[str, Any], after: dict[str, Any], **expected: int) -> None:
    """Each count grew by exactly ``expected`` (0 unless named); revisions stay 1..n without repeats."""
    for name in ("revision", "transitions", "approvals", "evaluations"):
        assert (after[name] or 0) - (before[name] or 0) == expected.get(name, 0), (name, before, after)
    assert len(after["versions"]) - len(before["versions"]) == expected.get("versions", 0), (before, after)
    assert after["versions"] == list(range(1, len(after["versions"]) + 1)), after
    assert after["state_writes"] == list(range(1, (after["revision"] or 0) + 1)), after


# -- the proxy's own parsing --------------------------------------------------------------------

def test_reply_framing_handles_resp2_and_resp3() -> None:
    replies = [b"+OK\r\n", b"-ERR x\r\n", b":12\r\n", b"$3\r\nabc\r\n", b"$-1\r\n", b"*-1\r\n",
               b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", b"_\r\n", b"#t\r\n", b",1.5\r\n", b"(123\r\n",
               b"!3\r\nerr\r\n", b"=7\r\ntxt:abc\r\n", b"%1\r\n+k\r\n*0\r\n", b"~2\r\n:1\r\n:2\r\n",
               b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n", b"|1\r\n+a\r\n+b\r\n"]
    stream = b"".join(replies)
    pos, ends = 0, []
    while pos < len(stream):
        end = reply_length(stream, pos)
        assert end is not None
        ends.append(end - pos)
        pos = end
    assert ends == [len(r) for r in replies]
    for reply in replies:
        for cut_at in range(len(reply)):
            assert reply_length(reply[:cut_at]) is None


def test_command_framing() -> None:
    data = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\r\n\r\nPING\r\n"
    first = command_length(data)
    assert first is not None and first[0] == [b"SET", b"k", b"\r\n"]
    second = command_length(data, first[1])
    assert second == ([b"PING"], len(data))
    assert command_length(data[:10]) is None and command_length(data[:-1]) == first
    command = Command((b"evalsha", b"ab", b"2", b"k1", b"k2", b"op", b"1"))
    assert command.script_sha == "ab" and op_id(command) == b"op"


def test_cut_reply_was_applied_and_client_fails_fast(faults: FaultProxy, redis_url: str, prefix: str) -> None:
    """The proxy itself: the server ran the cut command; the client learns at once, not after a timeout."""
    client = redis.Redis(host=faults.host, port=faults.port, retry=Retry(ExponentialBackoff(), 0), socket_timeout=5)
    key = prefix + "{x}:counter"
    try:
        faults.drop_next(1, lambda c, _r: c.name == "INCRBY")
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            client.incr(key)
        assert time.monotonic() - started < 1.0
        assert faults.settled()
        assert int(client.get(key) or 0) == 1
        pipe = client.pipeline(transaction=False)
        for _ in range(5):
            pipe.incr(key)
        faults.drop_next(1, lambda c, _r: c.name == "INCRBY")
        with pytest.raises(redis.ConnectionError):
            pipe.execute()
        assert faults.settled()
        assert int(client.get(key) or 0) == 6  # the whole batch ran; every reply was lost
    finally:
        client.delete(key)
        client.close()


# -- one lost reply per write kind ---------------------------------------------------------------

def test_create(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp)
    with cut(faults, bp, "create"):
        created = gov.create("exp", actor="ann", configuration={"a": 1})
    stored = direct.get_state("exp")
    assert created == stored
    assert (created.revision, created.state, created.config_version) == (1, S.DRAFT, 1)
    after = counts(direct, "exp")
    assert after["transitions"] == 1 and after["versions"] == [1] and after["state_writes"] == [1]


def test_transition(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp)
    gov.create("exp")
    before = counts(direct, "exp")
    with cut(faults, bp, "transition"):
        moved = gov.transition("exp", S.PENDING_APPROVAL, actor="ann")
    assert (moved.from_state, moved.to_state) == (S.DRAFT, S.PENDING_APPROVAL)
    assert direct.transitions("exp")[-1] == moved
    assert direct.get_state("exp").state is S.PENDING_APPROVAL  # type: ignore[union-attr]
    grew(before, counts(direct, "exp"), revision=1, transitions=1)


def test_transition_back_and_forth(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    """The issue's case: Running -> Paused whose reply is lost is not refused as Paused -> Paused."""
    gov = Governance(bp)
    gov.create("exp")
    for target in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
        gov.transition("exp", target)
    before = counts(direct, "exp")
    with cut(faults, bp, "transition"):
        paused = gov.transition("exp", S.PAUSED)
    assert (paused.from_state, paused.to_state) == (S.RUNNING, S.PAUSED)
    grew(before, counts(direct, "exp"), revision=1, transitions=1)


def test_transition_consuming_manual_approval(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    approval = gov.approve("exp", S.APPROVED, approver="ann")
    before = counts(direct, "exp")
    with cut(faults, bp, "transition"):
        moved = gov.transition("exp", S.APPROVED, actor="bob")
    assert (moved.from_state, moved.to_state) == (S.PENDING_APPROVAL, S.APPROVED)
    assert direct.transitions("exp")[-1] == moved
    linked = direct.approvals_for_transition(moved.transition_id)
    assert [a.approval_id for a in linked] == [approval.approval_id]
    grew(before, counts(direct, "exp"), revision=1, transitions=1)


def test_transition_with_role_gate(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp, gates=[RoleGate("lead", to_state=S.PENDING_APPROVAL)])
    gov.create("exp")
    before = counts(direct, "exp")
    with cut(faults, bp, "transition"):
        moved = gov.transition("exp", S.PENDING_APPROVAL, actor="ann", metadata={"actorRole": "lead"})
    assert moved.to_state is S.PENDING_APPROVAL
    assert direct.transitions("exp")[-1] == moved
    linked = direct.approvals_for_transition(moved.transition_id)
    assert len(linked) == 1 and linked[0].gate.startswith("roleBased")
    grew(before, counts(direct, "exp"), revision=1, transitions=1, approvals=1)


def test_transition_recording_evaluations(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp, policies=[ErrorRate(0.05, name="errors"), TrafficLimit(50.0, name="traffic")])
    gov.create("exp")
    before = counts(direct, "exp")
    with cut(faults, bp, "transition"):
        moved = gov.transition("exp", S.PENDING_APPROVAL, telemetry=OK_TELEMETRY)
    assert direct.transitions("exp")[-1] == moved
    evaluations = direct.policy_evaluations("exp")
    assert sorted(e.policy for e in evaluations) == ["errors", "traffic"]
    assert all(e.compliant for e in evaluations)
    grew(before, counts(direct, "exp"), revision=1, transitions=1, evaluations=2)


def test_transition_refused_by_critical_policy(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp, policies=[ErrorRate(0.05, name="errors")])
    gov.create("exp")
    before = counts(direct, "exp")
    raised = []
    with cut(faults, bp, "record_evaluations"):
        try:
            gov.transition("exp", S.PENDING_APPROVAL, telemetry={"errorRate": 0.5})
        except PolicyViolationError as exc:
            raised.append(exc)
    assert len(raised) == 1, "PolicyViolationError must be raised exactly once"
    stored = direct.policy_evaluations("exp")
    assert [e.evaluation_id for e in stored] == [e.evaluation_id for e in raised[0].evaluations]
    assert not stored[0].compliant
    assert direct.get_state("exp").state is S.DRAFT  # type: ignore[union-attr]
    grew(before, counts(direct, "exp"), evaluations=1)


def test_evaluate_policies(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp, policies=[ErrorRate(0.05, name="errors"), TrafficLimit(50.0, name="traffic")])
    gov.create("exp")
    before = counts(direct, "exp")
    with cut(faults, bp, "record_evaluations"):
        evaluations = gov.evaluate_policies("exp", telemetry={"errorRate": 0.5})
    stored = direct.policy_evaluations("exp")
    assert [e.evaluation_id for e in stored] == [e.evaluation_id for e in evaluations]
    assert [e.compliant for e in stored] == [False, True]
    grew(before, counts(direct, "exp"), evaluations=2)


def test_approve(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("exp")
    gov.transition("exp", S.PENDING_APPROVAL)
    before = counts(direct, "exp")
    with cut(faults, bp, "approve"):
        approval = gov.approve("exp", S.APPROVED, approver="ann", reason="looks good")
    assert (approval.from_state, approval.to_state, approval.approver) == (S.PENDING_APPROVAL, S.APPROVED, "ann")
    stored = direct.approvals("exp")
    assert [a.approval_id for a in stored] == [approval.approval_id]
    grew(before, counts(direct, "exp"), approvals=1)
    assert gov.transition("exp", S.APPROVED).to_state is S.APPROVED  # the approval is there, once


def test_create_version(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp)
    gov.create("exp", configuration={"a": 1})
    before = counts(direct, "exp")
    with cut(faults, bp, "create_version"):
        version = gov.create_version("exp", {"a": 2}, actor="ann")
    assert version.version == 2 and version.configuration == {"a": 2}
    assert direct.versions("exp")[-1] == version
    assert direct.get_state("exp").config_version == 2  # type: ignore[union-attr]
    grew(before, counts(direct, "exp"), revision=1, versions=1)


def test_rollback(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    gov = Governance(bp)
    gov.create("exp", configuration={"a": 1})
    gov.create_version("exp", {"a": 2})
    before = counts(direct, "exp")
    with cut(faults, bp, "create_version"):
        version = gov.rollback("exp", 1, actor="ann")
    assert (version.version, version.is_rollback, version.rolled_back_from) == (3, True, 1)
    assert version.configuration == {"a": 1}
    assert direct.versions("exp")[-1] == version
    grew(before, counts(direct, "exp"), revision=1, versions=1)


def test_save_state_create_only(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    with cut(faults, bp, "save_state"):
        result = bp.save_state(ExperimentState(experiment="exp", state=S.DRAFT, last_modified_by="ann"))
    assert result.ok and not result.conflict and result.state is not None
    stored = direct.get_state("exp")
    assert stored is not None and (stored.etag, stored.revision) == (result.etag, 1)
    assert result.state.revision == 1
    assert counts(direct, "exp")["state_writes"] == [1]


def test_save_state_etag_guarded(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    first = bp.save_state(ExperimentState(experiment="exp", state=S.DRAFT))
    assert first.ok and first.state is not None
    with cut(faults, bp, "save_state"):
        result = bp.save_state(msgspec.structs.replace(first.state, state=S.PENDING_APPROVAL),
                               expected_etag=first.etag)
    assert result.ok and not result.conflict, result
    stored = direct.get_state("exp")
    assert stored is not None and (stored.etag, stored.revision, stored.state) == (result.etag, 2,
                                                                                    S.PENDING_APPROVAL)
    assert counts(direct, "exp")["state_writes"] == [1, 2]


def test_append_transition(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    with cut(faults, bp, "append_transition"):
        appended = bp.append_transition(StateTransition(experiment="exp", from_state=S.DRAFT,
                                                        to_state=S.PENDING_APPROVAL, actor="ann"))
    assert direct.transitions("exp") == [appended]


def test_append_approval(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    with cut(faults, bp, "append_approval"):
        appended = bp.append_approval(ApprovalRecord(experiment="exp", to_state=S.APPROVED, approved=True,
                                                     approver="ann", gate="manual"))
    assert direct.approvals("exp") == [appended]


def test_append_version(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    """Re-sent after it was applied, it is not refused as a duplicate version."""
    with cut(faults, bp, "append_version"):
        appended = bp.append_version(ConfigurationVersion(experiment="exp", version=1, configuration={"a": 1}))
    assert direct.versions("exp") == [appended]


def test_append_policy_evaluation(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    with cut(faults, bp, "append_policy_evaluation"):
        appended = bp.append_policy_evaluation(PolicyEvaluation(experiment="exp", policy="p", compliant=True,
                                                                severity=Severity.INFO))
    assert direct.policy_evaluations("exp") == [appended]
    assert direct.latest_policy_evaluation("exp", "p") == appended


def test_leases(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    """A lost reply of acquire, renew, release or a fenced write: the re-send answers as the first call did."""
    from datetime import timedelta

    gov = Governance(bp)
    gov.create("exp")
    key = direct.core.keys("exp", None, None)[1].lease()
    with cut(faults, bp, "lease"):
        lease = gov.acquire_lease("exp", owner="ann", ttl=timedelta(seconds=30))
    assert direct.client.get(key).split()[0] == str(lease.token).encode()
    with cut(faults, bp, "lease"):
        renewed = gov.renew_lease(lease, ttl=timedelta(seconds=60))
    assert renewed.token == lease.token
    before = counts(direct, "exp")
    with cut(faults, bp, "transition"):
        gov.transition("exp", S.PENDING_APPROVAL, lease=renewed)
    grew(before, counts(direct, "exp"), revision=1, transitions=1)
    with cut(faults, bp, "lease"):
        gov.release_lease(renewed)
    assert direct.client.get(key) is None
    assert gov.acquire_lease("exp", owner="bob", ttl=timedelta(seconds=1)).token > lease.token


def test_transition_many(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    """A pipelined batch whose replies are all lost (the server ran every call) is re-sent and applied once."""
    gov = Governance(bp)
    names = [f"exp{i}" for i in range(5)]
    for name in names:
        gov.create(name)
    dropped = faults.dropped
    with cut(faults, bp, "transition"):
        results = gov.transition_many([TransitionRequest(experiment=name, to=S.PENDING_APPROVAL) for name in names])
    assert faults.dropped - dropped >= len(names)
    for name, result in zip(names, results, strict=True):
        assert isinstance(result, StateTransition), result
        assert (result.experiment, result.from_state, result.to_state) == (name, S.DRAFT, S.PENDING_APPROVAL)
        assert direct.transitions(name)[-1] == result
        after = counts(direct, name)
        assert (after["revision"], after["transitions"], after["state_writes"]) == (2, 2, [1, 2])


def test_two_lost_replies_in_a_row(bp: Backplane, faults: FaultProxy, direct: Backplane) -> None:
    """The first re-send's reply is lost too: the third send still answers with the first application."""
    gov = Governance(bp)
    gov.create("exp", configuration={"a": 1})
    with cut(faults, bp, "create_version", n=2):
        version = gov.create_version("exp", {"a": 2})
    assert version.version == 2
    assert counts(direct, "exp")["versions"] == [1, 2]


def test_cached_state_after_a_lost_reply(faults: FaultProxy, prefix: str, direct: Backplane) -> None:
    """connect(cache=True): the state read after a re-sent write is the one applied once."""
    bp = redgov.connect(faults.url, prefix=prefix, retries=3, cache=True)
    try:
        gov = Governance(bp)
        gov.create("exp", configuration={"a": 1})
        assert gov.state("exp").config_version == 1  # type: ignore[union-attr]
        with cut(faults, bp, "create_version"):
            version = gov.create_version("exp", {"a": 2})
        assert version.version == 2
        assert gov.state("exp") == direct.get_state("exp")
        assert (gov.state("exp").config_version, gov.state("exp").revision) == (2, 2)  # type: ignore[union-attr]
        assert counts(direct, "exp")["versions"] == [1, 2]
    finally:
        bp.close()


@pytest.mark.parametrize("kind", ["aio-connect", "aio-wrapped"])
def test_async_writes_after_lost_replies(kind: str, faults: FaultProxy, prefix: str, direct: Backplane) -> None:
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry as AsyncRetry

    from redgov.aio import AsyncBackplane, AsyncGovernance

    async def scenario() -> None:
        if kind == "aio-connect":
            abp = redgov.aio.connect(faults.url, prefix=prefix, retries=3)
        else:
            abp = AsyncBackplane(aredis.Redis(host=faults.host, port=faults.port, socket_timeout=5,
                                              retry=AsyncRetry(ExponentialBackoff(), 3)), prefix=prefix)
        try:
            gov = AsyncGovernance(abp, gates=[ManualGate(to_state=S.APPROVED)])
            names = ["exp0", "exp1", "exp2"]
            with cut(faults, abp, "create"):
                await gov.create("exp0", configuration={"a": 1})
            for name in names[1:]:
                await gov.create(name, configuration={"a": 1})
            with cut(faults, abp, "transition"):
                results = await gov.transition_many([TransitionRequest(experiment=n, to=S.PENDING_APPROVAL)
                                                     for n in names])
            assert all(isinstance(r, StateTransition) for r in results), results
            with cut(faults, abp, "approve"):
                await gov.approve("exp0", S.APPROVED, approver="ann")
            with cut(faults, abp, "transition"):
                moved = await gov.transition("exp0", S.APPROVED)
            assert (moved.from_state, moved.to_state) == (S.PENDING_APPROVAL, S.APPROVED)
            with cut(faults, abp, "create_version"):
                version = await gov.create_version("exp0", {"a": 2})
            assert version.version == 2
            with cut(faults, abp, "create_version"):
                rolled = await gov.rollback("exp0", 1)
            assert (rolled.version, rolled.rolled_back_from) == (3, 1)
        finally:
            await abp.close()

    asyncio.run(scenario())
    stored = counts(direct, "exp0")
    assert (stored["transitions"], stored["approvals"], stored["versions"], stored["revision"]) == (3, 1, [1, 2, 3], 5)
    assert stored["state_writes"] == [1, 2, 3, 4, 5]
    for name in ("exp1", "exp2"):
        assert counts(direct, name)["state_writes"] == [1, 2]


# -- a held reply: the client times out and re-sends -------------------------------------------

@pytest.mark.parametrize("kind", ["connect", "wrapped"])
def test_reply_held_past_the_socket_timeout(kind: str, faults: FaultProxy, prefix: str, direct: Backplane) -> None:
    if kind == "connect":
        bp = redgov.connect(faults.url, prefix=prefix, timeout=0.5, retries=3)
    else:
        bp = Backplane(redis.Redis(host=faults.host, port=faults.port, socket_timeout=0.5,
                                   retry=Retry(ExponentialBackoff(), 3)), prefix=prefix)
    try:
        gov = Governance(bp)
        gov.create("exp", configuration={"a": 1})
        for target in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
            gov.transition("exp", target)
        before = counts(direct, "exp")
        delayed = faults.delayed
        faults.delay_next(1.5, 1, evalsha(sha(bp, "create_version")))
        started = time.monotonic()
        version = gov.create_version("exp", {"a": 2})
        assert time.monotonic() - started >= 0.5  # it did time out once
        assert faults.delayed - delayed == 1
        assert version.version == 2
        faults.delay_next(1.5, 1, evalsha(sha(bp, "transition")))
        paused = gov.transition("exp", S.PAUSED)
        assert faults.delayed - delayed == 2
        assert (paused.from_state, paused.to_state) == (S.RUNNING, S.PAUSED)
        grew(before, counts(direct, "exp"), revision=2, transitions=1, versions=1)
    finally:
        faults.disarm()
        bp.close()


# -- application retries with idempotency keys (no client retries) -----------------------------

def retry_call(call: Callable[[], Any], attempts: int = 60) -> tuple[Any, int]:
    """The application's loop: the same call (same idempotency key) again after a ConnectionError.

    Returns the result and the number of attempts; ``call`` runs before this returns (closures are safe).
    """
    for attempt in range(1, attempts + 1):
        try:
            return call(), attempt
        except redis.ConnectionError:
            continue
    raise AssertionError(f"no success in {attempts} attempts")


def test_application_retries_create_version_with_idempotency_key(faults: FaultProxy, prefix: str,
                                                                 direct: Backplane) -> None:
    bp = redgov.connect(faults.url, prefix=prefix, retries=0)
    try:
        gov = Governance(bp)
        gov.create("exp", configuration={"n": 0})
        faults.drop_randomly(0.3, evalsha(sha(bp, "create_version")), seed=20261201)
        targeted = faults.targeted
        attempts = 0
        for i in range(1, 101):
            version, tries = retry_call(lambda i=i: gov.create_version("exp", {"n": i}, idempotency_key=f"cv-{i}"))
            attempts += tries
            assert (version.version, version.configuration) == (i + 1, {"n": i})
        faults.disarm()
        assert faults.settled()
        assert attempts - 100 == faults.targeted - targeted >= 15  # every cut was seen by the application as a failure
        stored = direct.versions("exp")
        assert [v.version for v in stored] == list(range(1, 102))
        assert [v.configuration for v in stored] == [{"n": i} for i in range(101)]
        assert direct.get_state("exp").revision == 101  # type: ignore[union-attr]
    finally:
        faults.disarm()
        bp.close()


def test_application_retries_transitions_with_idempotency_key(faults: FaultProxy, prefix: str,
                                                               direct: Backplane) -> None:
    bp = redgov.connect(faults.url, prefix=prefix, retries=0)
    try:
        gov = Governance(bp)
        gov.create("exp")
        for target in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
            gov.transition("exp", target)
        faults.drop_randomly(0.3, evalsha(sha(bp, "transition")), seed=20261202)
        targeted = faults.targeted
        attempts = 0
        expected_from = S.RUNNING
        for i in range(100):
            target = S.PAUSED if i % 2 == 0 else S.RUNNING
            moved, tries = retry_call(
                lambda target=target, i=i: gov.transition("exp", target, idempotency_key=f"t-{i}"))
            attempts += tries
            assert (moved.from_state, moved.to_state) == (expected_from, target)
            expected_from = target
        faults.disarm()
        assert faults.settled()
        assert attempts - 100 == faults.targeted - targeted >= 15
        history = direct.transitions("exp")
        assert len(history) == 104 and len({t.transition_id for t in history}) == 104
        assert [t.to_state for t in history[4:]] == [S.PAUSED if i % 2 == 0 else S.RUNNING for i in range(100)]
        assert counts(direct, "exp")["state_writes"] == list(range(1, 105))
    finally:
        faults.disarm()
        bp.close()


def test_application_retries_every_governance_write(faults: FaultProxy, prefix: str, direct: Backplane) -> None:
    """30 % of all write replies lost, no client retries: each call retried whole with its idempotency key."""
    bp = redgov.connect(faults.url, prefix=prefix, retries=0)
    try:
        gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED)])
        faults.drop_randomly(0.3, evalsha(*(sha(bp, s) for s in WRITE_SCRIPTS)), seed=20261203)
        targeted = faults.targeted
        attempts = calls = 0

        def call(function: Callable[[], Any]) -> Any:
            nonlocal attempts, calls
            result, tries = retry_call(function)
            attempts += tries
            calls += 1
            return result

        for n in range(20):
            name = f"exp{n}"
            state = call(lambda name=name: gov.create(name, configuration={"a": 1}, idempotency_key=f"{name}-create"))
            assert (state.revision, state.config_version) == (1, 1)
            moved = call(lambda name=name: gov.transition(name, S.PENDING_APPROVAL, idempotency_key=f"{name}-t1"))
            assert (moved.from_state, moved.revision) == (S.DRAFT, 2)
            approval = call(
                lambda name=name: gov.approve(name, S.APPROVED, approver="ann", idempotency_key=f"{name}-a"))
            assert approval.from_state is S.PENDING_APPROVAL
            moved = call(lambda name=name: gov.transition(name, S.APPROVED, idempotency_key=f"{name}-t2"))
            assert (moved.from_state, moved.revision) == (S.PENDING_APPROVAL, 3)
            version = call(lambda name=name: gov.create_version(name, {"a": 2}, idempotency_key=f"{name}-v"))
            assert version.version == 2
            rolled = call(lambda name=name: gov.rollback(name, 1, idempotency_key=f"{name}-r"))
            assert (rolled.version, rolled.rolled_back_from) == (3, 1)
            stored = counts(direct, name)
            assert (stored["transitions"], stored["approvals"], stored["versions"], stored["revision"]) == (
                3, 1, [1, 2, 3], 5), stored
            assert stored["state_writes"] == [1, 2, 3, 4, 5]
            assert [a.approval_id for a in direct.approvals(name)] == [approval.approval_id]
            assert direct.transitions(name)[-1] == moved
            assert direct.versions(name)[-1] == rolled
        faults.disarm()
        assert faults.settled()
        assert attempts - calls == faults.targeted - targeted >= 20
    finally:
        faults.disarm()
        bp.close()


def test_idempotent_repeat_of_a_refusal_reports_the_stored_evaluations(faults: FaultProxy, prefix: str,
                                                                       direct: Backplane) -> None:
    bp = redgov.connect(faults.url, prefix=prefix, retries=0)
    try:
        gov = Governance(bp, policies=[ErrorRate(0.05, name="errors")])
        gov.create("exp")
        faults.drop_next(1, evalsha(sha(bp, "record_evaluations")))
        with pytest.raises(redis.ConnectionError):
            gov.transition("exp", S.PENDING_APPROVAL, telemetry={"errorRate": 0.5}, idempotency_key="k")
        with pytest.raises(PolicyViolationError) as raised:
            gov.transition("exp", S.PENDING_APPROVAL, telemetry={"errorRate": 0.5}, idempotency_key="k")
        stored = direct.policy_evaluations("exp")
        assert len(stored) == 1  # written once (this part holds)
        assert [e.evaluation_id for e in raised.value.evaluations] == [e.evaluation_id for e in stored]
    finally:
        faults.disarm()
        bp.close()


# -- volume: 1,000 lost replies across every write kind ----------------------------------------

VOLUME_CUTS = 1000
VOLUME_WORKERS = 4


class FirstSends:
    """A proxy rule: the first k sends of each write operation (by op id) lose their reply (k = 1 or 2)."""

    def __init__(self, shas: set[str]) -> None:
        self.shas = shas
        self.cut: dict[bytes, int] = {}

    def __call__(self, command: Command, _reply: bytes) -> str | None:
        if command.script_sha not in self.shas:
            return None
        op = op_id(command)
        if not op:
            return None
        wanted = 2 if zlib.crc32(op) % 3 == 0 else 1
        done = self.cut.get(op, 0)
        if done >= wanted:
            return None
        self.cut[op] = done + 1
        return "drop"

    def lost(self, command: Command, _reply: bytes) -> None:
        """A reply lost with a cut batch counts as one of its operation's lost sends."""
        op = op_id(command) if command.script_sha in self.shas else None
        if op:
            self.cut[op] = self.cut.get(op, 0) + 1


@dataclass
class Outcomes:
    """What the calls returned, by kind, to compare with what is stored."""

    states: list[ExperimentState] = field(default_factory=list)
    transitions: list[StateTransition] = field(default_factory=list)
    approvals: list[ApprovalRecord] = field(default_factory=list)
    versions: list[ConfigurationVersion] = field(default_factory=list)
    evaluations: list[PolicyEvaluation] = field(default_factory=list)
    refusals: list[PolicyViolationError] = field(default_factory=list)
    governed: list[str] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def governed_round(gov: Governance, names: list[str], out: Outcomes) -> None:
    """Every Governance write kind, on three new experiments (one batch of transitions)."""
    for name in names:
        state = gov.create(name, configuration={"step": 0})
        assert (state.revision, state.config_version) == (1, 1)
        out.states.append(state)
    for _name, result in zip(names, gov.transition_many(
            [TransitionRequest(experiment=name, to=S.PENDING_APPROVAL, telemetry=OK_TELEMETRY) for name in names]),
            strict=True):
        assert isinstance(result, StateTransition), result
        assert (result.from_state, result.to_state) == (S.DRAFT, S.PENDING_APPROVAL)
        out.transitions.append(result)
    for name in names:
        approval = gov.approve(name, S.APPROVED, approver="ann")
        assert approval.from_state is S.PENDING_APPROVAL
        out.approvals.append(approval)
        for target, metadata in ((S.APPROVED, None), (S.RUNNING, {"actorRole": "lead"})):
            moved = gov.transition(name, target, telemetry=OK_TELEMETRY, metadata=metadata)
            assert moved.to_state is target
            out.transitions.append(moved)
        version = gov.create_version(name, {"step": 1})
        assert version.version == 2
        out.versions.append(version)
        try:
            gov.transition(name, S.PAUSED, telemetry={"errorRate": 0.5})
        except PolicyViolationError as exc:
            assert len(exc.evaluations) == 2
            out.refusals.append(exc)
        else:
            raise AssertionError("the Critical policy did not refuse")
        rolled = gov.rollback(name, 1)
        assert (rolled.version, rolled.rolled_back_from) == (3, 1)
        out.versions.append(rolled)
        paused = gov.transition(name, S.PAUSED, telemetry=OK_TELEMETRY)
        assert (paused.from_state, paused.to_state) == (S.RUNNING, S.PAUSED)
        out.transitions.append(paused)
    with out.lock:
        out.governed.extend(names)
        out.calls += len(names) * 9


def backplane_round(bp: Backplane, name: str, out: Outcomes) -> None:
    """Every Backplane write kind on one new experiment."""
    first = bp.save_state(ExperimentState(experiment=name, state=S.DRAFT))
    assert first.ok and first.state is not None and first.state.revision == 1, first
    second = bp.save_state(msgspec.structs.replace(first.state, state=S.PENDING_APPROVAL), expected_etag=first.etag)
    assert second.ok and second.state is not None and second.state.revision == 2, second
    out.states += [first.state, second.state]
    out.transitions.append(bp.append_transition(StateTransition(experiment=name, from_state=S.DRAFT,
                                                                to_state=S.PENDING_APPROVAL)))
    out.approvals.append(bp.append_approval(ApprovalRecord(experiment=name, to_state=S.APPROVED, approved=True,
                                                           approver="bob", gate="manual")))
    for number in (1, 2):
        out.versions.append(bp.append_version(ConfigurationVersion(experiment=name, version=number,
                                                                   configuration={"n": number})))
    out.evaluations.append(bp.append_policy_evaluation(PolicyEvaluation(experiment=name, policy="p", compliant=True,
                                                                        severity=Severity.INFO)))
    with out.lock:
        out.plain.append(name)
        out.calls += 7


def check_stored(direct: Backplane, out: Outcomes) -> None:
    """0 duplicates, 0 misreported outcomes: every returned result is stored, once, as returned."""
    returned_transitions = {t.transition_id: t for t in out.transitions}
    returned_versions = {(v.experiment, v.version): v for v in out.versions}
    returned_approvals = {a.approval_id: a for a in out.approvals}
    returned_evaluations = {e.evaluation_id: e for e in out.evaluations}
    for refusal in out.refusals:
        returned_evaluations.update((e.evaluation_id, e) for e in refusal.evaluations)
    returned_states = {(s.experiment, s.revision): s for s in out.states}
    assert len(returned_transitions) == len(out.transitions) and len(returned_versions) == len(out.versions)
    seen_transitions, seen_versions, seen_approvals, seen_states = 0, 0, 0, 0
    seen_evaluations = 0
    for name, transitions, approvals, versions, evaluations, revision in (
            [(n, 5, 2, 3, 10, 7) for n in out.governed] + [(n, 1, 1, 2, 1, 2) for n in out.plain]):
        stored = counts(direct, name)
        assert (stored["transitions"], stored["approvals"], stored["evaluations"], stored["revision"]) == (
            transitions, approvals, evaluations, revision), (name, stored)
        assert stored["versions"] == list(range(1, versions + 1)), (name, stored)
        assert stored["state_writes"] == list(range(1, revision + 1)), (name, stored)
        history = direct.transitions(name)
        assert len({t.transition_id for t in history}) == len(history)
        for t in history:
            if t.transition_id in returned_transitions:
                assert returned_transitions[t.transition_id] == t
                seen_transitions += 1
        for v in direct.versions(name):
            if (name, v.version) in returned_versions:
                assert returned_versions[(name, v.version)] == v
                seen_versions += 1
        for a in direct.approvals(name):
            if a.approval_id in returned_approvals:
                given = returned_approvals[a.approval_id]
                assert (given.from_state, given.to_state, given.approver) == (a.from_state, a.to_state, a.approver)
                seen_approvals += 1
        for e in direct.policy_evaluations(name):
            if e.evaluation_id in returned_evaluations:
                assert returned_evaluations[e.evaluation_id].policy == e.policy
                seen_evaluations += 1
        for s in direct.state_writes(name):
            if (name, s.revision) in returned_states:
                mine = returned_states[(name, s.revision)]
                assert (mine.etag, mine.state, mine.config_version) == (s.etag, s.state, s.config_version)
                seen_states += 1
    assert seen_transitions == len(out.transitions)
    assert seen_versions == len(out.versions)
    assert seen_approvals == len(out.approvals)
    assert seen_evaluations == len(returned_evaluations)
    assert seen_states == len(out.states)


@pytest.mark.parametrize("kind", ["connect", "wrapped"])
def test_volume_of_lost_replies(kind: str, faults: FaultProxy, prefix: str, direct: Backplane) -> None:
    """1,000 lost replies across every write kind, four threads sharing one client: exactly once, as reported."""
    bp = open_backplane(kind, faults, prefix)
    gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED), RoleGate("lead", to_state=S.RUNNING)],
                     policies=[ErrorRate(0.05, name="errors"), TrafficLimit(50.0, name="traffic")])
    rule = FirstSends({sha(bp, s) for s in WRITE_SCRIPTS})
    out = Outcomes()
    failures: list[BaseException] = []
    start_cuts, start_targeted = faults.cuts, faults.targeted
    deadline = time.monotonic() + 120

    def worker(number: int) -> None:
        rounds = 0
        try:
            while faults.targeted - start_targeted < VOLUME_CUTS and not failures and time.monotonic() < deadline:
                base = f"w{number}r{rounds}"
                governed_round(gov, [f"{base}g{i}" for i in range(3)], out)
                backplane_round(bp, f"{base}b", out)
                rounds += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    faults.set_rule(rule)
    threads = [threading.Thread(target=worker, args=(i,), name=f"volume-{i}") for i in range(VOLUME_WORKERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        assert not any(t.is_alive() for t in threads), "a worker did not finish"
    finally:
        faults.disarm()
    if failures:
        raise failures[0]
    assert faults.settled()
    cuts = faults.cuts - start_cuts
    assert cuts >= VOLUME_CUTS, f"only {cuts} cuts before the deadline"
    check_stored(direct, out)
    print(f"\n{kind}: {out.calls} write calls, {cuts} cut connections (lost replies), {len(out.governed)} governed and "
          f"{len(out.plain)} plain experiments: 0 duplicates, 0 misreported")
    bp.close()
