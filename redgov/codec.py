"""Record bytes, log entries and states: encoding for the scripts, decoding of what Redis returns.

A stored record is the msgspec JSON of the record without its ``experiment``
field (the log entry's ``x`` field holds the name once) and without the fields
that hold their default. Fields a script decides ride on the log entry beside
the record: ``rev``/``etag`` (a state write), ``v`` (a version number),
``from`` (the state the experiment was in: from_state, current_state or
lifecycle_state), ``ap`` (the approval a transition consumed) and, on reads,
``tid`` (the transition that consumed an approval). Readers apply them over
the record, so an entry is the complete record.

Every decoding failure is a ``CorruptDataError`` naming the key. Nothing in
this module performs I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

import msgspec

from .errors import CorruptDataError, ValidationError
from .records import (
    DECODERS,
    ENCODER,
    KIND_OF,
    METADATA_DECODER,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    StateTransition,
)
from .validate import check_name, check_scope_part

__all__ = ["Entry", "MAX_RECORD_BYTES", "decode_entry", "decode_fields", "decode_state_hash", "encode_record",
           "fold_states", "from_micros", "from_millis", "stored", "text", "to_micros"]

R = TypeVar("R", bound=msgspec.Struct)

#: Largest encoded record accepted (bytes). Redis would take more; a governance
#: record this large is a bug in the caller, not data.
MAX_RECORD_BYTES = 1024 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KINDS = frozenset(DECODERS)
_FROM_FIELD = {"transition": "from_state", "approval": "from_state", "policy": "current_state",
               "version": "lifecycle_state"}


def text(value: bytes | str) -> str:
    """A reply value as str (replies are bytes: clients never decode responses)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def pairs(raw: Sequence[Any] | Mapping[Any, Any]) -> dict[str, bytes]:
    """A flat ``[field, value, ...]`` reply (or a RESP3 map) as a dict keyed by str."""
    if isinstance(raw, Mapping):
        return {text(k): v for k, v in raw.items()}
    return {text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}


def to_micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def from_millis(value: int) -> datetime:
    """An epoch-milliseconds server time (TIME in a script) as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=value)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


_DATETIME_FIELDS: dict[type[Any], tuple[str, ...]] = {
    kind: tuple(f.name for f in msgspec.structs.fields(kind) if "datetime" in str(f.type))
    for kind in KIND_OF
}


@lru_cache(maxsize=4096)
def _name_json(experiment: str) -> bytes:
    return ENCODER.encode(experiment)


def stored(record: msgspec.Struct) -> bytes:
    """The bytes a script stores for ``record``: its JSON without the leading experiment field.

    Raises ValidationError when the encoding is over ``MAX_RECORD_BYTES`` (1 MiB), before anything is sent.
    """
    data = ENCODER.encode(record)
    if len(data) > MAX_RECORD_BYTES:
        raise ValidationError(f"{_label(record)} is {len(data)} bytes encoded; the limit is {MAX_RECORD_BYTES} "
                              "(nothing was written)")
    head = b'{"experiment":' + _name_json(record.experiment) + b","  # type: ignore[attr-defined]
    if not data.startswith(head):  # pragma: no cover - experiment is every record's first field
        raise AssertionError(f"{type(record).__name__} does not encode its experiment first")
    return b"{" + data[len(head):]


def encode_record(record: R) -> tuple[R, bytes]:
    """Validate a caller's record completely and encode it for storage: (normalized record, bytes).

    The record is encoded and decoded again with its typed decoder, which checks
    every field's type, enum value and timezone; datetimes are normalized to UTC.
    """
    kind = KIND_OF.get(type(record))
    if kind is None:
        raise ValidationError(f"expected a redgov record, got {type(record).__name__}")
    fields: Any = record  # every record kind has these fields; R (bound to msgspec.Struct) does not say so
    check_name(fields.experiment, "experiment")
    check_scope_part(fields.tenant, "tenant")
    check_scope_part(fields.environment, "environment")
    from .validate import check_data

    check_data(fields.metadata, "metadata")
    if isinstance(record, ConfigurationVersion):
        check_data(record.configuration, "configuration")
    try:
        data = ENCODER.encode(record)
    except (msgspec.EncodeError, TypeError, OverflowError, UnicodeEncodeError, ValueError) as exc:
        raise ValidationError(f"{_label(record)} cannot be encoded: {exc}") from None
    try:
        checked: R = DECODERS[kind].decode(data)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{_label(record)} is invalid: {exc}") from None
    changes = {
        name: _utc(value)
        for name in _DATETIME_FIELDS[type(record)]
        if (value := getattr(checked, name)) is not None and value.tzinfo is not UTC
    }
    if changes:
        checked = msgspec.structs.replace(checked, **changes)
        data = ENCODER.encode(checked)
    head = b'{"experiment":' + _name_json(checked.experiment) + b","  # type: ignore[attr-defined]
    data = b"{" + data[len(head):]
    if len(data) > MAX_RECORD_BYTES:
        raise ValidationError(f"{_label(record)} is {len(data)} bytes encoded; the limit is {MAX_RECORD_BYTES}")
    return checked, data


def _label(record: Any) -> str:
    return f"{type(record).__name__} for experiment {record.experiment!r}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: its id, kind, experiment and decoded record."""

    id: str
    kind: str
    experiment: str
    record: Any
    #: the revision and etag of the state write this entry made (0 and "" when none)
    revision: int = 0
    etag: str = ""


