"""Sans-IO core shared by the sync and asyncio backplanes.

For each operation a function here validates the input, builds a ``Call``
(script name or plain command, keys, arguments) and knows how to turn the
reply, or the refusal, into a typed result. The shells only run Calls::

    call = core.get_state(...)
    try:
        reply = <run call on the client>          # sync or awaited
    except ResponseError as exc:
        return call.failed(exc)
    return call.parse(reply)

Nothing in this module performs I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from redis.exceptions import ResponseError

from .errors import ConflictError, CorruptDataError, RedgovError, ValidationError, map_reply_error
from .keys import Scope
from .records import (
    DECODERS,
    ENCODER,
    KIND_OF,
    METADATA_DECODER,
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    SaveResult,
    StateTransition,
)
from .scripts import load_scripts

T = TypeVar("T")
R = TypeVar("R", bound=msgspec.Struct)

#: Largest encoded record accepted (bytes). Redis would take more; a
#: governance record this large is a bug in the caller, not data.
MAX_RECORD_BYTES = 1024 * 1024
#: Longest experiment name, tenant, environment, policy or id (characters).
MAX_NAME_LENGTH = 1024
#: With retain_history set, a process trims a scope log after this many of its writes to it.
TRIM_EVERY = 64
#: Scripts that append to a scope log, and where their keys name it: the key itself
#: (position, False) or the scope tag the script appends ":log" to (position, True).
WRITE_SCRIPTS: dict[str, tuple[int, bool]] = {
    "save_state": (1, True), "transition": (1, True), "append_transition": (0, False),
    "append_approval": (0, False), "append_version": (0, False), "append_policy_evaluation": (0, False),
    "create": (1, False), "approve": (1, False), "create_version": (0, False), "record_evaluations": (1, False),
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Call(Generic[T]):
    """One round trip: a Lua script (``script``) or a plain command (``args``)."""

    __slots__ = ("args", "keys", "log", "parse", "recover", "script")

    def __init__(self, keys: tuple[str, ...], args: tuple[Any, ...], parse: Callable[[Any], T],
                 script: str | None = None, recover: Callable[[RedgovError], T] | None = None,
                 log: str | None = None) -> None:
        self.keys = keys
        self.args = args
        self.parse = parse
        self.script = script
        #: turns a mapped refusal into a result instead of raising it
        self.recover = recover
        #: the scope log this call appends to (writes only)
        self.log = log

    def failed(self, exc: ResponseError) -> T:
        """Map a server error reply; recover from it or raise it."""
        mapped = map_reply_error(exc, self.keys)
        if mapped is exc:
            raise exc
        if self.recover is not None and isinstance(mapped, RedgovError):
            return self.recover(mapped)
        raise mapped from exc

    def __repr__(self) -> str:
        return f"Call(script={self.script!r}, keys={self.keys!r})"


def settle(call: Call[Any], reply: Any) -> Any:
    """A pipelined reply as a result, or the RedgovError it stands for."""
    try:
        if isinstance(reply, ResponseError):
            return call.failed(reply)
        return call.parse(reply)
    except RedgovError as error:
        return error


# -- validation ---------------------------------------------------------------


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value:
        raise ValidationError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} {value!r} is not valid Unicode text") from None
    return value


def check_scope_part(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string or None, got {type(value).__name__} {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} {value!r} is not valid Unicode text") from None
    return value


def check_state(value: object, what: str = "state") -> LifecycleState:
    try:
        return LifecycleState(value if isinstance(value, str) else repr(value))
    except ValueError:
        names = ", ".join(s.value for s in LifecycleState)
        raise ValidationError(f"{what} {value!r} is not one of {names}") from None


def _utc(value: datetime) -> datetime:
    return value if value.utcoffset() == timedelta(0) and value.tzinfo is UTC else value.astimezone(UTC)


_DATETIME_FIELDS: dict[type[Any], tuple[str, ...]] = {
    kind: tuple(f.name for f in msgspec.structs.fields(kind) if "datetime" in str(f.type))
    for kind in KIND_OF
}


def encode_record(record: R) -> tuple[R, bytes]:
    """Validate a record completely and encode it; returns (normalized record, bytes).

    The record is encoded and decoded again with its typed decoder, which checks
    every field's type, enum value and timezone; datetimes are normalized to UTC.
    """
    kind = KIND_OF.get(type(record))
    if kind is None:
        raise ValidationError(f"expected a redgov record, got {type(record).__name__}")
    check_name(getattr(record, "experiment"), "experiment")
    check_scope_part(getattr(record, "tenant"), "tenant")
    check_scope_part(getattr(record, "environment"), "environment")
    try:
        data = ENCODER.encode(record)
    except (msgspec.EncodeError, TypeError, OverflowError, UnicodeEncodeError) as exc:
        raise ValidationError(f"{_label(record)} cannot be encoded: {exc}") from None
    try:
        checked: R = DECODERS[kind].decode(data)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{_label(record)} is invalid: {exc}") from None
    changes = {
        name: _utc(value)
        for name in _DATETIME_FIELDS[type(record)]
        if (value := getattr(checked, name)).tzinfo is not UTC
    }
    if changes:
        checked = msgspec.structs.replace(checked, **changes)
        data = ENCODER.encode(checked)
    if len(data) > MAX_RECORD_BYTES:
        raise ValidationError(f"{_label(record)} is {len(data)} bytes encoded; the limit is {MAX_RECORD_BYTES}")
    return checked, data


def _label(record: Any) -> str:
    return f"{type(record).__name__} for experiment {record.experiment!r}"


def new_etag() -> str:
    return secrets.token_hex(12)


def to_micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


# -- reply decoding -----------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _fields(raw: Sequence[Any] | Mapping[Any, Any]) -> dict[str, bytes]:
    if isinstance(raw, Mapping):
        return {_text(k): v for k, v in raw.items()}
    return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}


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


def decode_fields(entry_id: str, fields: dict[str, bytes], log_key: str) -> Entry:
    """Decode one entry's fields; fields the script decided override the record's.

    A script adds fields to a record written from Python: ``rev``/``etag`` (a
    state write), ``v`` (a version number), ``from`` (the state the experiment
    was in: from_state, current_state or lifecycle_state) and, on reads,
    ``tid`` (the transition that consumed an approval).
    """
    try:
        kind = _text(fields["k"])
        record = DECODERS[kind].decode(fields["r"])
        changes: dict[str, Any] = {}
        revision = int(fields["rev"]) if "rev" in fields else 0
        etag = _text(fields["etag"]) if revision else ""
        if kind == "state":
            changes["revision"] = revision
            changes["etag"] = etag
        elif kind == "version":
            changes["version"] = int(fields["v"])
        source = fields.get("from")
        if source is not None:
            name = {"transition": "from_state", "approval": "from_state", "policy": "current_state",
                    "version": "lifecycle_state"}[kind]
            changes[name] = LifecycleState(_text(source))
        if "tid" in fields and kind == "approval":
            changes["transition_id"] = _text(fields["tid"])
        if changes:
            record = msgspec.structs.replace(record, **changes)
        return Entry(entry_id, kind, _text(fields["x"]), record, revision, etag)
    except (KeyError, ValueError, msgspec.DecodeError) as exc:
        raise CorruptDataError(f"log entry {entry_id} of {log_key} cannot be decoded: {exc!r}") from None


def decode_entry(raw: Sequence[Any], log_key: str) -> Entry | None:
    """A read script's ``{id, {field, value, ...}}``; None for a trimmed entry."""
    entry_id = _text(raw[0])
    if not raw[1]:
        return None
    return decode_fields(entry_id, _fields(raw[1]), log_key)




