"""Sans-IO core shared by the sync and asyncio backplanes.

For each operation a method here validates the input and builds either one
``Call`` (a Lua script or a plain command, its keys and arguments, and how to
turn the reply or the refusal into a typed result) or a *plan*: a generator
that yields Calls (and ``ArchiveRead`` steps for the SQL copy) and receives
their results, for operations that take several round trips (a paged read, a
replay). The shells only run them::

    result = shell.run(core.get_state(...))          # one Call
    result = shell.drive(core.transitions(...))      # a plan

Every write carries an *operation id*, made once per logical call and sent
unchanged on every re-send (redgov's retries, a wrapped client's own Retry): the
script records it with the write's reply in the scope's ops bucket for a few
minutes, and a re-send answers with that reply instead of writing again.

Nothing in this module performs I/O.
"""

from __future__ import annotations

import binascii
import os
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from redis.exceptions import ResponseError

from .codec import (
    Entry,
    decode_base,
    decode_entry,
    decode_fields,
    decode_state_hash,
    encode_record,
    fold_states,
    pairs,
    records_of,
    state_fields,
    text,
    to_micros,
)
from .errors import ConflictError, HistoryTrimmedError, RedgovError, ValidationError, map_reply_error, raise_for_reply
from .keys import ExperimentKeys, Scope, check_prefix
from .records import (
    ENCODER,
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    PolicyEvaluation,
    SaveResult,
    StateTransition,
)
from .scripts import load_scripts
from .validate import check_name, check_scope_part

__all__ = ["Archive", "ArchiveRead", "Call", "Core", "Plan", "settle"]

T = TypeVar("T")

#: Entries returned by one read call at most, and list items it examines at most: a page costs
#: well under a millisecond of server time however long the history.
PAGE_ENTRIES = 200
PAGE_EXAMINE = 800
#: Every so many writes the ops bucket's expiry is set again even if this process set it already
#: (covers a bucket deleted and recreated within its minute).
EXPIRE_AGAIN_EVERY = 256


class Call(Generic[T]):
    """One round trip: a Lua script (``script``), a plain command (``args``), or a pipeline of plain
    commands (``batch``: ``args`` is a tuple of commands, the reply a list with a ResponseError in place
    of each refused command)."""

    __slots__ = ("args", "batch", "keys", "parse", "recover", "scope", "script", "state_key")

    def __init__(self, keys: tuple[str, ...], args: tuple[Any, ...], parse: Callable[[Any], T],
                 script: str | None = None, recover: Callable[[RedgovError], T] | None = None,
                 state_key: str | None = None, scope: Scope | None = None, batch: bool = False) -> None:
        self.keys = keys
        self.args = args
        self.parse = parse
        self.batch = batch
        self.script = script
        #: turns a mapped refusal into a result instead of raising it
        self.recover = recover
        #: the state hash this call may write (a local cache drops it when the call returns)
        self.state_key = state_key
        #: the scope a write goes to (its ACL is checked once before the first write there)
        self.scope = scope

    def failed(self, exc: ResponseError) -> T:
        """Map a server error reply; recover from it or raise it."""
        mapped = map_reply_error(exc, self.keys, script=self.script)
        if mapped is exc:
            raise exc
        if self.recover is not None and isinstance(mapped, RedgovError):
            return self.recover(mapped)
        raise mapped from exc

    def __repr__(self) -> str:
        return f"Call(script={self.script!r}, keys={self.keys!r})"


@dataclass(frozen=True, slots=True)
class ArchiveRead(Generic[T]):
    """A read from the SQL copy (blocking I/O: the asyncio shell runs it in a thread)."""

    run: Callable[[], T]


Step = Call[Any] | ArchiveRead[Any]
Plan = Generator[Step, Any, T]


def settle(call: Call[Any], reply: Any) -> Any:
    """A pipelined reply as a result, or the RedgovError it stands for."""
    try:
        if isinstance(reply, ResponseError):
            return call.failed(reply)
        return call.parse(reply)
    except RedgovError as error:
        return error