def decode_fields(entry_id: str, fields: Mapping[str, bytes], log_key: str, *,
                  tenant: str | None = None, environment: str | None = None) -> Entry:
    """Decode one entry's fields; fields the script decided override the record's."""
    try:
        kind = text(fields["k"])
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        experiment_raw = fields["x"]
        experiment = text(experiment_raw)
        raw = fields["r"]
        if not raw.startswith(b"{"):
            raise ValueError("the record is not a JSON object")
        data = b'{"experiment":' + _name_json(experiment) + (b"," + raw[1:] if raw != b"{}" else b"}")
        record = DECODERS[kind].decode(data)
        changes: dict[str, Any] = {}
        rev = fields.get("rev")
        revision = int(rev) if rev is not None else 0
        etag = text(fields["etag"]) if rev is not None else ""
        if kind == "state":
            changes["revision"] = revision
            changes["etag"] = etag
        elif kind == "transition" and rev is not None:
            changes["revision"] = revision
            changes["etag"] = etag
        elif kind == "version":
            changes["version"] = int(fields["v"])
        source = fields.get("from")
        if source is not None:
            changes[_FROM_FIELD[kind]] = LifecycleState(text(source))
        if kind == "approval" and "tid" in fields:
            changes["transition_id"] = text(fields["tid"])
        if kind == "approval" and "vu" in fields:  # valid until, server ms (approve.lua)
            changes["valid_until"] = from_millis(int(fields["vu"]))
        if kind == "approval" and "cv" in fields:  # the configuration version when given (approve.lua)
            changes["config_version"] = int(fields["cv"])
        if kind == "approval" and "g" in fields:  # the gate that guards the move, judged by approve.lua
            changes["gate"] = text(fields["g"])
        if kind == "rules":  # the version number publish_rules.lua gave it
            changes["version"] = int(fields["n"])
        if tenant is not None and record.tenant is None:
            changes["tenant"] = tenant
        if environment is not None and record.environment is None:
            changes["environment"] = environment
        if changes:
            record = msgspec.structs.replace(record, **changes)
        return Entry(entry_id, kind, experiment, record, revision, etag)
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError, msgspec.DecodeError) as exc:
        raise CorruptDataError(f"log entry {entry_id} of {log_key} cannot be decoded: {exc!r}") from None


def decode_entry(raw: Sequence[Any], log_key: str) -> Entry | None:
    """A script's ``{id, {field, value, ...}}``; None for an entry no longer in the log."""
    try:
        entry_id = text(raw[0])
        fields = raw[1]
    except (IndexError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"an entry of {log_key} cannot be decoded: {exc!r}") from None
    if not fields:
        return None
    try:
        decoded = pairs(fields)
    except (IndexError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"log entry {entry_id} of {log_key} cannot be decoded: {exc!r}") from None
    return decode_fields(entry_id, decoded, log_key)


_STATE_FIELDS = (b"s", b"v", b"t", b"b", b"m", b"e", b"r")


