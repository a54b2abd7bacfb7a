"""Governance transitions vs hand-written redis-py, measured in one run against one server.

    python benchmarks/transitions.py [--url redis://127.0.0.1:6379/0] [--n 5000] [--json]

Latency rows (candidate vs baseline; ratio = candidate median / baseline median):

- ``Governance.transition`` cycling Running <-> Paused on one experiment, no
  gates or policies, uncontended, vs EVALSHA of a minimal compare-and-set
  script (HGET the etag, compare it with ARGV, HSET state + new etag, XADD the
  encoded StateTransition, ~200 bytes) called with the etag the previous call
  wrote (target <= 1.3x: both are one round trip);
- the same with a ManualGate on both targets of the cycle: ``approve()`` runs
  untimed before each transition, only the transition is timed (target <= 1.3x);
- 100 experiments each transitioned once through ``transition_many`` (one
  pipelined round trip) vs 100 sequential ``transition`` calls; each sample is
  the whole batch (informational; the speedup is 1 / ratio).

Contention table: 8 processes (multiprocessing, spawn) hammer ONE experiment
per variant for a fixed time, in slices ordered A B C, C B A after an untimed
warm-up slice each:

- ``redgov etag``: read-then-transition, ``Governance.state`` then
  ``Governance.transition(expected_etag=...)``, retried on ConflictError;
- ``WATCH/MULTI``: the same by hand (WATCH the state hash, HGETALL, check the
  rule, MULTI, HSET state + etag, HINCRBY revision, XADD, RPUSH, EXEC),
  retried on WatchError;
- ``redgov blind`` (informational): ``transition`` without an etag, the rule
  checked inside the script; a refusal (already in the target state) flips the
  worker's belief and counts as a refusal, not a success.

Successes are the transitions the workers report as done. A lost update is a
success the server does not show: per slice, the increase of the stored
revision and of the history length must both equal the successes reported;
afterwards every history entry must start from the state the one before it
ended in (chain breaks). Target: redgov etag >= 2x WATCH/MULTI throughput and 0
lost updates for each.

The workers are spawned, so a script calling ``run`` must guard its entry
point with ``if __name__ == "__main__":``. Everything lives under a fresh ``bench-<uuid>`` prefix whose keys are deleted
at the end. The exit status is 0 even when a target is missed: this is a
report, not a test.
"""

from __future__ import annotations

