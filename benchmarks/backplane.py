"""Backplane overhead over raw redis-py, measured in one run against one server.

    python benchmarks/backplane.py [--url redis://127.0.0.1:6379/0] [--n 5000] [--json]

Rows (candidate vs baseline; ratio = candidate median / baseline median):

- ``get_state`` vs ``client.hgetall`` of the same state key on a plain
  ``redis.Redis`` of the same url (target <= 1.3x);
- etag-guarded ``save_state`` (each call passes the etag the previous one
  returned) vs EVALSHA of a no-op script (``return 1``) given the same keys and
  arguments (target <= 1.5x);
- ``append_transition`` vs the same kind of no-op EVALSHA (informational);
- ``latest_version`` of an experiment with 5,000 versions vs one with 10
  (target <= 1.5x: reading the latest must not grow with history);
- ``get_state`` on memory:// (fakeredis, in-process Lua) vs redis://
  (informational).

Members of each pair alternate in blocks of 200 calls after a warm-up (see
``benchmarks/_util.py``). Everything lives under a fresh ``bench-<uuid>``
prefix whose keys are deleted at the end. The exit status is 0 even when a
target is missed: this is a report, not a test.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks._util`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

import redgov
from benchmarks._util import (
    BLOCK,
    SAMPLE_TIME,
    bench_parser,
    delete_prefix,
    display_url,
    environment,
    measure,
    report_dict,
    row,
    run_and_print,
    sample_state,
)
from redgov.keys import Scope

__all__ = ["main", "run"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_N = 10000
FEW_VERSIONS = 10
MANY_VERSIONS = 5000

TARGET_GET_STATE = 1.3
TARGET_SAVE_STATE = 1.5
TARGET_LATEST_VERSION = 1.5

def _transitions(experiment: str, count: int) -> Iterator[redgov.StateTransition]:
    """``count`` distinct transitions (each has its own transition_id), built up front."""
    made = [
        redgov.StateTransition(
            experiment=experiment,
            from_state=redgov.LifecycleState.APPROVED,
            to_state=redgov.LifecycleState.RUNNING,
            timestamp=SAMPLE_TIME,
            actor="bench",
            reason="benchmark",
            metadata={"step": i},
        )
        for i in range(count)
    ]
    return iter(made)


def _fill_versions(bp: redgov.Backplane, client: redis.Redis, experiment: str, count: int) -> None:
    """``count`` versions through append_version.lua, pipelined 500 at a time."""
    script = client.register_script(bp.core.specs["append_version"].text)
    for start in range(1, count + 1, 500):
        pipe = client.pipeline(transaction=False)
        for number in range(start, min(start + 500, count + 1)):
            call = bp.core.append_version(
                redgov.ConfigurationVersion(
                    experiment=experiment,
                    version=number,
                    configuration={"variant": "b", "traffic": number % 100, "flags": ["x", "y"]},
                    created_at=SAMPLE_TIME,
                    created_by="bench",
                )
            )
            script(keys=call.keys, args=call.args, client=pipe)
        pipe.execute()
    latest = bp.latest_version(experiment)
    if latest is None or latest.version != count:
        raise RuntimeError(f"filling {experiment}: latest version is {latest!r}, expected {count}")


def run(url: str = DEFAULT_URL, n: int = DEFAULT_N, *, block: int = BLOCK) -> dict[str, Any]:
    """Run every measurement; the report as a JSON-ready dict (see ``_util.report_dict``)."""
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    raw = redis.Redis.from_url(url)
    bp = redgov.connect(url, prefix=prefix)
    mem = redgov.connect("memory://", prefix=prefix)
    warmup = min(n, 2 * block)
    try:
        server = raw.info("server")["redis_version"]
        scope = Scope(prefix)
        noop = raw.register_script("return 1")
        rows = []

        # get_state vs HGETALL of the same key
        name = "exp-state"
        bp.save_state(sample_state(name))
        key = scope.experiment(name).state
        if bp.get_state(name) is None or not raw.hgetall(key):
            raise RuntimeError(f"state {key} was not written")
        s = measure({"get_state": lambda: bp.get_state(name), "hgetall": lambda: raw.hgetall(key)},
                    n, block=block, warmup=warmup)
        rows.append(row("get_state", s["get_state"], "redis-py hgetall", s["hgetall"], TARGET_GET_STATE))

        # save_state, each guarded by the previous save's etag, vs a no-op EVALSHA
        state = sample_state("exp-save")
        etag: list[str | None] = [bp.save_state(state).etag]

        def save() -> None:
            result = bp.save_state(state, expected_etag=etag[0])
            if not result.ok:  # a refused save would turn the rest into cheap failures
                raise RuntimeError(f"guarded save_state was refused: {result.error}")
            etag[0] = result.etag

        probe = bp.core.save_state(state, etag[0])
        s = measure({"save_state": save,
                     "noop": lambda: noop(keys=probe.keys, args=probe.args)},
                    n, block=block, warmup=warmup)
        rows.append(row("save_state (etag-guarded)", s["save_state"],
                        f"no-op EVALSHA {len(probe.keys)} keys/{len(probe.args)} args", s["noop"],
                        TARGET_SAVE_STATE))

        # append_transition vs a no-op EVALSHA
        transitions = _transitions("exp-transition", n + warmup + 1)
        probe_t = bp.core.append_transition(next(transitions))
        s = measure({"append_transition": lambda: bp.append_transition(next(transitions)),
                     "noop": lambda: noop(keys=probe_t.keys, args=probe_t.args)},
                    n, block=block, warmup=warmup)
        rows.append(row("append_transition", s["append_transition"],
                        f"no-op EVALSHA {len(probe_t.keys)} keys/{len(probe_t.args)} args", s["noop"]))

        # latest_version: a long history vs a short one
        few, many = "exp-versions-few", "exp-versions-many"
        _fill_versions(bp, raw, few, FEW_VERSIONS)
        _fill_versions(bp, raw, many, MANY_VERSIONS)
        s = measure({"many": lambda: bp.latest_version(many), "few": lambda: bp.latest_version(few)},
                    n, block=block, warmup=warmup)
        rows.append(row(f"latest_version @{MANY_VERSIONS} versions", s["many"],
                        f"latest_version @{FEW_VERSIONS} versions", s["few"], TARGET_LATEST_VERSION))

        # memory:// vs redis:// get_state (informational)
        mem.save_state(sample_state(name))
        s = measure({"memory": lambda: mem.get_state(name), "redis": lambda: bp.get_state(name)},
                    n, block=block, warmup=warmup)
        rows.append(row("get_state memory://", s["memory"], "get_state redis://", s["redis"]))

        env = environment(
            f"Redis {server}",
            url=display_url(url),
            n=n,
            block=block,
            warmup=warmup,
        )
        return report_dict("redgov Backplane vs raw redis-py", env, rows)
    finally:
        try:
            delete_prefix(raw, prefix)
        except redis.ConnectionError:
            pass  # the server is gone (the error being raised says so); nothing to delete
        finally:
            mem.close()
            bp.close()
            raw.close()


def main(argv: Sequence[str] | None = None) -> int:
    prog = "benchmarks/backplane.py"
    parser = bench_parser(prog, "Backplane latency vs raw redis-py baselines, interleaved in one run.",
                          DEFAULT_URL, DEFAULT_N)
    args = parser.parse_args(argv)
    return run_and_print(prog, args.url, args.json, lambda: run(args.url, args.n, block=args.block))


if __name__ == "__main__":
    sys.exit(main())
