"""Trimming: removing from Redis the history the SQL copy already holds.

Trimming is per experiment, like retention (``retain_history``): for each
experiment of a scope (its ``index`` sorted set, read in pages) the ``trim``
script removes the entries up to the scope's exported cursor, with everything
that indexes them, and folds the state writes it removes into the experiment's
retention base, so ``replay``/``verify`` still hold and ``SqlArchive`` reads the
removed history back. An entry after the cursor (not exported) is never removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..backplane import Backplane
from ..codec import text
from ..core import Call
from ..errors import CorruptDataError
from ..keys import Scope
from .copy import ScopeRow, SqlCopy, SqlCopyError
from .restorer import redis_refusals
from .schema import join_id

__all__ = ["TrimSummary", "trim", "trim_cut", "trim_scope"]

#: entries asked of one trim script call (it removes at most TRIM_MOST of lua/lib/retain.lua, read from
#: the script when lower): a call that removes fewer has removed everything up to the cut
TRIM_BATCH = 64
_TRIM_MOST = re.compile(r"^local TRIM_MOST = (\d+)", re.MULTILINE)
#: experiment names read per ZRANGEBYLEX page of a scope index (and trimmed per pipelined round)
INDEX_PAGE = 200
_MAX_SEQ = 2**53 - 1


@dataclass(slots=True)
class TrimSummary:
    """What a trim did; ``line()`` is the CLI's one-line summary.

    Fields: ``url`` (the copy, its password hidden); ``prefix`` (the backplane's);
    ``scopes`` (scope logs trimmed); ``experiments`` (experiments examined);
    ``trimmed`` (entries removed from Redis); ``remaining`` (entries left in those
    scope logs).
    """

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




def server_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000




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
    keys = exp.write_keys(scope.ops())
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
        try:
            names = [text(n) for n in raw]
        except ValueError as exc:  # UnicodeDecodeError
            raise CorruptDataError(f"scope index {scope.index} holds a name that is not UTF-8: {exc!r}") from None
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
        for name, result in zip(pending, results, strict=False):
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




def trim(backplane: Backplane, url: str, *, keep: timedelta = timedelta(0)) -> TrimSummary:
    """Remove from Redis the history ``backplane``'s prefix has already exported to the SQL copy at ``url``.

    For every scope of the prefix in the copy, every experiment of the scope's index
    loses its entries up to (never beyond) the scope's exported cursor, with what
    indexes them; the state writes removed are folded into its retention base, so
    ``replay``/``verify`` still hold and ``SqlArchive`` reads the removed history back.
    Each call of the ``trim`` script (up to 64 entries of one experiment) is
    atomic; the trim as a whole is not. ``keep`` (a timedelta) spares entries newer
    than that, by the server's clock. Returns a TrimSummary. Raises SqlCopyError (the
    copy cannot be used), CorruptDataError, AccessDeniedError and other RedgovErrors.
    """
    with SqlCopy(url, create=False) as copy:
        rows = copy.scopes(backplane.prefix)
    client = backplane.client
    summary = TrimSummary(url=copy.url, prefix=backplane.prefix)
    keep_ms = int(keep.total_seconds() * 1000)
    with redis_refusals(f"trimming prefix {backplane.prefix!r}"):
        now_ms = server_ms(client) if keep_ms else None
        for row in rows:
            if not client.exists(row.log_key):
                continue
            summary.scopes += 1
            removed, seen = trim_scope(backplane, row, trim_cut(row, keep_ms, now_ms))
            summary.trimmed += removed
            summary.experiments += seen
            summary.remaining += int(client.xlen(row.log_key))
    return summary
