"""Restore: rebuild Redis from a SQL copy, every scope all-or-nothing.

Each scope's entries are XADDed with their original ids and fields, and every
index the scripts maintain is rebuilt by replaying, in log order, what each
script does to it (see ``ScopeRebuild.add``): the state hash and the scope
index from the fold of the state-writing entries (``core.fold_states``), the
``states``/``transitions``/``approvals``/``policies`` id lists, the ``versions``
zset, the ``policy`` latest hash, the ``tid`` hash, the ``tr:<tid>:approvals``
lists, ``links`` (from each transition's ``ap``) and ``pending`` (approvals
recorded by ``approve`` since the experiment's last ``transition``, less those
withdrawn by a later rejection of the same move). Idempotency keys are not restored: they are
a 24 h replay cache, not history.

One scope is one MULTI/EXEC (its keys share one hash slot, so this holds on a
Cluster too), under WATCH of its log: a failure or a concurrent write to the
scope leaves nothing of it written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import WatchError

from .backplane import Backplane
from .core import Entry, decode_fields, fold_states, to_micros
from .keys import Scope, encode_part
from .records import ENCODER, ApprovalRecord, ConfigurationVersion, PolicyEvaluation, StateTransition
from .sqlcopy import ScopeRow, SqlCopy, SqlCopyError, progress_bar

__all__ = ["RestoreSummary", "ScopeRebuild", "restore"]

_GLOB = frozenset("*?[]\\")
_ARGS_PER_COMMAND = 1000


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB else c for c in text)


@dataclass(slots=True)
class RestoreSummary:
    url: str
    prefix: str
    source_prefix: str
    scopes: int = 0
    entries: int = 0
    experiments: int = 0
    replaced_keys: int = 0
    seconds: float = 0.0
    rate: float = 0.0

    def line(self) -> str:
        source = "" if self.source_prefix == self.prefix else f" (copied from prefix {self.source_prefix!r})"
        text = (f"restored {self.entries:,} entries of {self.scopes:,} scope(s) ({self.experiments:,} experiments) "
                f"into prefix {self.prefix!r}{source} from {self.url} in {self.seconds:.2f} s "
                f"({self.rate:,.0f} entries/s)")
        if self.replaced_keys:
            text += f"; replaced {self.replaced_keys:,} existing keys (--force)"
        return text


@dataclass(slots=True)
class _Experiment:
    writes: list[Entry] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    transitions: list[str] = field(default_factory=list)
    approvals: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    policy: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


class ScopeRebuild:
    """The Redis commands that recreate one scope from its entries (given in log order)."""

    def __init__(self, target: Scope, source_log: str) -> None:
        self.target = target
        self.source_log = source_log
        self.xadds: list[tuple[Any, ...]] = []
        self.experiments: dict[str, _Experiment] = {}
        self.tids: dict[str, str] = {}
        self.linked: dict[str, list[str]] = {}

    def add(self, entry_id: str, fields: dict[str, bytes]) -> None:
        entry = decode_fields(entry_id, fields, self.source_log)
        flat: list[Any] = ["XADD", self.target.log, entry_id]
        for name, value in fields.items():
            flat += [name, value]
        self.xadds.append(tuple(flat))
        x = self.experiments.get(entry.experiment)
        if x is None:
            x = self.experiments[entry.experiment] = _Experiment()
        record = entry.record
        if entry.revision:
            x.states.append(entry_id)
            x.writes.append(entry)
        if isinstance(record, StateTransition):
            x.transitions.append(entry_id)
            self.tids[record.transition_id] = entry_id
            if "rev" in fields:  # transition.lua: approvals of moves out of the state left lapse
                x.pending.clear()
            consumed = fields.get("ap")
            if consumed is not None:  # transition.lua: the manual approval it used
                approval = consumed.decode()
                x.links[approval] = record.transition_id
                self.linked.setdefault(record.transition_id, []).append(approval)
        elif isinstance(record, ApprovalRecord):
            x.approvals.append(entry_id)
            if record.transition_id is not None:  # append_approval linked, or a role gate in transition.lua
                self.linked.setdefault(record.transition_id, []).append(entry_id)
            elif "from" in fields:  # approve.lua: records or withdraws a pending approval of the move
                move = f"{fields['from'].decode()}>{record.to_state.value}"
                if record.approved:
                    x.pending[move] = entry_id
                else:
                    x.pending.pop(move, None)
        elif isinstance(record, ConfigurationVersion):
            x.versions[entry_id] = record.version
        elif isinstance(record, PolicyEvaluation):
            x.policies.append(entry_id)
            x.policy[record.policy] = entry_id

    def commands(self) -> Iterator[tuple[Any, ...]]:
        yield from self.xadds
        index: dict[str, str] = {}
        for name, x in self.experiments.items():
            keys = self.target.experiment(name)
            for key, ids in ((keys.states, x.states), (keys.transitions, x.transitions),
                             (keys.approvals, x.approvals), (keys.policies, x.policies)):
                yield from _chunked("RPUSH", key, ids)
            if x.versions:
                pairs = [v for entry_id, number in x.versions.items() for v in (number, entry_id)]
                yield from _chunked("ZADD", keys.versions, pairs, 2)
            for key, mapping in ((keys.policy_latest, x.policy), (keys.pending, x.pending), (keys.links, x.links)):
                yield from _hset(key, mapping)
            if x.writes:
                state = fold_states(x.writes, name, self.target.tenant, self.target.environment)[-1]
                fields: dict[str, Any] = {"s": state.state.value, "v": state.config_version,
                                          "t": to_micros(state.last_modified), "m": ENCODER.encode(state.metadata),
                                          "e": state.etag, "r": state.revision}
                if state.last_modified_by:
                    fields["b"] = state.last_modified_by
                yield from _hset(keys.state, fields)
                index[name] = state.state.value
        yield from _hset(self.target.tids, self.tids)
        yield from _hset(self.target.index, index)
        for tid, ids in self.linked.items():
            yield from _chunked("RPUSH", self.target.transition_approvals(tid), ids)


def _chunked(command: str, key: str, values: list[Any], step: int = 1) -> Iterator[tuple[Any, ...]]:
    size = _ARGS_PER_COMMAND - _ARGS_PER_COMMAND % step
    for start in range(0, len(values), size):
        yield (command, key, *values[start:start + size])


def _hset(key: str, mapping: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    pairs = [v for item in mapping.items() for v in item]
    yield from _chunked("HSET", key, pairs, 2)


def _choose_prefix(rows: list[ScopeRow], wanted: str | None, target: str, url: str) -> str:
    prefixes = sorted({r.prefix for r in rows})
    if wanted is not None:
        if wanted not in prefixes:
            raise SqlCopyError(f"the SQL copy at {url} holds no scope of prefix {wanted!r} "
                               f"(it holds {', '.join(map(repr, prefixes)) or 'none'})")
        return wanted
    if not prefixes:
        raise SqlCopyError(f"the SQL copy at {url} holds no exported scope; nothing to restore")
    if target in prefixes:
        return target
    if len(prefixes) == 1:
        return prefixes[0]
    raise SqlCopyError(f"the SQL copy at {url} holds the prefixes {', '.join(map(repr, prefixes))}; "
                       "say which to restore (source_prefix=..., --source-prefix)")


def restore(backplane: Backplane, url: str, *, force: bool = False, progress: bool = True,
            source_prefix: str | None = None) -> RestoreSummary:
    """Rebuild the scopes of a SQL copy into the backplane's prefix.

    The copy's scopes of ``source_prefix`` (default: the backplane's prefix if the copy
    has it, else the copy's only prefix) are restored under the backplane's prefix.
    A non-empty target prefix is refused unless ``force``, which replaces the keys of
    each restored scope (keys of other scopes stay). Each scope is written by one
    MULTI/EXEC, so a failure leaves nothing of that scope written.
    """
    started = time.perf_counter()
    client = backplane.client
    target = backplane.prefix
    with SqlCopy(url, create=False) as copy:
        chosen = _choose_prefix(copy.scopes(), source_prefix, target, copy.url)
        rows = [r for r in copy.scopes(chosen)]
        summary = RestoreSummary(url=copy.url, prefix=target, source_prefix=chosen)
        if not force:
            for key in client.scan_iter(match=glob_escape("{" + encode_part(target) + ":") + "*", count=1000):
                shown = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else str(key)
                raise SqlCopyError(f"the restore target prefix {target!r} is not empty (it has {shown}, ...): "
                                   "restore into an empty prefix, or pass force=True (--force) to replace "
                                   "the scopes the copy holds")
        total = copy.count_entries([r.scope_id for r in rows])
        bar = progress_bar(progress, total, "restore")
        try:
            for row in rows:
                scope = Scope(target, row.tenant, row.environment)
                rebuild = ScopeRebuild(scope, row.log_key)
                count = 0
                for entry_id, fields in copy.read_log(row.scope_id):
                    rebuild.add(entry_id, fields)
                    count += 1
                if not count:
                    continue
                summary.replaced_keys += _write_scope(client, scope, rebuild, force)
                summary.scopes += 1
                summary.entries += count
                summary.experiments += len(rebuild.experiments)
                if bar is not None:
                    bar.update(count)
        finally:
            if bar is not None:
                bar.close()
    summary.seconds = time.perf_counter() - started
    summary.rate = summary.entries / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _write_scope(client: Any, scope: Scope, rebuild: ScopeRebuild, force: bool) -> int:
    """One MULTI/EXEC under WATCH of the scope log; returns the number of keys it replaced."""
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(scope.log)  # first: any script writing to the scope from now on aborts the EXEC
            existing: list[Any] = []
            if force:
                existing = list(client.scan_iter(match=glob_escape(scope.tag) + ":*", count=1000))
            elif client.exists(scope.log):  # every write appends to the log: written since the emptiness check
                raise SqlCopyError(f"scope {scope!r} was written to during the restore; nothing of it was restored")
            pipe.multi()
            for start in range(0, len(existing), 500):
                pipe.execute_command("DEL", *existing[start:start + 500])
            for command in rebuild.commands():
                pipe.execute_command(*command)
            pipe.execute()
        except WatchError:
            raise SqlCopyError(f"scope {scope!r} was written to during the restore; nothing of it was "
                               "restored (run restore again)") from None
    return len(existing)
