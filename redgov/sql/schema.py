"""The SQL copy's schema and the conversions between its rows and stream entries.

Tables, in SQLAlchemy Core (portable to SQLite, PostgreSQL, MySQL and SQL Server):

| table                    | one row per                      | key                                   |
|--------------------------|----------------------------------|---------------------------------------|
| ``redgov_schema``        | copy (the schema version)        | name                                  |
| ``scopes``               | (prefix, tenant, environment)    | scope_id; scope_key (hash of the tag) |
| ``export_cursors``       | scope: last exported entry id    | scope_id                              |
| ``log_entries``          | scope log entry (the raw truth)  | (scope_id, entry_ms, entry_seq)       |
| ``state_transitions``    | transition entry                 | (scope_id, entry_ms, entry_seq)       |
| ``approval_records``     | approval entry                   | (scope_id, entry_ms, entry_seq)       |
| ``configuration_versions``| version entry; unique (scope, experiment, version) | (scope_id, entry_ms, entry_seq) |
| ``policy_evaluations``   | policy evaluation entry          | (scope_id, entry_ms, entry_seq)       |
| ``rules_versions``       | rules entry; unique (scope, version) | (scope_id, entry_ms, entry_seq)   |
| ``experiment_states``    | experiment: its current state    | (scope_id, experiment_key)            |

A stream entry id ``<ms>-<seq>`` is stored as two integers, so ORDER BY gives the
log order. Names may be 1,024 characters long, longer than MySQL and SQL Server
can put in a unique index, so uniqueness per experiment goes through
``experiment_key`` (a 128-bit BLAKE2b hex digest of the name) and plain indexes
on names use a prefix length on MySQL. ``log_entries`` keeps each entry's record
bytes verbatim (``record``) and the fields the scripts add (rev, etag, v, from,
ap; any other field in ``extra``, a JSON object), which is what restore and the
archive read; the record is stored as the scripts store it, without its
``experiment`` field (the entry's ``x`` field, the ``experiment`` column, holds
the name); the entity tables are the typed, queryable view of the same
entries. ``experiment_states`` is the fold of the exported entries, so it always
matches the cursor it was committed with.

A ``rules`` entry (``Governance.publish``, publish_rules.lua) belongs to the scope, not
to an experiment: its ``experiment`` is ``''`` and its version number (the entry's
``n`` field) is kept in ``extra``, like any field of its own, so the entry reads back
byte for byte; ``rules_versions`` is its typed row (``version`` = ``n``). Restore
rebuilds the scope's rules hash from these entries (restorer.py). The table is an
addition, not a change an older copy could not be read with: ``export`` creates it in
a copy of this schema version that lacks it, and no read needs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ..codec import Entry
from ..keys import Scope

__all__ = [
    "ENTITY_TABLES",
    "KNOWN_FIELDS",
    "SCHEMA_VERSION",
    "entry_fields",
    "experiment_key",
    "join_id",
    "metadata",
    "rules_versions",
    "scope_key",
    "split_id",
    "utc",
]

#: Bumped on any change an older redgov could not read; another version is refused.
#: 2: records are stored without their experiment field (the key layout of 2026-12); indexes for the
#: archive's per-experiment reads.
SCHEMA_VERSION = 2


# -- schema -------------------------------------------------------------------------

metadata = sa.MetaData()

_TIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_NAME = sa.Unicode(1024)  # core.MAX_NAME_LENGTH; NVARCHAR on SQL Server
_ID = sa.String(64)
_STATE = sa.String(32)
_TEXT = sa.UnicodeText().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")  # records reach 1 MiB
_JSON = sa.JSON(none_as_null=True)
_MYSQL_PREFIX = 191  # index prefix length for long names (utf8mb4, 767-byte limit of old InnoDB)


def _entry_key() -> list[sa.Column[Any]]:
    return [
        sa.Column("scope_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("entry_ms", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("entry_seq", sa.BigInteger, primary_key=True, autoincrement=False),
    ]


def _scope_columns() -> list[sa.Column[Any]]:
    return [sa.Column("experiment", _NAME, nullable=False), sa.Column("tenant", _NAME),
            sa.Column("environment", _NAME)]


def _name_index(name: str, *columns: str, unique: bool = False) -> sa.Index:
    long = {c: _MYSQL_PREFIX for c in columns if c in ("experiment", "transition_id", "policy", "approval_id")}
    return sa.Index(name, *columns, unique=unique, mysql_length=long)


schema_table = sa.Table(
    "redgov_schema", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("redgov_version", sa.String(32), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
)

scopes = sa.Table(
    "scopes", metadata,
    sa.Column("scope_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope_key", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", _NAME, nullable=False),
    sa.Column("tenant", _NAME),
    sa.Column("environment", _NAME),
    sa.Column("log_key", _TEXT, nullable=False),
)

cursors = sa.Table(
    "export_cursors", metadata,
    sa.Column("scope_id", sa.Integer, sa.ForeignKey("scopes.scope_id"), primary_key=True, autoincrement=False),
    sa.Column("last_ms", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("entries", sa.BigInteger, nullable=False),
    sa.Column("updated_at", _TIME, nullable=False),
)

log_entries = sa.Table(
    "log_entries", metadata,
    *_entry_key(),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("experiment", _NAME, nullable=False),
    sa.Column("record", _TEXT, nullable=False),
    sa.Column("rev", sa.BigInteger),
    sa.Column("etag", _ID),
    sa.Column("v", sa.BigInteger),
    sa.Column("from_state", _STATE),
    sa.Column("ap", _ID),
    sa.Column("extra", _TEXT),
    # the archive's history reads: one experiment's entries in log order, up to a cut
    _name_index("ix_log_entries_experiment", "scope_id", "experiment", "entry_ms", "entry_seq"),
    sqlite_with_rowid=False,
)

state_transitions = sa.Table(
    "state_transitions", metadata,
    *_entry_key(),
    sa.Column("transition_id", _NAME, nullable=False),
    *_scope_columns(),
    sa.Column("from_state", _STATE),
    sa.Column("to_state", _STATE, nullable=False),
    sa.Column("timestamp", _TIME, nullable=False),
    sa.Column("actor", _NAME),
    sa.Column("reason", _TEXT),
    sa.Column("metadata", _JSON),
    sa.Column("revision", sa.BigInteger),
    sa.Column("approval_entry", _ID),
    _name_index("ix_state_transitions_experiment", "scope_id", "experiment"),
    _name_index("ix_state_transitions_transition_id", "scope_id", "transition_id"),
    sa.Index("ix_state_transitions_timestamp", "timestamp"),
    sqlite_with_rowid=False,
)

approval_records = sa.Table(
    "approval_records", metadata,
    *_entry_key(),
    sa.Column("approval_id", _NAME, nullable=False),
    *_scope_columns(),
    sa.Column("transition_id", _NAME),
    sa.Column("from_state", _STATE),
    sa.Column("to_state", _STATE, nullable=False),
    sa.Column("approved", sa.Boolean, nullable=False),
    sa.Column("approver", _NAME),
    sa.Column("reason", _TEXT),
    sa.Column("timestamp", _TIME, nullable=False),
    sa.Column("gate", _NAME, nullable=False),
    sa.Column("metadata", _JSON),
    _name_index("ix_approval_records_experiment", "scope_id", "experiment"),
    _name_index("ix_approval_records_transition_id", "scope_id", "transition_id"),
    sa.Index("ix_approval_records_timestamp", "timestamp"),
    sqlite_with_rowid=False,
)

configuration_versions = sa.Table(
    "configuration_versions", metadata,
    *_entry_key(),
    sa.Column("experiment_key", sa.String(32), nullable=False),
    *_scope_columns(),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("configuration", _JSON),
    sa.Column("configuration_hash", sa.String(64), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("created_by", _NAME),
    sa.Column("description", _TEXT),
    sa.Column("lifecycle_state", _STATE),
    sa.Column("is_rollback", sa.Boolean, nullable=False),
    sa.Column("rolled_back_from", sa.BigInteger),
    sa.Column("metadata", _JSON),
    sa.Column("revision", sa.BigInteger),
    sa.UniqueConstraint("scope_id", "experiment_key", "version", name="uq_configuration_versions_number"),
    _name_index("ix_configuration_versions_experiment", "scope_id", "experiment"),
    sa.Index("ix_configuration_versions_created_at", "created_at"),
    sqlite_with_rowid=False,
)

policy_evaluations = sa.Table(
    "policy_evaluations", metadata,
    *_entry_key(),
    sa.Column("evaluation_id", _NAME, nullable=False),
    *_scope_columns(),
    sa.Column("policy", _NAME, nullable=False),
    sa.Column("compliant", sa.Boolean, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("reason", _TEXT),
    sa.Column("timestamp", _TIME, nullable=False),
    sa.Column("current_state", _STATE),
    sa.Column("target_state", _STATE),
    sa.Column("metadata", _JSON),
    # the latest evaluation of one policy: the last entry of (scope, experiment, policy)
    _name_index("ix_policy_evaluations_experiment", "scope_id", "experiment", "policy", "entry_ms", "entry_seq"),
    sa.Index("ix_policy_evaluations_timestamp", "timestamp"),
    sqlite_with_rowid=False,
)

rules_versions = sa.Table(
    "rules_versions", metadata,
    *_entry_key(),
    sa.Column("tenant", _NAME),
    sa.Column("environment", _NAME),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("definition", _JSON, nullable=False),
    sa.Column("rules_hash", sa.String(80), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("created_by", _NAME),
    sa.Column("reason", _TEXT),
    sa.UniqueConstraint("scope_id", "version", name="uq_rules_versions_number"),
    sa.Index("ix_rules_versions_created_at", "created_at"),
    sqlite_with_rowid=False,
)

experiment_states = sa.Table(
    "experiment_states", metadata,
    sa.Column("scope_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("experiment_key", sa.String(32), primary_key=True),
    *_scope_columns(),
    sa.Column("state", _STATE, nullable=False),
    sa.Column("config_version", sa.BigInteger, nullable=False),
    sa.Column("last_modified", _TIME, nullable=False),
    sa.Column("last_modified_by", _NAME),
    sa.Column("etag", _ID, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("metadata", _JSON),
    sa.Column("entry_ms", sa.BigInteger, nullable=False),
    sa.Column("entry_seq", sa.BigInteger, nullable=False),
    _name_index("ix_experiment_states_experiment", "scope_id", "experiment"),
    sqlite_with_rowid=False,
)

#: the entity table each entry kind also goes to (states are folded, not listed)
ENTITY_TABLES: dict[str, sa.Table] = {
    "transition": state_transitions,
    "approval": approval_records,
    "version": configuration_versions,
    "policy": policy_evaluations,
    "rules": rules_versions,
}


# -- helpers ---------------------------------------------------------------------


def experiment_key(name: str) -> str:
    """The fixed-length key standing for an experiment name in unique indexes."""
    return hashlib.blake2b(name.encode("utf-8"), digest_size=16).hexdigest()


def scope_key(scope: Scope) -> str:
    """The fixed-length key standing for a scope (its key tag) in the ``scopes`` table."""
    return hashlib.sha256(scope.tag.encode("utf-8")).hexdigest()


def split_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``<ms>-<seq>`` as two integers (a bare ``<ms>`` is ``<ms>-0``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def join_id(ms: int, seq: int) -> str:
    """The stream entry id of (ms, seq)."""
    return f"{ms}-{seq}"


def utc(value: datetime) -> datetime:
    """A datetime read back from SQL as aware UTC (SQLite returns naive ones)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: The order the scripts write an entry's extra fields in (transition: from rev etag ap; version:
