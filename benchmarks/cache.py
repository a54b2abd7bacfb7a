"""get_state with the local cache (``connect(cache=True)``) vs without it vs raw HGETALL, in one run.

    python benchmarks/cache.py [--url redis://127.0.0.1:6379/0] [--n 10000] [--json]

Rows (ratio = candidate median / baseline median):

- ``get_state`` cached (a hit) vs ``client.hgetall`` of the same state key on a
  plain ``redis.Redis`` (target <= 0.2x: a hit must not cost a round trip);
- ``get_state`` uncached vs the same HGETALL (informational: the shell's cost);
- ``get_state`` cached (a hit) vs uncached (informational);
- ``get_state`` cached, a miss (the entry dropped untimed before each call,
  so each call sends CLIENT TRACKING + HGETALL, pipelined) vs uncached
  (target <= 1.3x: a miss costs about one round trip).

Members of each group alternate in blocks of 200 calls after a warm-up (see
``benchmarks/_util.py``). A second table gives the invalidation delay: from
the return of a write made by another client to the moment the cache has
dropped the written key (the longest a hit can be stale), over ``--writes``
writes. Keys live under a fresh ``bench-<uuid>`` prefix deleted at the end.
The exit status is 0 even when a target is missed: this is a report, not a test.
"""

from __future__ import annotations

import statistics
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
    sample_state,
    bench_parser,
    run_and_print,
    BLOCK,
    delete_prefix,
    display_url,
    environment,
    measure,
    percentile,
    positive_int,
    report_dict,
    row,
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

def _delivery(cached: redgov.Backplane, writer: redgov.Backplane, name: str, writes: int) -> list[int]:
    """ns from each write's return (another client) until the cache no longer holds the key."""
    cache = cached.cache
    assert cache is not None
    state = writer.get_state(name)
    assert state is not None
    delays: list[int] = []
    for _ in range(writes):
        cache.clear()
        if cached.get_state(name) != state or len(cache) != 1:
            raise RuntimeError("the state was not cached before the write")
        saved = writer.save_state(state, expected_etag=state.etag).state
        assert saved is not None
        state = saved
        start = time.perf_counter_ns()
        while len(cache):
            if time.perf_counter_ns() - start > DELIVERY_TIMEOUT * 1e9:
                raise RuntimeError(f"no invalidation within {DELIVERY_TIMEOUT}s of a write")
            time.sleep(0)  # let the invalidation thread run
        delays.append(time.perf_counter_ns() - start)
    return delays


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

        delays = _delivery(cached, writer, name, writes)
        delivery = table_dict(
            f"invalidation delay: write returned (another client) -> key dropped from the cache, {writes} writes",
            ("median µs", "p99 µs", "max µs"),
            [(f"{statistics.median(delays) / 1000:.1f}", f"{percentile(delays, 99) / 1000:.1f}",
              f"{max(delays) / 1000:.1f}")],
            numeric=(0, 1, 2),
        )
        delivery["samples_ns"] = {"median": statistics.median(delays), "p99": percentile(delays, 99),
                                  "max": max(delays)}
        notes = [
            "cached: redgov.connect(url, cache=True); hits are served from process memory under a lock, "
            "misses send CLIENT TRACKING ON REDIRECT <stream id> and HGETALL pipelined on the cache's own "
            "RESP2 connection; a daemon thread reads invalidations on a second connection subscribed to "
            "__redis__:invalidate",
            "miss row: cache.clear() runs untimed before each call",
            "invalidation delay: the writer and the cache share this process (one GIL), so the delay "
            "includes handing the message to the invalidation thread",
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
