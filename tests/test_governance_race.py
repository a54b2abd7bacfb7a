"""Governance under real contention: OS processes (``spawn``) and asyncio tasks, real Redis.

Every transition is one Lua script call, so however the callers interleave the
history must stay a single consistent chain: one entry and one revision per
successful call, nothing lost, nothing doubled, the stored state equal to the
state folded from the log. Conflict groups must hold across processes,
idempotency keys must write once, and ``watch`` must see another process's
write promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import queue as queue_module
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import Any, cast

import msgspec
import pytest

import redgov
import redgov.aio
from redgov import (
    ConflictError,
    ConflictPrevention,
    InvalidTransitionError,
    LifecycleState,
    PolicyViolationError,
    RedgovError,
    Severity,
    StateTransition,
)

from .conftest import delete_prefix

S = LifecycleState
RUNNING_STATES = {S.RUNNING, S.RAMPING}
SETUP_PATH = (S.PENDING_APPROVAL, S.APPROVED)  # Draft -> ... -> Approved, no gates

WORKERS = 8
CYCLES = 100  # per worker: Running <-> Paused attempts on one experiment
VERSIONS = 25  # per worker: create_version calls on one experiment
ROUNDS = 200  # conflict-group rounds between two processes
IDEMPOTENT_WORKERS = 4
WATCH_WRITES = 3
TASKS = 20

START_TIMEOUT = 30.0  # spawning interpreters on a small machine; the barrier gives up after this
WORKER_SECONDS = 25.0  # wall-clock bound of one worker's loop
JOIN_TIMEOUT = 50.0  # collecting every report, from the moment the processes start
BARRIER_TIMEOUT = 10.0  # one round of the conflict race
WATCH_TIMEOUT = 5.0


# -- workers (module level: the spawn context imports them by name) -----------


def _cycle_worker(url: str, prefix: str, experiment: str, use_etag: bool, barrier: Any, results: Any,
                  index: int, attempts: int, seconds: float) -> None:
    """Read the state, ask for the opposite of Running/Paused; count wins and refusals."""
    report: dict[str, Any] = {"index": index, "attempts": 0, "successes": [], "invalid": 0, "conflicts": 0,
                              "problems": []}
    try:
        bp = redgov.connect(url, prefix=prefix)
        try:
            gov = redgov.Governance(bp)
            gov.state(experiment)  # warm the connection before the start line
            barrier.wait(timeout=START_TIMEOUT)
            deadline = time.monotonic() + seconds
            for _ in range(attempts):
                if time.monotonic() > deadline:
                    break
                current = gov.state(experiment)
                if current is None or current.state not in (S.RUNNING, S.PAUSED):
                    report["problems"].append(f"unexpected state {current!r}")
                    break
                target = S.PAUSED if current.state is S.RUNNING else S.RUNNING
                report["attempts"] += 1
                try:
                    t = gov.transition(experiment, target, actor=f"w{index}",
                                       expected_etag=current.etag if use_etag else None)
                except InvalidTransitionError as exc:
                    report["invalid"] += 1
                    if use_etag:  # the etag is checked first: a stale read is a conflict
                        report["problems"].append(f"InvalidTransitionError with an etag: {exc}")
                except ConflictError as exc:
                    report["conflicts"] += 1
                    if not use_etag:
                        report["problems"].append(f"ConflictError without an etag: {exc}")
                except RedgovError as exc:
                    report["problems"].append(f"unexpected refusal {exc!r}")
                else:
                    if t.to_state is not target or t.from_state is None or t.from_state is target:
                        report["problems"].append(f"inconsistent transition {t!r}")
                    report["successes"].append(t)
        finally:
            bp.close()
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        report["problems"].append(traceback.format_exc())
    results.put(report)


def _version_worker(url: str, prefix: str, experiment: str, barrier: Any, results: Any, index: int,
                    count: int, seconds: float) -> None:
    report: dict[str, Any] = {"index": index, "versions": [], "problems": []}
    try:
        bp = redgov.connect(url, prefix=prefix)
        try:
            gov = redgov.Governance(bp)  # auto_versioning=True
            gov.state(experiment)
            barrier.wait(timeout=START_TIMEOUT)
            deadline = time.monotonic() + seconds
            for n in range(count):
                if time.monotonic() > deadline:
                    break
                try:
                    v = gov.create_version(experiment, {"worker": index, "n": n}, actor=f"w{index}")
                except RedgovError as exc:
                    report["problems"].append(f"create_version refused: {exc!r}")
                    continue
                report["versions"].append((v.version, v.configuration_hash, n))
        finally:
            bp.close()
    except BaseException:  # noqa: BLE001
        report["problems"].append(traceback.format_exc())
    results.put(report)


def _conflict_worker(url: str, prefix: str, mine: str, group: tuple[str, str], barrier: Any, results: Any,
                     index: int, rounds: int, seconds: float) -> None:
    """Each round: barrier, Running, barrier; the winner goes back to Paused before the next round."""
    report: dict[str, Any] = {"index": index, "experiment": mine, "rounds": 0, "wins": [], "refusals": [],
                              "problems": []}
    try:
        bp = redgov.connect(url, prefix=prefix)
        try:
            gov = redgov.Governance(bp, policies=[ConflictPrevention(*group, name="exclusive")])
            gov.state(mine)
            barrier.wait(timeout=START_TIMEOUT)
            deadline = time.monotonic() + seconds
            for r in range(rounds):
                if time.monotonic() > deadline:
                    report["problems"].append(f"deadline reached after {r} rounds")
                    barrier.abort()  # release the other process instead of leaving it waiting
                    break
                barrier.wait(timeout=BARRIER_TIMEOUT)
                won = None
                try:
                    won = gov.transition(mine, S.RUNNING, actor=f"w{index}")
                except PolicyViolationError as exc:
                    report["refusals"].append((r, list(exc.evaluations)))
                except RedgovError as exc:
                    report["problems"].append(f"round {r}: unexpected refusal {exc!r}")
                barrier.wait(timeout=BARRIER_TIMEOUT)  # both attempts are in before anyone goes back
                if won is not None:
                    back = gov.transition(mine, S.PAUSED, actor=f"w{index}")
                    report["wins"].append((r, won.transition_id, back.transition_id))
                report["rounds"] = r + 1
        finally:
            bp.close()
    except threading.BrokenBarrierError:
        report["problems"].append("the other process left the race (barrier broken)")
    except BaseException:  # noqa: BLE001
        report["problems"].append(traceback.format_exc())
    results.put(report)


def _idempotent_worker(url: str, prefix: str, experiment: str, barrier: Any, results: Any, index: int) -> None:
    """Retry the parent's key "k", then race a fresh key "k2" with the other workers."""
    report: dict[str, Any] = {"index": index, "retry": None, "raced": None, "problems": []}
    try:
        bp = redgov.connect(url, prefix=prefix)
        try:
            gov = redgov.Governance(bp)
            report["retry"] = gov.transition(experiment, S.RUNNING, idempotency_key="k")
            barrier.wait(timeout=START_TIMEOUT)
            report["raced"] = gov.transition(experiment, S.PAUSED, actor=f"w{index}", idempotency_key="k2")
        finally:
            bp.close()
    except BaseException:  # noqa: BLE001
        report["problems"].append(traceback.format_exc())
    results.put(report)


