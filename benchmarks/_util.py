"""Timing and reporting helpers shared by the benchmark scripts.

A benchmark measures *groups*: a candidate and its baseline (or two
candidates) that are compared with each other. ``measure`` runs every member
of a group for a warm-up, then alternates blocks of ``block`` timed calls
between the members (reversing the order every round) until each has ``n``
samples. Candidate and baseline thus see the same server, connection and
machine load, and their *ratio* is what a report states; absolute numbers
are never compared across runs or machines.

Each sample is one call timed with ``time.perf_counter_ns``.

Besides its main table a report may carry extra ``tables`` (results that are
not latencies, such as a throughput under contention) and ``notes`` (what was
measured and how); ``format_report`` prints both after the main table.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "BLOCK",
    "Row",
    "Stats",
    "delete_prefix",
    "display_url",
    "environment",
    "format_grid",
    "format_report",
    "format_table",
    "measure",
    "percentile",
    "positive_int",
    "report_dict",
    "row",
    "to_running",
    "stats",
    "table_dict",
]

#: Calls per block before switching to the next member of a group.
BLOCK = 200


# -- timing -------------------------------------------------------------------


def _timed_block(fn: Callable[[], object], count: int, out: list[int],
                 before: Callable[[], object] | None = None) -> None:
    clock = time.perf_counter_ns
    append = out.append
    if before is None:
        for _ in range(count):
            start = clock()
            fn()
            append(clock() - start)
    else:
        for _ in range(count):
            before()
            start = clock()
            fn()
            append(clock() - start)


def measure(
    group: Mapping[str, Callable[[], object]],
    n: int,
    *,
    block: int = BLOCK,
    warmup: int | None = None,
    before: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, list[int]]:
    """``n`` latency samples (ns) per member of ``group``, interleaved in blocks.

    Every member first runs ``warmup`` untimed calls (default ``min(n, 2 * block)``),
    then the members take turns, ``block`` timed calls each, the order reversed
    every round so neither member always runs right after the other.
    Callables take no arguments; close over any per-call state (an iterator of
    prepared records, the etag of the previous save). ``before[name]``, when
    given, runs untimed before every call of that member (warm-up included):
    a step the timed call needs but that is not what is measured.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    names = list(group)
    warm = min(n, 2 * block) if warmup is None else warmup
    setup = dict(before or {})
    unknown = set(setup) - set(names)
    if unknown:
        raise ValueError(f"before names members that are not in the group: {sorted(unknown)}")
    for name in names:
        fn, prep = group[name], setup.get(name)
        for _ in range(warm):
            if prep is not None:
                prep()
            fn()
    samples: dict[str, list[int]] = {name: [] for name in names}
    gc.collect()
    done = 0
    round_no = 0
    while done < n:
        count = min(block, n - done)
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            _timed_block(group[name], count, samples[name], setup.get(name))
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


def format_grid(columns: Sequence[str], lines: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """Cells as an aligned text table under a header and a rule; ``numeric`` columns are right-aligned."""
    body = [tuple(columns), *(tuple(line) for line in lines)]
    widths = [max(len(line[i]) for line in body) for i in range(len(columns))]
    right = set(numeric)

    def fmt(line: tuple[str, ...]) -> str:
        return " | ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(line)
        ).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt(body[0]), rule, *(fmt(line) for line in body[1:])])


def format_table(rows: Iterable[Row]) -> str:
    return format_grid(_COLUMNS, (_cells(r) for r in rows), numeric=(1, 2, 4, 5))


def table_dict(title: str, columns: Sequence[str], lines: Iterable[Sequence[object]],
               numeric: Iterable[int] = ()) -> dict[str, Any]:
    """An extra table for a report's ``tables``: cells are printed with ``str``."""
    return {"title": title, "columns": list(columns), "rows": [[str(c) for c in line] for line in lines],
            "numeric": sorted(set(numeric))}


_EXTRAS = ("benchmark", "rows", "tables", "notes")


