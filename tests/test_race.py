"""Etag-guarded save_state under real contention, against the real Redis.

Eight OS processes (``spawn``) race read-modify-write cycles on one
experiment; every success must be linearizable (no lost update), every loss
must come back as ``SaveResult(ok=False, conflict=True)``, never as an
exception. Then the "exactly one wins" cases: many writers holding the same
pre-read etag, as processes and as asyncio tasks.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_module
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from msgspec.structs import replace

import redgov
import redgov.aio
from redgov import ExperimentState, LifecycleState, SaveResult

from .conftest import delete_prefix

WORKERS = 8
ATTEMPTS = 60  # per worker, read-modify-write cycles
WORKER_SECONDS = 8.0  # wall-clock bound of one worker's loop
START_TIMEOUT = 30.0  # spawning 8 interpreters; the barrier gives up after this
JOIN_TIMEOUT = 45.0
EXPERIMENT = "race:{exp} ü"  # a tricky name on purpose


# -- workers (module level: the spawn context imports them by name) -----------


def _counter_worker(url: str, prefix: str, experiment: str, barrier: Any, results: Any,
                    index: int, attempts: int, seconds: float) -> None:
    """get_state -> save_state(counter + 1, expected_etag=...) in a bounded loop."""
    report: dict[str, Any] = {"index": index, "successes": [], "conflicts": 0, "problems": []}
    try:
        bp = redgov.connect(url, prefix=prefix)
        try:
            bp.get_state(experiment)  # warm the connection before the start line
            barrier.wait(timeout=START_TIMEOUT)
            deadline = time.monotonic() + seconds
            for _ in range(attempts):
                if time.monotonic() > deadline:
                    break
                state = bp.get_state(experiment)
                if state is None:
                    report["problems"].append("get_state returned None for an existing experiment")
                    break
                counter = state.metadata["counter"]
                new = replace(state, metadata={"counter": counter + 1}, last_modified_by=f"w{index}")
                try:
                    result = bp.save_state(new, expected_etag=state.etag)
                except Exception as exc:  # noqa: BLE001 - a conflict must not raise
                    report["problems"].append(f"save_state raised {exc!r}")
                    continue
                if result.ok:
                    if result.conflict or result.state is None or result.etag != result.state.etag:
                        report["problems"].append(f"inconsistent success {result!r}")
                        continue
                    report["successes"].append((result.state.revision, result.etag, counter + 1))
                elif result.conflict and result.state is None and result.etag is None:
                    report["conflicts"] += 1
                else:
                    report["problems"].append(f"failure that is not a conflict: {result!r}")
        finally:
            bp.close()
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        report["problems"].append(traceback.format_exc())
    results.put(report)


def _one_shot_worker(url: str, prefix: str, experiment: str, etag: str, barrier: Any, results: Any,
                     index: int) -> None:
    """One save_state with an etag every worker read before the race."""
    report: dict[str, Any] = {"index": index, "result": None, "problems": []}
    try:
        bp = redgov.connect(url, prefix=prefix)
        try:
            state = bp.get_state(experiment)
            assert state is not None
            barrier.wait(timeout=START_TIMEOUT)
            new = replace(state, metadata={"winner": index})
            try:
                result = bp.save_state(new, expected_etag=etag)
            except Exception as exc:  # noqa: BLE001 - a conflict must not raise
                report["problems"].append(f"save_state raised {exc!r}")
            else:
                report["result"] = (result.ok, result.conflict, result.etag,
                                    result.state.revision if result.state else None,
                                    result.state is None)
        finally:
            bp.close()
    except BaseException:  # noqa: BLE001
        report["problems"].append(traceback.format_exc())
    results.put(report)


def _run_processes(target: Any, args_for: Any, count: int) -> list[dict[str, Any]]:
    """Start ``count`` spawned processes sharing a barrier; collect one report each."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(count)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=args_for(i, barrier, results), daemon=True)
             for i in range(count)]
    reports: list[dict[str, Any]] = []
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while len(reports) < count and time.monotonic() < deadline:
            try:
                reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue_module.Empty:
                break
        for proc in procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()  # only our own children, by handle
                proc.join(timeout=5)
        exitcodes = [proc.exitcode for proc in procs]
        for proc in procs:
            if proc.exitcode is not None:
                proc.close()
        results.close()
        results.join_thread()
    assert len(reports) == count, f"only {len(reports)} of {count} workers reported; exit codes {exitcodes}"
    assert exitcodes == [0] * count, f"worker exit codes {exitcodes}"
    return reports


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def bp(redis_url: str, prefix: str) -> Iterator[redgov.Backplane]:
    backplane = redgov.connect(redis_url, prefix=prefix)
    try:
        yield backplane
    finally:
        delete_prefix(backplane.client, prefix)
        backplane.close()


def _create(bp: redgov.Backplane, experiment: str, metadata: dict[str, Any]) -> ExperimentState:
    created = bp.save_state(ExperimentState(experiment=experiment, state=LifecycleState.DRAFT, metadata=metadata))
    assert created.ok and created.state is not None and created.state.revision == 1
    state = bp.get_state(experiment)
    assert state is not None and state.etag == created.etag
    return state


