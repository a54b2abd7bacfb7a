"""The durable SQL copy: export and restore throughput, and Redis memory per history event.

    python benchmarks/export.py [--url redis://127.0.0.1:6379/0] [--n 20000] [--repeat 3]
                                [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test | --no-pg] [--json]

A governance history of about ``n`` events is written under a fresh
``bench-<uuid>`` prefix: 10 scopes (tenants) of 10 experiments each, every
experiment created with a configuration (state, transition and version
entries), walked to Running, then cycled Running <-> Paused through
``transition_many`` with two telemetry policies (each transition writes the
transition and two policy evaluations), with a new configuration version every
tenth round.

Throughput table (events/s = log entries / wall-clock seconds, median of
``--repeat`` runs, each into a fresh database):

- ``export`` SQLite (a file in a temporary directory) and PostgreSQL (a fresh
  schema per run): ``redgov.sql.export()`` of every scope, rows and cursors
  committed every 5,000 entries (target >= 20,000 events/s into SQLite);
- ``restore`` from each into an empty prefix (``redgov.sql.restore()``: every
  entry XADDed with its id, every index rebuilt by the ``restore_index`` script,
  one MULTI/EXEC per scope).

Memory table: ``MEMORY USAGE <log> SAMPLES 0`` of every scope log divided by
its XLEN (the history itself), and the same for every key of the prefix
(``<prefix>{...``: the log plus the state hashes and the history lists, zsets
and hashes that index it).

Everything lives under fresh prefixes and schemas that are deleted at the end.
The exit status is 0 even when a target is missed: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks._util`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import sqlalchemy as sa

import redgov
from benchmarks._util import display_url, environment, format_grid, positive_int, table_dict, to_running
from redgov import ErrorRate, LifecycleState, TrafficLimit, TransitionRequest
from redgov.keys import Scope, prefix_pattern
from redgov.sql import export, restore

__all__ = ["main", "run"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_N = 20000
DEFAULT_REPEAT = 3
TENANTS = 10
EXPERIMENTS = 10
TARGET_SQLITE_EXPORT = 20000.0  # events/s

RUNNING, PAUSED = LifecycleState.RUNNING, LifecycleState.PAUSED


def _fill(bp: redgov.Backplane, n: int) -> int:
    """Write a governance history of at least n log entries; returns the exact count."""
    gov = redgov.Governance(bp, policies=[TrafficLimit(50), ErrorRate(0.1)])
    scopes = [(f"tenant-{t}", "prod") for t in range(TENANTS)]
    names = [f"exp-{e}" for e in range(EXPERIMENTS)]
    for tenant, env in scopes:
        for name in names:
            to_running(gov, name, tenant=tenant, environment=env,
                       configuration={"variant": "b", "traffic": 5, "steps": [1, 5, 25, 50]})
    state = RUNNING
    round_no = 0
    while _entries(bp, scopes) < n:
        state = PAUSED if state is RUNNING else RUNNING
        requests = [TransitionRequest(experiment=name, to=state, tenant=tenant, environment=env, actor="bench",
                                      reason="benchmark", telemetry={"trafficPercentage": 5, "errorRate": 0.01})
                    for tenant, env in scopes for name in names]
        for result in gov.transition_many(requests):
            if isinstance(result, Exception):
                raise result
        round_no += 1
        if round_no % 10 == 0:
            for tenant, env in scopes:
                gov.create_version(names[round_no % EXPERIMENTS], {"variant": "b", "traffic": round_no % 100},
                                   tenant=tenant, environment=env, actor="bench")
    return _entries(bp, scopes)


def _entries(bp: redgov.Backplane, scopes: Sequence[tuple[str, str]]) -> int:
    return sum(int(bp.client.xlen(Scope(bp.prefix, t, e).log)) for t, e in scopes)


def _memory(client: redis.Redis, prefix: str, scopes: Sequence[tuple[str, str]]) -> tuple[float, float, int]:
    """(bytes per entry of the logs, bytes per entry of every key of the prefix, entries)."""
    logs = [Scope(prefix, t, e).log for t, e in scopes]
    entries = sum(int(client.xlen(k)) for k in logs)
    log_bytes = sum(int(client.memory_usage(k, samples=0) or 0) for k in logs)
    all_bytes = sum(int(client.memory_usage(k, samples=0) or 0)
                    for k in client.scan_iter(match=prefix_pattern(prefix), count=1000))
    return log_bytes / entries, all_bytes / entries, entries


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Unlink every key of a redgov prefix (``<prefix>{...``), 500 at a time; the number deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix_pattern(prefix), count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(client.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


class _Postgres:
    """Fresh schemas on one PostgreSQL database, dropped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        self.schemas: list[str] = []

    def fresh(self) -> str:
        schema = "redgov_bench_" + uuid.uuid4().hex[:10]
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        return sa.make_url(self.url).update_query_dict({"options": f"-csearch_path={schema}"}) \
            .render_as_string(hide_password=False)

    def close(self) -> None:
        with self.admin.connect() as conn:
            for schema in self.schemas:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.admin.dispose()


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(url: str = DEFAULT_URL, n: int = DEFAULT_N, *, repeat: int = DEFAULT_REPEAT,
        pg_url: str | None = DEFAULT_PG_URL) -> dict[str, Any]:
    """Write ~n events, then time export and restore into SQLite (and PostgreSQL unless pg_url is None)."""
    prefix = "bench-" + uuid.uuid4().hex[:12]
    raw = redis.Redis.from_url(url)
    bp = redgov.connect(url, prefix=prefix)
    restored: list[str] = []
    pg: _Postgres | None = None
    notes: list[str] = []
    try:
        server = str(raw.info("server")["redis_version"])
        events = _fill(bp, n)
        scopes = [(f"tenant-{t}", "prod") for t in range(TENANTS)]
        lines: list[list[str]] = []
        with tempfile.TemporaryDirectory(prefix="redgov-bench-") as tmp:
            engines: list[tuple[str, Callable[[], str]]] = []
            counter = iter(range(10**6))
            engines.append(("SQLite", lambda: f"sqlite:///{Path(tmp) / f'copy-{next(counter)}.db'}"))
            if pg_url is not None:
                try:
                    pg = _Postgres(pg_url)
                    with pg.admin.connect():
                        pass
                    engines.append(("PostgreSQL", pg.fresh))
                except sa.exc.SQLAlchemyError as exc:
                    notes.append(f"PostgreSQL skipped: cannot reach {display_url(pg_url)}: {str(exc).splitlines()[0]}")
            for name, new_url in engines:
                exports, restores = [], []
                for _ in range(repeat):
                    sql_url = new_url()
                    exports.append(_timed(lambda sql_url=sql_url: export(bp, sql_url, progress=False)))
                    target = redgov.connect(url, prefix="bench-" + uuid.uuid4().hex[:12])
                    restored.append(target.prefix)
                    try:
                        restores.append(_timed(
                            lambda target=target, sql_url=sql_url: restore(target, sql_url, progress=False)))
                    finally:
                        delete_prefix(raw, target.prefix)
                        target.close()
                for operation, seconds in (("export", exports), ("restore", restores)):
                    median = statistics.median(seconds)
                    rate = events / median
                    target_rate = TARGET_SQLITE_EXPORT if (name, operation) == ("SQLite", "export") else None
                    ok = "info" if target_rate is None else ("ok" if rate >= target_rate else "MISSED")
                    lines.append([operation, name, f"{events:,}", f"{median:.3f}", f"{rate:,.0f}",
                                  "-" if target_rate is None else f">= {target_rate:,.0f}", ok])
        log_per, all_per, entries = _memory(raw, prefix, scopes)
        tables = [
            table_dict("Throughput (median of %d runs)" % repeat,
                       ["operation", "database", "events", "seconds", "events/s", "target", "ok"], lines,
                       numeric=(2, 3, 4)),
            table_dict("Redis memory per history event",
                       ["what", "entries", "bytes/event"],
                       [["scope logs (MEMORY USAGE / XLEN)", f"{entries:,}", f"{log_per:.1f}"],
                        ["every key of the prefix (logs + state + indexes)", f"{entries:,}", f"{all_per:.1f}"]],
                       numeric=(1, 2)),
        ]
        env = environment(f"Redis {server}", url=display_url(url), sqlalchemy=sa.__version__, events=events,
                          scopes=len(scopes), repeat=repeat)
        return {"benchmark": "redgov SQL copy: export, restore, memory", **env, "tables": tables, "notes": notes}
    finally:
        try:
            delete_prefix(raw, prefix)
            for other in restored:
                delete_prefix(raw, other)
        except redis.ConnectionError:
            pass
        finally:
            if pg is not None:
                pg.close()
            bp.close()
            raw.close()