def fold_states(
    found: Sequence[Entry],
    experiment: str,
    tenant: str | None,
    environment: str | None,
    until: datetime | None = None,
) -> list[ExperimentState]:
    """Every state an experiment has had, folded from its state-writing entries alone.

    A ``state`` entry is a whole snapshot; a ``transition`` sets the state, time and
    actor; a followed ``version`` sets config_version, time and actor. Each carries
    the revision and etag of its write. ``until`` stops before later entries.
    """
    out: list[ExperimentState] = []
    current: ExperimentState | None = None
    for entry in found:
        record = entry.record
        if isinstance(record, ExperimentState):
            moment, new = record.last_modified, record
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


class Archive(Protocol):
    """Where entries trimmed from a scope log can still be read (the SQL copy)."""

    def fetch(self, log_key: str, ids: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """The fields of each entry found, by entry id."""
        ...


def entries_with_archive(reply: Any, log_key: str, archive: Archive | None) -> list[Entry]:
    """Decode a read script's entries; entries trimmed from the log come from the archive."""
    out: list[Entry | None] = []
    missing: dict[str, int] = {}
    for raw in reply:
        entry = decode_entry(raw, log_key)
        if entry is None:
            missing[_text(raw[0])] = len(out)
        out.append(entry)
    if missing and archive is not None:
        found = archive.fetch(log_key, list(missing))
        for entry_id, fields in found.items():
            if entry_id in missing:
                out[missing[entry_id]] = decode_fields(entry_id, dict(fields), log_key)
    return [e for e in out if e is not None]


def _records(kind: type[T], log_key: str, archive: Archive | None = None) -> Callable[[Any], list[T]]:
    def parse(reply: Any) -> list[T]:
        out: list[T] = []
        for entry in entries_with_archive(reply, log_key, archive):
            if not isinstance(entry.record, kind):
                raise CorruptDataError(
                    f"log entry {entry.id} of {log_key} is a {entry.kind}, expected {kind.__name__}"
                )
            out.append(entry.record)
        return out

    return parse


def _one(kind: type[T], log_key: str, archive: Archive | None = None) -> Callable[[Any], T | None]:
    many = _records(kind, log_key, archive)

    def one(reply: Any) -> T | None:
        found = many(reply)
        return found[0] if found else None

    return one


def decode_state_hash(
    raw: Mapping[Any, Any] | Sequence[Any],
    key: str,
    experiment: str,
    tenant: str | None,
    environment: str | None,
) -> ExperimentState | None:
    fields: Mapping[Any, Any] = raw if isinstance(raw, Mapping) else _fields(raw)
    if not fields:
        return None
    get = fields.get
    try:
        by = get(b"b") or get("b")
        return ExperimentState(
            experiment=experiment,
            state=LifecycleState(_text(get(b"s") or fields["s"])),
            config_version=int(get(b"v") or fields["v"]),
            last_modified=from_micros(int(get(b"t") or fields["t"])),
            last_modified_by=_text(by) if by else None,
            etag=_text(get(b"e") or fields["e"]),
            revision=int(get(b"r") or fields["r"]),
            metadata=METADATA_DECODER.decode(get(b"m") or fields["m"]),
            tenant=tenant,
            environment=environment,
        )
    except (KeyError, ValueError, TypeError, msgspec.DecodeError) as exc:
        raise CorruptDataError(f"state hash {key} cannot be decoded: {exc!r}") from None


# -- operations ---------------------------------------------------------------


@lru_cache(maxsize=4096)
def _scope(prefix: str, tenant: str | None, environment: str | None) -> Scope:
    return Scope(prefix, tenant, environment)


class Core:
    """Builds the Calls of every Backplane operation for one key prefix."""

    def __init__(self, prefix: str = "gov", *, optimistic_concurrency: bool = True,
                 archive: Archive | None = None, retain_history: int | None = None) -> None:
        self.prefix = check_name(prefix, "prefix")
        self.optimistic_concurrency = optimistic_concurrency
        if retain_history is not None and (isinstance(retain_history, bool) or not isinstance(retain_history, int)
                                           or retain_history < 1):
            raise ValidationError(f"retain_history must be a positive number of entries or None, got {retain_history!r}")
        #: keep about this many entries per scope log (None: keep everything)
        self.retain_history = retain_history
        self._writes: dict[str, int] = {}
        #: reads entries trimmed from the logs (None: trimmed entries are skipped)
        self.archive = archive
        self.specs = load_scripts()

    def scope(self, tenant: str | None, environment: str | None) -> Scope:
        check_scope_part(tenant, "tenant")
        check_scope_part(environment, "environment")
        return _scope(self.prefix, tenant, environment)

    def _script(self, name: str, keys: tuple[str, ...], args: tuple[Any, ...], parse: Callable[[Any], T],
                recover: Callable[[RedgovError], T] | None = None) -> Call[T]:
        self.specs[name].check_keys(len(keys))
        log = None
        where = WRITE_SCRIPTS.get(name)
        if where is not None:
            log = keys[where[0]] + ":log" if where[1] else keys[where[0]]
        return Call(keys=keys, args=args, parse=parse, script=name, recover=recover, log=log)

    def after_write(self, call: Call[Any]) -> Call[int] | None:
        """Every TRIM_EVERY writes to a scope log, the XTRIM keeping it near retain_history entries."""
        if self.retain_history is None or call.log is None:
            return None
        count = self._writes.get(call.log, 0) + 1
        self._writes[call.log] = count % TRIM_EVERY
        if count < TRIM_EVERY:
            return None
        return Call((call.log,), ("XTRIM", call.log, "MAXLEN", "~", self.retain_history), int)

    # state

    def get_state(self, experiment: str, tenant: str | None, environment: str | None) -> Call[ExperimentState | None]:
        check_name(experiment, "experiment")
        key = self.scope(tenant, environment).experiment(experiment).state

        def parse(reply: Any) -> ExperimentState | None:
            return decode_state_hash(reply, key, experiment, tenant, environment)

        return Call(keys=(key,), args=("HGETALL", key), parse=parse)

    def save_state(self, state: ExperimentState, expected_etag: str | None) -> Call[SaveResult]:
        if not isinstance(state, ExperimentState):
            raise ValidationError(f"save_state takes an ExperimentState, got {type(state).__name__}")
        if expected_etag is not None and (not isinstance(expected_etag, str) or not expected_etag):
            raise ValidationError(f"expected_etag must be a non-empty string or None, got {expected_etag!r}")
        etag = new_etag()
        state, record = encode_record(msgspec.structs.replace(state, etag=etag, revision=0))
        if state.last_modified_by == "":
            raise ValidationError("last_modified_by must be a non-empty string or None")
        if state.config_version < 0:
            raise ValidationError(f"config_version must be >= 0, got {state.config_version}")
        scope = self.scope(state.tenant, state.environment)
        exp = scope.experiment(state.experiment)
        if not self.optimistic_concurrency:
            mode = "overwrite"
        else:
            mode = "create" if expected_etag is None else "match"
        keys = (exp.base, scope.tag)
        args = (
            mode,
            expected_etag or "",
            etag,
            state.experiment,
            state.state.value,
            state.config_version,
            to_micros(state.last_modified),
            state.last_modified_by or "",
            ENCODER.encode(state.metadata),
            record,
        )

        def parse(reply: Any) -> SaveResult:
            stored = msgspec.structs.replace(state, revision=int(reply[0]))
            return SaveResult(ok=True, state=stored, etag=etag, conflict=False, error=None)

        def recover(error: RedgovError) -> SaveResult:
            if isinstance(error, ConflictError):
                return SaveResult(ok=False, state=None, etag=None, conflict=True, error=str(error))
            raise error

        return self._script("save_state", keys, args, parse, recover)

    # history appends

    def append_transition(self, transition: StateTransition) -> Call[StateTransition]:
        _expect(transition, StateTransition, "append_transition")
        transition, record = encode_record(transition)
        check_name(transition.transition_id, "transition_id")
        scope = self.scope(transition.tenant, transition.environment)
        keys = (scope.log, scope.experiment(transition.experiment).transitions, scope.tids)
        args = (transition.experiment, transition.transition_id, record)
        return self._script("append_transition", keys, args, lambda _reply: transition)

    def append_approval(self, approval: ApprovalRecord) -> Call[ApprovalRecord]:
        _expect(approval, ApprovalRecord, "append_approval")
        approval, record = encode_record(approval)
        scope = self.scope(approval.tenant, approval.environment)
        keys: tuple[str, ...] = (scope.log, scope.experiment(approval.experiment).approvals)
        if approval.transition_id is not None:
            check_name(approval.transition_id, "transition_id")
            keys += (scope.transition_approvals(approval.transition_id),)
        return self._script("append_approval", keys, (approval.experiment, record), lambda _reply: approval)

    def append_version(self, version: ConfigurationVersion) -> Call[ConfigurationVersion]:
        _expect(version, ConfigurationVersion, "append_version")
        if isinstance(version.version, bool) or not isinstance(version.version, int) or version.version < 1:
            raise ValidationError(f"version number must be an integer >= 1, got {version.version!r}")
        version, record = encode_record(version)
        return self._version_call(version, record, version.version)

    def add_next_version(self, version: ConfigurationVersion) -> Call[ConfigurationVersion]:
        """Append a version whose number the script assigns (latest + 1)."""
        _expect(version, ConfigurationVersion, "add_next_version")
        version, record = encode_record(msgspec.structs.replace(version, version=0))
        return self._version_call(version, record, 0)

    def _version_call(self, version: ConfigurationVersion, record: bytes, number: int) -> Call[ConfigurationVersion]:
        scope = self.scope(version.tenant, version.environment)
        keys = (scope.log, scope.experiment(version.experiment).versions)

        def parse(reply: Any) -> ConfigurationVersion:
            return msgspec.structs.replace(version, version=int(reply[0]))

        return self._script("append_version", keys, (version.experiment, number, record), parse)

    def append_policy_evaluation(self, evaluation: PolicyEvaluation) -> Call[PolicyEvaluation]:
        _expect(evaluation, PolicyEvaluation, "append_policy_evaluation")
        evaluation, record = encode_record(evaluation)
        check_name(evaluation.policy, "policy")
        scope = self.scope(evaluation.tenant, evaluation.environment)
        exp = scope.experiment(evaluation.experiment)
        keys = (scope.log, exp.policies, exp.policy_latest)
        args = (evaluation.experiment, evaluation.policy, record)
        return self._script("append_policy_evaluation", keys, args, lambda _reply: evaluation)

    # history reads

    def _read_list(self, list_key: str, scope: Scope, kind: type[T]) -> Call[list[T]]:
        return self._script("read_list", (list_key, scope.log), (), _records(kind, scope.log, self.archive))

    def transitions(self, experiment: str, tenant: str | None, environment: str | None) -> Call[list[StateTransition]]:
        scope = self.scope(tenant, environment)
        key = scope.experiment(check_name(experiment, "experiment")).transitions
        return self._read_list(key, scope, StateTransition)

    def state_writes(self, experiment: str, tenant: str | None, environment: str | None,
                     until: datetime | None = None) -> Call[list[ExperimentState]]:
        scope = self.scope(tenant, environment)
        key = scope.experiment(check_name(experiment, "experiment")).states

        def parse(reply: Any) -> list[ExperimentState]:
            found = entries_with_archive(reply, scope.log, self.archive)
            return fold_states(found, experiment, tenant, environment, until)

        return self._script("read_list", (key, scope.log), (), parse)

    def approvals(self, experiment: str, tenant: str | None, environment: str | None) -> Call[list[ApprovalRecord]]:
        scope = self.scope(tenant, environment)
        exp = scope.experiment(check_name(experiment, "experiment"))
        return self._script("read_list", (exp.approvals, scope.log, exp.links), (),
                            _records(ApprovalRecord, scope.log, self.archive))

    def approvals_for_transition(self, transition_id: str, tenant: str | None, environment: str | None) -> Call[list[ApprovalRecord]]:
        scope = self.scope(tenant, environment)
        key = scope.transition_approvals(check_name(transition_id, "transition_id"))
        many = _records(ApprovalRecord, scope.log, self.archive)

        def parse(reply: Any) -> list[ApprovalRecord]:
            # a consumed manual approval was recorded before its transition existed
            return [a if a.transition_id else msgspec.structs.replace(a, transition_id=transition_id)
                    for a in many(reply)]

        return self._script("read_list", (key, scope.log), (), parse)

    def policy_evaluations(self, experiment: str, tenant: str | None, environment: str | None) -> Call[list[PolicyEvaluation]]:
        scope = self.scope(tenant, environment)
        key = scope.experiment(check_name(experiment, "experiment")).policies
        return self._read_list(key, scope, PolicyEvaluation)

    def latest_policy_evaluation(self, experiment: str, policy: str, tenant: str | None, environment: str | None) -> Call[PolicyEvaluation | None]:
        scope = self.scope(tenant, environment)
        key = scope.experiment(check_name(experiment, "experiment")).policy_latest
        check_name(policy, "policy")
        parse = _one(PolicyEvaluation, scope.log, self.archive)
        return self._script("read_hash_entry", (key, scope.log), (policy,), parse)

    def _versions_keys(self, experiment: str, tenant: str | None, environment: str | None) -> tuple[str, str]:
        scope = self.scope(tenant, environment)
        return scope.experiment(check_name(experiment, "experiment")).versions, scope.log

    def versions(self, experiment: str, tenant: str | None, environment: str | None) -> Call[list[ConfigurationVersion]]:
        keys = self._versions_keys(experiment, tenant, environment)
        return self._script("read_versions", keys, ("all",), _records(ConfigurationVersion, keys[1], self.archive))

    def latest_version(self, experiment: str, tenant: str | None, environment: str | None) -> Call[ConfigurationVersion | None]:
        keys = self._versions_keys(experiment, tenant, environment)
        return self._script("read_versions", keys, ("latest",), _one(ConfigurationVersion, keys[1], self.archive))

    def version(self, experiment: str, number: int, tenant: str | None, environment: str | None) -> Call[ConfigurationVersion | None]:
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValidationError(f"version number must be an integer, got {number!r}")
        keys = self._versions_keys(experiment, tenant, environment)
        return self._script("read_versions", keys, (number,), _one(ConfigurationVersion, keys[1], self.archive))


def _expect(value: object, kind: type[Any], operation: str) -> None:
    if not isinstance(value, kind):
        raise ValidationError(f"{operation} takes a {kind.__name__}, got {type(value).__name__}")
