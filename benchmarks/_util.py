"""Timing and reporting helpers shared by the benchmark scripts.

A benchmark measures *groups*: a candidate and its baseline (or two
candidates) that are compared with each other. ``measure`` runs every member
of a group for a warm-up, then alternates blocks of ``block`` timed calls
between the members (reversing the order every round) until each has ``n``
samples. Candidate and baseline thus see the same server, connection and
machine load, and their *ratio* is what a report states; absolute numbers
are never compared across runs or machines.

Each sample is one call timed with ``time.perf_counter_ns``.
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "BLOCK",
    "Row",
    "Stats",
    "environment",
    "format_report",
    "format_table",
    "measure",
    "percentile",
    "report_dict",
    "row",
    "stats",
]

#: Calls per block before switching to the next member of a group.
BLOCK = 200


# -- timing -------------------------------------------------------------------


def _timed_block(fn: Callable[[], object], count: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    append = out.append
    for _ in range(count):
        start = clock()
        fn()
        append(clock() - start)


def measure(
    group: Mapping[str, Callable[[], object]],
    n: int,
    *,
    block: int = BLOCK,
    warmup: int | None = None,
) -> dict[str, list[int]]:
    """``n`` latency samples (ns) per member of ``group``, interleaved in blocks.

    Every member first runs ``warmup`` untimed calls (default ``min(n, 2 * block)``),
    then the members take turns, ``block`` timed calls each, the order reversed
    every round so neither member always runs right after the other.
    Callables take no arguments; close over any per-call state (an iterator of
    prepared records, the etag of the previous save).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    names = list(group)
    warm = min(n, 2 * block) if warmup is None else warmup
    for name in names:
        fn = group[name]
        for _ in range(warm):
            fn()
    samples: dict[str, list[int]] = {name: [] for name in names}
    gc.collect()
    done = 0
    round_no = 0
    while done < n:
        count = min(block, n - done)
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            _timed_block(group[name], count, samples[name])
        done += count
        round_no += 1
    return samples


def percentile(values: Sequence[int] | Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(len * q / 100), at least 1
    return float(ordered[int(rank) - 1])


@dataclass(frozen=True, slots=True)
class Stats:
    """Latency summary in microseconds."""

    n: int
    median_us: float
    p99_us: float


def stats(samples_ns: Sequence[int]) -> Stats:
    return Stats(
        n=len(samples_ns),
        median_us=statistics.median(samples_ns) / 1000.0,
        p99_us=percentile(samples_ns, 99) / 1000.0,
    )


# -- reporting ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a report: a candidate beside its baseline."""

    operation: str
    median_us: float
    p99_us: float
    baseline: str
    baseline_median_us: float
    baseline_p99_us: float
    ratio: float  # candidate median / baseline median
    delta_us: float  # candidate median - baseline median: the added cost, less tied to the round trip
    target: float | None  # ratio must be <= target; None = informational
    ok: str  # "ok", "MISSED" or "info"


def row(operation: str, candidate: Sequence[int], baseline: str, base: Sequence[int],
        target: float | None = None) -> Row:
    """A Row from the raw samples (ns) of a candidate and its baseline."""
    c, b = stats(candidate), stats(base)
    ratio = c.median_us / b.median_us if b.median_us else float("inf")
    ok = "info" if target is None else ("ok" if ratio <= target else "MISSED")
    return Row(operation, c.median_us, c.p99_us, baseline, b.median_us, b.p99_us, ratio,
               c.median_us - b.median_us, target, ok)


def environment(server_version: str | None = None, **extra: object) -> dict[str, object]:
    """Python, redis-py and msgspec versions (+ server version and extras)."""
    import msgspec
    import redis

    env: dict[str, object] = {
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.platform})",
        "redis_py": redis.__version__,
        "msgspec": msgspec.__version__,
    }
    if server_version is not None:
        env["server"] = server_version
    env.update(extra)
    return env


_COLUMNS = ("operation", "median µs", "p99 µs", "baseline", "baseline median µs", "ratio", "target", "ok")


def _cells(r: Row) -> tuple[str, ...]:
    return (
        r.operation,
        f"{r.median_us:.1f}",
        f"{r.p99_us:.1f}",
        r.baseline,
        f"{r.baseline_median_us:.1f}",
        f"{r.ratio:.2f}x",
        "-" if r.target is None else f"<= {r.target:g}x",
        r.ok,
    )


def format_table(rows: Iterable[Row]) -> str:
    lines = [_COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    numeric = {1, 2, 4, 5}

    def fmt(line: tuple[str, ...]) -> str:
        return " | ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(line)
        ).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt(lines[0]), rule, *(fmt(line) for line in lines[1:])])


def report_dict(title: str, env: Mapping[str, object], rows: Sequence[Row]) -> dict[str, Any]:
    """The whole report as one JSON-ready dict."""
    return {"benchmark": title, **env, "rows": [asdict(r) for r in rows]}


def format_report(report: Mapping[str, Any], *, as_json: bool = False) -> str:
    """A ``report_dict`` as header lines and a table, or as one JSON object."""
    if as_json:
        return json.dumps(report, ensure_ascii=False)
    header = [f"# {report['benchmark']}"]
    header += [f"{key}: {value}" for key, value in report.items() if key not in ("benchmark", "rows")]
    rows = [Row(**r) for r in report["rows"]]
    return "\n".join(header) + "\n\n" + format_table(rows)