def format_export_report(report: dict[str, Any], *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(report, ensure_ascii=False)
    header = [f"# {report['benchmark']}"]
    header += [f"{k}: {v}" for k, v in report.items() if k not in ("benchmark", "tables", "notes")]
    parts = ["\n".join(header)]
    for table in report["tables"]:
        parts.append(f"{table['title']}\n" + format_grid(table["columns"], table["rows"], table["numeric"]))
    if report.get("notes"):
        parts.append("\n".join(f"- {note}" for note in report["notes"]))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/export.py",
                                     description="SQL copy export/restore throughput and Redis memory per event.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Redis url (default {DEFAULT_URL})")
    parser.add_argument("--n", type=positive_int, default=DEFAULT_N,
                        help=f"history events to write and copy (default {DEFAULT_N})")
    parser.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT,
                        help=f"runs per measurement; the median is reported (default {DEFAULT_REPEAT})")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"PostgreSQL url (default {DEFAULT_PG_URL})")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    try:
        report = run(args.url, args.n, repeat=args.repeat, pg_url=None if args.no_pg else args.pg_url)
    except redis.ConnectionError as exc:
        print(f"benchmarks/export.py: cannot reach {display_url(args.url)}: {exc}", file=sys.stderr)
        return 2
    print(format_export_report(report, as_json=args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
