"""Export: copying every scope log of a prefix to the SQL copy, once or continuously.

Every scope of the backplane's prefix is found by ``SCAN MATCH <prefix>{*:*}:log``
(``keys.scope_pattern``; on a Cluster ``scan_iter`` covers every primary). Each
scope's log is read after its cursor with XRANGE (snapshot) or XREAD BLOCK
(follow) and copied verbatim, entry by entry, in batches; a batch's rows and
the cursors it advances are ONE SQL transaction (see ``write``), so
re-running adds nothing and an interrupted run resumes. With ``trim=True`` the
exported entries are then removed from Redis (see ``trim``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

from redis.exceptions import RedisError

from ..backplane import Backplane
from ..codec import text
from ..events import streams as _streams
from ..keys import scope_logs, scope_pattern
from .copy import ScopeRow, SqlCopy, SqlCopyError, progress_bar
from .restorer import redis_refusals
from .schema import join_id, split_id
from .trimmer import scope_experiments, server_ms, trim_cut, trim_scope
from .write import Batch, CursorMoved, Writer

__all__ = ["ExportSummary", "Exporter", "discover", "export", "follow"]

#: entries per SQL transaction
CHUNK = 5000
#: XREAD BLOCK timeout of ``follow``: how long a stop request may wait
BLOCK_MS = 500
#: how often ``follow`` looks for new scopes (a SCAN of the keyspace) and for trimmed gaps
REDISCOVER_S = 5.0
#: most scope logs read by one XREAD (more are polled)
XREAD_STREAMS = 1000


@dataclass(slots=True)
class ExportSummary:
    """What an export (or a follow, until it stopped) did; ``line()`` is the CLI's one-line summary.

    Fields: ``url`` (the copy, its password hidden); ``prefix`` (the backplane's);
    ``mode`` (``"snapshot"`` for ``export``, ``"follow"``); ``scopes`` (scope logs
    known); ``entries`` (log entries copied by this run); ``experiments`` (experiments
    whose state the copy folded); ``batches`` (SQL transactions committed);
    ``trimmed`` (entries removed from Redis, with ``trim=True``); ``seconds`` and
    ``rate`` (elapsed time, entries per second); ``stopped_by`` (what ended a follow:
    a signal name, ``"KeyboardInterrupt"`` or ``"stop"``; None for an export);
    ``warnings`` (readable lines, e.g. entries Redis removed before they were exported).
    """

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


def _is_cluster(client: Any) -> bool:
    return type(client).__name__ == "RedisCluster"


def discover(client: Any, prefix: str) -> list[str]:
    """The log key of every scope of prefix (SCAN; every primary of a Cluster)."""
    return sorted(set(scope_logs(client.scan_iter(match=scope_pattern(prefix), count=1000, _type="STREAM"),
                                 prefix)))


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
            now_ms = server_ms(self.client) if self.keep_ms else None
            for scope_id, part in batch.parts.items():
                cut = trim_cut(part.row, self.keep_ms, now_ms)
                self.summary.trimmed += trim_scope(self.backplane, part.row, cut, batch.touched.get(scope_id, ()))[0]
        return True

    def trim_all(self) -> None:
        """Trim every known scope up to its cursor (every experiment of its index), a page of the index at
        a time, so that on a terminal a "trim" bar (entries removed) follows the copy's."""
        now_ms = server_ms(self.client) if self.keep_ms else None
        if self.bar is not None:  # the copy is done: its bar gives way to the trim's
            self.bar.close()
        self.bar = progress_bar(self.show_progress, None, "trim")
        for row in sorted(self.known.values(), key=lambda r: r.log_key):
            cut = trim_cut(row, self.keep_ms, now_ms)
            if cut is None:
                continue
            for page in scope_experiments(self.backplane, self.backplane.core.scope(row.tenant, row.environment)):
                removed = trim_scope(self.backplane, row, cut, page)[0]
                self.summary.trimmed += removed
                if self.bar is not None:
                    self.bar.update(removed)

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
        for row, info in zip(rows, infos, strict=False):
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
    """Copy every scope's history (and the experiments' current states) of ``backplane``'s prefix to ``url``.

    ``url`` is a SQLAlchemy URL (``sqlite:///gov.db``, ``postgresql+psycopg://...``);
    the schema is created when missing. Every scope found (SCAN of the prefix) is
    copied up to the last entry it had when the export began. Each batch of at most
    ``chunk`` entries, with the cursors it advances, is ONE SQL transaction, so
    re-running adds nothing and an interrupted run resumes; the copy is not one
    snapshot across scopes. ``progress`` shows a bar on a terminal's stderr (entries copied,
    then entries trimmed).
    ``trim=True`` then removes from Redis every experiment's entries up to its scope's
    cursor, sparing those newer than ``keep`` (a timedelta, by the server's clock),
    as ``trim`` does. Returns an ExportSummary. Raises SqlCopyError (the copy cannot
    be used; a SQL error, the password hidden), AccessDeniedError and other
    RedgovErrors for server refusals.
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
    """Export ``backplane``'s prefix to ``url`` continuously until ``stop`` is set or SIGINT/SIGTERM arrives.

    Tails every scope log (XREAD BLOCK up to ``block_ms``; polling on a Cluster) and
    commits batches of at most ``chunk`` entries: at-least-once reads from Redis,
    exactly-once rows in SQL (each batch's rows and cursors are one SQL transaction).
    New scopes are looked for every ``rediscover`` seconds. ``trim=True`` trims, after
    each batch, the experiments the batch holds entries of (sparing entries newer than
    ``keep``). ``handle_signals`` (main thread only) turns SIGINT/SIGTERM into a stop;
    ``progress`` shows a bar on a terminal. Returns an ExportSummary saying what
    stopped it. Raises SqlCopyError and RedgovErrors as ``export`` does.
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
