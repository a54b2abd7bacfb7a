"""Writing exported log entries into the SQL copy, one transaction per batch.

A ``Batch`` holds the entries read from one or more scope logs. ``Writer.commit``
writes, in ONE transaction: the ``log_entries`` rows, the entity rows of each
kind, the approval links a transition makes (``ap``), the folded current state of
every experiment whose state was written, and each scope's cursor moved from the
id it was read after to the last id in the batch. The cursor moves by
compare-and-set: if another exporter moved it first, nothing is written and
``CursorMoved`` says which scopes to re-read. So a crash at any point neither
loses nor duplicates a row, and concurrent exporters never double-write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..codec import Entry, fold_states, text
from ..errors import CorruptDataError
from ..records import DECODERS, ENCODER
from .copy import ScopeRow, SqlCopy
from .schema import (
    ENTITY_TABLES,
    KNOWN_FIELDS,
    approval_records,
    cursors,
    experiment_key,
    experiment_states,
    log_entries,
    split_id,
    state_from_row,
)

__all__ = ["Batch", "CursorMoved", "Writer", "with_name"]


class CursorMoved(Exception):
    """Another exporter advanced these scopes' cursors first; nothing was written."""

    def __init__(self, scope_ids: Sequence[int]) -> None:
        super().__init__(f"cursors moved underneath for scopes {list(scope_ids)}")
        self.scope_ids = list(scope_ids)


@dataclass(slots=True)
class _ScopePart:
    row: ScopeRow
    start: tuple[int, int]
    end: tuple[int, int]
    count: int = 0


Row = tuple[Any, ...]

#: the column order the row tuples below are built in (checked against the tables at import)
COLUMNS: dict[str, tuple[str, ...]] = {
    "log_entries": ("scope_id", "entry_ms", "entry_seq", "kind", "experiment", "record", "rev", "etag", "v",
                    "from_state", "ap", "extra"),
    "state_transitions": ("scope_id", "entry_ms", "entry_seq", "transition_id", "experiment", "tenant",
                          "environment", "from_state", "to_state", "timestamp", "actor", "reason", "metadata",
                          "revision", "approval_entry"),
    "approval_records": ("scope_id", "entry_ms", "entry_seq", "approval_id", "experiment", "tenant", "environment",
                         "transition_id", "from_state", "to_state", "approved", "approver", "reason", "timestamp",
                         "gate", "metadata"),
    "configuration_versions": ("scope_id", "entry_ms", "entry_seq", "experiment_key", "experiment", "tenant",
                               "environment", "version", "configuration", "configuration_hash", "created_at",
                               "created_by", "description", "lifecycle_state", "is_rollback", "rolled_back_from",
                               "metadata", "revision"),
    "policy_evaluations": ("scope_id", "entry_ms", "entry_seq", "evaluation_id", "experiment", "tenant",
                           "environment", "policy", "compliant", "severity", "reason", "timestamp", "current_state",
                           "target_state", "metadata"),
    "rules_versions": ("scope_id", "entry_ms", "entry_seq", "tenant", "environment", "version", "definition",
                       "rules_hash", "created_at", "created_by", "reason"),
    "experiment_states": ("scope_id", "experiment_key", "experiment", "tenant", "environment", "state",
                          "config_version", "last_modified", "last_modified_by", "etag", "revision", "metadata",
                          "entry_ms", "entry_seq"),
}
for _table in (log_entries, experiment_states, *ENTITY_TABLES.values()):
    if tuple(c.key for c in _table.columns) != COLUMNS[_table.name]:  # pragma: no cover - a schema edit
        raise RuntimeError(f"write.COLUMNS[{_table.name!r}] does not match the table's columns")


