"""``redgov export|restore|trim``: the SQL copy's commands (the glue between the CLI and this package)."""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from .copy import SqlCopyError
from .exporter import export, follow
from .restorer import restore
from .trimmer import trim

__all__ = ["cli", "sql_url"]


def sql_url(ctx: Any, *names: str) -> str:
    """The SQL copy's url: the first of the options ``names`` given, else $REDGOV_EXPORT_URL, else the
    config's ``persistence.export.url``."""
    for name in names:
        value = getattr(ctx.args, name, None)
        if value:
            return str(value)
    if os.environ.get("REDGOV_EXPORT_URL"):
        return os.environ["REDGOV_EXPORT_URL"]
    config = getattr(ctx, "config", None)
    if config is not None and getattr(config, "export_url", None):
        return str(config.export_url)
    option = "--from" if ctx.args.command == "restore" else "--to"
    raise SqlCopyError(f"{ctx.args.command} needs the SQL copy's url: {option} URL, $REDGOV_EXPORT_URL or "
                       "persistence.export.url in the config")


def _keep(ctx: Any) -> timedelta:
    seconds = getattr(ctx.args, "keep", None)
    return timedelta(seconds=float(seconds)) if seconds else timedelta(0)


def cli(ctx: Any) -> int:
    """``redgov export|restore|trim``: one summary line (or JSON object) on stdout, warnings on stderr.

    Export and restore show a progress bar on stderr when it is a terminal and --json is not given
    (``export --trim``: the trim's bar after the copy's).
    Errors are raised (SqlCopyError, a ConfigError; redgov and redis errors) for the CLI to report.
    """
    command = ctx.args.command
    show = not ctx.out.as_json
    backplane = ctx.backplane_open()
    try:
        result: Any
        if command == "export":
            url = sql_url(ctx, "to_url")
            trimming, keep = bool(getattr(ctx.args, "trim", False)), _keep(ctx)
            run = follow if ctx.args.follow else export
            result = run(backplane, url, progress=show, trim=trimming, keep=keep)
        elif command == "restore":
            url = sql_url(ctx, "from_url")
            try:
                result = restore(backplane, url, force=bool(ctx.args.force), progress=show,
                                 source_prefix=getattr(ctx.args, "source_prefix", None))
            except SqlCopyError as error:
                if not error.option:
                    raise
                flag = "--" + error.option.replace("_", "-")  # the option as this command spells it
                raise SqlCopyError(error.render(flag if error.value == "True" else f"{flag} {error.value}")) from None
        elif command == "trim":
            result = trim(backplane, sql_url(ctx, "to_url"), keep=_keep(ctx))
        else:  # pragma: no cover - the CLI only dispatches the three
            raise SqlCopyError(f"unknown SQL copy command {command!r}")
    finally:
        backplane.close()
    for warning in getattr(result, "warnings", ()):
        ctx.out.warn(str(warning))
    ctx.out.emit(asdict(result), result.line())
    return 0
