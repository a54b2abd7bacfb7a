"""Every list read takes limit= and newest_first=, and reads everything in pages of bounded server time.

Measured on v1: 100,000 policy evaluations made ``policy_evaluations()`` one EVALSHA of 600 ms that
blocked every client of the server, and no read took a limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import redgov
from redgov import (
    ApprovalRecord,
    Backplane,
    ConfigurationVersion,
    Governance,
    LifecycleState,
    PolicyEvaluation,
    Severity,
    StateTransition,
)

from .servers import RedisProcess

S = LifecycleState


def fill(bp: Backplane, experiment: str, count: int) -> None:
    """``count`` evaluations, transitions, approvals and versions each, appended in pipelined batches."""
    core = bp.core
    for start in range(0, count, 500):
        calls = []
        for i in range(start, min(count, start + 500)):
            calls.append(core.append_policy_evaluation(PolicyEvaluation(
                experiment=experiment, policy=f"p{i % 3}", compliant=i % 2 == 0, severity=Severity.INFO,
                reason=f"#{i}")))
            calls.append(core.append_transition(StateTransition(experiment=experiment, to_state=S.RUNNING,
                                                                reason=f"#{i}")))
            calls.append(core.append_approval(ApprovalRecord(experiment=experiment, to_state=S.RUNNING,
                                                             approved=True, reason=f"#{i}")))
            calls.append(core.append_version(ConfigurationVersion(experiment=experiment, version=i + 1,
                                                                  configuration={"i": i})))
        results = bp.run_many(calls)
        assert not any(isinstance(r, Exception) for r in results)


@pytest.fixture(scope="module")
def slow_logged() -> Iterator[RedisProcess]:
    """A private server whose SLOWLOG records every call slower than 1 ms."""
    server = RedisProcess()
    yield server
    server.stop()


def test_reading_30000_entries_never_takes_a_millisecond_in_one_call(slow_logged: RedisProcess) -> None:
    bp = redgov.connect(slow_logged.url, prefix="paging")
    try:
        fill(bp, "big", 7500)  # 30,000 entries in all
        client = bp.client
        client.config_set("slowlog-log-slower-than", 1000)
        slow: list[object] = []
        # An O(history) call is slow every time; a busy 2-core machine can stall any single command
        # now and then. So the read is tried up to three times and must once leave SLOWLOG empty.
        for _attempt in range(3):
            client.slowlog_reset()
            evaluations = bp.policy_evaluations("big")
            transitions = bp.transitions("big")
            approvals = bp.approvals("big")
            versions = bp.versions("big")
            slow = [(s["duration"], s["command"][:70]) for s in client.slowlog_get(128)]
            if not slow:
                break
        assert slow == []
        assert [len(evaluations), len(transitions), len(approvals), len(versions)] == [7500] * 4
        assert [e.reason for e in evaluations] == [f"#{i}" for i in range(7500)]
        assert [v.version for v in versions] == list(range(1, 7501))
        assert bp.policy_evaluations("big", newest_first=True, limit=2)[0].reason == "#7499"
    finally:
        bp.client.config_set("slowlog-log-slower-than", 10000)
        bp.close()


@pytest.fixture
def filled(url: str, prefix: str) -> Iterator[Backplane]:
    bp = redgov.connect(url, prefix=prefix)
    fill(bp, "x", 450)  # more than two pages of each kind
    yield bp
    if not url.startswith("memory://"):
        from .conftest import delete_prefix

        delete_prefix(bp.client, prefix)
    bp.close()


@pytest.mark.parametrize("read", ["transitions", "approvals", "policy_evaluations", "versions"])
def test_limit_and_newest_first_on_every_list_read(filled: Backplane, read: str) -> None:
    method = getattr(filled, read)
    everything = method("x")
    assert len(everything) == 450
    assert method("x", limit=0) == []
    assert method("x", limit=7) == everything[:7]
    assert method("x", newest_first=True) == everything[::-1]
    assert method("x", limit=301, newest_first=True) == everything[::-1][:301]
    assert method("x", limit=10_000) == everything
    assert method("nothing-here", limit=3) == []
    with pytest.raises(redgov.ValidationError, match="limit"):
        method("x", limit=-1)


def test_history_pages_skip_other_kinds(url: str, prefix: str) -> None:
    """Transitions are read from the experiment's history, which also holds its evaluations."""
    bp = redgov.connect(url, prefix=prefix)
    gov = Governance(bp, policies=[redgov.ErrorRate(0.5, name=f"e{i}") for i in range(5)])
    try:
        gov.create("x")
        gov.transition("x", S.PENDING_APPROVAL)
        gov.transition("x", S.APPROVED)
        moves = [gov.transition("x", S.RUNNING if i % 2 == 0 else S.PAUSED) for i in range(250)]
        assert gov.history("x", limit=3, newest_first=True) == moves[::-1][:3]
        assert gov.history("x")[3:] == moves
        assert len(bp.policy_evaluations("x")) == 5 * 252
    finally:
        if not url.startswith("memory://"):
            from .conftest import delete_prefix

            delete_prefix(bp.client, prefix)
        bp.close()


def test_async_reads_take_the_same_arguments(url: str, prefix: str) -> None:
    sync = redgov.connect(url, prefix=prefix) if not url.startswith("memory://") else None

    async def main() -> None:
        bp = redgov.aio.connect(url if sync else "memory://shared-paging-" + prefix, prefix=prefix)
        try:
            for i in range(5):
                await bp.append_transition(StateTransition(experiment="x", to_state=S.RUNNING, reason=str(i)))
            got = await bp.transitions("x", limit=2, newest_first=True)
            assert [t.reason for t in got] == ["4", "3"]
            assert len(await bp.transitions("x")) == 5
        finally:
            await bp.close()

    asyncio.run(main())
    if sync is not None:
        from .conftest import delete_prefix

        delete_prefix(sync.client, prefix)
        sync.close()