#: v from rev etag; state: rev etag; approval, policy: from), so a restored entry reads back the same.
_FIELD_ORDER = ("v", "from_state", "rev", "etag", "ap")
_FIELD_NAME = {"from_state": "from"}
KNOWN_FIELDS = frozenset({"k", "x", "r", "rev", "etag", "v", "from", "ap"})


def entry_fields(row: Mapping[Any, Any]) -> dict[str, bytes]:
    """The stream fields of an entry, rebuilt from its ``log_entries`` row, in the scripts' order."""
    kind = row["kind"]
    fields = {"k": kind.encode(), "x": row["experiment"].encode("utf-8"), "r": row["record"].encode("utf-8")}
    for column in _FIELD_ORDER:
        value = row[column]
        if value is not None:
            fields[_FIELD_NAME.get(column, column)] = str(value).encode("utf-8")
    if row["extra"]:
        for name, value in msgspec.json.decode(row["extra"], type=dict[str, str]).items():
            fields[name] = value.encode("utf-8")
    return fields


def state_from_row(row: Mapping[Any, Any], tenant: str | None, environment: str | None) -> Entry:
    """An ``experiment_states`` row as a state Entry (the base the next fold starts from)."""
    from ..records import ExperimentState, LifecycleState

    state = ExperimentState(
        experiment=row["experiment"], state=LifecycleState(row["state"]), config_version=row["config_version"],
        last_modified=utc(row["last_modified"]), last_modified_by=row["last_modified_by"], etag=row["etag"],
        revision=row["revision"], metadata=row["metadata"] or {}, tenant=tenant, environment=environment)
    return Entry(join_id(row["entry_ms"], row["entry_seq"]), "state", row["experiment"], state, state.revision,
                 state.etag)
