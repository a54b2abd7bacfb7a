"""The audit page's read: the log streams of many scopes, newest first, merged and paged.

No Governance method reads a scope's log backwards, so this reads it directly: ``XREVRANGE`` on
each scope's log key (named by ``keys.Scope``), in chunks, decoded with ``codec.decode_fields``
like every other reader. The streams are merged newest first by entry id (ties between scopes
broken by the scope's key tag), so a page is one ordered slice of the whole installation's
history. A cursor (``AuditCursor.token``) names the last entry shown; the next page starts after
it. The read is bounded: it stops after ``scan_limit`` entries even when filters matched fewer
than a page, and then offers a cursor to go on from where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from ..codec import decode_fields, text
from ..errors import CorruptDataError, raise_for_reply
from ..keys import Scope, decode_part, encode_part

__all__ = ["AuditEntry", "AuditPage", "read_audit"]

#: entries asked of one stream per XREVRANGE
CHUNK = 100
#: the kinds of log entries the audit page filters by ("rules": a scope's published rules, no experiment)
KINDS = ("state", "transition", "approval", "version", "policy", "rules")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One log entry: its id, scope, kind, experiment and decoded record (None: it cannot be decoded)."""

    id: str
    tenant: str | None
    environment: str | None
    kind: str
    experiment: str
    record: Any
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of the audit log: its entries, the cursor of the next page (None: no more), how many were read."""

    entries: list[AuditEntry]
    next_cursor: str | None
    scanned: int


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def scope_token(tenant: str | None, environment: str | None) -> str:
    """A scope as one URL-safe-enough token: its two parts key-encoded (None is ``~``), joined by ``:``."""
    return f"{encode_part(tenant)}:{encode_part(environment)}"


def parse_scope_token(token: str) -> tuple[str | None, str | None] | None:
    """The (tenant, environment) of a ``scope_token``; None when ``token`` is not one."""
    parts = token.split(":")
    if len(parts) != 2:
        return None
    return decode_part(parts[0]), decode_part(parts[1])


def _parse_cursor(cursor: str | None) -> tuple[tuple[int, int], str] | None:
    """``<entry id>@<scope token>`` -> ((ms, seq), scope token)."""
    if not cursor:
        return None
    entry_id, _, token = cursor.partition("@")
    ms, dash, seq = entry_id.partition("-")
    if not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit() and dash) or len(ms) > 19 \
            or len(seq) > 19:
        return None
    key = int(ms), int(seq)
    if max(key) >= 2 ** 64:  # no stream id is that large: Redis would refuse it
        return None
    return (key, token) if parse_scope_token(token) is not None else None


class _Stream:
    """One scope's log read backwards in chunks, starting below a cursor."""

    def __init__(self, client: Any, scope: Scope, start: tuple[tuple[int, int], str] | None) -> None:
        self.client, self.scope = client, scope
        self.token = scope_token(scope.tenant, scope.environment)
        self.buffer: list[tuple[str, dict[str, bytes]]] = []
        self.done = False
        if start is None:
            self.upper = "+"
        else:
            (ms, seq), token = start
            # entries after the cursor in (id desc, scope token desc) order: same id only in later scopes
            self.upper = f"{ms}-{seq}" if self.token < token else f"({ms}-{seq}"

    def head(self) -> tuple[str, dict[str, bytes]] | None:
        if not self.buffer and not self.done:
            try:
                reply = self.client.xrevrange(self.scope.log, self.upper, "-", count=CHUNK)
            except ResponseError as exc:  # e.g. WRONGTYPE: the default scope's log is no stream
                raise_for_reply(exc, (self.scope.log,))
            # field names as text whatever they hold: an entry that cannot be decoded is shown as a problem
            items = [(text(entry_id), _lenient(fields)) for entry_id, fields in reply or []]
            if len(items) < CHUNK:
                self.done = True
            if items:
                self.upper = "(" + items[-1][0]
            self.buffer = items
        return self.buffer[0] if self.buffer else None


def read_audit(client: Any, scopes: Iterable[Scope], *, cursor: str | None = None, experiment: str | None = None,
               kind: str | None = None, limit: int = 50, scan_limit: int = 5000) -> AuditPage:
    """Up to ``limit`` entries of ``scopes``' logs, newest first, after ``cursor``, matching the filters.

    Raises ValueError for a ``cursor`` that is not one this module made."""
    start = _parse_cursor(cursor)
    if cursor and start is None:
        raise ValueError(f"before={cursor[:80]!r} is not a cursor of the audit pages")
    streams = [_Stream(client, scope, start) for scope in scopes]
    out: list[AuditEntry] = []
    scanned = 0
    last: str | None = None
    while len(out) < limit and scanned < scan_limit:
        best: _Stream | None = None
        best_key: tuple[tuple[int, int], str] | None = None
        for stream in streams:
            head = stream.head()
            if head is None:
                continue
            key = (_id_key(head[0]), stream.token)
            if best_key is None or key > best_key:
                best, best_key = stream, key
        if best is None:
            return AuditPage(out, None, scanned)
        entry_id, fields = best.buffer.pop(0)
        scanned += 1
        last = f"{entry_id}@{best.token}"
        if kind is not None and _shown(fields.get("k", b"")) != kind:
            continue
        if experiment is not None and _shown(fields.get("x", b"")) != experiment:
            continue
        out.append(_decode(entry_id, fields, best.scope))
    more = any(stream.head() is not None for stream in streams)
    return AuditPage(out, last if more else None, scanned)


def _shown(value: bytes | str) -> str:
    """A stored value as text, bytes that are not UTF-8 replaced (what the page shows)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _lenient(fields: Any) -> dict[str, bytes]:
    """A log entry's ``[field, value, ...]`` keyed by text, field names that are not UTF-8 replaced."""
    if isinstance(fields, Mapping):
        return {_shown(k): v for k, v in fields.items()}
    return {_shown(fields[i]): fields[i + 1] for i in range(0, len(fields) - 1, 2)}


def _decode(entry_id: str, fields: dict[str, bytes], scope: Scope) -> AuditEntry:
    try:
        entry = decode_fields(entry_id, fields, scope.log, tenant=scope.tenant, environment=scope.environment)
    except CorruptDataError as exc:
        raw_kind = fields.get("k", b"?")
        raw_name = fields.get("x", b"?")
        return AuditEntry(entry_id, scope.tenant, scope.environment, raw_kind.decode("utf-8", "replace"),
                          raw_name.decode("utf-8", "replace"), None, str(exc))
    return AuditEntry(entry_id, scope.tenant, scope.environment, entry.kind, entry.experiment, entry.record)
