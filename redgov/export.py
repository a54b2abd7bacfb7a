"""The durable SQL copy: snapshot export, continuous export (``follow``), trimming, the CLI.

Python API::

    from redgov.export import export, follow, restore, trim, SqlArchive
    summary = export(backplane, "sqlite:///gov.db")          # every scope of the prefix
    follow(backplane, "sqlite:///gov.db")                     # until SIGINT/SIGTERM or stop.set()
    restore(other_backplane, "sqlite:///gov.db")              # into an empty prefix
    trim(backplane, "sqlite:///gov.db")                       # each experiment's exported history

Every scope of the backplane's prefix is found by ``SCAN MATCH <prefix>{*:*}:log``
(``keys.scope_pattern``; on a Cluster ``scan_iter`` covers every primary). Each
scope's log is read after its cursor with XRANGE (snapshot) or XREAD BLOCK
(follow) and copied verbatim, entry by entry, in batches; a batch's rows and
the cursors it advances are ONE SQL transaction (see ``sqlwrite``), so
re-running adds nothing and an interrupted run resumes.

Trimming is per experiment, like retention (``retain_history``): for each
experiment of a scope (its ``index`` sorted set, read in pages) the ``trim``
script removes the entries up to the scope's exported cursor, with everything
that indexes them, and folds the state writes it removes into the experiment's
retention base, so ``replay``/``verify`` still hold and ``SqlArchive`` reads the
removed history back. An entry after the cursor (not exported) is never removed.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

from redis.exceptions import RedisError

from .backplane import Backplane
from .codec import text
from .core import Call
from .errors import CorruptDataError
from .events import streams as _streams
from .keys import Scope, parse_log_key, scope_pattern
from .restore import RestoreSummary, redis_refusals, restore
from .sqlcopy import ScopeRow, SqlArchive, SqlCopy, SqlCopyError, progress_bar
from .sqlschema import join_id, split_id
from .sqlwrite import Batch, CursorMoved, Writer

__all__ = ["ExportSummary", "RestoreSummary", "SqlArchive", "SqlCopyError", "TrimSummary", "cli", "export", "follow",
           "restore", "trim"]

#: entries per SQL transaction
CHUNK = 5000
#: XREAD BLOCK timeout of ``follow``: how long a stop request may wait
BLOCK_MS = 500
#: how often ``follow`` looks for new scopes (a SCAN of the keyspace) and for trimmed gaps
REDISCOVER_S = 5.0
#: most scope logs read by one XREAD (more are polled)
XREAD_STREAMS = 1000
#: entries asked of one trim script call (it removes at most TRIM_MOST of lua/lib/retain.lua, read from
#: the script when lower): a call that removes fewer has removed everything up to the cut
TRIM_BATCH = 64
_TRIM_MOST = re.compile(r"^local TRIM_MOST = (\d+)", re.MULTILINE)
#: experiment names read per ZRANGEBYLEX page of a scope index (and trimmed per pipelined round)
INDEX_PAGE = 200
_MAX_SEQ = 2**53 - 1


@dataclass(slots=True)
class ExportSummary:
    """What an export (or a follow, until it stopped) did."""

    url: str
    prefix: str
    mode: str
    scopes: int = 0
    entries: int = 0
    experiments: int = 0
    batches: int = 0
    trimmed: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    stopped_by: str | None = None
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary the command line prints."""
        out = (f"exported {self.entries:,} new entries of {self.scopes:,} scope(s) ({self.experiments:,} "
               f"experiment states) to {self.url} in {self.seconds:.2f} s ({self.rate:,.0f} entries/s)")
        if self.trimmed:
            out += f"; trimmed {self.trimmed:,} exported entries from Redis"
        if self.stopped_by:
            out += f"; stopped by {self.stopped_by}"
        return out


@dataclass(slots=True)
class TrimSummary:
    """What a trim did: entries removed from Redis, and those left in the scope logs."""

    url: str
    prefix: str
    scopes: int = 0
    experiments: int = 0
    trimmed: int = 0
    remaining: int = 0

    def line(self) -> str:
        """The one-line summary the command line prints."""
        return (f"trimmed {self.trimmed:,} exported entries of {self.experiments:,} experiment(s) from "
                f"{self.scopes:,} scope log(s) of prefix {self.prefix!r}; {self.remaining:,} entries remain "
                "in Redis")


def _is_cluster(client: Any) -> bool:
    return type(client).__name__ == "RedisCluster"


