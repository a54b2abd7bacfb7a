"""The SQL copy: its connection and schema check, its scopes and cursors, and its reads.

``SqlCopy`` opens a database url (SQLite, PostgreSQL, MySQL, SQL Server through
SQLAlchemy), checks or creates the schema of ``schema`` and turns every
SQLAlchemy error into one ``SqlCopyError`` naming the copy. Its reads serve
``archive.SqlArchive``, the ``core.Archive`` over ``log_entries``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from ..errors import ConfigError

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import Connection, Engine
except ImportError as _missing:  # the optional dependency: one clear error instead of a traceback
    raise ConfigError(f"the SQL copy needs SQLAlchemy: pip install 'redgov[sql]' ({_missing})") from None

from ..keys import Scope, parse_log_key
from .schema import (
    SCHEMA_VERSION,
    approval_records,
    configuration_versions,
    cursors,
    entry_fields,
    experiment_key,
    join_id,
    log_entries,
    metadata,
    policy_evaluations,
    schema_table,
    scope_key,
    scopes,
    split_id,
)

__all__ = ["ScopeRow", "SqlCopy", "SqlCopyError", "open_engine", "progress_bar", "safe_url"]


class SqlCopyError(ConfigError):
    """The SQL copy cannot be used: unreachable or unknown database, incompatible schema,
    a non-empty restore target. Nothing was written when it is raised.

    When an option of the call would let it proceed (``force=True`` for a non-empty
    restore target, ``source_prefix=`` for a copy of several prefixes), ``option`` and
    ``value`` name it and ``render(spelled)`` words the message for another spelling of
    it (the command line's ``--force``); ``reason`` is the message without the remedy.
    """

    def __init__(self, message: str, *, remedy: str = "", option: str = "", value: str = "") -> None:
        self.reason, self.remedy, self.option, self.value = message, remedy, option, value
        super().__init__(self.render(f"{option}={value}" if option else ""))

    def render(self, spelled: str) -> str:
        """The message with the remedy's option spelled ``spelled`` (``{option}`` in ``remedy``)."""
        return f"{self.reason}: {self.remedy.format(option=spelled)}" if self.remedy else self.reason


def progress_bar(enabled: bool, total: int | None, desc: str) -> Any:
    """A tqdm bar on stderr, or None when disabled or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError:  # pip install 'redgov[sql]' brings it; without it, no bar
        return None

    return tqdm(total=total, desc=desc, unit=" entries", unit_scale=True, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def _json_dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode("utf-8")


# -- the connection ----------------------------------------------------------------------


def safe_url(url: str | sa.URL) -> str:
    """The url as it may be shown: its password hidden."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        return "<unparseable url>"


def _postgres_fallback(parsed: sa.URL) -> sa.URL:
    """``postgresql://`` means psycopg2 to SQLAlchemy; use psycopg 3 when only it is installed."""
    if parsed.drivername != "postgresql":
        return parsed
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy, not the sqlite3 module, decides where transactions begin, so DDL is transactional too
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers (the archive) do not block the exporter
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def open_engine(url: str, *, must_exist: bool = False) -> Engine:
    """An engine for url, connected once to prove it works; SqlCopyError otherwise.

    ``must_exist``: a SQLite file that does not exist is refused instead of created (reading a copy
    never leaves an empty database file behind).
    """
    shown = safe_url(url)
    if not isinstance(url, str) or not url:
        raise SqlCopyError(f"the SQL copy needs a database url (e.g. sqlite:///gov.db), got {url!r}")
    try:
        parsed = _postgres_fallback(sa.make_url(url))
    except sa_exc.ArgumentError as exc:
        raise SqlCopyError(f"not a database url: {url!r} ({exc}); e.g. sqlite:///gov.db or "
                           "postgresql+psycopg://user@host/db") from None
    try:
        engine = sa.create_engine(parsed, json_serializer=_json_dumps, json_deserializer=msgspec.json.decode)
    except sa_exc.NoSuchModuleError:
        raise SqlCopyError(f"unknown database dialect {parsed.drivername!r} in {shown}: use sqlite, "
                           "postgresql+psycopg, mysql+pymysql or mssql+pyodbc") from None
    except ImportError as exc:
        raise SqlCopyError(f"the database driver for {parsed.drivername!r} is not installed ({exc})") from None
    except (sa_exc.ArgumentError, TypeError, ValueError) as exc:
        raise SqlCopyError(f"bad database url {shown}: {exc}") from None
    if engine.dialect.name == "sqlite":
        path = parsed.database
        if must_exist and path and path != ":memory:" and not parsed.query.get("uri") and not os.path.exists(path):
            engine.dispose()
            raise SqlCopyError(f"there is no SQL copy at {shown}: {path} does not exist (export to it first)")
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
    try:
        with engine.connect():
            pass
    except sa_exc.SQLAlchemyError as exc:
        engine.dispose()
        raise SqlCopyError(f"cannot reach the database at {shown}: {_reason(exc)}") from None
    return engine


def _has_rows(conn: Connection, name: str) -> bool:
    try:
        return conn.execute(sa.select(sa.literal(1)).select_from(sa.table(name)).limit(1)).first() is not None
    except sa_exc.SQLAlchemyError:
        return True  # not a table we could have made


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(slots=True)
class ScopeRow:
    """One scope of the copy: its key parts, its log key and its export cursor (the last entry copied)."""

    scope_id: int
    prefix: str
    tenant: str | None
    environment: str | None
    log_key: str
    last_ms: int = 0
    last_seq: int = 0
    entries: int = 0

    @property
    def cursor(self) -> str:
        """The id of the last entry exported ('0-0': none)."""
        return join_id(self.last_ms, self.last_seq)


class SqlCopy:
    """One SQL copy: its engine, its schema check and its scope ids."""

    def __init__(self, url: str, *, create: bool) -> None:
        self.url = safe_url(url)
        self.engine = open_engine(url, must_exist=not create)
        try:
            self._prepare(create)
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        """Close the engine's connections."""
        self.engine.dispose()

    def __enter__(self) -> SqlCopy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        """The database's SQLAlchemy dialect name (sqlite, postgresql, ...)."""
        return str(self.engine.dialect.name)

    def _prepare(self, create: bool) -> None:
        for attempt in range(2):
            try:
                self._prepare_once(create)
                return
            except SqlCopyError as exc:  # two exporters creating the schema at once: the loser looks again
                if not create or attempt or not isinstance(exc.__cause__, sa_exc.SQLAlchemyError):
                    raise
                time.sleep(0.2)

    def _prepare_once(self, create: bool) -> None:
        with self.errors("read the schema of"):
            with self.engine.begin() as conn:
                inspector = sa.inspect(conn)
                if inspector.has_table("redgov_schema"):
                    self._check_version(conn)
                    if create:
                        metadata.create_all(conn, checkfirst=True)
                    return
                if not create:
                    raise SqlCopyError(f"{self.url} holds no redgov SQL copy (no redgov_schema table); "
                                       "run `redgov export --to URL` first")
                clashing = sorted(name for name in metadata.tables if inspector.has_table(name))
                ours = {name: {c.name for c in metadata.tables[name].columns} for name in clashing}
                if any({c["name"] for c in inspector.get_columns(name)} != ours[name] or _has_rows(conn, name)
                       for name in clashing):
                    raise SqlCopyError(f"{self.url} already has tables {', '.join(clashing)} but no "
                                       "redgov_schema table: it is not a redgov copy; use another database or schema")
                # none, or empty ones left by a creation interrupted where DDL is not transactional (MySQL)
                metadata.create_all(conn, checkfirst=True)
                from .. import __version__

                conn.execute(sa.insert(schema_table).values(name="redgov", version=SCHEMA_VERSION,
                                                            redgov_version=__version__,
                                                            created_at=datetime.now(UTC)))

    def _check_version(self, conn: Connection) -> None:
        row = conn.execute(sa.select(schema_table.c.version, schema_table.c.redgov_version)
                           .where(schema_table.c.name == "redgov")).first()
        if row is None:
            raise SqlCopyError(f"{self.url}: the redgov_schema table has no version row; not a usable redgov copy")
        if row.version != SCHEMA_VERSION:
            raise SqlCopyError(f"{self.url} holds a redgov SQL copy of schema version {row.version} (written by "
                               f"redgov {row.redgov_version}); this redgov reads schema version {SCHEMA_VERSION} "
                               "only: use a matching redgov or export into a new database")

    class _Errors:
        def __init__(self, copy: SqlCopy, what: str) -> None:
            self.copy, self.what = copy, what

        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
            if exc is not None and isinstance(exc, sa_exc.SQLAlchemyError):
                raise SqlCopyError(f"cannot {self.what} the SQL copy at {self.copy.url}: {_reason(exc)}") from exc

    def errors(self, what: str) -> SqlCopy._Errors:
        """A context turning SQLAlchemy errors into one SqlCopyError naming the copy."""
        return SqlCopy._Errors(self, what)

    # -- scopes and cursors -------------------------------------------------------------

    def scopes(self, prefix: str | None = None) -> list[ScopeRow]:
        """Every scope of the copy (of one prefix), with its cursor."""
        query = (sa.select(scopes, cursors.c.last_ms, cursors.c.last_seq, cursors.c.entries)
                 .select_from(scopes.outerjoin(cursors, cursors.c.scope_id == scopes.c.scope_id))
                 .order_by(scopes.c.scope_id))
        if prefix is not None:
            query = query.where(scopes.c.prefix == prefix)
        with self.errors("read"), self.engine.connect() as conn:
            return [ScopeRow(r.scope_id, r.prefix, r.tenant, r.environment, r.log_key, r.last_ms or 0,
                             r.last_seq or 0, r.entries or 0) for r in conn.execute(query)]

    def register(self, log_keys: Iterable[str]) -> dict[str, ScopeRow]:
        """The rows of these scopes (log keys), created with a zero cursor when new."""
        wanted = {}
        for log_key in log_keys:
            prefix, tenant, environment = parse_log_key(log_key)
            wanted[scope_key(Scope(prefix, tenant, environment))] = (log_key, prefix, tenant, environment)
        with self.errors("register scopes in"):
            for attempt in range(3):
                try:
                    with self.engine.begin() as conn:
                        found = self._load(conn, list(wanted))
                        for key, (log_key, prefix, tenant, environment) in wanted.items():
                            if log_key in found:
                                continue
                            inserted = conn.execute(sa.insert(scopes).values(
                                scope_key=key, prefix=prefix, tenant=tenant, environment=environment,
                                log_key=log_key)).inserted_primary_key
                            assert inserted is not None
                            scope_id = int(inserted[0])
                            conn.execute(sa.insert(cursors).values(scope_id=scope_id, last_ms=0, last_seq=0,
                                                                   entries=0, updated_at=datetime.now(UTC)))
                            found[log_key] = ScopeRow(scope_id, prefix, tenant, environment, log_key)
                    return found
                except sa_exc.IntegrityError:  # another exporter registered one meanwhile: read it back
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _load(self, conn: Connection, keys: Sequence[str]) -> dict[str, ScopeRow]:
        out: dict[str, ScopeRow] = {}
        for start in range(0, len(keys), 500):
            query = (sa.select(scopes, cursors.c.last_ms, cursors.c.last_seq, cursors.c.entries)
                     .select_from(scopes.outerjoin(cursors, cursors.c.scope_id == scopes.c.scope_id))
                     .where(scopes.c.scope_key.in_(keys[start:start + 500])))
            for r in conn.execute(query):
                out[r.log_key] = ScopeRow(r.scope_id, r.prefix, r.tenant, r.environment, r.log_key,
                                          r.last_ms or 0, r.last_seq or 0, r.entries or 0)
        return out

    def reload(self, rows: Iterable[ScopeRow]) -> None:
        """Refresh the cursors of these rows from SQL (after another exporter moved one)."""
        by_id = {r.scope_id: r for r in rows}
        with self.errors("read"), self.engine.connect() as conn:
            for r in conn.execute(sa.select(cursors).where(cursors.c.scope_id.in_(list(by_id)))):
                row = by_id[r.scope_id]
                row.last_ms, row.last_seq, row.entries = r.last_ms, r.last_seq, r.entries

    def count_entries(self, scope_ids: Sequence[int]) -> int:
        """The number of entries the copy holds of these scopes."""
        with self.errors("read"), self.engine.connect() as conn:
            total = 0
            for start in range(0, len(scope_ids), 500):
                total += conn.execute(sa.select(sa.func.count()).select_from(log_entries).where(
                    log_entries.c.scope_id.in_(scope_ids[start:start + 500]))).scalar_one()
            return int(total)

    def read_log(self, scope_id: int, *, page: int = 10_000) -> Iterator[tuple[str, dict[str, bytes]]]:
        """A scope's entries in log order, as (entry id, stream fields), read page by page."""
        columns = _entry_columns()
        last_ms, last_seq = -1, -1
        while True:
            query = (sa.select(*columns).where(log_entries.c.scope_id == scope_id)
                     .where(sa.or_(log_entries.c.entry_ms > last_ms,
                                   sa.and_(log_entries.c.entry_ms == last_ms, log_entries.c.entry_seq > last_seq)))
                     .order_by(log_entries.c.entry_ms, log_entries.c.entry_seq).limit(page))
            with self.errors("read"), self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
            for row in rows:
                yield join_id(row["entry_ms"], row["entry_seq"]), entry_fields(row)
            if len(rows) < page:
                return
            last_ms, last_seq = rows[-1]["entry_ms"], rows[-1]["entry_seq"]

    def fetch(self, scope_id: int, ids: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """The stream fields of the given entries of one scope (approvals carry their ``tid``)."""
        wanted = {split_id(i): i for i in ids}
        by_ms = sorted({ms for ms, _ in wanted})
        out: dict[str, dict[str, bytes]] = {}
        with self.errors("read"), self.engine.connect() as conn:
            for start in range(0, len(by_ms), 500):
                query = (_with_links().where(log_entries.c.scope_id == scope_id)
                         .where(log_entries.c.entry_ms.in_(by_ms[start:start + 500])))
                for row in conn.execute(query).mappings():
                    entry_id = wanted.get((row["entry_ms"], row["entry_seq"]))
                    if entry_id is not None:
                        out[entry_id] = _linked_fields(row)
        return out

    def history(self, scope_id: int, experiment: str, kinds: Sequence[str], *, before: str | None,
                limit: int | None, newest_first: bool,
                state_writes: bool = False) -> list[tuple[str, dict[str, bytes]]]:
        """One experiment's entries of these kinds (with an id at or below ``before``), in log order or
        newest first, at most ``limit``; ``state_writes`` keeps only those that wrote the state (a ``rev``)."""
        if not kinds or limit == 0:
            return []
        c = log_entries.c
        query = (_with_links().where(c.scope_id == scope_id).where(c.experiment == experiment)
                 .where(c.kind.in_(sorted(set(kinds)))))
        if state_writes:
            query = query.where(c.rev.is_not(None))
        if before is not None:
            ms, seq = split_id(before)
            query = query.where(sa.or_(c.entry_ms < ms, sa.and_(c.entry_ms == ms, c.entry_seq <= seq)))
        if newest_first:
            query = query.order_by(c.entry_ms.desc(), c.entry_seq.desc())
        else:
            query = query.order_by(c.entry_ms, c.entry_seq)
        if limit is not None:
            query = query.limit(limit)
        with self.errors("read"), self.engine.connect() as conn:
            return [(join_id(r["entry_ms"], r["entry_seq"]), _linked_fields(r)) for r in conn.execute(query).mappings()]

    def version(self, scope_id: int, experiment: str, number: int | None) -> tuple[str, dict[str, bytes]] | None:
        """The entry of version ``number`` of an experiment (None: its highest-numbered version)."""
        cv = configuration_versions
        query = (sa.select(*_entry_columns()).select_from(log_entries.join(cv, _same_entry(cv)))
                 .where(cv.c.scope_id == scope_id).where(cv.c.experiment_key == experiment_key(experiment)))
        if number is not None:
            query = query.where(cv.c.version == number)
        query = query.order_by(cv.c.version.desc(), cv.c.entry_ms.desc(), cv.c.entry_seq.desc()).limit(1)
        return self._one(query)

    def latest_policy(self, scope_id: int, experiment: str, policy: str) -> tuple[str, dict[str, bytes]] | None:
        """The entry of the latest (last in the log) evaluation of one policy of an experiment."""
        pe = policy_evaluations
        query = (sa.select(*_entry_columns()).select_from(log_entries.join(pe, _same_entry(pe)))
                 .where(pe.c.scope_id == scope_id).where(pe.c.experiment == experiment).where(pe.c.policy == policy)
                 .order_by(pe.c.entry_ms.desc(), pe.c.entry_seq.desc()).limit(1))
        return self._one(query)

    def linked_approvals(self, scope_id: int, transition_id: str) -> list[tuple[str, dict[str, bytes]]]:
        """The approvals linked to a transition (by their record, or consumed by it: its ``ap``), in log order,
        each with its ``tid``."""
        ar = approval_records
        query = (_with_links().where(ar.c.scope_id == scope_id).where(ar.c.transition_id == transition_id)
                 .order_by(ar.c.entry_ms, ar.c.entry_seq))
        with self.errors("read"), self.engine.connect() as conn:
            return [(join_id(r["entry_ms"], r["entry_seq"]), _linked_fields(r)) for r in conn.execute(query).mappings()]

    def _one(self, query: sa.Select[Any]) -> tuple[str, dict[str, bytes]] | None:
        with self.errors("read"), self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else (join_id(row["entry_ms"], row["entry_seq"]), entry_fields(row))


_ENTRY_COLUMNS = ("entry_ms", "entry_seq", "kind", "experiment", "record", "rev", "etag", "v", "from_state", "ap",
                  "extra")


def _entry_columns() -> list[sa.ColumnElement[Any]]:
    """The ``log_entries`` columns ``entry_fields`` reads, with the entry key."""
    return [log_entries.c[name] for name in _ENTRY_COLUMNS]


def _same_entry(table: sa.Table) -> sa.ColumnElement[bool]:
    """The join condition of an entity table with ``log_entries`` (the same entry)."""
    return sa.and_(table.c.scope_id == log_entries.c.scope_id, table.c.entry_ms == log_entries.c.entry_ms,
                   table.c.entry_seq == log_entries.c.entry_seq)


def _with_links() -> sa.Select[Any]:
    """Log entries with the transition each approval is linked to (NULL for other kinds)."""
    return (sa.select(*_entry_columns(), approval_records.c.transition_id)
            .select_from(log_entries.outerjoin(approval_records, _same_entry(approval_records))))


def _linked_fields(row: Mapping[Any, Any]) -> dict[str, bytes]:
    """An entry's stream fields; an approval linked to a transition gets ``tid``, as Redis reads give it."""
    fields = entry_fields(row)
    tid = row["transition_id"]
    if tid is not None:
        fields["tid"] = tid.encode("utf-8")
    return fields
