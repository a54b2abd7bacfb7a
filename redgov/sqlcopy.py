"""The SQL copy: its connection and schema check, its scopes and cursors, and its reads.

``SqlCopy`` opens a database url (SQLite, PostgreSQL, MySQL, SQL Server through
SQLAlchemy), checks or creates the schema of ``sqlschema`` and turns every
SQLAlchemy error into one ``SqlCopyError`` naming the copy. ``SqlArchive`` is the
``core.Archive`` reading entries trimmed from Redis back from ``log_entries``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from .errors import ConfigError

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import Connection, Engine
except ImportError as _missing:  # the optional dependency: one clear error instead of a traceback
    raise ConfigError(f"the SQL copy needs SQLAlchemy: pip install 'redgov[sql]' ({_missing})") from None

from .core import Entry
from .keys import Scope, parse_log_key
from .sqlschema import (
    SCHEMA_VERSION,
    approval_records,
    cursors,
    entry_fields,
    join_id,
    log_entries,
    metadata,
    schema_table,
    scope_key,
    scopes,
    split_id,
    utc,
)

__all__ = ["ScopeRow", "SqlArchive", "SqlCopy", "SqlCopyError", "open_engine", "progress_bar", "safe_url"]


class SqlCopyError(ConfigError):
    """The SQL copy cannot be used: unreachable or unknown database, incompatible schema,
    a non-empty restore target. Nothing was written when it is raised."""


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


def open_engine(url: str) -> Engine:
    """An engine for url, connected once to prove it works; SqlCopyError otherwise."""
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
        return join_id(self.last_ms, self.last_seq)


class SqlCopy:
    """One SQL copy: its engine, its schema check and its scope ids."""

    def __init__(self, url: str, *, create: bool) -> None:
        self.url = safe_url(url)
        self.engine = open_engine(url)
        try:
            self._prepare(create)
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SqlCopy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def dialect(self) -> str:
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
                from . import __version__

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
        with self.errors("read"), self.engine.connect() as conn:
            total = 0
            for start in range(0, len(scope_ids), 500):
                total += conn.execute(sa.select(sa.func.count()).select_from(log_entries).where(
                    log_entries.c.scope_id.in_(scope_ids[start:start + 500]))).scalar_one()
            return int(total)

    def read_log(self, scope_id: int, *, page: int = 10_000) -> Iterator[tuple[str, dict[str, bytes]]]:
        """A scope's entries in log order, as (entry id, stream fields), read page by page."""
        columns = [log_entries.c[name] for name in ("entry_ms", "entry_seq", "kind", "experiment", "record",
                                                    "rev", "etag", "v", "from_state", "ap", "extra")]
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
        columns = [log_entries.c[name] for name in ("entry_ms", "entry_seq", "kind", "experiment", "record",
                                                    "rev", "etag", "v", "from_state", "ap", "extra")]
        joined = log_entries.outerjoin(approval_records, sa.and_(
            approval_records.c.scope_id == log_entries.c.scope_id,
            approval_records.c.entry_ms == log_entries.c.entry_ms,
            approval_records.c.entry_seq == log_entries.c.entry_seq))
        with self.errors("read"), self.engine.connect() as conn:
            for start in range(0, len(by_ms), 500):
                query = (sa.select(*columns, approval_records.c.transition_id).select_from(joined)
                         .where(log_entries.c.scope_id == scope_id)
                         .where(log_entries.c.entry_ms.in_(by_ms[start:start + 500])))
                for row in conn.execute(query).mappings():
                    entry_id = wanted.get((row["entry_ms"], row["entry_seq"]))
                    if entry_id is None:
                        continue
                    fields = entry_fields(row)
                    if row["transition_id"] is not None:
                        fields["tid"] = row["transition_id"].encode("utf-8")
                    out[entry_id] = fields
        return out


def state_from_row(row: Mapping[Any, Any], tenant: str | None, environment: str | None) -> Entry:
    """An ``experiment_states`` row as a state Entry (the base the next fold starts from)."""
    from .records import ExperimentState, LifecycleState

    state = ExperimentState(
        experiment=row["experiment"], state=LifecycleState(row["state"]), config_version=row["config_version"],
        last_modified=utc(row["last_modified"]), last_modified_by=row["last_modified_by"], etag=row["etag"],
        revision=row["revision"], metadata=row["metadata"] or {}, tenant=tenant, environment=environment)
    return Entry(join_id(row["entry_ms"], row["entry_seq"]), "state", row["experiment"], state, state.revision,
                 state.etag)


class SqlArchive:
    """core.Archive over a SQL copy: where entries trimmed from a scope log are read.

    ``Backplane(client, prefix=..., archive=SqlArchive("sqlite:///gov.db"))`` keeps
    ``transitions()``, ``history()``, ``replay()`` and the other history reads whole
    after ``redgov trim``. Call ``close()`` (or use it as a context manager) when done.
    """

    def __init__(self, url: str) -> None:
        self._copy = SqlCopy(url, create=False)
        self._ids: dict[str, int | None] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
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
        if not ids:
            return {}
        scope_id = self._scope_id(log_key)
        if scope_id is None:
            return {}
        return self._copy.fetch(scope_id, ids)

    def close(self) -> None:
        self._copy.close()

    def __enter__(self) -> SqlArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqlArchive({self.url!r})"


