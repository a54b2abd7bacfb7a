"""The ``redgov`` argument parser: every command, argument and option, each with its help.

Global options (``--url --prefix --config --tenant --env --archive --json --debug``)
are accepted before or after the command: they are added twice, to the main parser
with real defaults and to every subcommand with ``default=argparse.SUPPRESS``, so a
value given before the command is not overwritten by a subcommand's default. They are
described once, in ``redgov --help``: a subcommand's copies are hidden from its help,
which ends with one line pointing there (``POINTER``). Usage errors raise ``UsageError`` (exit 2)
instead of exiting, so ``--json`` can report them like any other error.
"""

from __future__ import annotations

import argparse
import math
from datetime import datetime, timedelta
from typing import Any, NoReturn

from .. import __version__
from ..govcore import MAX_VALID_FOR
from ..govleases import MAX_TTL
from ..records import LifecycleState
from ..rules import DEFAULT_RULES

__all__ = ["DEFAULT_URL", "GLOBAL_OPTIONS", "POINTER", "STATE_NAMES", "UsageError", "build_parser", "rules_text",
           "wants_json"]

DEFAULT_URL = "embedded://.redgov/redgov.db"
#: the options every command accepts, before or after it
GLOBAL_OPTIONS = ("--url", "--prefix", "--config", "--tenant", "--env", "--archive", "--json", "--debug")
#: the last line of every subcommand's help
POINTER = "global options (--url, --prefix, --config, --json, ...): see `redgov --help`"
STATE_NAMES = ", ".join(s.value for s in LifecycleState)


class UsageError(Exception):
    """Bad usage of the command line (exit 2); ``usage`` is the usage line of the parser that refused."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


def rules_text() -> str:
    """The default lifecycle rules, one ``from -> to, to`` line per state (as in README)."""
    width = max(len(s.value) for s in LifecycleState)
    lines = []
    for source in LifecycleState:
        targets = [t.value for t in LifecycleState if t in DEFAULT_RULES[source]]
        lines.append(f"  {source.value:<{width}} -> {', '.join(targets) if targets else '(terminal)'}")
    return "\n".join(lines)


# -- argument types --------------------------------------------------------------------


def _state(text: str) -> LifecycleState:
    try:
        return LifecycleState(text)
    except ValueError:
        for state in LifecycleState:
            if text.lower() in (state.value.lower(), state.name.lower()):
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


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of entries, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of entries >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _duration(limit: timedelta) -> Any:
    """An argument type: a number of seconds from 0.001 to ``limit`` (what the library accepts)."""
    most = limit.total_seconds()

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        if not math.isfinite(value) or not 0.001 <= value <= most:
            raise argparse.ArgumentTypeError(f"expected a number of seconds from 0.001 to {most:g} "
                                             f"({limit.days} days), got {text!r}")
        return value

    return parse


def _token(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a lease token (a positive integer), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a lease token (a positive integer), got {value}")
    return value


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time with a timezone, got {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no timezone; add Z or +00:00")
    return moment


def _telemetry(text: str) -> tuple[str, float | int]:
    """``KEY=VALUE`` with a finite number as the value."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"telemetry {text!r} is not KEY=VALUE (e.g. errorRate=0.01)")
    try:
        value: float | int = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"telemetry {text!r}: the value of {key} must be a number, "
                                             f"got {raw!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(
                f"telemetry {text!r}: the value of {key} must be a finite number") from None
    return key, value


# -- the parsers -----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks (state lists, rules, exit codes)."""