class Archive(Protocol):
    """Where history removed from Redis can still be read (the SQL copy: ``SqlArchive``).

    Entries come back as ``(entry id, fields)`` in log order (newest first when asked).
    """

    def fetch(self, log_key: str, ids: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """The fields of each entry found, by entry id."""
        ...

    def history(self, log_key: str, experiment: str, kinds: Sequence[str], *, before: str | None,
                limit: int | None, newest_first: bool, state_writes: bool = False) -> list[tuple[str, dict[str, bytes]]]:
        """The experiment's entries of these kinds with an id at or below ``before`` (None: all)."""
        ...

    def version(self, log_key: str, experiment: str, number: int | None) -> tuple[str, dict[str, bytes]] | None:
        """Version ``number`` of the experiment (None: the highest)."""
        ...

    def latest_policy(self, log_key: str, experiment: str, policy: str) -> tuple[str, dict[str, bytes]] | None:
        ...

    def linked_approvals(self, log_key: str, transition_id: str) -> list[tuple[str, dict[str, bytes]]]:
        ...


@lru_cache(maxsize=4096)
def _scope(prefix: str, tenant: str | None, environment: str | None) -> Scope:
    return Scope(prefix, tenant, environment)


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def new_etag() -> str:
    """96 random bits, URL-safe (16 characters)."""
    return binascii.b2a_base64(os.urandom(12), newline=False).translate(_URLSAFE).decode()


def new_op() -> str:
    """An operation id: 96 random bits (16 URL-safe characters), made once per logical call."""
    return binascii.b2a_base64(os.urandom(12), newline=False).translate(_URLSAFE).decode()


def new_ids() -> tuple[str, str, str]:
    """(etag, operation id, transition id) from one read of the OS's random source: 96, 96 and 128 bits."""
    raw = os.urandom(40)
    text_ = binascii.b2a_base64(raw[:24], newline=False).translate(_URLSAFE).decode()
    return text_[:16], text_[16:], raw[24:].hex()


def _expect(value: object, kind: type[Any], operation: str) -> None:
    if not isinstance(value, kind):
        raise ValidationError(f"{operation} takes a {kind.__name__}, got {type(value).__name__}")


def _limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValidationError(f"limit must be None or an integer >= 0, got {limit!r}")
    return limit


class Core:
    """Builds the Calls and plans of every Backplane operation for one key prefix."""

    def __init__(self, prefix: str = "gov", *, optimistic_concurrency: bool = True,
                 archive: Archive | None = None, retain_history: int | None = None) -> None:
        self.prefix = check_prefix(prefix)
        self.optimistic_concurrency = optimistic_concurrency
        if retain_history is not None and (isinstance(retain_history, bool) or not isinstance(retain_history, int)
                                           or retain_history < 1):
            raise ValidationError(f"retain_history must be a positive number of entries or None, got {retain_history!r}")
        #: history entries kept per experiment (None: everything)
        self.retain_history = retain_history
        self.retain = retain_history or 0
        #: reads history removed from Redis (None: removed history is gone from reads)
        self.archive = archive
        self.specs = load_scripts()
        self._expiring: set[str] = set()
        self._writes = 0
        self._lock = threading.Lock()
        #: scope tags whose ACL was checked (see Backplane.check_access)
        self.checked_scopes: set[str] = set()

    def __repr__(self) -> str:
        return f"Core(prefix={self.prefix!r}, retain_history={self.retain_history!r})"

    def scope(self, tenant: str | None, environment: str | None) -> Scope:
        check_scope_part(tenant, "tenant")
        check_scope_part(environment, "environment")
        return _scope(self.prefix, tenant, environment)

    def keys(self, experiment: str, tenant: str | None, environment: str | None) -> tuple[Scope, ExperimentKeys]:
        scope = self.scope(tenant, environment)
        return scope, scope.experiment(check_name(experiment, "experiment"))

    # -- the write envelope ---------------------------------------------------------

    def ops(self, scope: Scope) -> tuple[str, str]:
        """The scope's ops bucket now, and '1' when this process must set its expiry."""
        key = scope.ops()
        self._writes += 1
        if key in self._expiring and self._writes % EXPIRE_AGAIN_EVERY:
            return key, "0"
        return key, "1"

    def _applied(self, ops_key: str) -> None:
        with self._lock:
            if len(self._expiring) > 64:
                self._expiring.clear()
            self._expiring.add(ops_key)

    def write(self, script: str, scope: Scope, exp: ExperimentKeys, args: tuple[Any, ...],
              parse: Callable[[list[Any]], T], *, recover: Callable[[RedgovError], T] | None = None,
              extra_keys: tuple[str, ...] = (), lean: bool = False, op: str | None = None) -> Call[T]:
        """A write script's Call: the standard keys (1-4 only when ``lean``), the ops bucket's op id and
        expiry flag first in ARGV; ``parse`` gets the reply without its status."""
        ops_key, expire = self.ops(scope)
        keys = exp.standard[:3] + (ops_key,) + ((exp.standard[3:] + extra_keys) if not lean else ())
        self.specs[script].check_keys(len(keys))
        applied = self._applied

        def parse_reply(reply: Any) -> T:
            try:
                if expire == "1" and int(reply[0]) == 1:
                    applied(ops_key)
                return parse(reply)
            except (IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
                from .errors import CorruptDataError

                raise CorruptDataError(f"{script} on {exp.state}: the reply cannot be decoded: {exc!r}") from None

        return Call(keys, (op or new_op(), expire, *args), parse_reply, script, recover, exp.state, scope)

    # -- state ----------------------------------------------------------------------

    def get_state(self, experiment: str, tenant: str | None, environment: str | None) -> Call[ExperimentState | None]:
        _, exp = self.keys(experiment, tenant, environment)
        key = exp.state

        def parse(reply: Any) -> ExperimentState | None:
            return decode_state_hash(reply, key, experiment, tenant, environment)

        return Call((key,), ("HMGET", key, *state_fields()), parse)

    def save_state(self, state: ExperimentState, expected_etag: str | None) -> Call[SaveResult]:
        if not isinstance(state, ExperimentState):
            raise ValidationError(f"save_state takes an ExperimentState, got {type(state).__name__}"
                                  + (" (did a get_state return None: the experiment does not exist?)"
                                     if state is None else ""))
        if expected_etag is not None and (not isinstance(expected_etag, str) or not expected_etag):
            raise ValidationError(f"expected_etag must be a non-empty string or None, got {expected_etag!r}")
        etag, op, _ = new_ids()
        state, record = encode_record(msgspec.structs.replace(state, etag=etag, revision=0))
        if state.last_modified_by is not None:
            check_name(state.last_modified_by, "last_modified_by")
        if state.config_version < 0:
            raise ValidationError(f"config_version must be >= 0, got {state.config_version}")
        scope, exp = self.keys(state.experiment, state.tenant, state.environment)
        mode = "overwrite" if not self.optimistic_concurrency else ("create" if expected_etag is None else "match")
        args = (state.experiment, mode, expected_etag or "", etag, state.state.value, state.config_version,
                to_micros(state.last_modified), state.last_modified_by or "", ENCODER.encode(state.metadata),
                self.retain, record)

        def parse(reply: list[Any]) -> SaveResult:
            stored = msgspec.structs.replace(state, revision=int(reply[1]))
            return SaveResult(ok=True, state=stored, etag=etag, conflict=False, error=None)

        def recover(error: RedgovError) -> SaveResult:
            if isinstance(error, ConflictError):
                return SaveResult(ok=False, state=None, etag=None, conflict=True, error=str(error))
            raise error

        return self.write("save_state", scope, exp, args, parse, recover=recover, op=op)

    # -- history appends --------------------------------------------------------------

    def append_transition(self, transition: StateTransition) -> Call[StateTransition]:
        _expect(transition, StateTransition, "append_transition")
        transition, record = encode_record(msgspec.structs.replace(transition, revision=0, etag=""))
        check_name(transition.transition_id, "transition_id")
        scope, exp = self.keys(transition.experiment, transition.tenant, transition.environment)
        args = (transition.experiment, transition.transition_id, self.retain, record)
        return self.write("append_transition", scope, exp, args, lambda _reply: transition)

    def append_approval(self, approval: ApprovalRecord) -> Call[ApprovalRecord]:
        _expect(approval, ApprovalRecord, "append_approval")
        approval, record = encode_record(approval)
        if approval.transition_id is not None:
            check_name(approval.transition_id, "transition_id")
        scope, exp = self.keys(approval.experiment, approval.tenant, approval.environment)
        args = (approval.experiment, approval.transition_id or "", self.retain, record)
        return self.write("append_approval", scope, exp, args, lambda _reply: approval)

    def append_version(self, version: ConfigurationVersion) -> Call[ConfigurationVersion]:
        _expect(version, ConfigurationVersion, "append_version")
        check_version_number(version.version, "version number")
        version, record = encode_record(version)
        scope, exp = self.keys(version.experiment, version.tenant, version.environment)
        args = (version.experiment, version.version, self.retain, record)
        return self.write("append_version", scope, exp, args, lambda _reply: version)

    def append_policy_evaluation(self, evaluation: PolicyEvaluation) -> Call[PolicyEvaluation]:
        _expect(evaluation, PolicyEvaluation, "append_policy_evaluation")
        evaluation, record = encode_record(evaluation)
        check_name(evaluation.policy, "policy")
        scope, exp = self.keys(evaluation.experiment, evaluation.tenant, evaluation.environment)
        args = (evaluation.experiment, evaluation.policy, self.retain, record)
        return self.write("append_policy_evaluation", scope, exp, args, lambda _reply: evaluation)

    # -- history reads ------------------------------------------------------------------

    def _entries(self, reply_entries: Sequence[Any], log_key: str) -> Plan[list[Entry]]:
        """Decode a page's entries; those no longer in the log come from the archive (or are skipped)."""
        out: list[Entry | None] = []
        missing: dict[str, int] = {}
        for raw in reply_entries:
            entry = decode_entry(raw, log_key)
            if entry is None:
                missing[text(raw[0])] = len(out)
            out.append(entry)
        archive = self.archive
        if missing and archive is not None:
            ids = list(missing)
            found = yield ArchiveRead(lambda: archive.fetch(log_key, ids))
            for entry_id, fields in found.items():
                if entry_id in missing:
                    out[missing[entry_id]] = decode_fields(entry_id, fields, log_key)
        return [e for e in out if e is not None]

    def _archived(self, log_key: str, experiment: str, kinds: tuple[str, ...], before: str | None,
                  limit: int | None, newest_first: bool, state_writes: bool = False) -> Plan[list[Entry]]:
        archive = self.archive
        if archive is None:
            return []
        rows = yield ArchiveRead(lambda: archive.history(log_key, experiment, kinds, before=before, limit=limit,
                                                         newest_first=newest_first, state_writes=state_writes))
        return [decode_fields(entry_id, fields, log_key) for entry_id, fields in rows]

    def _paged(self, list_key: str, counter: str, codes: str, exp: ExperimentKeys, experiment: str,
               kinds: tuple[str, ...], limit: int | None, newest_first: bool, *, links: bool = False,
               state_writes: bool = False) -> Plan[list[Entry]]:
        """An experiment's entries from one of its lists, page by page, with the archive's older ones.

        Each page is two pipelined round trips of plain commands: the list window (with the
        count of items retention removed from its head, so positions stay absolute while it
        trims), then one XRANGE per entry kept. No server call is long, however long the list.
        """
        direction = -1 if newest_first else 1
        position: int | None = None  # absolute position of the next item to examine (None: an end)
        removed = 0
        out: list[Entry] = []
        archive = self.archive
        for _attempt in range(1_000_000):
            if limit is not None and len(out) >= limit:
                break
            if position is None:
                window = (-PAGE_EXAMINE, -1) if newest_first else (0, PAGE_EXAMINE - 1)
            else:
                relative = position - removed
                if newest_first:
                    if relative < 0:
                        break
                    window = (max(0, relative - PAGE_EXAMINE + 1), relative)
                else:
                    window = (max(0, relative), max(0, relative) + PAGE_EXAMINE - 1)
            commands = (("HMGET", exp.base, counter, "cut"), ("LLEN", list_key), ("LRANGE", list_key, *window))
            reply = yield Call((exp.base, list_key), commands, _window(exp.base, list_key), batch=True)
            now_removed, cut, length, items = reply
            if position is not None and now_removed != removed:
                removed = now_removed  # retention trimmed the list between two pages: read this page again
                continue
            removed = now_removed
            if position is None and newest_first:
                first_position = removed + length - len(items)
            else:
                first_position = removed + window[0]
            if position is None and not newest_first and removed and cut and archive is not None:
                older = yield from self._archived(exp.log, experiment, kinds, cut, limit, False, state_writes)
                out.extend(older)
                if limit is not None and len(out) >= limit:
                    break
            want = PAGE_ENTRIES if limit is None else min(PAGE_ENTRIES, limit - len(out))
            picked: list[str] = []
            following = first_position + (len(items) if direction > 0 else -1)
            order = range(len(items)) if direction > 0 else range(len(items) - 1, -1, -1)
            for index in order:
                item = items[index]
                entry_id = item[1:] if codes else item
                if codes and item[:1] not in codes:
                    pass
                elif not _is_id(entry_id):
                    from .errors import CorruptDataError

                    raise CorruptDataError(f"key {list_key} item {first_position + index - removed} holds "
                                           f"{item[:60]!r}, expected {'a code and ' if codes else ''}a log entry id")
                else:
                    picked.append(entry_id)
                following = first_position + index + direction
                if len(picked) >= want:
                    break
            if picked:
                found = yield from self._fetch(exp, picked, links)
                out.extend(found)
            at_end = following >= removed + length if direction > 0 else following < removed
            if at_end or not items:
                if newest_first and removed and cut and archive is not None:
                    rest = None if limit is None else limit - len(out)
                    if rest is None or rest > 0:
                        out.extend((yield from self._archived(exp.log, experiment, kinds, cut, rest, True,
                                                              state_writes)))
                break
            position = following
        return out if limit is None else out[:limit]

    def _fetch(self, exp: ExperimentKeys, ids: Sequence[str], links: bool = False) -> Plan[list[Entry]]:
        """The log entries with these ids (one pipelined XRANGE each); approvals with their consumer."""
        commands: list[tuple[Any, ...]] = [("XRANGE", exp.log, entry_id, entry_id) for entry_id in ids]
        if links:
            commands.append(("HMGET", exp.links, *("a:" + entry_id for entry_id in ids)))
        replies = yield Call((exp.log,), tuple(commands), _settled((exp.log, exp.links)), batch=True)
        raw: list[list[Any]] = []
        for entry_id, found in zip(ids, replies):
            raw.append([found[0][0], found[0][1]] if found else [entry_id, []])
        if links:
            for pair, tid in zip(raw, replies[-1]):
                if tid is not None and pair[1]:
                    fields = pair[1]
                    pair[1] = {**fields, b"tid": tid} if isinstance(fields, Mapping) else [*fields, b"tid", tid]
        entries = yield from self._entries(raw, exp.log)
        return entries

    def transitions(self, experiment: str, tenant: str | None, environment: str | None, *,
                    limit: int | None = None, newest_first: bool = False) -> Plan[list[StateTransition]]:
        limit = _limit(limit)
        scope, exp = self.keys(experiment, tenant, environment)
        found = yield from self._paged(exp.history, "nh", "Tt", exp, experiment, ("transition",), limit, newest_first)
        return records_of(StateTransition, found, scope.log)

    def approvals(self, experiment: str, tenant: str | None, environment: str | None, *,
                  limit: int | None = None, newest_first: bool = False) -> Plan[list[ApprovalRecord]]:
        limit = _limit(limit)
        scope, exp = self.keys(experiment, tenant, environment)
        found = yield from self._paged(exp.approvals, "na", "", exp, experiment, ("approval",), limit, newest_first,
                                       links=True)
        return records_of(ApprovalRecord, found, scope.log)

    def policy_evaluations(self, experiment: str, tenant: str | None, environment: str | None, *,
                           limit: int | None = None, newest_first: bool = False) -> Plan[list[PolicyEvaluation]]:
        limit = _limit(limit)
        scope, exp = self.keys(experiment, tenant, environment)
        found = yield from self._paged(exp.policies, "np", "", exp, experiment, ("policy",), limit, newest_first)
        return records_of(PolicyEvaluation, found, scope.log)

    def state_writes(self, experiment: str, tenant: str | None, environment: str | None,
                     until: datetime | None = None) -> Plan[list[ExperimentState]]:
        """Every state the experiment has had (those Redis still holds, from the retention base on;
        the whole history with an archive), folded from its state-writing entries alone."""
        scope, exp = self.keys(experiment, tenant, environment)
        raw = yield Call((exp.base,), ("HGETALL", exp.base), lambda r: r)
        try:
            base_fields = pairs(raw)
        except (TypeError, UnicodeDecodeError, IndexError) as exc:
            from .errors import CorruptDataError

            raise CorruptDataError(f"retention base {exp.base} cannot be decoded: {exc!r}") from None
        found = yield from self._paged(exp.history, "nh", "STV", exp, experiment, ("state", "transition", "version"),
                                       None, False, state_writes=True)
        start = None
        if self.archive is None or "cut" not in base_fields:
            start = decode_base(base_fields, exp.base, experiment, tenant, environment)
            if start is not None and until is not None and until < start.last_modified:
                raise HistoryTrimmedError(
                    f"experiment {experiment}: its history before {start.last_modified.isoformat()} was removed "
                    f"from Redis (retention or redgov trim); attach archive=SqlArchive(url) to replay to "
                    f"{until.isoformat()}")
        states = fold_states(found, experiment, tenant, environment, until, start)
        if start is not None and (until is None or start.last_modified <= until):
            states.insert(0, start)
        return states

    def approvals_for_transition(self, transition_id: str, tenant: str | None,
                                 environment: str | None) -> Plan[list[ApprovalRecord]]:
        scope = self.scope(tenant, environment)
        check_name(transition_id, "transition_id")
        reply = yield Call((scope.links, scope.log), (transition_id,), lambda r: r, "read_linked")
        found = yield from self._entries(reply, scope.log)
        archive = self.archive
        if not reply and archive is not None:
            rows = yield ArchiveRead(lambda: archive.linked_approvals(scope.log, transition_id))
            found = [decode_fields(i, f, scope.log) for i, f in rows]
        # a consumed manual approval was recorded before its transition existed
        return [a if a.transition_id else msgspec.structs.replace(a, transition_id=transition_id)
                for a in records_of(ApprovalRecord, found, scope.log)]

    def latest_policy_evaluation(self, experiment: str, policy: str, tenant: str | None,
                                 environment: str | None) -> Plan[PolicyEvaluation | None]:
        scope, exp = self.keys(experiment, tenant, environment)
        check_name(policy, "policy")
        reply = yield Call((exp.latest, exp.log), (policy,), lambda r: r, "read_entry")
        found = yield from self._entries(reply, exp.log)
        archive = self.archive
        if not found and archive is not None:
            row = yield ArchiveRead(lambda: archive.latest_policy(exp.log, experiment, policy))
            found = [] if row is None else [decode_fields(row[0], row[1], exp.log)]
        records = records_of(PolicyEvaluation, found, exp.log)
        return records[0] if records else None

    def _version_entries(self, reply: Any, exp: ExperimentKeys) -> Plan[list[Entry]]:
        try:
            raw = [[item[1], item[2]] for item in reply]
        except (IndexError, TypeError) as exc:
            from .errors import CorruptDataError

            raise CorruptDataError(f"versions of {exp.versions}: unexpected reply: {exc!r}") from None
        found = yield from self._entries(raw, exp.log)
        return found

    def versions(self, experiment: str, tenant: str | None, environment: str | None, *,
                 limit: int | None = None, newest_first: bool = False) -> Plan[list[ConfigurationVersion]]:
        limit = _limit(limit)
        scope, exp = self.keys(experiment, tenant, environment)
        out: dict[int, ConfigurationVersion] = {}
        archive = self.archive
        if archive is not None:
            rows = yield ArchiveRead(lambda: archive.history(exp.log, experiment, ("version",), before=None,
                                                             limit=None, newest_first=False))
            for entry_id, fields in rows:
                v = decode_fields(entry_id, fields, exp.log).record
                out[v.version] = v
        after: str | None = None
        while True:
            if newest_first:
                command = ("ZREVRANGEBYSCORE", exp.versions, "+inf" if after is None else f"({after}", "-inf",
                           "WITHSCORES", "LIMIT", 0, PAGE_ENTRIES)
            else:
                command = ("ZRANGEBYSCORE", exp.versions, "-inf" if after is None else f"({after}", "+inf",
                           "WITHSCORES", "LIMIT", 0, PAGE_ENTRIES)
            scored = yield Call((exp.versions,), command, _scored(exp.versions))
            page = yield from self._fetch(exp, [entry_id for entry_id, _ in scored])
            for version in records_of(ConfigurationVersion, page, exp.log):
                out[version.version] = version
            if len(scored) < PAGE_ENTRIES or (archive is None and limit is not None and len(out) >= limit):
                break
            after = scored[-1][1]
        ordered = [out[n] for n in sorted(out, reverse=newest_first)]
        return ordered if limit is None else ordered[:limit]

    def latest_version(self, experiment: str, tenant: str | None,
                       environment: str | None) -> Plan[ConfigurationVersion | None]:
        return (yield from self._one_version(experiment, None, tenant, environment))

    def version(self, experiment: str, number: int, tenant: str | None,
                environment: str | None) -> Plan[ConfigurationVersion | None]:
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValidationError(f"version number must be an integer, got {number!r}")
        return (yield from self._one_version(experiment, number, tenant, environment))

    def _one_version(self, experiment: str, number: int | None, tenant: str | None,
                     environment: str | None) -> Plan[ConfigurationVersion | None]:
        scope, exp = self.keys(experiment, tenant, environment)
        args = ("latest", "", "1", 1) if number is None else ("number", number, "1", 1)
        reply = yield Call((exp.versions, exp.log), args, lambda r: r, "read_versions")
        found = yield from self._version_entries(reply, exp)
        archive = self.archive
        if archive is not None and (not found or number is None):
            row = yield ArchiveRead(lambda: archive.version(exp.log, experiment, number))
            if row is not None:
                older = decode_fields(row[0], row[1], exp.log)
                if not found or older.record.version > found[0].record.version:
                    found = [older]
        records = records_of(ConfigurationVersion, found, exp.log)
        return records[0] if records else None


def _is_id(value: str) -> bool:
    ms, dash, seq = value.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii()


def _settled(keys: tuple[str, ...]) -> Callable[[Any], list[Any]]:
    """A pipeline's replies, each refused command raised as the error it stands for."""

    def parse(replies: Any) -> list[Any]:
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise_for_reply(reply, keys)
        return list(replies)

    return parse


def _window(base: str, list_key: str) -> Callable[[Any], tuple[int, str, int, list[str]]]:
    """(items removed by retention, the last removed entry id, list length, items) of a window read."""
    settled = _settled((base, list_key))

    def parse(replies: Any) -> tuple[int, str, int, list[str]]:
        counted, length, items = settled(replies)
        try:
            removed = int(counted[0] or 0)
            cut = text(counted[1]) if counted[1] else ""
            return removed, cut, int(length), [text(item) for item in items]
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            from .errors import CorruptDataError

            raise CorruptDataError(f"key {base} or {list_key} holds data redgov did not write: {exc!r}") from None

    return parse


def _scored(key: str) -> Callable[[Any], list[tuple[str, str]]]:
    """(entry id, version number) pairs of a WITHSCORES reply (flat, or pairs as RESP3 gives them)."""

    def parse(reply: Any) -> list[tuple[str, str]]:
        try:
            if reply and isinstance(reply[0], (list, tuple)):
                pairs_ = [(text(m), text(str(sc)) if not isinstance(sc, bytes) else text(sc)) for m, sc in reply]
            else:
                pairs_ = [(text(reply[i]), text(reply[i + 1])) for i in range(0, len(reply), 2)]
            out = []
            for member, score in pairs_:
                number = score[:-2] if score.endswith(".0") else score
                if not _is_id(member) or not number.isdigit():
                    raise ValueError(f"{member!r} scored {score!r}")
                out.append((member, number))
            return out
        except (TypeError, ValueError, IndexError, UnicodeDecodeError) as exc:
            from .errors import CorruptDataError

            raise CorruptDataError(f"key {key} holds data redgov did not write: {exc!r}") from None

    return parse


def check_version_number(value: object, what: str) -> int:
    """A version number: an integer from 1 to 2**53 - 1 (sorted-set scores are exact up to there)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**53 - 1:
        raise ValidationError(f"{what} must be an integer from 1 to 2**53 - 1, got {value!r}")
    return value