def decode_state_hash(values: Sequence[Any], key: str, experiment: str, tenant: str | None,
                      environment: str | None) -> ExperimentState | None:
    """The state from ``HMGET <state> s v t b m e r`` (None when the experiment has no state)."""
    if not values or values[0] is None:
        return None
    try:
        s, v, t, b, m, e, r = values
        return ExperimentState(
            experiment=experiment,
            state=LifecycleState(text(s)),
            config_version=int(v),
            last_modified=from_micros(int(t)),
            last_modified_by=text(b) if b else None,
            etag=text(e),
            revision=int(r),
            metadata=METADATA_DECODER.decode(m),
            tenant=tenant,
            environment=environment,
        )
    except (KeyError, ValueError, TypeError, OverflowError, UnicodeDecodeError, msgspec.DecodeError) as exc:
        raise CorruptDataError(f"state hash {key} cannot be decoded: {exc!r}") from None


def state_fields() -> tuple[bytes, ...]:
    """The fields ``decode_state_hash`` reads, in its order."""
    return _STATE_FIELDS


def decode_base(fields: Mapping[str, bytes], key: str, experiment: str, tenant: str | None,
                environment: str | None) -> ExperimentState | None:
    """The state at the retention cut, from the base hash (None when no state write was removed)."""
    try:
        snap = fields.get("snap")
        state: ExperimentState | None = None
        if snap:
            state = decode_fields("base", {"k": b"state", "x": experiment.encode(), "r": snap,
                                           "rev": fields["rev"], "etag": fields["etag"]}, key).record
        elif "s" in fields:
            state = ExperimentState(experiment=experiment, state=LifecycleState(text(fields["s"])),
                                    revision=int(fields["rev"]), etag=text(fields["etag"]))
        if state is None:
            return None
        changes: dict[str, Any] = {"revision": int(fields["rev"]), "etag": text(fields["etag"]),
                                   "tenant": tenant, "environment": environment}
        if "s" in fields:
            changes["state"] = LifecycleState(text(fields["s"]))
        if "v" in fields:
            changes["config_version"] = int(fields["v"])
        if "t" in fields:
            changes["last_modified"] = _utc(datetime.fromisoformat(text(fields["t"]).replace("Z", "+00:00")))
        if "by" in fields:
            changes["last_modified_by"] = text(fields["by"]) or None
        return msgspec.structs.replace(state, **changes)
    except (KeyError, ValueError, TypeError, CorruptDataError) as exc:
        raise CorruptDataError(f"retention base {key} cannot be decoded: {exc!r}") from None


def fold_states(found: Sequence[Entry], experiment: str, tenant: str | None, environment: str | None,
                until: datetime | None = None, start: ExperimentState | None = None) -> list[ExperimentState]:
    """Every state an experiment has had, folded from its state-writing entries alone.

    A ``state`` entry is a whole snapshot; a ``transition`` sets the state, time and
    actor; a followed ``version`` sets config_version, time and actor. Each carries
    the revision and etag of its write. ``start`` is the state the fold begins from
    (the retention base); ``until`` stops before later entries.
    """
    out: list[ExperimentState] = []
    current = start
    for entry in found:
        record = entry.record
        if isinstance(record, ExperimentState):
            moment = record.last_modified
            new = msgspec.structs.replace(record, tenant=tenant, environment=environment)
        elif isinstance(record, StateTransition):
            moment = record.timestamp
            base = current or ExperimentState(experiment=experiment, state=record.to_state,
                                              tenant=tenant, environment=environment)
            new = msgspec.structs.replace(base, state=record.to_state, last_modified=moment,
                                          last_modified_by=record.actor, revision=entry.revision, etag=entry.etag)
        elif isinstance(record, ConfigurationVersion) and current is not None:
            moment = record.created_at
            new = msgspec.structs.replace(current, config_version=record.version, last_modified=moment,
                                          last_modified_by=record.created_by, revision=entry.revision,
                                          etag=entry.etag)
        else:
            raise CorruptDataError(f"log entry {entry.id} ({entry.kind}) cannot be folded into a state")
        if until is not None and moment > until:
            break
        out.append(new)
        current = new
    return out


def records_of(kind: type[R], entries: Sequence[Entry], log_key: str) -> list[R]:
    """The records of ``entries``, each required to be a ``kind``."""
    out: list[R] = []
    for entry in entries:
        if not isinstance(entry.record, kind):
            raise CorruptDataError(f"log entry {entry.id} of {log_key} is a {entry.kind}, expected {kind.__name__}")
        out.append(entry.record)
    return out


def checked(parse: Callable[[Any], R], what: str) -> Callable[[Any], R]:
    """``parse`` with a malformed reply reported as CorruptDataError naming ``what``."""

    def run(reply: Any) -> R:
        try:
            return parse(reply)
        except (IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"{what}: the reply cannot be decoded: {exc!r}") from None

    return run
