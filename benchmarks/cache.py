"""get_state with the local cache (``connect(cache=True)``) vs without it vs raw HGETALL, in one run.

    python benchmarks/cache.py [--url redis://127.0.0.1:6379/0] [--n 10000] [--json]

Rows (ratio = candidate median / baseline median):

- ``get_state`` cached (a hit) vs ``client.hgetall`` of the same state key on a
  plain ``redis.Redis`` (target <= 0.2x: a hit must not cost a round trip);
- ``get_state`` uncached vs the same HGETALL (informational: the shell's cost);
- ``get_state`` cached (a hit) vs uncached (informational);
- ``get_state`` cached, a miss (the entry dropped untimed before each call,
  so each call is one HGETALL on the Backplane's own client, registered with
  the cache before it is sent) vs uncached (target <= 1.3x: a miss costs one
  round trip).

Members of each group alternate in blocks of 200 calls after a warm-up (see
``benchmarks/_util.py``). A second table gives the invalidation delay: from
the return of a write made by another client to the moment the cache has
dropped the written key (the longest a hit can be stale in normal operation),
over ``--writes`` writes, made by another client in this process and by
another OS process (its write's return and the drop are both timed on
CLOCK_MONOTONIC, which is system-wide); target p99 <= 10 ms. Keys live under a
fresh ``bench-<uuid>`` prefix deleted at the end. The exit status is 0 even
when a target is missed: this is a report, not a test.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks._util`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

import redgov
from benchmarks._util import (
    BLOCK,
    bench_parser,
    delete_prefix,
    display_url,
    environment,
    measure,
    percentile,
    positive_int,
    report_dict,
    row,
    run_and_print,
    sample_state,
    table_dict,
)

__all__ = ["main", "run"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_N = 10000
DEFAULT_WRITES = 500
#: a wait for one invalidation longer than this counts as lost (and fails the run)
DELIVERY_TIMEOUT = 2.0

TARGET_HIT = 0.2
TARGET_MISS = 1.3
#: invalidation delay, p99 (ms)
TARGET_DELIVERY_MS = 10.0

#: the writer in another process: one compare-and-set per "write" line, its return time on stdout
_CHILD_WRITER = """
import sys, time, redgov
bp = redgov.connect(sys.argv[1], prefix=sys.argv[2])
for line in sys.stdin:
    if line.strip() != "write":
        break
    s = bp.get_state(sys.argv[3])
    r = bp.save_state(s, expected_etag=s.etag)
    assert r.ok, r
    print(time.monotonic_ns(), flush=True)
bp.close()
"""


def _cache_it(cached: redgov.Backplane, name: str) -> None:
    """Drop the entry, read it again: cached (the stream covers the scope)."""
    cache = cached.cache
    assert cache is not None
    cache.clear()
    if cached.get_state(name) is None or len(cache) != 1:
        raise RuntimeError("the state was not cached before the write")


def _wait_dropped(cached: redgov.Backplane) -> int:
    """CLOCK_MONOTONIC (ns) when the cache no longer holds the entry."""
    cache = cached.cache
    assert cache is not None
    start = time.monotonic_ns()
    while len(cache):
        if time.monotonic_ns() - start > DELIVERY_TIMEOUT * 1e9:
            raise RuntimeError(f"no invalidation within {DELIVERY_TIMEOUT}s of a write")
        time.sleep(0)  # let the stream thread run
    return time.monotonic_ns()


def _delivery(cached: redgov.Backplane, writer: redgov.Backplane, name: str, writes: int) -> list[int]:
    """ns from each write's return (another client, this process) until the cache no longer holds the key."""
    delays: list[int] = []
    for _ in range(writes):
        _cache_it(cached, name)
        state = writer.get_state(name)
        assert state is not None
        if not writer.save_state(state, expected_etag=state.etag).ok:
            raise RuntimeError("the write failed")
        returned = time.monotonic_ns()
        delays.append(_wait_dropped(cached) - returned)
    return delays