def report_dict(title: str, env: Mapping[str, object], rows: Sequence[Row], *,
                tables: Sequence[Mapping[str, Any]] = (), notes: Sequence[str] = ()) -> dict[str, Any]:
    """The whole report as one JSON-ready dict (``tables`` from ``table_dict``, ``notes`` as lines)."""
    report: dict[str, Any] = {"benchmark": title, **env, "rows": [asdict(r) for r in rows]}
    if tables:
        report["tables"] = [dict(t) for t in tables]
    if notes:
        report["notes"] = list(notes)
    return report


def format_report(report: Mapping[str, Any], *, as_json: bool = False) -> str:
    """A ``report_dict`` as header lines and tables (+ notes), or as one JSON object."""
    if as_json:
        return json.dumps(report, ensure_ascii=False)
    header = [f"# {report['benchmark']}"]
    header += [f"{key}: {value}" for key, value in report.items() if key not in _EXTRAS]
    rows = [Row(**r) for r in report["rows"]]
    parts = ["\n".join(header), format_table(rows)]
    for table in report.get("tables", ()):
        parts.append(f"{table['title']}\n" + format_grid(table["columns"], table["rows"], table.get("numeric", ())))
    if report.get("notes"):
        parts.append("\n".join(f"- {note}" for note in report["notes"]))
    return "\n\n".join(parts)


# -- running against a server ---------------------------------------------------


def display_url(url: str) -> str:
    """The url without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def delete_prefix(client: Any, prefix: str) -> int:
    """Unlink every key of a redgov prefix (``<prefix>{...``), 500 at a time; the number deleted."""
    from redgov.keys import prefix_pattern

    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix_pattern(prefix), count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def bench_parser(prog: str, description: str, default_url: str, default_n: int) -> Any:
    """The options every benchmark takes: --url, --n, --block, --json."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--url", default=default_url, help=f"Redis url (default {default_url})")
    parser.add_argument("--n", type=positive_int, default=default_n,
                        help=f"timed calls per candidate and per baseline (default {default_n})")
    parser.add_argument("--block", type=positive_int, default=BLOCK,
                        help=f"calls per block before switching member (default {BLOCK})")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def run_and_print(prog: str, url: str, as_json: bool, produce: Callable[[], dict[str, Any]]) -> int:
    """Run a benchmark and print its report; 2 with one line when the server cannot be reached."""
    import redis

    try:
        report = produce()
    except redis.ConnectionError as exc:
        print(f"{prog}: cannot reach {display_url(url)}: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, as_json=as_json))
    return 0


#: A fixed time for benchmark records, so encoded sizes do not vary between runs.
SAMPLE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
_SAMPLE_METADATA = {"owner": "bench", "ticket": "EXP-1234", "traffic": 0.5, "variants": ["a", "b"]}


def sample_state(experiment: str) -> Any:
    """A representative ExperimentState (Running, config v3, some metadata)."""
    import redgov

    return redgov.ExperimentState(
        experiment=experiment,
        state=redgov.LifecycleState.RUNNING,
        config_version=3,
        last_modified=SAMPLE_TIME,
        last_modified_by="bench",
        metadata=_SAMPLE_METADATA,
    )


def to_running(gov: Any, experiment: str, *, actor: str = "bench", tenant: str | None = None,
               environment: str | None = None, **create: Any) -> Any:
    """Create ``experiment`` (``create``: more arguments of ``Governance.create``) and walk it
    Draft -> PendingApproval -> Approved -> Running, approving a move a ManualGate holds; the last
    StateTransition."""
    from redgov import LifecycleState, ManualGate

    scope = {"tenant": tenant, "environment": environment}
    current = gov.create(experiment, actor=actor, **scope, **create).state
    done = None
    for step in (LifecycleState.PENDING_APPROVAL, LifecycleState.APPROVED, LifecycleState.RUNNING):
        if any(isinstance(g, ManualGate) and g.applies(current, step) for g in gov.core.gates):
            gov.approve(experiment, step, approver=f"{actor}-approver", **scope)  # four eyes: not the actor
        done = gov.transition(experiment, step, actor=actor, **scope)
        current = done.to_state
    return done
