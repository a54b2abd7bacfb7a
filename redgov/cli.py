"""The ``redgov`` command line.

Global options come before the command. The URL is ``--url``, else
``$REDGOV_URL``, else the config's persistence settings, else
``embedded://.redgov/redgov.db`` (works with no Redis server). Exit status:
0 success, 1 a governance refusal (conflict, invalid transition, approval,
policy, not found), 2 bad usage or configuration. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn, TypedDict

import msgspec
from redis.exceptions import RedisError

from . import __version__
from .backplane import Backplane
from .connect import connect
from .errors import ConfigError, RedgovError, ValidationError
from .governance import Governance
from .records import ExperimentState, LifecycleState

__all__ = ["main"]

DEFAULT_URL = "embedded://.redgov/redgov.db"
REFUSED, USAGE = 1, 2
STATE_NAMES = ", ".join(s.value for s in LifecycleState)


class ScopeArgs(TypedDict):
    tenant: str | None
    environment: str | None


class UsageError(Exception):
    """Bad usage: exit 2."""


def _state(text: str) -> LifecycleState:
    try:
        return LifecycleState(text)
    except ValueError:
        for state in LifecycleState:
            if state.value.lower() == text.lower() or state.name.lower() == text.lower():
                return state
        raise argparse.ArgumentTypeError(f"unknown state {text!r}; one of {STATE_NAMES}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a version number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a version number >= 1, got {value}")
    return value


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time with a timezone, got {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no timezone; add Z or +00:00")
    return moment


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="redgov", description="Redis-native experiment governance.")
    parser.add_argument("--url", help=f"Redis url (default $REDGOV_URL, else {DEFAULT_URL})")
    parser.add_argument("--prefix", help="key prefix (default: the config's keyPrefix, else gov)")
    parser.add_argument("--config", help="governance config file (YAML or JSON)")
    parser.add_argument("--tenant", help="tenant of the scope")
    parser.add_argument("--env", dest="environment", help="environment of the scope")
    parser.add_argument("--json", action="store_true", help="print JSON objects")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"redgov {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help)

    command("demo", "walk a sample experiment through its whole lifecycle")
    p = command("create", "create an experiment in the initial state")
    p.add_argument("experiment")
    p.add_argument("--actor")
    p = command("state", "show an experiment's current state")
    p.add_argument("experiment")
    p = command("history", "list an experiment's transitions")
    p.add_argument("experiment")
    p = command("transition", "move an experiment to another state")
    p.add_argument("experiment")
    p.add_argument("state", type=_state)
    p.add_argument("--actor")
    p.add_argument("--reason")
    p.add_argument("--role", help="the actor's role (metadata actorRole, for role gates)")
    p.add_argument("--etag", help="refuse unless the state still has this etag")
    p = command("approve", "record an approval of a move (for a manual gate)")
    p.add_argument("experiment")
    p.add_argument("state", type=_state)
    p.add_argument("--approver", required=True)
    p.add_argument("--reason")
    p.add_argument("--reject", action="store_true", help="record a rejection instead")
    p = command("versions", "list an experiment's configuration versions")
    p.add_argument("experiment")
    p = command("rollback", "restore the configuration of version N as a new version")
    p.add_argument("experiment")
    p.add_argument("version", type=_positive_int)
    p.add_argument("--actor")
    p = command("diff", "path-level changes between two configuration versions")
    p.add_argument("experiment")
    p.add_argument("a", type=_positive_int)
    p.add_argument("b", type=_positive_int)
    p = command("replay", "fold an experiment's event log into its state")
    p.add_argument("experiment")
    p.add_argument("--until", type=_when, help="the state as of this time (ISO 8601)")
    p = command("verify", "compare replayed and stored state (one experiment or the whole scope)")
    p.add_argument("experiment", nargs="?")
    p = command("watch", "print the scope's events as they happen (Ctrl-C stops)")
    p.add_argument("--from", dest="from_id", default="$", help="'0' replays from the start; default: new ones")
    p.add_argument("--experiment", action="append", dest="experiments")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p = command("export", "copy the live state and history to SQL")
    p.add_argument("--to", dest="to_url", help="SQL url (default $REDGOV_EXPORT_URL, else the config's export url)")
    p.add_argument("--follow", action="store_true", help="keep tailing the logs until SIGINT/SIGTERM")
    p.add_argument("--trim", action="store_true",
                   help="then remove the exported history from Redis, experiment by experiment")
    p.add_argument("--keep", type=float, help="seconds of recent entries trimming keeps")
    p = command("restore", "rebuild Redis from a SQL copy")
    p.add_argument("--from", required=True, dest="from_url")
    p.add_argument("--force", action="store_true")
    p.add_argument("--source-prefix", dest="source_prefix")
    p = command("trim", "remove from Redis the history the SQL copy holds (per experiment, never beyond it)")
    p.add_argument("--to", dest="to_url", help="SQL url of the copy (default $REDGOV_EXPORT_URL)")
    p.add_argument("--keep", type=float, help="seconds of recent entries to keep")
    p = command("bench", "run the benchmarks briefly and print their ratio tables")
    p.add_argument("--n", type=int, default=2000)
    command("schema", "print the JSON Schema of the configuration DSL")
    return parser


# -- output ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


class Out:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, obj: Any, text: str) -> None:
        if self.as_json:
            sys.stdout.write(msgspec.json.encode(_plain(obj)).decode() + "\n")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def table(self, rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
        cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in row] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _state_line(state: ExperimentState | None, experiment: str) -> str:
    if state is None:
        return f"{experiment}: no state"
    by = f" by {state.last_modified_by}" if state.last_modified_by else ""
    return (f"{state.experiment}: {state.state.value} (revision {state.revision}, config v{state.config_version}, "
            f"etag {state.etag}, {state.last_modified.isoformat(timespec='seconds')}{by})")


def _state_obj(state: ExperimentState | None, experiment: str) -> dict[str, Any]:
    if state is None:
        return {"experiment": experiment, "state": None}
    return _plain(state)  # type: ignore[no-any-return]


# -- context -------------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Out(args.json)
        self.tenant: str | None = args.tenant
        self.environment: str | None = args.environment
        self._config: Any = None
        if args.config:
            from .config import load_config

            self._config = load_config(args.config)

    @property
    def url(self) -> str:
        if self.args.url:
            return str(self.args.url)
        if os.environ.get("REDGOV_URL"):
            return os.environ["REDGOV_URL"]
        if self._config is not None and self._config.persistence is not None:
            return str(self._config.url())
        return DEFAULT_URL

    @property
    def prefix(self) -> str:
        if self.args.prefix:
            return str(self.args.prefix)
        if self._config is not None:
            return str(self._config.prefix)
        return "gov"

    @contextmanager
    def governance(self) -> Iterator[Governance]:
        backplane = self.backplane_open()
        try:
            if self._config is not None:
                gov = Governance(backplane, gates=self._config.gates(), policies=self._config.policies(),
                                 initial_state=self._config.initial_state,
                                 auto_versioning=self._config.auto_versioning)
            else:
                gov = Governance(backplane)
            yield gov
        finally:
            backplane.close()

    def backplane_open(self) -> Backplane:
        kwargs: dict[str, Any] = {}
        if self._config is not None and not self._config.optimistic_concurrency:
            kwargs["optimistic_concurrency"] = False
        if self._config is not None and self._config.retain_history is not None:
            kwargs["retain_history"] = self._config.retain_history
        return connect(self.url, prefix=self.prefix, **kwargs)

    @property
    def scope(self) -> ScopeArgs:
        return {"tenant": self.tenant, "environment": self.environment}


# -- commands ------------------------------------------------------------------------


def cmd_create(ctx: Context) -> int:
    with ctx.governance() as gov:
        state = gov.create(ctx.args.experiment, actor=ctx.args.actor, **ctx.scope)
    ctx.out.emit(state, "created " + _state_line(state, state.experiment))
    return 0


def cmd_state(ctx: Context) -> int:
    with ctx.governance() as gov:
        state = gov.state(ctx.args.experiment, **ctx.scope)
    ctx.out.emit(_state_obj(state, ctx.args.experiment), _state_line(state, ctx.args.experiment))
    return 0 if state is not None else REFUSED


def cmd_history(ctx: Context) -> int:
    with ctx.governance() as gov:
        history = gov.history(ctx.args.experiment, **ctx.scope)
    rows = [(t.timestamp.isoformat(timespec="seconds"), t.from_state.value if t.from_state else "-",
             t.to_state.value, t.actor, t.reason) for t in history]
    text = ctx.out.table(rows, ["time", "from", "to", "actor", "reason"]) if rows else "no transitions"
    ctx.out.emit({"experiment": ctx.args.experiment, "transitions": history}, text)
    return 0


def cmd_transition(ctx: Context) -> int:
    a = ctx.args
    metadata = {"actorRole": a.role} if a.role else None
    with ctx.governance() as gov:
        moved = gov.transition(a.experiment, a.state, actor=a.actor, reason=a.reason, metadata=metadata,
                               expected_etag=a.etag, **ctx.scope)
        state = gov.state(a.experiment, **ctx.scope)
    from_name = moved.from_state.value if moved.from_state else "-"
    ctx.out.emit({"experiment": a.experiment, "state": moved.to_state, "transition": moved,
                  "revision": state.revision if state else None},
                 f"{a.experiment}: {from_name} -> {moved.to_state.value}")
    return 0


def cmd_approve(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance() as gov:
        record = gov.approve(a.experiment, a.state, approver=a.approver, reason=a.reason, approved=not a.reject,
                             **ctx.scope)
    verb = "approved" if record.approved else "rejected"
    source = record.from_state.value if record.from_state else "?"
    ctx.out.emit({"experiment": a.experiment, "state": source, "approval": record},
                 f"{a.experiment}: {source} -> {record.to_state.value} {verb} by {record.approver}")
    return 0


def cmd_versions(ctx: Context) -> int:
    with ctx.governance() as gov:
        versions = gov.backplane.versions(ctx.args.experiment, **ctx.scope)
        state = gov.state(ctx.args.experiment, **ctx.scope)
    rows = [(v.version, v.created_at.isoformat(timespec="seconds"), v.created_by,
             f"rollback of v{v.rolled_back_from}" if v.is_rollback else (v.description or ""),
             v.configuration_hash[:12], "*" if state and state.config_version == v.version else "")
            for v in versions]
    text = ctx.out.table(rows, ["version", "created", "by", "description", "hash", "live"]) if rows else "no versions"
    ctx.out.emit({"experiment": ctx.args.experiment, "state": state.state if state else None,
                  "versions": versions}, text)
    return 0


def cmd_rollback(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance() as gov:
        version = gov.rollback(a.experiment, a.version, actor=a.actor, **ctx.scope)
        state = gov.state(a.experiment, **ctx.scope)
    ctx.out.emit({"experiment": a.experiment, "state": state.state if state else None, "version": version},
                 f"{a.experiment}: version {version.version} restores the configuration of version {a.version}")
    return 0


def cmd_diff(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance() as gov:
        changes = gov.diff(a.experiment, a.a, a.b, **ctx.scope)
    rows = [(c.kind, c.path, _short(c.old), _short(c.new)) for c in changes]
    text = ctx.out.table(rows, ["change", "path", "old", "new"]) if rows else "no differences"
    ctx.out.emit({"experiment": a.experiment, "from": a.a, "to": a.b, "changes": changes}, text)
    return 0


def _short(value: Any) -> str:
    if value is None:
        return ""
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def cmd_replay(ctx: Context) -> int:
    with ctx.governance() as gov:
        state = gov.replay(ctx.args.experiment, until=ctx.args.until, **ctx.scope)
    ctx.out.emit(_state_obj(state, ctx.args.experiment), "replayed " + _state_line(state, ctx.args.experiment))
    return 0


def cmd_verify(ctx: Context) -> int:
    with ctx.governance() as gov:
        if ctx.args.experiment:
            names = [ctx.args.experiment]
        else:
            names = [state.experiment for state in gov.experiments(**ctx.scope)]
        problems = {name: gov.verify(name, **ctx.scope) for name in names}
    bad = {k: v for k, v in problems.items() if v}
    lines = [f"{name}: {'ok' if not diffs else '; '.join(diffs)}" for name, diffs in problems.items()]
    ctx.out.emit({"experiments": len(names), "consistent": not bad, "differences": bad},
                 "\n".join(lines) if lines else "no experiments in this scope")
    return REFUSED if bad else 0


def cmd_watch(ctx: Context) -> int:
    a = ctx.args
    with ctx.governance() as gov:
        try:
            for event in gov.watch(experiments=a.experiments, from_id=a.from_id, timeout=a.timeout, **ctx.scope):
                record = event.record
                what = getattr(record, "to_state", None) or getattr(record, "state", None)
                summary = f"{event.id} {event.kind:<10} {event.experiment}"
                if what is not None:
                    summary += f" {getattr(what, 'value', what)}"
                ctx.out.emit({"id": event.id, "kind": event.kind, "experiment": event.experiment,
                              "state": what, "record": record}, summary)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_demo(ctx: Context) -> int:
    from .demo import run_demo

    return run_demo(ctx.url, ctx.prefix, ctx.out.as_json)


def cmd_schema(ctx: Context) -> int:
    from .config import config_schema

    sys.stdout.write(msgspec.json.format(msgspec.json.encode(config_schema())).decode() + "\n")
    return 0


def cmd_bench(ctx: Context) -> int:
    from .bench import run_benchmarks

    return run_benchmarks(ctx.url if ctx.args.url or os.environ.get("REDGOV_URL") else None, ctx.args.n,
                          ctx.out.as_json)


def cmd_sql(ctx: Context) -> int:
    from .sql.command import cli

    return cli(ctx)


COMMANDS: dict[str, Callable[[Context], int]] = {
    "create": cmd_create, "state": cmd_state, "history": cmd_history, "transition": cmd_transition,
    "approve": cmd_approve, "versions": cmd_versions, "rollback": cmd_rollback, "diff": cmd_diff,
    "replay": cmd_replay, "verify": cmd_verify, "watch": cmd_watch, "demo": cmd_demo, "schema": cmd_schema,
    "bench": cmd_bench, "export": cmd_sql, "restore": cmd_sql, "trim": cmd_sql,
}


def exit_code(error: BaseException) -> int:
    """The one place that decides exit codes: refusals 1, usage and configuration 2."""
    if isinstance(error, (ConfigError, ValidationError, UsageError)):
        return USAGE
    if isinstance(error, RedgovError):
        return REFUSED
    raise error


def _safe_url(args: argparse.Namespace) -> str:
    url = args.url or os.environ.get("REDGOV_URL") or DEFAULT_URL
    if "@" in url:  # hide credentials
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://***@{rest.split('@', 1)[1]}"
    return str(url)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ctx = Context(args)
        return COMMANDS[args.command](ctx)
    except (RedgovError, UsageError) as error:
        if args.debug:
            raise
        code = exit_code(error)
        label = "refused" if code == REFUSED else "error"
        if args.json:
            sys.stdout.write(msgspec.json.encode({"error": type(error).__name__, "message": str(error),
                                                  "exit": code}).decode() + "\n")
        sys.stderr.write(f"redgov: {label}: {error}\n")
        return code
    except (OSError, RedisError) as error:  # unreachable server, unwritable directory
        if args.debug:
            raise
        sys.stderr.write(f"redgov: error: cannot use {_safe_url(args)}: {error}\n")
        return USAGE
    except KeyboardInterrupt:
        return 130

