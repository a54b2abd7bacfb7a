"""Lease acquire and renew against raw redis-py baselines, measured in one run.

    python benchmarks/leases.py [--url redis://127.0.0.1:6379/0] [--n 5000] [--json]

Rows (candidate vs baseline; ratio = candidate median / baseline median):

- ``acquire_lease`` of a lease nobody holds (each call another experiment, so every
  call is a new acquisition with a new fencing token) vs ``SET key value NX PX ttl`` on
  fresh keys (target <= 1.3x);
- ``renew_lease`` of a held lease vs EVALSHA of a minimal Lua renew (``GET``, compare
  the token, ``PEXPIRE``) (target <= 1.3x);
- the same two as server time per call (``INFO commandstats`` usec of EVALSHA vs SET /
  EVALSHA), which the machine's noise barely moves (informational).

Members alternate in blocks after a warm-up (``benchmarks/_util.py``). Everything lives
under a fresh ``bench-<uuid>`` prefix deleted at the end. Exit status 0 even when a
target is missed: this is a report, not a test.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
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
    report_dict,
    row,
    run_and_print,
)

__all__ = ["main", "run"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_N = 5000
TARGET = 1.3
TTL = timedelta(seconds=60)
TTL_MS = int(TTL.total_seconds() * 1000)
RENEW = """
local held = redis.call('GET', KEYS[1])
if not held or string.sub(held, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


def _usec(raw: redis.Redis, command: str) -> tuple[float, int]:
    stats = raw.info("commandstats").get(f"cmdstat_{command}", {"usec": 0, "calls": 0})
    return float(stats["usec"]), int(stats["calls"])


def _server_time(raw: redis.Redis, group: dict[str, tuple[str, Callable[[], object]]], rounds: int,
                 block: int) -> dict[str, list[int]]:
    """Per member, the server's time per call of its command (ns), one sample per block, interleaved."""
    samples: dict[str, list[int]] = {name: [] for name in group}
    for round_no in range(rounds):
        order = list(group) if round_no % 2 == 0 else list(group)[::-1]
        for name in order:
            command, fn = group[name]
            usec0, calls0 = _usec(raw, command)
            for _ in range(block):
                fn()
            usec1, calls1 = _usec(raw, command)
            if calls1 > calls0:
                samples[name].append(int((usec1 - usec0) / (calls1 - calls0) * 1000))
    return samples


def run(url: str = DEFAULT_URL, n: int = DEFAULT_N, *, block: int = BLOCK) -> dict[str, Any]:
    """Every measurement; the report as a JSON-ready dict."""
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    raw = redis.Redis.from_url(url)
    gov = redgov.Governance(redgov.connect(url, prefix=prefix))
    warmup = min(n, 2 * block)
    rounds = max(5, n // block)
    try:
        server = raw.info("server")["redis_version"]
        total = n + warmup + rounds * block + 10
        names = [f"e{i}" for i in range(total * 2)]
        for start in range(0, len(names), 500):  # every experiment the acquisitions need, created up front
            calls = [gov.core.create(name, tenant=None, environment=None, actor=None, configuration=None,
                                     metadata=None) for name in names[start:start + 500]]
            gov.backplane.run_many(calls)
        fresh: Iterator[str] = iter(names)
        fresh_keys: Iterator[str] = (f"{prefix}{{bench}}:lock:{i}" for i in range(total * 2))

        def acquire() -> None:
            gov.acquire_lease(next(fresh), owner="bench", ttl=TTL)

        def set_nx() -> None:
            if not raw.set(next(fresh_keys), "1 2 bench", nx=True, px=TTL_MS):
                raise RuntimeError("SET NX found the key taken")

        rows = []
        s = measure({"acquire": acquire, "set": set_nx}, n, block=block, warmup=warmup)
        rows.append(row("acquire_lease (a new token)", s["acquire"], "SET NX PX", s["set"], TARGET))

        held = gov.acquire_lease(next(fresh), owner="bench", ttl=TTL)
        lease_key = gov.backplane.core.keys(held.experiment, None, None)[1].lease()
        renew_script = raw.register_script(RENEW)
        raw.set(f"{prefix}{{bench}}:renew", f"{held.token} 0 bench", px=TTL_MS)

        def renew() -> None:
            gov.renew_lease(held, ttl=TTL)

        def lua_renew() -> None:
            if not renew_script(keys=[f"{prefix}{{bench}}:renew"], args=[str(held.token), TTL_MS]):
                raise RuntimeError("the baseline renew found no lease")

        s = measure({"renew": renew, "lua": lua_renew}, n, block=block, warmup=warmup)
        rows.append(row("renew_lease", s["renew"], "Lua GET + compare + PEXPIRE", s["lua"], TARGET))

        server_samples = _server_time(raw, {"acquire": ("evalsha", acquire), "set": ("set", set_nx)}, rounds, block)
        rows.append(row("acquire_lease server time (commandstats)", server_samples["acquire"], "SET NX PX",
                        server_samples["set"]))
        server_samples = _server_time(raw, {"renew": ("evalsha", renew)}, rounds, block)
        lua_samples = _server_time(raw, {"lua": ("evalsha", lua_renew)}, rounds, block)
        rows.append(row("renew_lease server time (commandstats)", server_samples["renew"],
                        "Lua GET + compare + PEXPIRE", lua_samples["lua"]))
        if raw.get(lease_key) is None:
            raise RuntimeError("the renewed lease is gone")
        env = environment(f"Redis {server}", url=display_url(url), n=n, block=block, warmup=warmup)
        return report_dict("redgov leases vs raw redis-py", env, rows)
    finally:
        try:
            delete_prefix(raw, prefix)
        except redis.ConnectionError:
            pass
        finally:
            gov.close()
            raw.close()


def main(argv: Sequence[str] | None = None) -> int:
    prog = "benchmarks/leases.py"
    parser = bench_parser(prog, "Lease acquire/renew vs SET NX PX and a Lua renew, interleaved in one run.",
                          DEFAULT_URL, DEFAULT_N)
    args = parser.parse_args(argv)
    return run_and_print(prog, args.url, args.json, lambda: run(args.url, args.n, block=args.block))


if __name__ == "__main__":
    sys.exit(main())