def _delivery_from_process(cached: redgov.Backplane, url: str, prefix: str, name: str, writes: int) -> list[int]:
    """ns from each write's return in another OS process until the cache no longer holds the key."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD_WRITER, url, prefix, name], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    delays: list[int] = []
    try:
        for _ in range(writes):
            _cache_it(cached, name)
            child.stdin.write("write\n")
            child.stdin.flush()
            dropped = _wait_dropped(cached)
            line = child.stdout.readline()
            if not line:
                raise RuntimeError("the writer process ended early")
            delays.append(max(0, dropped - int(line)))  # 0: dropped before the writer read its reply
        child.stdin.write("stop\n")
        child.stdin.close()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdout.close()
    return delays


def _delivery_line(label: str, delays: list[int]) -> tuple[str, ...]:
    p99_ms = percentile(delays, 99) / 1e6
    return (label, str(len(delays)), f"{statistics.median(delays) / 1000:.1f}", f"{p99_ms * 1000:.1f}",
            f"{max(delays) / 1000:.1f}", f"<= {TARGET_DELIVERY_MS:g} ms",
            "ok" if p99_ms <= TARGET_DELIVERY_MS else "MISSED")


def run(url: str = DEFAULT_URL, n: int = DEFAULT_N, *, block: int = BLOCK,
        writes: int = DEFAULT_WRITES) -> dict[str, Any]:
    """Run every measurement; the report as a JSON-ready dict (see ``_util.report_dict``)."""
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    raw = redis.Redis.from_url(url)
    plain = redgov.connect(url, prefix=prefix)
    cached = redgov.connect(url, prefix=prefix, cache=True)
    writer = redgov.connect(url, prefix=prefix)
    warmup = min(n, 2 * block)
    try:
        cache = cached.cache
        assert cache is not None
        server = raw.info("server")["redis_version"]
        name = "exp-state"
        stored = plain.save_state(sample_state(name)).state
        key = plain.core.get_state(name, None, None).keys[0]
        if stored is None or not raw.hgetall(key) or cached.get_state(name) != stored:
            raise RuntimeError(f"state {key} was not written")

        s = measure({
            "cached": lambda: cached.get_state(name),
            "uncached": lambda: plain.get_state(name),
            "hgetall": lambda: raw.hgetall(key),
        }, n, block=block, warmup=warmup)
        rows = [
            row("get_state cached (hit)", s["cached"], "redis-py hgetall", s["hgetall"], TARGET_HIT),
            row("get_state uncached", s["uncached"], "redis-py hgetall", s["hgetall"]),
            row("get_state cached (hit)", s["cached"], "get_state uncached", s["uncached"]),
        ]
        hits = cache.stats().hits
        if hits < n:
            raise RuntimeError(f"only {hits} of {n} cached reads were hits")

        s = measure({"miss": lambda: cached.get_state(name), "uncached": lambda: plain.get_state(name)},
                    n, block=block, warmup=warmup, before={"miss": cache.clear})
        rows.append(row("get_state cached (miss)", s["miss"], "get_state uncached", s["uncached"], TARGET_MISS))

        local = _delivery(cached, writer, name, writes)
        remote = _delivery_from_process(cached, url, prefix, name, writes)
        delivery = table_dict(
            "invalidation delay: a write returned -> its key dropped from the cache",
            ("writer", "writes", "p50 µs", "p99 µs", "max µs", "target p99", "ok"),
            [_delivery_line("another client, this process", local),
             _delivery_line("another process", remote)],
            numeric=(1, 2, 3, 4),
        )
        delivery["samples_ns"] = {
            label: {"p50": statistics.median(d), "p99": percentile(d, 99), "max": max(d)}
            for label, d in (("process", local), ("other_process", remote))
        }
        notes = [
            "cached: redgov.connect(url, cache=True); hits are served from process memory under a lock; "
            "misses are one HGETALL on the Backplane's own client; one stream connection per cache, owned "
            "by a daemon thread, runs CLIENT TRACKING ON REDIRECT <its own id> BCAST PREFIX <scope> and "
            "SUBSCRIBE __redis__:invalidate",
            "miss row: cache.clear() runs untimed before each call",
            "invalidation delay: the reader polls the cache with time.sleep(0) between looks; with the "
            "writer in this process the delay includes sharing the GIL with it; from another process a "
            "delay counts as 0 when the key was dropped before that process had read its write's reply "
            "(the server sends the reply and the invalidation in the same event-loop turn)",
        ]
        env = environment(
            f"Redis {server}",
            url=display_url(url),
            n=n,
            block=block,
            warmup=warmup,
            writes=writes,
        )
        return report_dict("redgov get_state: local cache vs Redis", env, rows, tables=[delivery], notes=notes)
    finally:
        try:
            delete_prefix(raw, prefix)
        except redis.ConnectionError:
            pass  # the server is gone (the error being raised says so); nothing to delete
        finally:
            writer.close()
            cached.close()
            plain.close()
            raw.close()


def main(argv: Sequence[str] | None = None) -> int:
    prog = "benchmarks/cache.py"
    parser = bench_parser(prog, "get_state with and without the local cache vs raw HGETALL, interleaved in one run.",
                          DEFAULT_URL, DEFAULT_N)
    parser.add_argument("--writes", type=positive_int, default=DEFAULT_WRITES,
                        help=f"writes timed for the invalidation delay (default {DEFAULT_WRITES})")
    args = parser.parse_args(argv)
    return run_and_print(prog, args.url, args.json,
                         lambda: run(args.url, args.n, block=args.block, writes=args.writes))


if __name__ == "__main__":
    sys.exit(main())
