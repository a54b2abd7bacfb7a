"""The ``redgov`` command line (console script ``redgov.cli:main``, and ``python -m redgov``).

Modules: ``parser`` (every command and option, with help), ``context`` (url,
prefix, scope, config, archive -> Governance), ``output`` (JSON objects, tables,
colour), ``exits`` (the one function deciding exit codes), ``commands``,
``reads``, ``coordination`` (lease, wait), ``tools`` and ``web`` (serve, users) (the commands themselves).

Exit status: 0 success, 1 a governance refusal, 2 bad usage or configuration,
3 the server or the stored data failed (4: a bug in redgov); ``wait`` exits 1 when its
``--timeout`` passes first. An error is one line on stderr labelled by what it is
(``redgov: refused|error|failed|timed out: ...``). With ``--json`` every outcome, errors
included, is one JSON object on stdout and nothing goes to stderr but warnings; ``--debug``
re-raises errors with their traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from . import commands, coordination, reads, tools, web
from .context import Context, safe_url
from .exits import exit_code, label, message_for
from .output import Output
from .parser import UsageError, build_parser, wants_json

__all__ = ["COMMANDS", "build_parser", "exit_code", "main"]

COMMANDS: dict[str, Callable[[Context], int]] = {**commands.COMMANDS, **reads.COMMANDS, **coordination.COMMANDS,
                                                 **tools.COMMANDS, **web.COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    out = Output(wants_json(arguments))
    debug = "--debug" in arguments
    ctx: Context | None = None
    try:
        args = build_parser().parse_args(arguments)
        out = Output(bool(args.json))
        debug = bool(args.debug)
        ctx = Context(args, out)
        return COMMANDS[args.command](ctx)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # every error becomes one line (or object) and an exit status
        if debug and not isinstance(error, UsageError):
            raise
        code = exit_code(error)
        out.error(type(error).__name__, message_for(error, code, _where(ctx), _store(ctx)), code,
                  label(code, error), getattr(error, "usage", ""))
        return code


def _where(ctx: Context | None) -> str | None:
    """The url the command used, credentials hidden (None before it was known)."""
    if ctx is None:
        return None
    try:
        return safe_url(ctx.url)
    except Exception:  # noqa: BLE001 - a url that cannot even be formed: the message says why already
        return None


def _store(ctx: Context | None) -> str | None:
    """The store and scope the command used, and how to use another (None before they were known)."""
    if ctx is None:
        return None
    try:
        return f"{ctx.store_text()}: {ctx.store_hint()}"
    except Exception:  # noqa: BLE001 - as in _where
        return None
