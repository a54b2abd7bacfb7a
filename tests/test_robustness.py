"""Shell robustness: blocking reads longer than the socket timeout, forked children, asyncio without
blocking the loop.

Measured on v1: ``watch(block_ms=7000)`` failed with TimeoutError on a default connection (5 s socket
timeout); a forked child that exited normally shut down the parent's ``embedded://`` server;
AsyncBackplane ran SQLAlchemy reads and the embedded server's shutdown on the event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import redgov
from redgov import Governance, LifecycleState

from .conftest import delete_prefix

S = LifecycleState


def test_watch_blocks_longer_than_the_socket_timeout(redis_url: str, prefix: str) -> None:
    bp = redgov.connect(redis_url, prefix=prefix, timeout=0.6)
    gov = Governance(bp)
    try:
        gov.create("x")
        writer = Governance(redgov.connect(redis_url, prefix=prefix))

        def later() -> None:
            time.sleep(1.0)
            writer.transition("x", S.PENDING_APPROVAL)

        thread = threading.Thread(target=later)
        started = time.monotonic()
        thread.start()
        events = list(gov.watch(block_ms=2000, timeout=1.8))  # each read blocks longer than 0.6 s allows
        elapsed = time.monotonic() - started
        thread.join(5)
        writer.close()
        # the watch ran its whole 1.8 s (reads capped below the socket timeout), not cut short, not stuck
        assert 1.7 <= elapsed < 3.0, elapsed
        assert [e.kind for e in events] == ["transition"]
        assert events[0].record.to_state is S.PENDING_APPROVAL
    finally:
        delete_prefix(bp.client, prefix)
        bp.close()


def test_async_watch_blocks_longer_than_the_socket_timeout(redis_url: str, prefix: str) -> None:
    async def main() -> tuple[list[redgov.GovernanceEvent], float]:
        gov = redgov.aio.AsyncGovernance(redgov.aio.connect(redis_url, prefix=prefix, timeout=0.5))
        writer = redgov.aio.AsyncGovernance(redgov.aio.connect(redis_url, prefix=prefix))
        try:
            await gov.create("x")

            async def later() -> None:
                await asyncio.sleep(0.8)  # after a read longer than 0.5 s would have timed out
                await writer.transition("x", S.PENDING_APPROVAL)

            started = time.monotonic()
            move = asyncio.create_task(later())
            events = [e async for e in gov.watch(block_ms=3000, timeout=1.2)]
            await move
            return events, time.monotonic() - started
        finally:
            await writer.close()
            await gov.close()

    try:
        events, elapsed = asyncio.run(main())
        assert [e.kind for e in events] == ["transition"]
        assert 1.1 <= elapsed < 2.4, elapsed
    finally:
        with redgov.connect(redis_url) as cleanup:
            delete_prefix(cleanup.client, prefix)


def exit_code_of(pid: int, timeout: float = 30) -> int:
    """The exit code of forked child ``pid``; it is killed (and the test fails) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child {pid} did not exit within {timeout} s (killed)")
        time.sleep(0.02)


def fork_and_use(url: str, prefix: str, parent: Governance, close_in_child: bool) -> None:
    """A forked child uses the parent's Governance, then exits normally; the parent must not notice."""
    parent.create("before-fork")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            parent.create("from-child")
            parent.transition("from-child", S.PENDING_APPROVAL)
            assert parent.state("before-fork") is not None
            if close_in_child:
                parent.close()
            atexit._run_exitfuncs()  # what a normal interpreter exit runs (weakref finalizers included)
        except BaseException:  # noqa: BLE001 - reported through the exit code
            code = 1
        os._exit(code)
    assert exit_code_of(pid) == 0
    parent.transition("before-fork", S.PENDING_APPROVAL)
    child = parent.state("from-child")
    assert child is not None and child.state is S.PENDING_APPROVAL
    assert parent.verify("before-fork") == [] and parent.verify("from-child") == []


@pytest.mark.parametrize("close_in_child", [False, True], ids=["exit", "close-then-exit"])
@pytest.mark.parametrize("scheme", ["redis", "embedded", "memory"])
def test_a_forked_child_leaves_the_parent_working(scheme: str, close_in_child: bool, redis_url: str, prefix: str,
                                                  tmp_path: Path) -> None:
    url = {"redis": redis_url, "embedded": "embedded://" + str(tmp_path / "fork.db"),
           "memory": "memory://"}[scheme]
    gov = Governance(redgov.connect(url, prefix=prefix))
    if scheme == "memory":  # the child's writes stay in the child's copy of the process
        parent = gov
        parent.create("before-fork")
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                parent.create("from-child")
                if close_in_child:
                    parent.close()
                atexit._run_exitfuncs()
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        assert exit_code_of(pid) == 0
        assert parent.state("from-child") is None and parent.transition("before-fork", S.PENDING_APPROVAL)
        gov.close()
        return
    try:
        fork_and_use(url, prefix, gov, close_in_child)
        # the parent's server still runs after the child's exit, and so does a fresh connection
        with redgov.connect(url, prefix=prefix) as again:
            assert again.get_state("from-child") is not None
    finally:
        if scheme == "redis":
            delete_prefix(gov.backplane.client, prefix)
        gov.close()


def test_async_embedded_start_and_stop_run_off_the_event_loop(tmp_path: Path) -> None:
    url = "embedded://" + str(tmp_path / "loop.db")
    stalls: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            stalls.append(now - last)
            last = now

    async def main() -> None:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        bp = redgov.aio.connect(url, prefix="p")  # no I/O here
        await asyncio.sleep(0.02)
        await bp.save_state(redgov.ExperimentState(experiment="e", state=S.DRAFT))  # starts the server
        await bp.close()  # saves and stops it
        stop.set()
        await tick

    asyncio.run(main())
    assert (tmp_path / "loop.db").exists()
    # starting a redis-server takes tens of ms; the loop kept ticking every few ms meanwhile
    assert max(stalls) < 0.1, max(stalls)