import itertools
import multiprocessing
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks._util`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import redis
from redis.exceptions import WatchError

import redgov
from benchmarks._util import (
    BLOCK,
    bench_parser,
    delete_prefix,
    display_url,
    environment,
    measure,
    report_dict,
    row,
    run_and_print,
    table_dict,
    to_running,
)
from redgov import LifecycleState, TransitionRequest
from redgov.keys import Scope
from redgov.records import ENCODER, StateTransition, utcnow

__all__ = ["main", "run"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_N = 5000
WORKERS = 8
SLICE_SECONDS = 1.5  # two slices per variant: 3 s of hammering each
WARM_SECONDS = 0.3
BATCH = 100
BATCH_BLOCK = 5

TARGET_TRANSITION = 1.4
TARGET_GATED = 1.4
#: a transition in a scope with published rules vs the same in a scope without (the rules check is one HMGET)
TARGET_PUBLISHED = 1.1
TARGET_CONTENDED = 2.0  # redgov etag throughput / WATCH-MULTI throughput, at least
TARGET_LOST = 0

RUNNING, PAUSED = LifecycleState.RUNNING, LifecycleState.PAUSED
ACTOR = "bench"
#: approves the gated moves (four eyes: not the actor who makes them)
APPROVER = "bench-approver"
_TRANSITION = msgspec.json.Decoder(StateTransition)

#: The baseline: a compare-and-set of the etag, the revision counter and an XADD, nothing else.
CAS_LUA = """
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then
  return redis.error_reply('CONFLICT etag')
end
local revision = redis.call('HINCRBY', KEYS[1], 'r', 1)
redis.call('HSET', KEYS[1], 's', ARGV[2], 'e', ARGV[3])
return {revision, redis.call('XADD', KEYS[2], '*', 'r', ARGV[4])}
"""
TARGET_SERVER = 2.0  # server script time per transition / the baseline script's, at most
TARGET_BYTES = 300  # memory per transition event, all keys counted, no retention
MEMORY_TRANSITIONS = 5000


def _state_of(value: bytes | str) -> LifecycleState:
    return LifecycleState(value.decode() if isinstance(value, bytes) else value)


def _other(state: LifecycleState) -> LifecycleState:
    return PAUSED if state is RUNNING else RUNNING


def _payload(experiment: str) -> bytes:
    return ENCODER.encode(StateTransition(experiment=experiment, from_state=RUNNING, to_state=PAUSED,
                                          actor=ACTOR, reason="benchmark"))


# -- contention: the worker side ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Hand:
    """Keys of the hand-written WATCH/MULTI experiment."""

    state: str
    log: str
    ids: str

    @classmethod
    def of(cls, scope: Scope, experiment: str) -> _Hand:
        base = f"{scope.tag}:hand:{experiment}"
        return cls(base + ":state", base + ":log", base + ":ids")


def _wait_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


def _hammer_etag(gov: redgov.Governance, raw: redis.Redis, scope: Scope, experiment: str,
                 end: float) -> dict[str, int]:
    """Transition guarded by the etag last seen: the one the previous transition returned, else (after
    a ConflictError) the one a read gives; retry on ConflictError."""
    done = conflicts = 0
    current = gov.state(experiment)
    assert current is not None
    state, etag = current.state, current.etag
    while time.time() < end:
        try:
            moved = gov.transition(experiment, _other(state), actor=ACTOR, expected_etag=etag)
        except redgov.ConflictError:
            conflicts += 1
            current = gov.state(experiment)
            assert current is not None
            state, etag = current.state, current.etag
            continue
        state, etag = moved.to_state, moved.etag
        done += 1
    return {"successes": done, "conflicts": conflicts, "refusals": 0}


def _hammer_blind(gov: redgov.Governance, raw: redis.Redis, scope: Scope, experiment: str,
                  end: float) -> dict[str, int]:
    """Transition without reading; the script checks the rule against the stored state."""
    done = refusals = 0
    belief = RUNNING
    while time.time() < end:
        target = _other(belief)
        try:
            gov.transition(experiment, target, actor=ACTOR)
        except redgov.InvalidTransitionError:  # it already is in target (X -> X is not a rule)
            refusals += 1
        else:
            done += 1
        belief = target
    return {"successes": done, "conflicts": 0, "refusals": refusals}


def _hammer_watch(gov: redgov.Governance, raw: redis.Redis, scope: Scope, experiment: str,
                  end: float) -> dict[str, int]:
    """WATCH, HGETALL, check the rule, MULTI, HSET + HINCRBY + XADD + RPUSH, EXEC; retry on WatchError."""
    keys = _Hand.of(scope, experiment)
    rules = gov.rules
    done = conflicts = refusals = 0
    with raw.pipeline() as pipe:
        while time.time() < end:
            try:
                pipe.watch(keys.state)  # type: ignore[no-untyped-call]
                fields = pipe.hgetall(keys.state)
                current = _state_of(fields[b"s"])
                target = _other(current)
                if not rules.permits(current, target):
                    pipe.reset()
                    refusals += 1
                    continue
                now = utcnow()
                record = StateTransition(experiment=experiment, from_state=current, to_state=target,
                                         timestamp=now, actor=ACTOR)
                pipe.multi()
                pipe.hset(keys.state, mapping={"s": target.value, "e": secrets.token_hex(12),
                                               "t": int(now.timestamp() * 1_000_000), "b": ACTOR})
                pipe.hincrby(keys.state, "r", 1)
                pipe.xadd(keys.log, {"k": "transition", "x": experiment, "r": ENCODER.encode(record),
                                     "from": current.value})
                pipe.rpush(keys.ids, record.transition_id)
                pipe.execute()
            except WatchError:
                conflicts += 1
                continue
            done += 1
    return {"successes": done, "conflicts": conflicts, "refusals": refusals}


_HAMMERS: dict[str, Callable[[redgov.Governance, redis.Redis, Scope, str, float], dict[str, int]]] = {
    "redgov etag": _hammer_etag,
    "WATCH/MULTI": _hammer_watch,
    "redgov blind": _hammer_blind,
}


def _worker(conn: Any, url: str, prefix: str) -> None:
    """One contention process: connect once, then run the slices the parent sends."""
    try:
        gov = redgov.Governance(redgov.connect(url, prefix=prefix))
        raw = redis.Redis.from_url(url)
        raw.ping()
        scope = Scope(prefix)
    except Exception as exc:  # report it rather than leave the parent waiting
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", None))
    try:
        while True:
            task = conn.recv()
            if task is None:
                break
            variant, experiment, start, seconds = task
            try:
                _wait_until(start)
                cpu = time.process_time()
                counts = _HAMMERS[variant](gov, raw, scope, experiment, start + seconds)
                counts["cpu_ns"] = int((time.process_time() - cpu) * 1e9)
                conn.send(("done", counts))
            except Exception as exc:
                conn.send(("error", repr(exc)))
    finally:
        gov.close()
        raw.close()
        conn.close()


# -- contention: the parent side -----------------------------------------------------


@dataclass(slots=True)
class _Tally:
    variant: str
    experiment: str
    seconds: float = 0.0
    successes: int = 0
    conflicts: int = 0
    refusals: int = 0
    revision_delta: int = 0
    history_delta: int = 0
    lost: int = 0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    per_worker: list[int] = field(default_factory=list)


class _Pool:
    """``count`` spawned worker processes, each with its own pipe."""

    def __init__(self, url: str, prefix: str, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        try:
            for _ in range(count):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(theirs, url, prefix), daemon=True)
                proc.start()
                theirs.close()
                self.pipes.append(mine)
                self.procs.append(proc)
            self._collect(timeout=60.0, expect="ready")
        except BaseException:
            self.close()
            raise

    def _collect(self, timeout: float, expect: str) -> list[Any]:
        out = []
        for conn in self.pipes:
            if not conn.poll(timeout):
                raise RuntimeError(f"a contention worker did not answer within {timeout:g} s")
            try:
                kind, value = conn.recv()
            except EOFError:
                raise RuntimeError("a contention worker exited before answering") from None
            if kind == "error":
                raise RuntimeError(f"a contention worker failed: {value}")
            if kind != expect:
                raise RuntimeError(f"a contention worker sent {kind!r}, expected {expect!r}")
            out.append(value)
        return out

    def slice(self, variant: str, experiment: str, seconds: float) -> list[dict[str, int]]:
        start = time.time() + 0.1  # every worker starts at the same moment
        for conn in self.pipes:
            conn.send((variant, experiment, start, seconds))
        return self._collect(timeout=seconds + 60.0, expect="done")

    def close(self) -> None:
        for conn in self.pipes:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.pipes:
            conn.close()


def _observe(raw: redis.Redis, scope: Scope, variant: str, experiment: str) -> tuple[int, int]:
    """(stored revision, history length) of the variant's experiment."""
    if variant == "WATCH/MULTI":
        keys = _Hand.of(scope, experiment)
        revision, length = raw.hget(keys.state, "r"), raw.xlen(keys.log)
    else:
        exp = scope.experiment(experiment)
        revision, length = raw.hget(exp.state, "r"), raw.llen(exp.history)
    return int(revision or 0), int(length)


def _server_cpu(raw: redis.Redis) -> float:
    info = raw.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _chain_breaks(gov: redgov.Governance, raw: redis.Redis, scope: Scope, variant: str, experiment: str) -> int:
    """History entries that do not start where the one before them ended."""
    moves: list[tuple[LifecycleState | None, LifecycleState]]
    if variant == "WATCH/MULTI":
        entries: list[tuple[bytes, dict[bytes, bytes]]] = raw.xrange(_Hand.of(scope, experiment).log)  # type: ignore[assignment]
        moves = [(_state_of(fields[b"from"]), _TRANSITION.decode(fields[b"r"]).to_state) for _, fields in entries]
    else:
        moves = [(t.from_state, t.to_state) for t in gov.history(experiment)]
    return sum(1 for (_, before), (after, _) in itertools.pairwise(moves) if after is not before)


def _contention(url: str, prefix: str, gov: redgov.Governance, raw: redis.Redis, scope: Scope,
                workers: int, seconds: float) -> list[_Tally]:
    tallies = {variant: _Tally(variant, f"hot-{i}") for i, variant in enumerate(_HAMMERS)}
    for tally in tallies.values():
        if tally.variant == "WATCH/MULTI":
            keys = _Hand.of(scope, tally.experiment)
            raw.hset(keys.state, mapping={"s": RUNNING.value, "e": secrets.token_hex(12), "r": 0})
        else:
            to_running(gov, tally.experiment, actor=ACTOR)
    pool = _Pool(url, prefix, workers)
    try:
        for tally in tallies.values():  # warm-up: imports, connections, script cache
            pool.slice(tally.variant, tally.experiment, WARM_SECONDS)
        order = list(tallies)
        for variant in order + order[::-1]:
            tally = tallies[variant]
            revision0, length0 = _observe(raw, scope, variant, tally.experiment)
            cpu0 = _server_cpu(raw)
            counts = pool.slice(variant, tally.experiment, seconds)
            cpu1 = _server_cpu(raw)
            revision1, length1 = _observe(raw, scope, variant, tally.experiment)
            tally.server_cpu_s += cpu1 - cpu0
            tally.client_cpu_s += sum(c["cpu_ns"] for c in counts) / 1e9
            done = sum(c["successes"] for c in counts)
            tally.seconds += seconds
            tally.successes += done
            tally.conflicts += sum(c["conflicts"] for c in counts)
            tally.refusals += sum(c["refusals"] for c in counts)
            tally.revision_delta += revision1 - revision0
            tally.history_delta += length1 - length0
            tally.lost += max(abs(done - (revision1 - revision0)), abs(done - (length1 - length0)))
            tally.per_worker = [
                a + c["successes"] for a, c in zip(tally.per_worker or [0] * len(counts), counts, strict=False)
            ]
    finally:
        pool.close()
    for tally in tallies.values():
        tally.lost += _chain_breaks(gov, raw, scope, tally.variant, tally.experiment)
    return list(tallies.values())


# -- server time and memory ------------------------------------------------------------


def _evalsha_usec(raw: redis.Redis) -> tuple[float, int]:
    stats = raw.info("commandstats").get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    return float(stats["usec"]), int(stats["calls"])


def _server_time(raw: redis.Redis, group: dict[str, Callable[[], None]], n: int,
                 block: int) -> dict[str, list[int]]:
    """Per member, samples of the server's EVALSHA time per call (ns), one per block, interleaved."""
    samples: dict[str, list[int]] = {name: [] for name in group}
    rounds = max(5, n // block)
    for round_no in range(rounds):
        order = list(group) if round_no % 2 == 0 else list(group)[::-1]
        for name in order:
            usec0, calls0 = _evalsha_usec(raw)
            for _ in range(block):
                group[name]()
            usec1, calls1 = _evalsha_usec(raw)
            if calls1 > calls0:
                samples[name].append(int((usec1 - usec0) / (calls1 - calls0) * 1000))
    return samples


def _memory_per_transition(url: str, prefix: str) -> dict[str, float]:
    """Bytes per transition of every key of a fresh prefix (history kept), and of the dedupe buckets."""
    bp = redgov.connect(url, prefix=prefix)
    gov = redgov.Governance(bp)
    raw = bp.client
    try:
        names = [f"m{i}" for i in range(10)]
        for name in names:
            to_running(gov, name, actor=ACTOR)

        def measure_keys() -> tuple[int, int]:
            kept = dedupe = 0
            for key in raw.scan_iter(match=prefix + "{*", count=1000):
                size = int(raw.memory_usage(key, samples=0) or 0)
                if b":ops:" in key:
                    dedupe += size
                else:
                    kept += size
            return kept, dedupe

        kept0, dedupe0 = measure_keys()
        per = MEMORY_TRANSITIONS // len(names)
        for i in range(per):
            target = PAUSED if i % 2 == 0 else RUNNING
            for name in names:
                gov.transition(name, target, actor=ACTOR)
        kept1, dedupe1 = measure_keys()
        count = per * len(names)
        return {"kept": (kept1 - kept0) / count, "dedupe": (dedupe1 - dedupe0) / count}
    finally:
        delete_prefix(raw, prefix)
        bp.close()


# -- the run ---------------------------------------------------------------------------


def run(url: str = DEFAULT_URL, n: int = DEFAULT_N, *, block: int = BLOCK, seconds: float = SLICE_SECONDS,
        workers: int = WORKERS) -> dict[str, Any]:
    """Run every measurement; the report as a JSON-ready dict (see ``_util.report_dict``)."""
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    raw = redis.Redis.from_url(url)
    bp = redgov.connect(url, prefix=prefix)
    warmup = min(n, 2 * block)
    started = time.perf_counter()
    try:
        server = raw.info("server")["redis_version"]
        scope = Scope(prefix)
        gov = redgov.Governance(bp)
        gated = redgov.Governance(bp, gates=[redgov.ManualGate(to_state=RUNNING),
                                             redgov.ManualGate(to_state=PAUSED)])
        rows = []

        # the baseline: compare-and-set the etag the previous call wrote, XADD ~200 bytes
        cas = raw.register_script(CAS_LUA)
        base_keys = [f"{scope.tag}:base:state", f"{scope.tag}:base:log"]
        payload = _payload("exp-base")
        base_etag = [secrets.token_hex(12)]
        raw.hset(base_keys[0], mapping={"s": RUNNING.value, "e": base_etag[0]})
        base_targets = itertools.cycle((PAUSED.value, RUNNING.value))

        def baseline() -> None:
            etag = secrets.token_hex(12)
            cas(keys=base_keys, args=[base_etag[0], next(base_targets), etag, payload])
            base_etag[0] = etag

        # 1. uncontended transition, no gates or policies
        plain = "exp-plain"
        to_running(gov, plain, actor=ACTOR)
        plain_targets = itertools.cycle((PAUSED, RUNNING))

        def transition() -> None:
            gov.transition(plain, next(plain_targets), actor=ACTOR)

        s = measure({"transition": transition, "cas": baseline}, n, block=block, warmup=warmup)
        rows.append(row("transition Running<->Paused", s["transition"],
                        "Lua CAS + HINCRBY + XADD", s["cas"], TARGET_TRANSITION))

        # 1a. the same in a scope whose rules are published, against the plain transition, interleaved
        ruled = redgov.Governance(bp)
        ruled.publish(actor=ACTOR, reason="benchmark", tenant="published")
        to_running(ruled, plain, actor=ACTOR, tenant="published")
        ruled_targets = itertools.cycle((PAUSED, RUNNING))

        def transition_ruled() -> None:
            ruled.transition(plain, next(ruled_targets), actor=ACTOR, tenant="published")

        s = measure({"published": transition_ruled, "plain": transition}, n, block=block, warmup=warmup)
        rows.append(row("transition under published rules", s["published"],
                        "transition Running<->Paused (no rules published)", s["plain"], TARGET_PUBLISHED))

        # 1b. the same, server time per call (INFO commandstats usec of EVALSHA), interleaved blocks
        server_rows = _server_time(raw, {"transition": transition, "cas": baseline}, n, block)
        rows.append(row("server time per transition (commandstats)", server_rows["transition"],
                        "Lua CAS + HINCRBY + XADD", server_rows["cas"], TARGET_SERVER))

        # 2. the same through a ManualGate: approve() untimed before each transition
        manual = "exp-manual"
        to_running(gated, manual, actor=ACTOR)
        manual_targets = itertools.cycle((PAUSED, RUNNING))
        approved: list[LifecycleState] = [RUNNING]

        def approve() -> None:
            approved[0] = next(manual_targets)
            gated.approve(manual, approved[0], approver=APPROVER)

        s = measure({"gated": lambda: gated.transition(manual, approved[0], actor=ACTOR), "cas": baseline},
                    n, block=block, warmup=warmup, before={"gated": approve})
        rows.append(row("transition + ManualGate (approve untimed)", s["gated"],
                        "Lua CAS + HINCRBY + XADD", s["cas"], TARGET_GATED))
        consumed = len(bp.approvals(manual))
        if consumed != n + warmup + 1:
            raise RuntimeError(f"{manual}: {consumed} approvals recorded, expected {n + warmup + 1}")

        # 3. memory per transition event, every key of a fresh prefix counted, no retention
        memory = _memory_per_transition(url, f"{prefix}-mem")

        # 4. 100 experiments once each: transition_many vs sequential transition
        batched = [f"batch-many-{i:03d}" for i in range(BATCH)]
        sequential = [f"batch-seq-{i:03d}" for i in range(BATCH)]
        for name in batched + sequential:
            to_running(gov, name, actor=ACTOR)
        many_targets = itertools.cycle((PAUSED, RUNNING))
        seq_targets = itertools.cycle((PAUSED, RUNNING))

        def many() -> None:
            target = next(many_targets)
            results = gov.transition_many([TransitionRequest(experiment=name, to=target, actor=ACTOR)
                                           for name in batched])
            refused = [r for r in results if isinstance(r, redgov.RedgovError)]
            if refused:
                raise RuntimeError(f"transition_many refused {len(refused)} of {BATCH}: {refused[0]!r}")

        def one_by_one() -> None:
            target = next(seq_targets)
            for name in sequential:
                gov.transition(name, target, actor=ACTOR)

        rounds = max(10, n // 100)
        s = measure({"many": many, "sequential": one_by_one}, rounds, block=BATCH_BLOCK,
                    warmup=min(rounds, 2 * BATCH_BLOCK))
        batch_row = row(f"{BATCH} transitions: transition_many", s["many"],
                        f"{BATCH} sequential transition()", s["sequential"])
        rows.append(batch_row)

        # 3. contention: 8 processes, one experiment per variant
        tallies = _contention(url, prefix, gov, raw, scope, workers, seconds)
        rate = {t.variant: t.successes / t.seconds for t in tallies}
        ratio = rate["redgov etag"] / rate["WATCH/MULTI"] if rate["WATCH/MULTI"] else float("inf")
        blind_ratio = rate["redgov blind"] / rate["WATCH/MULTI"] if rate["WATCH/MULTI"] else float("inf")
        lines = []
        for t in tallies:
            attempts = t.successes + t.conflicts + t.refusals
            if t.variant == "redgov etag":
                vs = f"{ratio:.2f}x (>= {TARGET_CONTENDED:g}x)"
                ok = "ok" if ratio >= TARGET_CONTENDED else "MISSED"
            elif t.variant == "redgov blind":
                vs, ok = f"{blind_ratio:.2f}x", "info"
            else:
                vs, ok = "1.00x", "baseline"
            lost_ok = "ok" if t.lost <= TARGET_LOST else "MISSED"
            per_ok = max(t.successes, 1)
            lines.append((t.variant, f"{rate[t.variant]:.0f}", f"{attempts / t.seconds:.0f}",
                          f"{t.conflicts + t.refusals}", f"{t.successes}",
                          f"{t.client_cpu_s * 1e6 / per_ok:.0f}", f"{t.server_cpu_s * 1e6 / per_ok:.0f}",
                          f"{100 * t.server_cpu_s / t.seconds:.0f}%",
                          f"{t.revision_delta}/{t.history_delta}",
                          f"{min(t.per_worker)}..{max(t.per_worker)}", vs, ok, f"{t.lost} ({lost_ok})"))
        contention = table_dict(
            f"contention: {workers} processes on one experiment, {2 * seconds:g} s per variant "
            f"(2 x {seconds:g} s slices, A B C C B A, after {WARM_SECONDS:g} s warm-up each)",
            ("variant", "transitions/s", "attempts/s", "retries", "successes", "client CPU µs/ok",
             "server CPU µs/ok", "server busy", "rev Δ/history Δ", "per worker", "vs WATCH/MULTI", "ok",
             "lost updates"),
            lines, numeric=(1, 2, 3, 4, 5, 6, 7))
        contention["results"] = {t.variant: {"transitions_per_s": rate[t.variant], "successes": t.successes,
                                             "conflicts": t.conflicts, "refusals": t.refusals,
                                             "revision_delta": t.revision_delta, "history_delta": t.history_delta,
                                             "lost_updates": t.lost, "seconds": t.seconds,
                                             "client_cpu_s": t.client_cpu_s, "server_cpu_s": t.server_cpu_s,
                                             "per_worker": t.per_worker} for t in tallies}
        contention["ratio"] = ratio
        contention["target"] = TARGET_CONTENDED

        plain_call = gov.core.transition(plain, PAUSED, actor=ACTOR)
        sent = sum(len(a) if isinstance(a, bytes | str) else len(str(a)) for a in plain_call.args)
        speedup = 1 / batch_row.ratio if batch_row.ratio else float("inf")
        notes = [
            f"baseline: EVALSHA of a {len(CAS_LUA.strip().splitlines())}-line CAS script, 2 keys, 4 args "
            f"({len(payload)}-byte XADD payload); redgov transition sends {len(plain_call.keys)} keys and "
            f"{len(plain_call.args)} args ({sent} bytes) and also checks the rule, dedupes re-sends (reads "
            "and records its operation id) and appends to the experiment's history; both are one round trip",
            "row 1 calls transition() without an etag; the baseline passes the etag its previous call wrote",
            "row 2: INFO commandstats usec of EVALSHA per call, measured over interleaved blocks of each "
            "(the server's own time, which machine noise barely moves); median of the blocks",
            f"row 2: ManualGate on -> Running and -> Paused; each sample is one transition that consumes the "
            f"approval recorded by an untimed approve() just before ({consumed} approvals consumed)",
            f"row 3: each sample is the whole batch of {BATCH}; transition_many speedup "
            f"{speedup:.1f}x over sequential calls",
            "contention: successes are transitions the workers report; lost updates = per slice "
            "|successes - revision Δ| or |successes - history Δ| (the larger), plus history entries that "
            "do not start where the previous one ended; retries = ConflictError/WatchError (plus refusals "
            "for redgov blind); "
            "WATCH/MULTI 3 (WATCH, HGETALL, MULTI..EXEC), redgov blind 1; redgov etag chains the etag each "
            "transition returns and reads the state only after a ConflictError (1 round trip per attempt, "
            "2 after a conflict)",
            "client CPU µs/ok: CPU time of all workers (attempts and retries) per successful transition; "
            "server CPU µs/ok: the server's CPU time (INFO cpu) per success; server busy: server CPU time "
            "per second of the slices",
            f"{workers} client processes share {multiprocessing.cpu_count()} cores with the server and "
            "anything else running, so throughput is bounded by CPU as much as by round trips; compare the "
            "ratios and the CPU per success, not the absolute rates",
        ]
        memory_table = table_dict(
            "memory per transition event (no retention; MEMORY USAGE of every key of a fresh prefix)",
            ("what", "transitions", "bytes/transition", "target", "ok"),
            [("history: log, lists, state, index (kept)", f"{MEMORY_TRANSITIONS:,}", f"{memory['kept']:.1f}",
              f"<= {TARGET_BYTES}", "ok" if memory["kept"] <= TARGET_BYTES else "MISSED"),
             ("re-send dedupe buckets (expire after 3 min)", f"{MEMORY_TRANSITIONS:,}",
              f"{memory['dedupe']:.1f}", "~100", "info")],
            numeric=(1, 2))
        env = environment(
            f"Redis {server}",
            redgov=redgov.__version__,
            url=display_url(url),
            n=n,
            block=block,
            warmup=warmup,
            batch_rounds=rounds,
            workers=workers,
        )
        report = report_dict("redgov Governance transitions vs hand-written redis-py", env, rows,
                             tables=[memory_table, contention], notes=notes)
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        return report
    finally:
        try:
            delete_prefix(raw, prefix)
        except redis.ConnectionError:
            pass  # the server is gone (the error being raised says so); nothing to delete
        finally:
            bp.close()
            raw.close()


def main(argv: Sequence[str] | None = None) -> int:
    prog = "benchmarks/transitions.py"
    parser = bench_parser(prog, "Governance transition latency, batching and contention vs hand-written redis-py.",
                          DEFAULT_URL, DEFAULT_N)
    parser.add_argument("--seconds", type=float, default=SLICE_SECONDS,
                        help=f"length of one contention slice; each variant gets two (default {SLICE_SECONDS:g})")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    return run_and_print(prog, args.url, args.json,
                         lambda: run(args.url, args.n, block=args.block, seconds=args.seconds))


if __name__ == "__main__":
    sys.exit(main())
