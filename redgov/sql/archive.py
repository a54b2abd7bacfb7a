"""``SqlArchive``: history trimmed from Redis, read back from the SQL copy.

A ``core.Archive``: ``redgov.connect(url, archive=SqlArchive(sql_url))`` keeps every
history read whole after retention or ``redgov trim`` removed entries from Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..keys import Scope, parse_log_key
from .copy import SqlCopy
from .schema import scope_key, scopes


class SqlArchive:
    """``core.Archive`` over a SQL copy: where history removed from Redis is read.

    ``redgov.connect(url, archive=SqlArchive("sqlite:///gov.db"))`` keeps
    ``transitions()``, ``history()``, ``replay()``, ``verify()`` and the other history
    reads whole after retention (``retain_history``) or ``redgov trim`` removed
    entries from Redis, as long as an exporter copied them first. The reads ask the
    copy for one experiment's entries up to the retention cut, or for single
    entries (a version, a policy's latest evaluation, a transition's approvals).
    Call ``close()`` (or use it as a context manager) when done; a Backplane closes its
    archive when it closes.

    ``url``: the SQLAlchemy URL of a copy ``export`` wrote (its schema must exist).
    Its methods implement ``core.Archive`` for the backplanes: ``log_key`` names a
    scope by its log key, entries come back as ``(entry id, fields)``. Raises
    SqlCopyError when the copy cannot be used.
    """

    def __init__(self, url: str) -> None:
        self._copy = SqlCopy(url, create=False)
        self._ids: dict[str, int | None] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The copy's url, its password hidden."""
        return self._copy.url

    def _scope_id(self, log_key: str) -> int | None:
        with self._lock:
            if log_key in self._ids:
                return self._ids[log_key]
        key = scope_key(Scope(*parse_log_key(log_key)))
        with self._copy.errors("read"), self._copy.engine.connect() as conn:
            found = conn.execute(sa.select(scopes.c.scope_id).where(scopes.c.scope_key == key)).scalar()
        if found is not None:  # an unknown scope may be exported later: do not cache its absence
            with self._lock:
                self._ids[log_key] = int(found)
        return None if found is None else int(found)

    def fetch(self, log_key: str, ids: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """The stream fields of each entry of ``ids`` the copy holds for the scope of ``log_key``, by entry id."""
        if not ids:
            return {}
        scope_id = self._scope_id(log_key)
        if scope_id is None:
            return {}
        return self._copy.fetch(scope_id, ids)

    def history(self, log_key: str, experiment: str, kinds: Sequence[str], *, before: str | None,
                limit: int | None, newest_first: bool,
                state_writes: bool = False) -> list[tuple[str, dict[str, bytes]]]:
        """The entries of ``experiment`` in the scope of ``log_key`` of these ``kinds`` (``"transition"``, ...).

        Only those with an id at or below ``before`` (None: all), in log order
        (``newest_first``: reversed), at most ``limit`` (None: all); ``state_writes``:
        only those that wrote the state (carrying a ``rev``).
        """
        scope_id = self._scope_id(log_key)
        if scope_id is None:
            return []
        return self._copy.history(scope_id, experiment, kinds, before=before, limit=limit,
                                  newest_first=newest_first, state_writes=state_writes)

    def version(self, log_key: str, experiment: str, number: int | None) -> tuple[str, dict[str, bytes]] | None:
        """Version ``number`` of ``experiment`` in the scope of ``log_key`` (None: the highest), or None."""
        scope_id = self._scope_id(log_key)
        return None if scope_id is None else self._copy.version(scope_id, experiment, number)

    def latest_policy(self, log_key: str, experiment: str, policy: str) -> tuple[str, dict[str, bytes]] | None:
        """The latest evaluation of ``policy`` for ``experiment`` in the scope of ``log_key``, or None."""
        scope_id = self._scope_id(log_key)
        return None if scope_id is None else self._copy.latest_policy(scope_id, experiment, policy)

    def linked_approvals(self, log_key: str, transition_id: str) -> list[tuple[str, dict[str, bytes]]]:
        """The approvals linked to transition ``transition_id`` in the scope of ``log_key``, in log order.

        Those are its role-gate approvals, the manual approval it consumed and approvals
        appended with its id, each with its ``tid`` field.
        """
        scope_id = self._scope_id(log_key)
        return [] if scope_id is None else self._copy.linked_approvals(scope_id, transition_id)

    def close(self) -> None:
        """Close the copy's connections (a Backplane closes its archive when it closes)."""
        self._copy.close()

    def __enter__(self) -> SqlArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqlArchive({self.url!r})"


if TYPE_CHECKING:
    from ..core import Archive

    def _is_an_archive(archive: SqlArchive) -> Archive:  # mypy checks SqlArchive against the protocol
        return archive