def _global_options(parser: argparse.ArgumentParser, *, after: bool) -> None:
    """The options every command accepts; ``after``: a subcommand's copies, which default to SUPPRESS and
    are hidden from its help (which ends with ``POINTER`` instead)."""
    group: Any
    if after:
        group = _Hidden(parser)
        parser.epilog = f"{parser.epilog}\n\n{POINTER}" if parser.epilog else POINTER
    else:
        group = parser.add_argument_group("global options (before or after the command)")

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after else value

    group.add_argument("--url", default=default(None), metavar="URL",
                       help=f"Redis url: redis://, rediss://, unix://, redis+cluster://, memory://, embedded:// "
                            f"(default: $REDGOV_URL, else the config's persistence, else {DEFAULT_URL})")
    group.add_argument("--prefix", default=default(None), metavar="P",
                       help="key prefix of the installation (default: the config's keyPrefix, else gov)")
    group.add_argument("--config", default=default(None), metavar="FILE",
                       help="governance config file (YAML or JSON): rules, gates, policies, persistence, export url "
                            "(`rules publish` publishes its governance section)")
    group.add_argument("--tenant", default=default(None), metavar="T", help="tenant of the scope (default: none)")
    group.add_argument("--env", dest="environment", default=default(None), metavar="E",
                       help="environment of the scope (default: none)")
    group.add_argument("--archive", default=default(None), metavar="SQL_URL",
                       help="SQL copy that history reads fall back to after `redgov trim` or retention "
                            "(default: $REDGOV_EXPORT_URL, else the config's persistence.export.url)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print exactly one JSON object per outcome on stdout, errors included (then nothing "
                            "goes to stderr but warnings); records carry every field")
    group.add_argument("--debug", action="store_true", default=default(False),
                       help="show the traceback of an error instead of one line")


class _Hidden:
    """Adds arguments to a parser with their help hidden (a subcommand's copies of the global options)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        kwargs["help"] = argparse.SUPPRESS
        return self.parser.add_argument(*names, **kwargs)


def _actions(parser: argparse.ArgumentParser, dest: str, details: str) -> Any:
    """Nested commands (``users add``): a function adding one, with its summary, and the global options."""
    actions = parser.add_subparsers(dest=dest, metavar="ACTION", parser_class=_Parser, title="actions")
    actions.required = True

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=summary, description=summary + ("\n\n" + details if details else ""),
                                 formatter_class=_Formatter)
        _global_options(sub, after=True)
        return sub

    return action


DESCRIPTION = """\
Redis-native experiment governance: lifecycle state, transitions, approvals,
configuration versions and policy evaluations, authoritative across processes.

lifecycle states: {states}

store: --url, else $REDGOV_URL, else the config's persistence, else {default}
(a Redis server redgov starts, its data in .redgov/ in the current folder). The Python
examples use a server such as redis://localhost:6379: pass --url redis://localhost:6379,
or export REDGOV_URL=redis://localhost:6379 once for every command.
"""

EPILOG = """\
exit status (an error is one line on stderr, "redgov: refused|error|failed: ..." as below, "timed out"
for wait; with --json it is one JSON object on stdout instead):
    0  success
    1  a governance refusal (conflict, invalid transition, approval, policy, lease, not found;
       verify: differences found; wait: none of the states reached within --timeout)
    2  bad usage or configuration (unknown command, option or state; bad config or input file)
    3  the server or the stored data failed (cannot connect, timeout, permission, corrupt data,
       the embedded server cannot start)
    4  a bug in redgov (an unexpected error; --debug shows its traceback)

