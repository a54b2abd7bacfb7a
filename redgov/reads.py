"""History reads: paged, bounded, and whole again through the archive.

Every list read (transitions, approvals, policy evaluations, versions, state
writes) is a plan of pipelined pages: a window of the experiment's history list
(LRANGE) and the entries it names (XRANGE by id), so no server call examines
more than ``PAGE_EXAMINE`` items, whatever the history's length. Entries removed
by retention are read from the ``Archive`` (the SQL copy) when one is attached,
else the read says what is missing (``HistoryTrimmedError``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from .calls import ArchiveRead, Call, Plan, is_entry_id, settled
from .codec import (
    Entry,
    decode_base,
    decode_entry,
    decode_fields,
    fold_states,
    pairs,
    records_of,
    text,
)
from .errors import HistoryTrimmedError, ValidationError
from .keys import ExperimentKeys, Scope
from .records import ApprovalRecord, ConfigurationVersion, ExperimentState, PolicyEvaluation, StateTransition
from .validate import check_name, check_version_number

if TYPE_CHECKING:
    from .calls import Archive

__all__ = ["PAGE_ENTRIES", "PAGE_EXAMINE", "Reads"]

#: Entries returned by one read call at most, and list items it examines at most: a page costs
#: well under a millisecond of server time however long the history.
PAGE_ENTRIES = 200
PAGE_EXAMINE = 800


def _limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValidationError(f"limit must be None or an integer >= 0, got {limit!r}")
    return limit


class Reads:
    """The history read plans of ``Core`` (a mixin: it needs ``keys``, ``scope`` and ``archive``)."""

    archive: Archive | None

    if TYPE_CHECKING:
        def scope(self, tenant: str | None, environment: str | None) -> Scope: ...

        def keys(self, experiment: str, tenant: str | None,
                 environment: str | None) -> tuple[Scope, ExperimentKeys]: ...

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
                elif not is_entry_id(entry_id):
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
        replies = yield Call((exp.log,), tuple(commands), settled((exp.log, exp.links)), batch=True)
        raw: list[list[Any]] = []
        for entry_id, found in zip(ids, replies, strict=False):
            raw.append([found[0][0], found[0][1]] if found else [entry_id, []])
        if links:
            for pair, tid in zip(raw, replies[-1], strict=True):
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
        if number < 1:
            return None  # no version has it
        check_version_number(number, "version number")  # scores above 2**53 - 1 would match a neighbour
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


def _window(base: str, list_key: str) -> Callable[[Any], tuple[int, str, int, list[str]]]:
    """(items removed by retention, the last removed entry id, list length, items) of a window read."""
    check = settled((base, list_key))

    def parse(replies: Any) -> tuple[int, str, int, list[str]]:
        counted, length, items = check(replies)
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
                if not is_entry_id(member) or not number.isdigit():
                    raise ValueError(f"{member!r} scored {score!r}")
                out.append((member, number))
            return out
        except (TypeError, ValueError, IndexError, UnicodeDecodeError) as exc:
            from .errors import CorruptDataError

            raise CorruptDataError(f"key {key} holds data redgov did not write: {exc!r}") from None

    return parse