def _watch_worker(url: str, prefix: str, experiment: str, from_id: str, use_async: bool, barrier: Any,
                  results: Any, index: int, wanted: int) -> None:
    """Block in watch and stamp (time.time()) every transition event of ``experiment``."""
    report: dict[str, Any] = {"index": index, "seen": [], "problems": []}

    def see(event: redgov.GovernanceEvent) -> bool:
        if event.kind == "transition":
            assert isinstance(event.record, StateTransition)
            report["seen"].append((time.time(), event.record.transition_id, event.id))
        return len(report["seen"]) >= wanted

    async def watch_async() -> None:
        abp = redgov.aio.connect(url, prefix=prefix)
        try:
            agov = redgov.aio.AsyncGovernance(abp)
            await agov.state(experiment)
            barrier.wait(timeout=START_TIMEOUT)  # nothing else runs on this loop yet
            events = cast(AsyncGenerator[redgov.GovernanceEvent, None],
                          agov.watch(experiments=[experiment], from_id=from_id, timeout=WATCH_TIMEOUT))
            async with contextlib.aclosing(events):
                async for event in events:
                    if see(event):
                        break
        finally:
            await abp.close()

    try:
        if use_async:
            asyncio.run(watch_async())
        else:
            bp = redgov.connect(url, prefix=prefix)
            try:
                gov = redgov.Governance(bp)
                gov.state(experiment)
                barrier.wait(timeout=START_TIMEOUT)
                watching = cast(Generator[redgov.GovernanceEvent, None, None],
                                gov.watch(experiments=[experiment], from_id=from_id, timeout=WATCH_TIMEOUT))
                with contextlib.closing(watching) as events:
                    for event in events:
                        if see(event):
                            break
            finally:
                bp.close()
    except BaseException:  # noqa: BLE001
        report["problems"].append(traceback.format_exc())
    results.put(report)


