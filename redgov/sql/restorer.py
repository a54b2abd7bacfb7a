"""Restore: rebuild Redis from a SQL copy, every scope all-or-nothing.

For each scope of the copy, every entry is XADDed to the scope log with its
original id and fields, in log order; then the entries of each experiment are
indexed by the ``restore_index`` script (``lua/restore_index.lua``), which does
to the indexes, entry by entry, what the write scripts do: the history list,
the approvals and policies lists, the versions zset, the latest-evaluation
hash, the links hash, the pending approvals and the scope index. The state
hash is written by the same call from the fold of the experiment's
state-writing entries (``codec.fold_states``, done here in Python). A long
history is indexed by several calls of at most ``INDEX_CHUNK`` entries, the
state written by the last. Idempotency keys, leases and the re-send dedupe
buckets are not restored: they are short-lived caches, not history.

The scope's published rules (``{T}:rules``, govrules.py) are rebuilt from its
``rules`` entries (one per ``publish``): every version's record (``r:<n>``, the
bytes the entry holds), the current version ``n`` (the highest) with its hash
``h``, and the steps and gates of the current version (``s:<state>``,
``d:<state>``) compiled again from its definition (``govrules.compile_all``), the
same way ``publish`` compiled them; plain HSETs of at most ``RULES_CHUNK``
versions each, sent with the scope's XADDs. So a restored scope is governed by the
rules it was governed by.

On a single server a scope is one MULTI/EXEC under WATCH of its log (redis-py
loads the script before MULTI, so the script calls are queued with the XADDs):
a failure, or a write to the scope meanwhile, leaves nothing of it written.
On a Redis Cluster, whose pipelines cannot queue scripts, a scope's XADDs are
sent first, then its script calls one by one: that is NOT atomic, and a
failure midway deletes what was written of the scope before raising.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.commands.core import Script
from redis.exceptions import ResponseError, WatchError

from ..backplane import Backplane
from ..codec import Entry, decode_fields, fold_states, text, to_micros
from ..errors import ConfigError, CorruptDataError, RedgovError, ValidationError, map_reply_error
from ..govdefinition import parts_of
from ..govrules import compile_all
from ..keys import Scope, glob_escape, prefix_pattern
from ..records import DECODERS, ENCODER, ExperimentState, LifecycleState, RulesVersion
from .copy import ScopeRow, SqlCopy, SqlCopyError, progress_bar
from .write import with_name

__all__ = ["INDEX_CHUNK", "RULES_CHUNK", "IndexCall", "RestoreSummary", "ScopeRebuild", "redis_refusals", "restore"]

#: entry ids indexed by one restore_index call at most
INDEX_CHUNK = 500
#: published rules versions written by one HSET at most
RULES_CHUNK = 100
#: commands sent per pipeline flush on a Cluster
_CLUSTER_FLUSH = 1000
#: the transition create.lua writes beside the state snapshot (restore_index.lua: '+<id>')
_SCRIPT = "restore_index"
_RUNNING = (LifecycleState.RUNNING, LifecycleState.RAMPING)


@dataclass(slots=True)
class RestoreSummary:
    """What a restore did; ``line()`` is the CLI's one-line summary.

    Fields: ``url`` (the copy, its password hidden); ``prefix`` (the target prefix);
    ``source_prefix`` (the copy's prefix restored from); ``scopes``, ``entries`` and
    ``experiments`` restored; ``replaced_keys`` (existing keys replaced with
    ``force``); ``seconds`` and ``rate`` (elapsed time, entries per second).
    """

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
        """The one-line summary the command line prints."""
        source = "" if self.source_prefix == self.prefix else f" (copied from prefix {self.source_prefix!r})"
        text = (f"restored {self.entries:,} entries of {self.scopes:,} scope(s) ({self.experiments:,} experiments) "
                f"into prefix {self.prefix!r}{source} from {self.url} in {self.seconds:.2f} s "
                f"({self.rate:,.0f} entries/s)")
        if self.replaced_keys:
            text += f"; replaced {self.replaced_keys:,} existing keys (forced)"
        return text


@dataclass(frozen=True, slots=True)
class IndexCall:
    """One ``restore_index`` call: the experiment's standard keys and the script's arguments."""

    experiment: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]


@dataclass(slots=True)
class _Experiment:
    ids: list[str] = field(default_factory=list)
    writes: list[Entry] = field(default_factory=list)


class ScopeRebuild:
    """The Redis commands (and ``restore_index`` calls) that recreate one scope from its entries.

    ``add`` takes the entries in log order; each is decoded completely first, so an
    entry the scripts could not index is refused (CorruptDataError) before anything
    of the scope is sent.
    """

    def __init__(self, target: Scope, source_log: str) -> None:
        self.target = target
        self.source_log = source_log
        self.xadds: list[tuple[Any, ...]] = []
        self.experiments: dict[str, _Experiment] = {}
        #: the scope's published rules versions: number -> (the record as stored, decoded)
        self.rules: dict[int, tuple[bytes, RulesVersion]] = {}
        self._rules_out: list[tuple[Any, ...]] | None = None

    def add(self, entry_id: str, fields: Mapping[str, bytes]) -> None:
        """One entry of the scope (the next in log order), as stream fields."""
        try:
            kind, name = text(fields["k"]), text(fields["x"])
        except (KeyError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"log entry {entry_id} of {self.source_log} cannot be decoded: {exc!r}") from None
        if kind == "rules":  # a published version of the scope's rules: no experiment to index
            self._add_rules(entry_id, fields)
            self._xadd(entry_id, fields)
            return
        entry: Entry | None = None
        if "rev" in fields:
            entry = decode_fields(entry_id, fields, self.source_log)  # a state write: folded below
        else:
            _check(entry_id, kind, fields, self.source_log)
        if kind == "version" and not fields.get("v", b"").isdigit():
            raise CorruptDataError(f"log entry {entry_id} of {self.source_log} is a version without a number (v)")
        self._xadd(entry_id, fields)
        x = self.experiments.get(name)
        if x is None:
            x = self.experiments[name] = _Experiment()
        if entry is not None and "rev" in fields:
            x.writes.append(entry)
        x.ids.append(entry_id)

    def _xadd(self, entry_id: str, fields: Mapping[str, bytes]) -> None:
        flat: list[Any] = ["XADD", self.target.log, entry_id]
        for field_name, value in fields.items():
            flat += [field_name, value]
        self.xadds.append(tuple(flat))

    def _add_rules(self, entry_id: str, fields: Mapping[str, bytes]) -> None:
        record: RulesVersion = decode_fields(entry_id, fields, self.source_log).record  # its number: field n
        if record.version < 1:
            raise CorruptDataError(f"log entry {entry_id} of {self.source_log} is a rules version numbered "
                                   f"{record.version}, expected 1 or more")
        self.rules[record.version] = (fields["r"], record)
        self._rules_out = None

    def rules_commands(self) -> list[tuple[Any, ...]]:
        """The HSETs that rebuild the scope's rules hash: every version (``r:<n>``), then the current one's
        compiled steps and gates (``s:``, ``d:``), its hash ``h`` and its number ``n``. Empty when none.
        Made once (until another rules entry is added).

        Raises:
            CorruptDataError: the current version's rules or gates cannot be compiled.
        """
        if self._rules_out is None:
            self._rules_out = self._compile_rules()
        return self._rules_out

    def _compile_rules(self) -> list[tuple[Any, ...]]:
        if not self.rules:
            return []
        key = self.target.rules
        numbers = sorted(self.rules)
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(numbers), RULES_CHUNK):
            out.append(("HSET", key, *(x for n in numbers[start:start + RULES_CHUNK]
                                       for x in (f"r:{n}", self.rules[n][0]))))
        current = numbers[-1]
        record = self.rules[current][1]
        # the policies play no part in the compiled rules: a custom kind this process does not know is
        # the concern of the writes judged under them (ConfigError there), not of the restore
        definition = {k: v for k, v in record.definition.items() if k != "policies"}
        try:
            parts = parts_of(definition)
            compiled = compile_all(parts.rules, parts.gates)
        except (ConfigError, ValidationError) as exc:
            raise CorruptDataError(f"rules version {current} of {self.source_log} cannot be compiled: {exc}") from None
        fields: list[Any] = []
        for i in range(0, len(compiled), 3):
            target, steps, details = compiled[i:i + 3]
            fields += [f"s:{target!s}", steps]
            if details:
                fields += [f"d:{target!s}", details]
        out.append(("HSET", key, *fields, "h", record.rules_hash, "n", str(current)))
        return out

    def state(self, name: str) -> ExperimentState | None:
        """The experiment's current state, folded from its state-writing entries (None: it has none)."""
        return self._fold(name)[0]

    def _fold(self, name: str) -> tuple[ExperimentState | None, dict[str, int]]:
        """The current state and the times the write scripts keep beside it (epoch µs): ``es``, when it
        entered its current state, and ``rs``, when it last entered Running or Ramping."""
        x = self.experiments[name]
        if not x.writes:
            return None, {}
        states = fold_states(x.writes, name, self.target.tenant, self.target.environment)
        entered: int | None = None
        running: int | None = None
        previous: ExperimentState | None = None
        for state in states:
            if previous is None or state.state is not previous.state:
                entered = to_micros(state.last_modified)
            if state.state in _RUNNING and (previous is None or previous.state not in _RUNNING):
                running = to_micros(state.last_modified)
            previous = state
        times = {"es": entered} if entered is not None else {}
        if running is not None:
            times["rs"] = running
        return states[-1], times

    def commands(self) -> Iterator[tuple[Any, ...] | IndexCall]:
        """Every XADD (in log order), the rules hash's HSETs, then each experiment's ``restore_index`` calls.

        The rules are compiled before the first command is given, so a version that cannot be
        compiled (CorruptDataError) stops the scope before anything of it is sent.
        """
        rules = self.rules_commands()
        yield from self.xadds
        yield from rules
        ops = self.target.ops()
        for name, x in self.experiments.items():
            keys = self.target.experiment(name).write_keys(ops)
            state, times = self._fold(name)
            state_text = "" if state is None else _state_text(state, times)
            for start in range(0, len(x.ids), INDEX_CHUNK):
                last = start + INDEX_CHUNK >= len(x.ids)
                yield IndexCall(name, keys, (name, state_text if last else "", *x.ids[start:start + INDEX_CHUNK]))


def _check(entry_id: str, kind: str, fields: Mapping[str, bytes], log_key: str) -> None:
    """An entry restore_index can index: a known kind and a record its decoder accepts."""
    try:
        DECODERS[kind].decode(with_name(fields["x"], fields["r"]))
    except (KeyError, ValueError, msgspec.DecodeError) as exc:
        raise CorruptDataError(f"log entry {entry_id} of {log_key} cannot be decoded: {exc!r}") from None


def _state_text(state: ExperimentState, times: Mapping[str, int] | None = None) -> str:
    """The state hash fields restore_index writes ('\\n'-separated pairs; names and JSON hold no newline)."""
    parts = ["s", state.state.value, "v", str(state.config_version), "t", str(to_micros(state.last_modified))]
    if state.last_modified_by:
        parts += ["b", state.last_modified_by]
    parts += ["m", ENCODER.encode(state.metadata).decode("utf-8"), "e", state.etag, "r", str(state.revision)]
    for field_name, value in sorted((times or {}).items()):
        parts += [field_name, str(value)]
    return "\n".join(parts)


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
    raise SqlCopyError(f"the SQL copy at {url} holds the prefixes {', '.join(map(repr, prefixes))}",
                       remedy="say which to restore with {option}", option="source_prefix", value="'<prefix>'")


def _is_cluster(client: Any) -> bool:
    return type(client).__name__ == "RedisCluster"


def restore(backplane: Backplane, url: str, *, force: bool = False, progress: bool = True,
            source_prefix: str | None = None) -> RestoreSummary:
    """Rebuild the scopes of the SQL copy at ``url`` into ``backplane``'s prefix.

    The copy's scopes of ``source_prefix`` (default: the backplane's prefix if the copy
    has it, else the copy's only prefix) are restored under the backplane's prefix,
    with their original entry ids and every index. A non-empty target prefix is
    refused unless ``force``, which replaces the keys of each restored scope (keys of
    other scopes stay). Atomicity: on a single server each scope is one MULTI/EXEC
    under WATCH of its log, so a failure (or a write to the scope meanwhile) leaves
    nothing of that scope written; on a Cluster it is not atomic, and a failure
    midway deletes what was written of the scope. Scopes are restored one by one.
    ``progress`` shows a bar on a terminal. Returns a RestoreSummary. Raises
    SqlCopyError (the copy cannot be used, the target is not empty, a scope was
    written to meanwhile), CorruptDataError (an entry in the copy cannot be decoded),
    AccessDeniedError and other RedgovErrors for server refusals.
    """
    started = time.perf_counter()
    client = backplane.client
    target = backplane.prefix
    script = client.register_script(backplane.core.specs[_SCRIPT].text)
    with SqlCopy(url, create=False) as copy:
        chosen = _choose_prefix(copy.scopes(), source_prefix, target, copy.url)
        rows = copy.scopes(chosen)
        summary = RestoreSummary(url=copy.url, prefix=target, source_prefix=chosen)
        if not force:
            with redis_refusals(f"restoring into prefix {target!r}"):
                for key in client.scan_iter(match=prefix_pattern(target), count=1000):
                    shown = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else str(key)
                    raise SqlCopyError(f"the restore target prefix {target!r} is not empty (it has {shown}, ...)",
                                       remedy="restore into an empty prefix, or pass {option} to replace the "
                                       "scopes the copy holds", option="force", value="True")
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
                rebuild.rules_commands()  # compiled (or refused) before anything of the scope is written
                with redis_refusals(f"restoring scope {scope!r}"):
                    if _is_cluster(client):
                        replaced = _write_scope_cluster(client, script, scope, rebuild, force)
                    else:
                        replaced = _write_scope(client, script, scope, rebuild, force)
                summary.replaced_keys += replaced
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


class redis_refusals:
    """Server error replies as redgov errors (ACL refusals, wrong types, ...) or a SqlCopyError naming
    ``what``, so no bare redis ResponseError reaches a user of the SQL copy commands."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ResponseError):
            mapped = map_reply_error(exc)
            if isinstance(mapped, RedgovError):
                raise mapped from exc
            raise SqlCopyError(f"{self.what}: the server refused: {exc}") from exc


def _scope_keys(client: Any, scope: Scope) -> list[Any]:
    return list(client.scan_iter(match=glob_escape(scope.tag) + ":*", count=1000))


def _written_to(scope: Scope) -> SqlCopyError:
    return SqlCopyError(f"scope {scope!r} was written to during the restore; nothing of it was restored "
                        "(run restore again)")


def _write_scope(client: Any, script: Script, scope: Scope, rebuild: ScopeRebuild, force: bool) -> int:
    """One MULTI/EXEC under WATCH of the scope log; returns the number of keys it replaced."""
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(scope.log)  # first: any script writing to the scope from now on aborts the EXEC
            existing: list[Any] = []
            if force:
                existing = _scope_keys(client, scope)
            elif client.exists(scope.log):  # every write appends to the log: written since the emptiness check
                raise _written_to(scope)
            pipe.multi()
            for start in range(0, len(existing), 500):
                pipe.execute_command("DEL", *existing[start:start + 500])
            for step in rebuild.commands():
                if isinstance(step, IndexCall):
                    script(keys=step.keys, args=step.args, client=pipe)
                else:
                    pipe.execute_command(*step)
            replies = pipe.execute(raise_on_error=False)
        except WatchError:
            raise _written_to(scope) from None
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:  # validated before sending, so this is the server refusing (memory, ...)
        _undo(client, scope)
        raise _refused(scope, failed, force)
    return len(existing)


def _write_scope_cluster(client: Any, script: Script, scope: Scope, rebuild: ScopeRebuild, force: bool) -> int:
    """The XADDs in pipelined batches, then the script calls one by one (not atomic: a Cluster pipeline
    cannot queue scripts); a failure deletes what was written of the scope."""
    if not force and client.exists(scope.log):
        raise _written_to(scope)
    existing = _scope_keys(client, scope) if force else []
    for start in range(0, len(existing), 500):
        client.delete(*existing[start:start + 500])
    try:
        pipe = client.pipeline()
        queued = 0
        for step in rebuild.commands():
            if isinstance(step, IndexCall):
                if queued:
                    _flush(pipe)
                    queued = 0
                script(keys=step.keys, args=step.args, client=client)
                continue
            pipe.execute_command(*step)
            queued += 1
            if queued >= _CLUSTER_FLUSH:
                _flush(pipe)
                queued = 0
        if queued:
            _flush(pipe)
    except ResponseError as exc:
        _undo(client, scope)
        raise _refused(scope, exc, force) from exc
    except BaseException:
        _undo(client, scope)
        raise
    return len(existing)


def _flush(pipe: Any) -> None:
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, ResponseError):
            raise reply


def _undo(client: Any, scope: Scope) -> None:
    keys = _scope_keys(client, scope)
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])


def _refused(scope: Scope, error: BaseException, force: bool) -> Exception:
    """The error of a scope whose restore the server refused midway (what was written is deleted again)."""
    outcome = "nothing of it was restored" + (", and its previous keys are gone (forced)" if force else "")
    if isinstance(error, ResponseError):
        mapped = map_reply_error(error, script=_SCRIPT)
        if isinstance(mapped, RedgovError):
            return type(mapped)(f"restoring scope {scope!r}: {mapped}; {outcome}")
    return SqlCopyError(f"restoring scope {scope!r}: the server refused: {error}; {outcome}")