def discover(client: Any, prefix: str) -> list[str]:
    """The log key of every scope of prefix (SCAN; every primary of a Cluster)."""
    found = set()
    for raw in client.scan_iter(match=scope_pattern(prefix), count=1000, _type="STREAM"):
        key = text(raw)
        try:
            if parse_log_key(key)[0] == prefix:
                found.add(key)
        except ValueError:  # a stream that only looks like a scope log
            continue
    return sorted(found)


# -- trimming ----------------------------------------------------------------------------


def trim_cut(row: ScopeRow, keep_ms: int = 0, now_ms: int | None = None) -> str | None:
    """The id up to which a scope's entries may be removed (None: none may): its exported cursor, or
    with ``keep_ms`` the last id older than that many ms before ``now_ms`` when that is lower."""
    if row.last_ms == 0 and row.last_seq == 0:
        return None
    cut = (row.last_ms, row.last_seq)
    if keep_ms > 0 and now_ms is not None:
        if now_ms - keep_ms - 1 < 0:
            return None
        cut = min(cut, (now_ms - keep_ms - 1, _MAX_SEQ))
    return join_id(*cut)


def trim_batch(backplane: Backplane) -> int:
    """The entries one trim script call is asked to remove: TRIM_BATCH, or the script's own limit if lower."""
    found = _TRIM_MOST.search(backplane.core.specs["trim"].text)
    return TRIM_BATCH if found is None else max(1, min(TRIM_BATCH, int(found.group(1))))


def trim_call(backplane: Backplane, scope: Scope, experiment: str, cut: str,
              most: int = TRIM_BATCH) -> Call[tuple[int, int]]:
    """One call of the trim script: removes up to ``most`` of the experiment's entries at or below cut.

    The standard keys with an ops bucket of the scope after the history key (as ``Core.write`` orders
    them; the trim script does not dedupe). Returns (entries removed, entries left in its history).
    """
    exp = scope.experiment(experiment)
    keys = exp.standard[:3] + (scope.ops(),) + exp.standard[3:]
    backplane.core.specs["trim"].check_keys(len(keys))

    def parse(reply: Any) -> tuple[int, int]:
        try:
            return int(reply[0]), int(reply[1])
        except (IndexError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"trim of {exp.history}: unexpected reply {reply!r}: {exc!r}") from None

    return Call(keys, (cut, most), parse, "trim", state_key=exp.state, scope=scope)


def scope_experiments(backplane: Backplane, scope: Scope, page: int = INDEX_PAGE) -> Iterator[list[str]]:
    """The names in a scope's index, page by page (ZRANGEBYLEX: no keyspace scan)."""
    after = "-"
    while True:
        raw = backplane.client.zrangebylex(scope.index, after, "+", start=0, num=page)
        names = [text(n) for n in raw]
        if names:
            yield names
        if len(names) < page:
            return
        after = "(" + names[-1]


def trim_experiments(backplane: Backplane, scope: Scope, names: Iterable[str], cut: str) -> int:
    """Remove the given experiments' entries at or below cut (all of them, ``trim_batch`` per call, the
    calls of a round pipelined); returns the number removed."""
    pending = list(names)
    most = trim_batch(backplane)
    removed = 0
    while pending:
        results = backplane.run_many([trim_call(backplane, scope, name, cut, most) for name in pending])
        again = []
        for name, result in zip(pending, results):
            if isinstance(result, BaseException):
                raise result
            count, _left = result
            removed += count
            if count >= most:
                again.append(name)
        pending = again
    return removed


def trim_scope(backplane: Backplane, row: ScopeRow, cut: str | None,
               names: Iterable[str] | None = None) -> tuple[int, int]:
    """Trim one scope (every experiment of its index, or only ``names``) up to cut.

    Returns (entries removed, experiments looked at).
    """
    if cut is None:
        return 0, 0
    scope = backplane.core.scope(row.tenant, row.environment)
    if scope.log != row.log_key:  # pragma: no cover - the copy's scopes of this prefix are read
        raise SqlCopyError(f"{row.log_key} is not a scope log of prefix {backplane.prefix!r}")
    removed = seen = 0
    pages: Iterable[list[str]] = scope_experiments(backplane, scope) if names is None else [sorted(names)]
    for page in pages:
        for start in range(0, len(page), INDEX_PAGE):
            chunk = page[start:start + INDEX_PAGE]
            removed += trim_experiments(backplane, scope, chunk, cut)
            seen += len(chunk)
    return removed, seen


def _server_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