@dataclass(slots=True)
class Batch:
    """Rows (tuples in ``COLUMNS`` order) of entries read from scope logs, to be committed together."""

    logs: list[Row] = field(default_factory=list)
    entities: dict[str, list[Row]] = field(default_factory=lambda: {k: [] for k in ENTITY_TABLES})
    links: list[dict[str, Any]] = field(default_factory=list)
    writes: dict[tuple[int, str], list[Entry]] = field(default_factory=dict)
    parts: dict[int, _ScopePart] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: the experiments each scope's entries in the batch belong to (what ``export --trim`` trims)
    touched: dict[int, set[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.logs)

    def add(self, row: ScopeRow, raw: Sequence[tuple[Any, Any]]) -> None:
        """Entries of one scope read after its cursor, in log order."""
        if not raw:
            return
        part = self.parts.get(row.scope_id)
        if part is None:
            part = self.parts[row.scope_id] = _ScopePart(row, (row.last_ms, row.last_seq), (row.last_ms, row.last_seq))
        for entry_id_raw, raw_fields in raw:
            entry_id = text(entry_id_raw)
            ms_text, _, seq_text = entry_id.partition("-")
            ms, seq = int(ms_text), int(seq_text)
            if (ms, seq) <= part.end:
                continue  # already in this batch (a re-read)
            self._entry(row, entry_id, ms, seq, _fields(raw_fields))
            part.end = (ms, seq)
            part.count += 1

    def _entry(self, row: ScopeRow, entry_id: str, ms: int, seq: int, fields: dict[bytes, bytes]) -> None:
        # Decoded here rather than by codec.decode_fields (same rules: the script's fields override the
        # record's, the experiment is the entry's x field) because this is the exporter's hot loop.
        get = fields.get
        rev, etag, v, source, ap = get(b"rev"), get(b"etag"), get(b"v"), get(b"from"), get(b"ap")
        try:
            kind_raw, name_raw, record_raw = fields[b"k"], fields[b"x"], fields[b"r"]
            kind, name = kind_raw.decode(), name_raw.decode()
            r = DECODERS[kind].decode(with_name(name_raw, record_raw))
            revision = None if rev is None else int(rev)
            number = None if v is None else int(v)
            origin = None if source is None else source.decode()
            approval = None if ap is None else ap.decode()
        except (KeyError, ValueError, msgspec.DecodeError) as exc:  # UnicodeDecodeError is a ValueError
            raise CorruptDataError(f"log entry {entry_id} of {row.log_key} cannot be decoded: {exc!r}") from None
        extra = None
        if not _KNOWN.issuperset(fields):
            extra = msgspec.json.encode({k.decode("utf-8", "backslashreplace"): val.decode("utf-8", "backslashreplace")
                                         for k, val in fields.items() if k not in _KNOWN}).decode()
        scope_id = row.scope_id
        if kind == "rules":  # the scope's, not an experiment's: no state to fold, nothing for trim to remove
            self._rules(row, entry_id, ms, seq, fields, r)
        else:
            names = self.touched.get(scope_id)
            if names is None:
                names = self.touched[scope_id] = set()
            names.add(name)
        self.logs.append((scope_id, ms, seq, kind, name, record_raw.decode(), revision,
                          None if etag is None or rev is None else etag.decode(), number,
                          origin, approval, extra))
        if revision and kind != "rules":  # a state write: what the fold reads of the entry, as decode_fields gives it
            if etag is None:
                raise CorruptDataError(f"log entry {entry_id} of {row.log_key} writes the state but has no etag")
            tag = etag.decode()
            folded = r
            if kind == "state":
                folded = msgspec.structs.replace(r, revision=revision, etag=tag)
            elif kind == "version" and number is not None and number != r.version:
                folded = msgspec.structs.replace(r, version=number)
            self.writes.setdefault((scope_id, name), []).append(Entry(entry_id, kind, name, folded, revision, tag))
        tenant, environment = row.tenant, row.environment
        if kind == "transition":
            if origin is None and r.from_state is not None:
                origin = r.from_state.value
            self.entities["transition"].append((
                scope_id, ms, seq, r.transition_id, name, tenant, environment, origin, r.to_state.value,
                r.timestamp, r.actor, r.reason, r.metadata, revision, approval))
            if approval is not None:
                ap_ms, ap_seq = split_id(approval)
                self.links.append({"b_scope": scope_id, "b_ms": ap_ms, "b_seq": ap_seq, "b_tid": r.transition_id})
        elif kind == "approval":
            if origin is None and r.from_state is not None:
                origin = r.from_state.value
            self.entities["approval"].append((
                scope_id, ms, seq, r.approval_id, name, tenant, environment, r.transition_id, origin,
                r.to_state.value, r.approved, r.approver, r.reason, r.timestamp, r.gate, r.metadata))
        elif kind == "version":
            if origin is None and r.lifecycle_state is not None:
                origin = r.lifecycle_state.value
            self.entities["version"].append((
                scope_id, ms, seq, experiment_key(name), name, tenant, environment,
                r.version if number is None else number, r.configuration, r.configuration_hash, r.created_at,
                r.created_by, r.description, origin, r.is_rollback, r.rolled_back_from, r.metadata, revision))
        elif kind == "policy":
            if origin is None and r.current_state is not None:
                origin = r.current_state.value
            self.entities["policy"].append((
                scope_id, ms, seq, r.evaluation_id, name, tenant, environment, r.policy, r.compliant,
                r.severity.value, r.reason, r.timestamp, origin,
                None if r.target_state is None else r.target_state.value, r.metadata))

    def _rules(self, row: ScopeRow, entry_id: str, ms: int, seq: int, fields: dict[bytes, bytes], r: Any) -> None:
        """A published rules version (publish_rules.lua): its number is the entry's ``n`` field."""
        try:
            number = int(fields[b"n"])
        except (KeyError, ValueError) as exc:
            raise CorruptDataError(f"log entry {entry_id} of {row.log_key} is a rules version without a number "
                                   f"(n): {exc!r}") from None
        self.entities["rules"].append((row.scope_id, ms, seq, row.tenant, row.environment, number, r.definition,
                                       r.rules_hash, r.created_at, r.created_by, r.reason))


_KNOWN = frozenset(k.encode() for k in KNOWN_FIELDS)


@lru_cache(maxsize=4096)
def _name_head(name_raw: bytes) -> bytes:
    return b'{"experiment":' + ENCODER.encode(name_raw.decode("utf-8")) + b","


def with_name(name_raw: bytes, record_raw: bytes) -> bytes:
    """A stored record (JSON without its experiment field, as the scripts store it) with the entry's
    experiment name put back first: the JSON the record's decoder reads (codec.decode_fields does the same)."""
    if not record_raw.startswith(b"{"):
        raise ValueError("the record is not a JSON object")
    if record_raw.rstrip() == b"{}":
        return _name_head(name_raw)[:-1] + b"}"
    return _name_head(name_raw) + record_raw[1:]


def _fields(raw: Any) -> dict[bytes, bytes]:
    """An entry's fields keyed by bytes (redis-py's RESP2 shape is kept as it is)."""
    if isinstance(raw, dict) and isinstance(next(iter(raw), b""), bytes):  # one client decodes every key alike
        return raw
    pairs = raw.items() if isinstance(raw, Mapping) else zip(raw[::2], raw[1::2], strict=False)
    return {(k if isinstance(k, bytes) else str(k).encode()): v for k, v in pairs}


_LINK = (sa.update(approval_records)
         .where(approval_records.c.scope_id == sa.bindparam("b_scope"))
         .where(approval_records.c.entry_ms == sa.bindparam("b_ms"))
         .where(approval_records.c.entry_seq == sa.bindparam("b_seq"))
         .values(transition_id=sa.bindparam("b_tid")))


@dataclass(slots=True)
class Committed:
    """What one committed batch wrote: its entries, the experiments whose state it folded, warnings."""

    entries: int
    experiments: set[tuple[int, str]]
    warnings: list[str]


class Writer:
    """Commits Batches into one SqlCopy; remembers the last committed state of each experiment."""

    def __init__(self, copy: SqlCopy) -> None:
        self.copy = copy
        self._states: dict[tuple[int, str], Entry] = {}

    def forget(self) -> None:
        """Drop the remembered states (another exporter moved a cursor: read them from SQL again)."""
        self._states.clear()

    def commit(self, batch: Batch) -> Committed:
        """Write the batch and move its scopes' cursors in ONE transaction.

        Raises CursorMoved (nothing written) when another exporter moved a cursor first.
        """
        if not batch.parts:
            return Committed(0, set(), [])
        now = datetime.now(UTC)
        with self.copy.errors("write to"), self.copy.engine.begin() as conn:
            moved = []
            for scope_id, part in batch.parts.items():
                result = conn.execute(
                    sa.update(cursors)
                    .where(cursors.c.scope_id == scope_id)
                    .where(cursors.c.last_ms == part.start[0]).where(cursors.c.last_seq == part.start[1])
                    .values(last_ms=part.end[0], last_seq=part.end[1], entries=cursors.c.entries + part.count,
                            updated_at=now))
                if result.rowcount != 1:
                    moved.append(scope_id)
            if moved:
                self.forget()
                raise CursorMoved(moved)  # leaving the block rolls everything back
            insert_rows(conn, log_entries, batch.logs)
            for kind, rows in batch.entities.items():
                insert_rows(conn, ENTITY_TABLES[kind], rows)
            if batch.links:
                conn.execute(_LINK, batch.links)
            states, warnings = self._fold(conn, batch)
            self._write_states(conn, batch, states)
        for part in batch.parts.values():
            part.row.last_ms, part.row.last_seq = part.end
            part.row.entries += part.count
        self._states.update(states)
        return Committed(len(batch.logs), set(states), batch.warnings + warnings)

    def _fold(self, conn: Connection, batch: Batch) -> tuple[dict[tuple[int, str], Entry], list[str]]:
        """The new current state of every experiment with state writes in the batch."""
        rows = {part.row.scope_id: part.row for part in batch.parts.values()}
        missing: dict[int, list[str]] = {}
        for (scope_id, name), found in batch.writes.items():
            if (scope_id, name) not in self._states and found[0].kind != "state":
                missing.setdefault(scope_id, []).append(name)
        fetched: dict[tuple[int, str], Entry] = {}
        for scope_id, names in missing.items():
            keys = {experiment_key(n): n for n in names}
            row = rows[scope_id]
            listed = list(keys)
            for start in range(0, len(listed), 500):
                query = sa.select(experiment_states).where(experiment_states.c.scope_id == scope_id).where(
                    experiment_states.c.experiment_key.in_(listed[start:start + 500]))
                for found_row in conn.execute(query).mappings():
                    fetched[(scope_id, found_row["experiment"])] = state_from_row(found_row, row.tenant,
                                                                               row.environment)
        out: dict[tuple[int, str], Entry] = {}
        warnings = []
        for (scope_id, name), entries in batch.writes.items():
            row = rows[scope_id]
            base = self._states.get((scope_id, name)) or fetched.get((scope_id, name))
            chain = ([base] if base is not None else []) + entries
            try:
                folded = fold_states(chain, name, row.tenant, row.environment)
            except CorruptDataError as exc:
                warnings.append(f"{row.log_key}: the state of {name!r} is not in the copy: {exc}")
                continue
            last = entries[-1]
            out[(scope_id, name)] = Entry(last.id, "state", name, folded[-1], folded[-1].revision, folded[-1].etag)
        return out, warnings

    def _write_states(self, conn: Connection, batch: Batch, states: dict[tuple[int, str], Entry]) -> None:
        if not states:
            return
        rows = {part.row.scope_id: part.row for part in batch.parts.values()}
        by_scope: dict[int, list[str]] = {}
        inserts: list[Row] = []
        for (scope_id, name), entry in states.items():
            key = experiment_key(name)
            by_scope.setdefault(scope_id, []).append(key)
            state = entry.record
            ms, seq = split_id(entry.id)
            inserts.append((scope_id, key, name, rows[scope_id].tenant, rows[scope_id].environment,
                            state.state.value, state.config_version, state.last_modified, state.last_modified_by,
                            state.etag, state.revision, state.metadata, ms, seq))
        for scope_id, keys in by_scope.items():
            for start in range(0, len(keys), 500):
                conn.execute(sa.delete(experiment_states).where(experiment_states.c.scope_id == scope_id)
                             .where(experiment_states.c.experiment_key.in_(keys[start:start + 500])))
        insert_rows(conn, experiment_states, inserts)


def insert_rows(conn: Connection, table: sa.Table, rows: list[Row]) -> None:
    """INSERT many rows (tuples in the table's column order).

    On SQLite the compiled INSERT goes straight to the driver's executemany, each
    value through its column type's bind processor (the conversion SQLAlchemy
    itself applies): SQLAlchemy's per-row parameter handling costs about as much
    as SQLite's insert. On PostgreSQL with psycopg 3 the rows go through COPY,
    in the same transaction. Other dialects take the ordinary executemany path.
    """
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        _copy_rows(conn, table, rows)
        return
    if dialect.name != "sqlite" or dialect.paramstyle != "qmark":
        names = COLUMNS[table.name]
        conn.execute(sa.insert(table), [dict(zip(names, row, strict=False)) for row in rows])
        return
    sql, processors = _compiled_insert(table, dialect)
    if processors:
        data = []
        for row in rows:
            values = list(row)
            for i, process in processors:
                values[i] = process(values[i])
            data.append(tuple(values))
        conn.exec_driver_sql(sql, data)
    else:
        conn.exec_driver_sql(sql, rows)


def _copy_rows(conn: Connection, table: sa.Table, rows: list[Row]) -> None:
    names = COLUMNS[table.name]
    quote = conn.dialect.identifier_preparer.quote
    json_columns = [i for i, c in enumerate(table.columns) if isinstance(c.type, sa.JSON)]
    sql = f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(sql) as copy:
        for row in rows:
            if json_columns:
                values = list(row)
                for i in json_columns:
                    if values[i] is not None:
                        values[i] = msgspec.json.encode(values[i]).decode()
                copy.write_row(values)
            else:
                copy.write_row(row)


_INSERTS: dict[tuple[str, int], tuple[str, list[tuple[int, Any]]]] = {}


def _compiled_insert(table: sa.Table, dialect: Any) -> tuple[str, list[tuple[int, Any]]]:
    key = (table.name, id(dialect))
    found = _INSERTS.get(key)
    if found is None:
        sql = str(sa.insert(table).compile(dialect=dialect, column_keys=list(COLUMNS[table.name])))
        processors = []
        for i, column in enumerate(table.columns):
            processor = column.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors.append((i, processor))
        found = _INSERTS[key] = (sql, processors)
    return found