# -- tests -----------------------------------------------------------------------


def test_processes_race_read_modify_write(bp: redgov.Backplane, redis_url: str, prefix: str) -> None:
    _create(bp, EXPERIMENT, {"counter": 0})

    reports = _run_processes(
        _counter_worker,
        lambda i, barrier, results: (redis_url, prefix, EXPERIMENT, barrier, results, i, ATTEMPTS, WORKER_SECONDS),
        WORKERS,
    )

    problems = [p for r in reports for p in r["problems"]]
    assert problems == []
    successes = [s for r in reports for s in r["successes"]]
    total = len(successes)
    conflicts = sum(r["conflicts"] for r in reports)
    assert total >= 1
    assert conflicts > 0, f"{WORKERS} racing processes, {total} successes and no conflict at all"

    final = bp.get_state(EXPERIMENT)
    assert final is not None
    assert final.metadata["counter"] == total  # no lost update
    assert final.revision == 1 + total

    # every success got its own revision, the revisions 2..N are all taken, and
    # the counter a success wrote is exactly its revision - 1 (linearizable)
    assert sorted(rev for rev, _, _ in successes) == list(range(2, total + 2))
    assert all(counter == rev - 1 for rev, _, counter in successes)
    assert len({etag for _, etag, _ in successes}) == total

    writes = bp.state_writes(EXPERIMENT)
    assert len(writes) == 1 + total
    assert [w.revision for w in writes] == list(range(1, total + 2))
    assert len({w.etag for w in writes}) == len(writes)
    assert all(w.etag for w in writes)
    assert [w.metadata["counter"] for w in writes] == list(range(total + 1))
    assert writes[-1].etag == final.etag
    by_revision = {rev: etag for rev, etag, _ in successes}
    assert all(by_revision[w.revision] == w.etag for w in writes[1:])


def test_processes_one_etag_exactly_one_wins(bp: redgov.Backplane, redis_url: str, prefix: str) -> None:
    experiment = "one:{shot}"
    start = _create(bp, experiment, {"winner": None})

    reports = _run_processes(
        _one_shot_worker,
        lambda i, barrier, results: (redis_url, prefix, experiment, start.etag, barrier, results, i),
        WORKERS,
    )

    assert [p for r in reports for p in r["problems"]] == []
    winners = [r for r in reports if r["result"][0]]
    losers = [r for r in reports if not r["result"][0]]
    assert len(winners) == 1
    assert len(losers) == WORKERS - 1
    # a loss is SaveResult(ok=False, conflict=True, state=None, etag=None)
    assert all(r["result"][1:] == (True, None, None, True) for r in losers)
    ok, conflict, etag, revision, no_state = winners[0]["result"]
    assert (ok, conflict, revision, no_state) == (True, False, 2, False)

    final = bp.get_state(experiment)
    assert final is not None
    assert final.revision == 2
    assert final.etag == etag != start.etag
    assert final.metadata == {"winner": winners[0]["index"]}
    writes = bp.state_writes(experiment)
    assert [w.revision for w in writes] == [1, 2]
    assert [w.etag for w in writes] == [start.etag, etag]


def test_asyncio_tasks_one_etag_exactly_one_wins(bp: redgov.Backplane, redis_url: str, prefix: str) -> None:
    experiment = "{async}:a b"
    tasks = 20
    start = _create(bp, experiment, {"winner": None})

    async def race() -> list[SaveResult | BaseException]:
        abp = redgov.aio.connect(redis_url, prefix=prefix)
        try:
            state = await abp.get_state(experiment)
            assert state is not None and state.etag == start.etag
            gate = asyncio.Event()

            async def one(i: int) -> SaveResult:
                await gate.wait()
                return await abp.save_state(replace(state, metadata={"winner": i}), expected_etag=start.etag)

            pending = [asyncio.ensure_future(one(i)) for i in range(tasks)]
            await asyncio.sleep(0)
            gate.set()
            return await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout=20)
        finally:
            await abp.close()

    results = asyncio.run(race())

    raised = [r for r in results if isinstance(r, BaseException)]
    assert raised == []
    saves = [r for r in results if isinstance(r, SaveResult)]
    winners = [i for i, r in enumerate(saves) if r.ok]
    assert len(winners) == 1
    losers = [r for r in saves if not r.ok]
    assert len(losers) == tasks - 1
    assert all(r.conflict and r.state is None and r.etag is None and r.error for r in losers)
    win = saves[winners[0]]
    assert win.state is not None and win.state.revision == 2 and not win.conflict

    final = bp.get_state(experiment)
    assert final is not None
    assert final.revision == 2
    assert final.etag == win.etag != start.etag
    assert final.metadata == {"winner": winners[0]}
    writes = bp.state_writes(experiment)
    assert [w.revision for w in writes] == [1, 2]
    assert len({w.etag for w in writes}) == 2