class Exporter:
    """Copies the scope logs of one backplane into one SqlCopy."""

    def __init__(self, backplane: Backplane, copy: SqlCopy, *, chunk: int = CHUNK, trim: bool = False,
                 keep: timedelta = timedelta(0), progress: bool = False, mode: str = "snapshot") -> None:
        if chunk < 1:
            raise SqlCopyError(f"chunk must be >= 1, got {chunk}")
        self.backplane = backplane
        self.client = backplane.client
        self.prefix = backplane.prefix
        self.copy = copy
        self.writer = Writer(copy)
        self.chunk = chunk
        self.trim = trim
        self.keep_ms = int(keep.total_seconds() * 1000)
        self.show_progress = progress
        self.bar: Any = None
        self.known: dict[str, ScopeRow] = {}
        self.summary = ExportSummary(url=copy.url, prefix=self.prefix, mode=mode)
        self._experiments: set[tuple[int, str]] = set()
        self._gaps: dict[str, tuple[int, int]] = {}
        self._started = time.perf_counter()

    def refresh(self) -> list[ScopeRow]:
        """Find the prefix's scopes; register the new ones. Returns the new rows."""
        logs = [k for k in discover(self.client, self.prefix) if k not in self.known]
        if not logs:
            return []
        rows = self.copy.register(logs)
        self.known.update(rows)
        self.summary.scopes = len(self.known)
        return list(rows.values())

    def commit(self, batch: Batch) -> bool:
        """Commit a batch; False when another exporter moved a cursor first (nothing written)."""
        if not batch.parts:
            return True
        try:
            done = self.writer.commit(batch)
        except CursorMoved as moved:
            self.copy.reload([r for r in self.known.values() if r.scope_id in moved.scope_ids])
            return False
        self.summary.entries += done.entries
        self.summary.batches += 1
        self.summary.warnings += done.warnings
        self._experiments |= done.experiments
        self.summary.experiments = len(self._experiments)
        if self.bar is not None:
            self.bar.update(done.entries)
        if self.trim and self.summary.mode == "follow":  # a snapshot trims every scope once, at its end
            now_ms = _server_ms(self.client) if self.keep_ms else None
            for scope_id, part in batch.parts.items():
                cut = trim_cut(part.row, self.keep_ms, now_ms)
                self.summary.trimmed += trim_scope(self.backplane, part.row, cut, batch.touched.get(scope_id, ()))[0]
        return True

    def trim_all(self) -> None:
        """Trim every known scope up to its cursor (every experiment of its index)."""
        now_ms = _server_ms(self.client) if self.keep_ms else None
        for row in sorted(self.known.values(), key=lambda r: r.log_key):
            self.summary.trimmed += trim_scope(self.backplane, row, trim_cut(row, self.keep_ms, now_ms))[0]

    def _read(self, row: ScopeRow) -> Any:
        return self.client.xrange(row.log_key, min="(" + row.cursor, max="+", count=self.chunk)

    def snapshot(self) -> None:
        """Copy every scope up to the last entry it had when the pass began.

        A pass is repeated (at most 5 times) only when another exporter moved a cursor
        underneath, which discards that batch.
        """
        self.refresh()
        rows = sorted(self.known.values(), key=lambda r: r.log_key)
        ends, total = self._ends(rows)
        self.bar = progress_bar(self.show_progress, total, "export")
        for _attempt in range(5):
            if self._pass(rows, ends):
                return

    def _pass(self, rows: Sequence[ScopeRow], ends: dict[str, str]) -> bool:
        batch = Batch()
        clean = True
        for row in rows:
            stop_id = ends.get(row.log_key)
            if stop_id is None:
                continue
            while True:
                part = batch.parts.get(row.scope_id)
                after = join_id(*part.end) if part is not None else row.cursor
                wanted = self.chunk - len(batch)
                raw = self.client.xrange(row.log_key, min="(" + after, max=stop_id, count=wanted)
                batch.add(row, raw)
                if len(batch) >= self.chunk:
                    clean = self.commit(batch) and clean
                    batch = Batch()
                if len(raw) < wanted:
                    break
        return self.commit(batch) and clean

    def _ends(self, rows: Sequence[ScopeRow]) -> tuple[dict[str, str], int | None]:
        """Each log's last id now (where the snapshot stops) and an estimate of the entries to copy."""
        ends: dict[str, str] = {}
        total = 0
        for row in rows:
            info = self._info(row.log_key)
            if info is None:  # gone meanwhile
                continue
            ends[row.log_key] = text(info["last-generated-id"])
            self._gap(row, info)
            added = info.get("entries-added")
            total += max(0, int(added) - row.entries) if added is not None else int(info.get("length", 0))
        return ends, total

    def _gap(self, row: ScopeRow, info: Any) -> None:
        """Warn when Redis removed entries the copy never got (retain_history, XTRIM, XDEL).

        Trimming removes a log's oldest entries: when everything left is after the
        cursor, the entries ever added beyond those exported and those left are gone.
        XDEL shows in ``max-deleted-entry-id``.
        """
        if not isinstance(info, dict):
            return
        cursor = (row.last_ms, row.last_seq)
        first = info.get("first-entry")
        length, added = int(info.get("length", 0)), info.get("entries-added")
        missing = 0
        if added is not None and (not first or split_id(text(first[0])) > cursor):
            missing = int(added) - row.entries - length
        deleted = info.get("max-deleted-entry-id")
        if missing <= 0 and deleted is not None and split_id(text(deleted)) > cursor:
            missing = 1
        if missing > 0 and self._gaps.get(row.log_key) != (row.entries, missing):
            self._gaps[row.log_key] = (row.entries, missing)
            self.summary.warnings.append(
                f"{row.log_key}: entries after the exported cursor {row.cursor} were removed from Redis before "
                f"they were exported (retain_history, XTRIM or XDEL; about {missing:,}): the copy misses them")

    def check_gaps(self) -> None:
        """Warn about entries removed from Redis before they were exported, in every known scope."""
        rows = list(self.known.values())
        if _is_cluster(self.client):
            infos = [self._info(r.log_key) for r in rows]
        else:
            with self.client.pipeline(transaction=False) as pipe:
                for r in rows:
                    pipe.xinfo_stream(r.log_key)
                infos = pipe.execute(raise_on_error=False)
        for row, info in zip(rows, infos):
            if isinstance(info, dict):
                self._gap(row, info)

    def _info(self, log_key: str) -> Any:
        try:
            return self.client.xinfo_stream(log_key)
        except RedisError:
            return None

    def follow(self, stop: threading.Event, *, block_ms: int = BLOCK_MS, rediscover: float = REDISCOVER_S) -> None:
        """Tail every scope log until stop is set; new scopes are found every ``rediscover`` seconds."""
        self.bar = progress_bar(self.show_progress, None, "follow")
        next_look = 0.0
        turn = 0
        while not stop.is_set():
            if time.monotonic() >= next_look:
                self.refresh()
                self.check_gaps()
                next_look = time.monotonic() + rediscover
            rows = list(self.known.values())
            if not rows:
                stop.wait(block_ms / 1000)
                continue
            batch = Batch()
            if _is_cluster(self.client) or len(rows) > XREAD_STREAMS:
                # XREAD cannot span hash slots: poll each log, starting where the last round stopped
                turn = turn % len(rows)
                for row in rows[turn:] + rows[:turn]:
                    turn += 1
                    if len(batch) >= self.chunk:
                        break
                    batch.add(row, self._read(row))
                if not batch.parts:
                    stop.wait(block_ms / 1000)
            else:
                per_stream = max(10, self.chunk // len(rows))
                reply = self.client.xread({r.log_key: r.cursor for r in rows}, count=per_stream, block=block_ms)
                for stream, items in _streams(reply):
                    found = self.known.get(text(stream))
                    if found is not None:
                        batch.add(found, items)
            self.commit(batch)

    def finish(self) -> ExportSummary:
        """Close the progress bar; the summary with its time and rate."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        s = self.summary
        s.seconds = time.perf_counter() - self._started
        s.rate = s.entries / s.seconds if s.seconds > 0 else 0.0
        return s


def export(backplane: Backplane, url: str, *, progress: bool = True, chunk: int = CHUNK, trim: bool = False,
           keep: timedelta = timedelta(0)) -> ExportSummary:
    """Copy every scope's history (and the experiments' current states) of the backplane's prefix to url.

    Idempotent: entries up to each scope's cursor are skipped, so re-running adds
    nothing and an interrupted run resumes. ``trim=True`` then removes from Redis
    every experiment's entries up to its scope's cursor (keeping entries newer than
    ``keep``), as ``trim`` does.
    """
    with SqlCopy(url, create=True) as copy:
        exporter = Exporter(backplane, copy, chunk=chunk, trim=trim, keep=keep, progress=progress)
        try:
            with redis_refusals(f"exporting prefix {backplane.prefix!r}"):
                exporter.snapshot()
                if trim:
                    exporter.trim_all()
        finally:
            summary = exporter.finish()
    return summary


@contextmanager
def _stop_on_signals(stop: threading.Event, summary: Callable[[str], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        summary(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def follow(backplane: Backplane, url: str, *, progress: bool = True, chunk: int = CHUNK, trim: bool = False,
           keep: timedelta = timedelta(0), stop: threading.Event | None = None, block_ms: int = BLOCK_MS,
           rediscover: float = REDISCOVER_S, handle_signals: bool = True) -> ExportSummary:
    """Export continuously until ``stop`` is set or SIGINT/SIGTERM arrives; returns the summary.

    At-least-once reads from Redis, exactly-once rows in SQL: each batch's rows and
    cursors commit together. New scopes are picked up every ``rediscover`` seconds.
    ``trim=True`` trims, after each batch, the experiments the batch holds entries of.
    """
    event = stop if stop is not None else threading.Event()
    with SqlCopy(url, create=True) as copy:
        exporter = Exporter(backplane, copy, chunk=chunk, trim=trim, keep=keep, progress=progress, mode="follow")

        def stopped_by(name: str) -> None:
            exporter.summary.stopped_by = name

        guard = _stop_on_signals(event, stopped_by) if handle_signals else nullcontext()
        try:
            with guard, redis_refusals(f"exporting prefix {backplane.prefix!r}"):
                exporter.follow(event, block_ms=block_ms, rediscover=rediscover)
        except KeyboardInterrupt:
            exporter.summary.stopped_by = "KeyboardInterrupt"
        finally:
            summary = exporter.finish()
    if summary.stopped_by is None and stop is not None:
        summary.stopped_by = "stop"
    return summary


def trim(backplane: Backplane, url: str, *, keep: timedelta = timedelta(0)) -> TrimSummary:
    """Remove from Redis each experiment's entries up to (never beyond) its scope's exported cursor.

    For every scope of the backplane's prefix in the copy, every experiment of the
    scope's index is trimmed by the ``trim`` script, repeatedly until it removes
    fewer entries than asked; the entries left in each scope log are counted.
    ``keep`` spares entries newer than that (by the server's clock).
    """
    with SqlCopy(url, create=False) as copy:
        rows = copy.scopes(backplane.prefix)
    client = backplane.client
    summary = TrimSummary(url=copy.url, prefix=backplane.prefix)
    keep_ms = int(keep.total_seconds() * 1000)
    with redis_refusals(f"trimming prefix {backplane.prefix!r}"):
        now_ms = _server_ms(client) if keep_ms else None
        for row in rows:
            if not client.exists(row.log_key):
                continue
            summary.scopes += 1
            removed, seen = trim_scope(backplane, row, trim_cut(row, keep_ms, now_ms))
            summary.trimmed += removed
            summary.experiments += seen
            summary.remaining += int(client.xlen(row.log_key))
    return summary


# -- command line ------------------------------------------------------------------------


def _sql_url(ctx: Any, *names: str) -> str:
    for name in names:
        value = getattr(ctx.args, name, None)
        if value:
            return str(value)
    if os.environ.get("REDGOV_EXPORT_URL"):
        return os.environ["REDGOV_EXPORT_URL"]
    config = getattr(ctx, "_config", None)
    if config is not None and getattr(config, "export_url", None):
        return str(config.export_url)
    raise SqlCopyError(f"{ctx.args.command} needs the SQL copy's url: --to URL, $REDGOV_EXPORT_URL or "
                       "persistence.export.url in the config")


def _keep(ctx: Any) -> timedelta:
    seconds = getattr(ctx.args, "keep", None)
    return timedelta(seconds=float(seconds)) if seconds else timedelta(0)


def cli(ctx: Any) -> int:
    """``redgov export|restore|trim``: one summary line (or JSON object) on stdout, errors as RedgovError."""
    command = ctx.args.command
    show = not ctx.out.as_json
    backplane = ctx.backplane_open()
    try:
        result: Any
        if command == "export":
            url = _sql_url(ctx, "to_url")
            trimming, keep = bool(getattr(ctx.args, "trim", False)), _keep(ctx)
            if ctx.args.follow:
                result = follow(backplane, url, progress=show, trim=trimming, keep=keep)
            else:
                result = export(backplane, url, progress=show, trim=trimming, keep=keep)
        elif command == "restore":
            url = _sql_url(ctx, "from_url")
            result = restore(backplane, url, force=bool(ctx.args.force), progress=show,
                             source_prefix=getattr(ctx.args, "source_prefix", None))
        elif command == "trim":
            result = trim(backplane, _sql_url(ctx, "to_url", "sql_url"), keep=_keep(ctx))
        else:  # pragma: no cover - cli.py only dispatches the three
            raise SqlCopyError(f"unknown SQL copy command {command!r}")
    finally:
        backplane.close()
    for warning in getattr(result, "warnings", ()):
        sys.stderr.write(f"redgov: warning: {warning}\n")
    ctx.out.emit(asdict(result), result.line())
    return 0