# -- process plumbing ----------------------------------------------------------------


class Crew:
    """Spawned processes sharing one barrier and one result queue; one report each."""

    def __init__(self, target: Callable[..., None], args_for: Callable[[int, Any, Any], tuple[Any, ...]],
                 count: int, *, parties: int | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.count = count
        self.barrier = ctx.Barrier(count if parties is None else parties)
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=target, args=args_for(i, self.barrier, self.results), daemon=True)
                      for i in range(count)]
        self.started = time.monotonic()

    def __enter__(self) -> Crew:
        self.started = time.monotonic()
        for proc in self.procs:
            proc.start()
        return self

    def reports(self) -> list[dict[str, Any]]:
        """Every report (drained before joining: a child with queued data cannot exit)."""
        deadline = self.started + JOIN_TIMEOUT
        reports: list[dict[str, Any]] = []
        while len(reports) < self.count and time.monotonic() < deadline:
            try:
                reports.append(self.results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue_module.Empty:
                break
        for proc in self.procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
        exitcodes = [proc.exitcode for proc in self.procs]
        assert len(reports) == self.count, f"only {len(reports)} of {self.count} reported; exit codes {exitcodes}"
        assert exitcodes == [0] * self.count, f"worker exit codes {exitcodes}"
        problems = [p for r in reports for p in r["problems"]]
        assert problems == [], "\n".join(problems)
        return sorted(reports, key=lambda r: r["index"])

    def __exit__(self, *exc_info: object) -> None:
        self.barrier.abort()  # nobody stays blocked on a barrier the parent gave up on
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()  # only our own children, by handle
                proc.join(timeout=5)
        for proc in self.procs:
            if proc.exitcode is not None:
                proc.close()
        self.results.close()
        self.results.join_thread()


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def bp(redis_url: str, prefix: str) -> Iterator[redgov.Backplane]:
    backplane = redgov.connect(redis_url, prefix=prefix)
    try:
        yield backplane
    finally:
        delete_prefix(backplane.client, prefix)
        backplane.close()


def _to_approved(gov: redgov.Governance, experiment: str) -> int:
    """create + Draft -> PendingApproval -> Approved; the number of setup transitions after create."""
    created = gov.create(experiment, actor="setup")
    assert created.revision == 1 and created.state is S.DRAFT
    for state in SETUP_PATH:
        gov.transition(experiment, state, actor="setup")
    return len(SETUP_PATH)


def _assert_chain(history: list[StateTransition]) -> None:
    """The create entry first, then every from_state equal to the previous to_state."""
    assert history[0].from_state is None and history[0].to_state is S.DRAFT
    for before, after in itertools.pairwise(history):
        assert after.from_state is before.to_state, f"{before!r} then {after!r}"


def _log_transitions(bp: redgov.Backplane) -> list[tuple[str, str, LifecycleState]]:
    """(entry id, experiment, to_state) of every transition entry of the default scope, in log order."""
    log = bp.core.scope(None, None).log
    out: list[tuple[str, str, LifecycleState]] = []
    last = "-"
    while True:
        chunk = bp.client.xrange(log, min=last, max="+", count=1000)
        if last != "-":
            chunk = chunk[1:]  # the first entry is the one read last time
        if not chunk:
            return out
        for entry_id, fields in chunk:
            if fields[b"k"] == b"transition":
                record = msgspec.json.decode(fields[b"r"])
                out.append((entry_id.decode(), fields[b"x"].decode(), S(record["to_state"])))
        last = chunk[-1][0].decode()


# -- 1. many processes cycling one experiment ------------------------------------------------


def test_processes_cycle_running_paused_one_experiment(bp: redgov.Backplane, redis_url: str, prefix: str) -> None:
    experiment = "cycle:{one} ü"
    gov = redgov.Governance(bp)
    setup = _to_approved(gov, experiment) + 1
    gov.transition(experiment, S.RUNNING, actor="setup")

    # even workers pass expected_etag (refused with ConflictError), odd ones do not
    # (refused with InvalidTransitionError when someone already made the same move)
    with Crew(_cycle_worker,
              lambda i, barrier, results: (redis_url, prefix, experiment, i % 2 == 0, barrier, results, i,
                                           CYCLES, WORKER_SECONDS),
              WORKERS) as crew:
        reports = crew.reports()

    successes = [t for r in reports for t in r["successes"]]
    wins = len(successes)
    refusals = sum(r["invalid"] + r["conflicts"] for r in reports)
    attempts = sum(r["attempts"] for r in reports)
    assert attempts == WORKERS * CYCLES, f"only {attempts} attempts before the deadline"
    assert wins + refusals == attempts
    assert wins >= 1
    assert refusals > 0, f"{WORKERS} racing processes, {wins} successes and no refusal at all"
    assert sum(r["conflicts"] for r in reports) + sum(r["invalid"] for r in reports) == refusals

    history = gov.history(experiment)
    assert len(history) == 1 + setup + wins  # create entry + setup + one per successful call
    _assert_chain(history)
    assert [t.to_state for t in history[1:1 + setup]] == [*SETUP_PATH, S.RUNNING]
    worker_part = history[1 + setup:]
    assert {t.transition_id for t in worker_part} == {t.transition_id for t in successes}
    assert len({t.transition_id for t in history}) == len(history)
    by_id = {t.transition_id: t for t in successes}
    for t in worker_part:  # what each caller was told is what was written
        told = by_id[t.transition_id]
        assert (told.from_state, told.to_state, told.actor) == (t.from_state, t.to_state, t.actor)
        assert {t.from_state, t.to_state} == {S.RUNNING, S.PAUSED}

    final = gov.state(experiment)
    assert final is not None
    assert final.revision == 1 + setup + wins  # one per state write
    assert final.state is history[-1].to_state
    writes = bp.state_writes(experiment)
    assert [w.revision for w in writes] == list(range(1, final.revision + 1))
    assert len({w.etag for w in writes}) == len(writes)
    assert writes[-1].etag == final.etag
    assert gov.replay(experiment) == final
    assert gov.verify(experiment) == []


# -- 2. many processes creating versions ------------------------------------------------------


def test_processes_create_versions_no_gaps_no_duplicates(bp: redgov.Backplane, redis_url: str,
                                                         prefix: str) -> None:
    experiment = "versions:{many}"
    gov = redgov.Governance(bp)
    gov.create(experiment, actor="setup")

    with Crew(_version_worker,
              lambda i, barrier, results: (redis_url, prefix, experiment, barrier, results, i, VERSIONS,
                                           WORKER_SECONDS),
              WORKERS) as crew:
        reports = crew.reports()

    total = WORKERS * VERSIONS
    numbers = [v for r in reports for v, _, _ in r["versions"]]
    assert len(numbers) == total
    assert sorted(numbers) == list(range(1, total + 1))  # no gap, no duplicate
    for r in reports:  # each process saw its own numbers increase
        mine = [v for v, _, _ in r["versions"]]
        assert mine == sorted(mine)

    stored = bp.versions(experiment)
    assert [v.version for v in stored] == list(range(1, total + 1))
    told = {v: (r["index"], n, h) for r in reports for v, h, n in r["versions"]}
    for v in stored:  # the configuration stored under each number is the one its caller sent
        index, n, digest = told[v.version]
        assert v.configuration == {"worker": index, "n": n}
        assert v.configuration_hash == digest
        assert v.created_by == f"w{index}"
        assert v.lifecycle_state is S.DRAFT
    latest = bp.latest_version(experiment)
    assert latest is not None and latest.version == total

    final = gov.state(experiment)
    assert final is not None
    assert final.config_version == total  # auto_versioning follows every version
    assert final.revision == 1 + total
    assert final.state is S.DRAFT
    assert [w.revision for w in bp.state_writes(experiment)] == list(range(1, total + 2))
    assert gov.replay(experiment) == final
    assert gov.verify(experiment) == []
    assert len(gov.history(experiment)) == 1  # versions are not transitions


# -- 3. two processes racing a conflict group ---------------------------------------------------


def test_processes_conflict_group_never_both_running(bp: redgov.Backplane, redis_url: str, prefix: str) -> None:
    group = ("group:a", "group:b")
    gov = redgov.Governance(bp, policies=[ConflictPrevention(*group, name="exclusive")])
    for experiment in group:
        _to_approved(gov, experiment)

    with Crew(_conflict_worker,
              lambda i, barrier, results: (redis_url, prefix, group[i], group, barrier, results, i, ROUNDS,
                                           WORKER_SECONDS),
              2) as crew:
        reports = crew.reports()

    assert [r["rounds"] for r in reports] == [ROUNDS, ROUNDS]
    # both started each round from a non-running state: exactly one of them wins it
    outcomes = Counter[int]()
    for r in reports:
        outcomes.update(n for n, _, _ in r["wins"])
        outcomes.update(n for n, _ in r["refusals"])
    assert outcomes == Counter({n: 2 for n in range(ROUNDS)})
    won_rounds = sorted(n for r in reports for n, _, _ in r["wins"])
    assert won_rounds == list(range(ROUNDS)), "a round with two winners or none"

    # one global order: fold every transition of the scope's log
    states: dict[str, LifecycleState | None] = {e: None for e in group}
    running_moves = Counter[str]()
    for entry_id, experiment, to_state in _log_transitions(bp):
        states[experiment] = to_state
        if to_state is S.RUNNING:
            running_moves[experiment] += 1
        busy = [e for e, s in states.items() if s in RUNNING_STATES]
        assert len(busy) <= 1, f"both {busy} Running/Ramping at log entry {entry_id}"
    assert all(s in (S.PAUSED, S.APPROVED) for s in states.values()), states  # every winner went back
    for r in reports:
        assert running_moves[r["experiment"]] == len(r["wins"])

    # the refusals: PolicyViolationError with a non-compliant Critical conflictPrevention
    # evaluation, each persisted for audit
    for r in reports:
        experiment = r["experiment"]
        persisted = {e.evaluation_id: e for e in bp.policy_evaluations(experiment)}
        refused_ids = set()
        for n, evaluations in r["refusals"]:
            failing = [e for e in evaluations
                       if e.policy == "exclusive" and not e.compliant and e.severity is Severity.CRITICAL
                       and e.metadata.get("type") == "conflictPrevention"]
            assert len(failing) == 1, f"round {n}: {evaluations!r}"
            evaluation = failing[0]
            assert evaluation.experiment == experiment
            assert evaluation.target_state is S.RUNNING
            assert evaluation.current_state in (S.APPROVED, S.PAUSED)
            assert evaluation.evaluation_id in persisted, f"round {n}: evaluation not persisted"
            assert persisted[evaluation.evaluation_id] == evaluation
            refused_ids.add(evaluation.evaluation_id)
        stored_failures = {i for i, e in persisted.items() if e.policy == "exclusive" and not e.compliant}
        assert stored_failures == refused_ids
        history = gov.history(experiment)
        _assert_chain(history)
        # history untouched by refusals: create + setup + (Running, Paused) per win
        assert len(history) == 1 + len(SETUP_PATH) + 2 * len(r["wins"])
        assert gov.verify(experiment) == []


# -- 4. idempotency keys across processes ----------------------------------------------------------


def test_idempotency_key_writes_once_across_processes(bp: redgov.Backplane, redis_url: str, prefix: str) -> None:
    experiment = "idem:{key}"
    gov = redgov.Governance(bp)
    _to_approved(gov, experiment)

    first = gov.transition(experiment, S.RUNNING, actor="me", idempotency_key="k")
    length, state = len(gov.history(experiment)), gov.state(experiment)
    assert state is not None and state.state is S.RUNNING
    again = gov.transition(experiment, S.RUNNING, actor="me", idempotency_key="k")  # same process
    assert again == first
    assert len(gov.history(experiment)) == length
    assert gov.state(experiment) == state

    with Crew(_idempotent_worker,
              lambda i, barrier, results: (redis_url, prefix, experiment, barrier, results, i),
              IDEMPOTENT_WORKERS) as crew:
        reports = crew.reports()

    # retried from other processes (after the state moved on to Running): the first answer
    assert all(r["retry"] == first for r in reports)
    # a fresh key raced by every process at once: one write, the same answer for all
    raced = [r["raced"] for r in reports]
    assert len({t.transition_id for t in raced}) == 1
    assert all(t == raced[0] for t in raced)
    assert (raced[0].from_state, raced[0].to_state) == (S.RUNNING, S.PAUSED)

    history = gov.history(experiment)
    assert len(history) == length + 1
    assert history[-2] == first and history[-1] == raced[0]
    final = gov.state(experiment)
    assert final is not None and final.revision == state.revision + 1 and final.state is S.PAUSED
    assert gov.transition(experiment, S.PAUSED, idempotency_key="k2") == raced[0]  # still once
    assert gov.state(experiment) == final
    assert gov.verify(experiment) == []


# -- 5. watch latency across processes --------------------------------------------------------------


def test_watch_sees_another_process_write_within_a_second(bp: redgov.Backplane, redis_url: str,
                                                          prefix: str) -> None:
    experiment = "watch:{me}"
    gov = redgov.Governance(bp)
    _to_approved(gov, experiment)
    log = bp.core.scope(None, None).log
    newest = bp.client.xrevrange(log, count=1)
    start_id = newest[0][0].decode()

    moves = [S.RUNNING, S.PAUSED, S.RUNNING][:WATCH_WRITES]
    written: list[tuple[float, str]] = []
    # one sync watcher, one async watcher; the parent is the barrier's third party
    with Crew(_watch_worker,
              lambda i, barrier, results: (redis_url, prefix, experiment, start_id, i == 1, barrier, results, i,
                                           len(moves)),
              2, parties=3) as crew:
        crew.barrier.wait(timeout=START_TIMEOUT)
        time.sleep(0.5)  # let both block in XREAD
        for move in moves:
            before = time.time()
            t = gov.transition(experiment, move, actor="writer")
            written.append((before, t.transition_id))
            time.sleep(0.3)
        reports = crew.reports()

    for r in reports:
        seen = r["seen"]
        kind = "async" if r["index"] == 1 else "sync"
        assert [tid for _, tid, _ in seen] == [tid for _, tid in written], f"{kind} watcher saw {seen!r}"
        for (at, _, entry_id), (before, _) in zip(seen, written, strict=False):
            latency = at - before
            assert 0 <= latency < 1.0, f"{kind} watcher saw {entry_id} {latency:.3f}s after the write"


# -- 6. asyncio tasks with one etag ------------------------------------------------------------------


def test_asyncio_tasks_one_etag_exactly_one_transition(bp: redgov.Backplane, redis_url: str,
                                                       prefix: str) -> None:
    experiment = "{async}:gov"
    gov = redgov.Governance(bp)
    _to_approved(gov, experiment)
    start = gov.state(experiment)
    assert start is not None and start.state is S.APPROVED
    length = len(gov.history(experiment))

    async def race() -> list[Any]:
        abp = redgov.aio.connect(redis_url, prefix=prefix)
        try:
            agov = redgov.aio.AsyncGovernance(abp)
            assert await agov.state(experiment) == start
            gate = asyncio.Event()

            async def one(i: int) -> StateTransition:
                await gate.wait()
                return await agov.transition(experiment, S.RUNNING, actor=f"t{i}", expected_etag=start.etag)

            pending = [asyncio.ensure_future(one(i)) for i in range(TASKS)]
            await asyncio.sleep(0)
            gate.set()
            return await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout=20)
        finally:
            await abp.close()

    results = asyncio.run(race())

    won = [r for r in results if isinstance(r, StateTransition)]
    lost = [r for r in results if isinstance(r, ConflictError)]
    others = [r for r in results if not isinstance(r, StateTransition | ConflictError)]
    assert others == []
    assert len(won) == 1 and len(lost) == TASKS - 1
    winner = won[0]
    assert (winner.from_state, winner.to_state) == (S.APPROVED, S.RUNNING)

    history = gov.history(experiment)
    assert len(history) == length + 1
    assert history[-1] == winner
    final = gov.state(experiment)
    assert final is not None
    assert final.revision == start.revision + 1
    assert final.state is S.RUNNING and final.etag != start.etag
    assert final.last_modified_by == winner.actor
    assert gov.verify(experiment) == []