`redgov COMMAND --help` describes a command's arguments and options.
"""


LEASE_DETAILS = """\
A lease names one owner of an experiment until it expires (judged by the Redis server's clock).
Every acquisition gets a larger fencing token; pass it to writes with
--lease-owner O --lease-token N (transition, configure, rollback): they are refused (exit 1)
once the lease expired or another owner acquired it. The same owner acquiring again renews it.

  redgov lease acquire checkout --owner ctl-a --ttl 30
  redgov lease renew checkout --owner ctl-a --token N --ttl 30
  redgov lease release checkout --owner ctl-a --token N
  redgov lease show checkout
"""

WAIT_DETAILS = """\
Prints the state as soon as the experiment is in one of STATE (at once if it already is) and
exits 0. When --timeout passes first it exits 1 ("redgov: timed out: ..."; with --json the error
is WaitTimeoutError), as a refusal does; a failure of the server exits 3:

  redgov wait checkout Paused --timeout 60 && take-over
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="redgov", description=DESCRIPTION.format(states=STATE_NAMES, default=DEFAULT_URL),
                     epilog=EPILOG,
                     formatter_class=_Formatter)
    _global_options(parser, after=False)
    parser.add_argument("--version", action="version", version=f"redgov {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                     title="commands")
    commands.required = True

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary + ("\n\n" + details if details else ""),
                                  formatter_class=_Formatter)
        _global_options(sub, after=True)
        return sub

    def experiment(sub: argparse.ArgumentParser, what: str = "the experiment's name") -> None:
        sub.add_argument("experiment", metavar="EXP", help=what)

    def scope_limit(sub: argparse.ArgumentParser, entries: str) -> None:
        sub.add_argument("--limit", type=_limit, metavar="N", help=f"show at most N {entries}")
        sub.add_argument("--newest-first", action="store_true", dest="newest_first",
                         help=f"newest {entries} first (with --limit: the newest N)")

    def idempotency(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--idempotency-key", dest="idempotency_key", metavar="K",
                         help="run this write at most once: a repeat with the same key returns the first result")

    def fence(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--lease-owner", dest="lease_owner", metavar="O",
                         help=f"with --lease-token: {what} only while that lease (from `redgov lease acquire`) is "
                              "still the experiment's current one; refused (exit 1) once it expired or was taken over")
        sub.add_argument("--lease-token", dest="lease_token", type=_token, metavar="N",
                         help="the fencing token `redgov lease acquire` printed (with --lease-owner)")

    states_help = f"one of: {STATE_NAMES}"
    rules = "default transition rules (from -> allowed to):\n" + rules_text()

    # -- reading and changing the lifecycle
    p = command("list", "list the experiments of the scope, by name")
    p.add_argument("--state", type=_state, metavar="STATE", help=f"only experiments in this state ({states_help})")

    p = command("create", "create an experiment in the initial state (with configuration version 1)")
    experiment(p, "the new experiment's name")
    p.add_argument("--configuration", metavar="FILE",
                   help="its first configuration version, from a YAML or JSON file ('-': standard input)")
    p.add_argument("--actor", help="who creates it (recorded)")
    idempotency(p)

    p = command("state", "show an experiment's current state")
    experiment(p)

    p = command("transition", "move an experiment to another state",
                f"states: {STATE_NAMES}\n\n{rules}\n\nGates (manual approvals, roles) and policies from --config "
                "apply on top of the rules.\nOnce the scope has published rules (`redgov rules publish`), those "
                "govern: without\n--config the command follows them, and a --config defining other rules is "
                "refused (exit 2).")
    experiment(p)
    p.add_argument("state", type=_state, metavar="STATE", help=f"the target state, {states_help}")
    p.add_argument("--actor", help="who moves it (recorded)")
    p.add_argument("--reason", help="why (recorded with the transition)")
    p.add_argument("--telemetry", type=_telemetry, action="append", metavar="KEY=VALUE",
                   help="a number the policies read, e.g. errorRate=0.01, trafficPercentage=20, "
                        "runningDuration=3600 (repeat for several)")
    p.add_argument("--role", help="the actor's role, recorded as metadata actorRole (what role gates check)")
    p.add_argument("--etag", help="refuse with a conflict unless the stored state still has this etag")
    fence(p, "move it")
    idempotency(p)

    p = command("approve", "record an approval (or a rejection) of a move, for a manual gate",
                f"states: {STATE_NAMES}\n\nThe approval is for the move from the current state to STATE; the next "
                "transition into STATE consumes it.")
    experiment(p)
    p.add_argument("state", type=_state, metavar="STATE", help=f"the state the approved move goes to, {states_help}")
    p.add_argument("--approver", required=True, help="who approves (recorded; required)")
    p.add_argument("--reason", help="why (recorded with the approval)")
    p.add_argument("--reject", action="store_true", help="record a rejection instead (withdraws a pending approval)")
    p.add_argument("--valid-for", dest="valid_for", type=_duration(MAX_VALID_FOR), metavar="SECONDS",
                   help="the approval satisfies the gate only this many seconds after it is recorded (server clock; "
                        "default: until it is consumed or lapses)")
    idempotency(p)

    p = command("request", "ask for a gated move, for approvers to decide (prints approvals given of needed)",
                f"states: {STATE_NAMES}\n\nThe request is for the move from the current state to STATE. It waits in "
                "the approvals inbox\nuntil the move is made, the experiment changes state or configuration, or a "
                "rejection\ncloses it. Unless the manual gate allows self-approval, the requester may not approve "
                "the\nmove (exit 1).\n\n  redgov request checkout Running --actor ana --reason \"ready\"\n"
                "  redgov approve checkout Running --approver bob\n"
                "  redgov transition checkout Running --actor ana")
    experiment(p)
    p.add_argument("state", type=_state, metavar="STATE", help=f"the state the requested move goes to, {states_help}")
    p.add_argument("--actor", required=True, help="who asks for the move (recorded; required)")
    p.add_argument("--reason", help="why (shown to the approvers)")
    idempotency(p)

    p = command("history", "list an experiment's transitions")
    experiment(p)
    scope_limit(p, "transitions")

    p = command("approvals", "list an experiment's approvals and rejections")
    experiment(p)
    scope_limit(p, "approvals")

    p = command("evaluations", "list an experiment's policy evaluations")
    experiment(p)
    scope_limit(p, "evaluations")

    # -- configuration versions
    p = command("configure", "add a configuration version from a YAML or JSON file")
    experiment(p)
    p.add_argument("file", metavar="FILE", help="the configuration: a YAML or JSON mapping ('-': standard input)")
    p.add_argument("--description", help="what changed (recorded with the version)")
    p.add_argument("--actor", help="who configures it (recorded)")
    fence(p, "write it")
    idempotency(p)

    p = command("versions", "list an experiment's configuration versions (* marks the live one)")
    experiment(p)
    scope_limit(p, "versions")

    p = command("diff", "path-level changes between two configuration versions")
    experiment(p)
    p.add_argument("a", type=_positive_int, metavar="A", help="the version to compare from")
    p.add_argument("b", type=_positive_int, metavar="B", help="the version to compare to")

    p = command("rollback", "restore the configuration of version N as a new version")
    experiment(p)
    p.add_argument("version", type=_positive_int, metavar="N", help="the version whose configuration is restored")
    p.add_argument("--actor", help="who rolls back (recorded)")
    fence(p, "write it")
    idempotency(p)

    # -- coordination
    p = command("lease", "acquire, renew or release an experiment's lease (a fencing token for its writes)",
                LEASE_DETAILS)
    actions = p.add_subparsers(dest="lease_command", metavar="ACTION", parser_class=_Parser, title="actions")
    actions.required = True

    def action(name: str, summary: str, *, owner: bool = True) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=summary, description=summary + "\n\n" + LEASE_DETAILS,
                                 formatter_class=_Formatter)
        _global_options(sub, after=True)
        experiment(sub)
        if owner:
            sub.add_argument("--owner", required=True, metavar="O",
                             help="who holds the lease: a host, process or controller id (required)")
        return sub

    ttl = _duration(MAX_TTL)
    q = action("acquire", "acquire the lease; print its owner, fencing token and expiry (exit 1 if another "
                          "owner holds it)")
    q.add_argument("--ttl", type=ttl, required=True, metavar="SECONDS",
                   help="how long it lasts unless renewed, in seconds (server clock; up to 7 days; required)")
    q = action("renew", "extend the lease, keeping its token (exit 1 if it expired or was taken over)")
    q.add_argument("--token", type=_token, required=True, metavar="N", help="the lease's fencing token (required)")
    q.add_argument("--ttl", type=ttl, required=True, metavar="SECONDS",
                   help="the new duration from now, in seconds (server clock; up to 7 days; required)")
    q = action("release", "end the lease now if it is still current (exit 0 either way; says which)")
    q.add_argument("--token", type=_token, required=True, metavar="N", help="the lease's fencing token (required)")
    action("show", "who holds the lease now: owner, token, expiry (exit 0; 'nobody' when none)", owner=False)

    p = command("wait", "wait until an experiment is in one of the states; print the state (exit 1 on timeout)",
                WAIT_DETAILS)
    experiment(p)
    p.add_argument("states", nargs="+", type=_state, metavar="STATE",
                   help=f"the states waited for (one or more), {states_help}")
    p.add_argument("--timeout", type=_seconds, required=True, metavar="SECONDS",
                   help="give up after this many seconds: exit 1 (0: only look; required)")

    # -- the event log
    p = command("replay", "fold an experiment's event log into its state")
    experiment(p)
    p.add_argument("--until", type=_when, metavar="TIME",
                   help="the state as of this time (ISO 8601 with a timezone, e.g. 2026-11-26T12:00:00Z)")

    p = command("verify", "compare replayed and stored state: one line per difference, exit 1 if any",
                "Without EXP every experiment of the scope is checked.")
    p.add_argument("experiment", nargs="?", metavar="EXP",
                   help="the experiment to check (default: every experiment of the scope)")

    p = command("watch", "print the scope's events as they happen (Ctrl-C stops)")
    p.add_argument("--from", dest="from_id", default="$", metavar="ID",
                   help="'0' replays from the first event, an event id resumes after it (default: new events only)")
    p.add_argument("--experiment", action="append", dest="experiments", metavar="EXP",
                   help="only this experiment's events (repeat for several)")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="stop after this many seconds")

    # -- the SQL copy
    p = command("export", "copy the live state and history to SQL (a progress bar on a terminal)")
    p.add_argument("--to", dest="to_url", metavar="SQL_URL",
                   help="SQL url, e.g. sqlite:///gov.db (default: $REDGOV_EXPORT_URL, else the config's export url)")
    p.add_argument("--follow", action="store_true", help="keep tailing the logs until SIGINT/SIGTERM")
    p.add_argument("--trim", action="store_true",
                   help="then remove the exported history from Redis, experiment by experiment")
    p.add_argument("--keep", type=_seconds, metavar="SECONDS", help="seconds of recent entries trimming keeps")

    p = command("restore", "rebuild the prefix from a SQL copy (a progress bar on a terminal)")
    p.add_argument("--from", required=True, dest="from_url", metavar="SQL_URL", help="the SQL copy (required)")
    p.add_argument("--force", action="store_true", help="replace the scopes the copy holds in a non-empty prefix")
    p.add_argument("--source-prefix", dest="source_prefix", metavar="P",
                   help="the copy's prefix to restore (default: --prefix if the copy has it, else its only one)")

    p = command("trim", "remove from Redis the history the SQL copy holds (per experiment, never beyond it)",
                "History reads then need the copy: --archive SQL_URL or the config's export url.")
    p.add_argument("--to", dest="to_url", metavar="SQL_URL",
                   help="SQL url of the copy (default: $REDGOV_EXPORT_URL, else the config's export url)")
    p.add_argument("--keep", type=_seconds, metavar="SECONDS", help="seconds of recent entries to keep")

    # -- published rules (declared in rules.py)
    from .rules import declare as declare_rules

    declare_rules(command, _actions, _positive_int)

    # -- the web UI: serve, users (declared in web.py)
    from .web import declare

    declare(command, _actions)

    # -- tools
    command("demo", "walk a sample experiment through its whole lifecycle")
    p = command("bench", "run the benchmarks briefly and print their ratio tables")
    p.add_argument("--n", type=_limit, default=2000, metavar="N", help="operations per benchmark (default 2000)")
    command("schema", "print the JSON Schema of the configuration DSL")
    return parser


def wants_json(argv: list[str]) -> bool:
    """Whether ``--json`` is among the options (before a ``--``): known before parsing, for usage errors."""
    for token in argv:
        if token == "--":
            return False
        if token == "--json":
            return True
    return False
