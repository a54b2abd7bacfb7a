"""``redgov export|restore|trim``: the SQL copy's commands."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from .copy import SqlCopyError
from .exporter import export, follow
from .restorer import restore
from .trimmer import trim

__all__ = ["cli"]


def _sql_url(ctx: Any, *names: str) -> str:
    for name in names:
        value = getattr(ctx.args, name, None)
        if value:
            return str(value)
    if os.environ.get("REDGOV_EXPORT_URL"):
        return os.environ["REDGOV_EXPORT_URL"]
    config = getattr(ctx, "_config", None)
    if config is not None and getattr(config, "export_url", None):
        return str(config.export_url)
    raise SqlCopyError(f"{ctx.args.command} needs the SQL copy's url: --to URL, $REDGOV_EXPORT_URL or "
                       "persistence.export.url in the config")


def _keep(ctx: Any) -> timedelta:
    seconds = getattr(ctx.args, "keep", None)
    return timedelta(seconds=float(seconds)) if seconds else timedelta(0)


def cli(ctx: Any) -> int:
    """``redgov export|restore|trim``: one summary line (or JSON object) on stdout, errors as RedgovError."""
    command = ctx.args.command
    show = not ctx.out.as_json
    backplane = ctx.backplane_open()
    try:
        result: Any
        if command == "export":
            url = _sql_url(ctx, "to_url")
            trimming, keep = bool(getattr(ctx.args, "trim", False)), _keep(ctx)
            if ctx.args.follow:
                result = follow(backplane, url, progress=show, trim=trimming, keep=keep)
            else:
                result = export(backplane, url, progress=show, trim=trimming, keep=keep)
        elif command == "restore":
            url = _sql_url(ctx, "from_url")
            result = restore(backplane, url, force=bool(ctx.args.force), progress=show,
                             source_prefix=getattr(ctx.args, "source_prefix", None))
        elif command == "trim":
            result = trim(backplane, _sql_url(ctx, "to_url", "sql_url"), keep=_keep(ctx))
        else:  # pragma: no cover - cli.py only dispatches the three
            raise SqlCopyError(f"unknown SQL copy command {command!r}")
    finally:
        backplane.close()
    for warning in getattr(result, "warnings", ()):
        sys.stderr.write(f"redgov: warning: {warning}\n")
    ctx.out.emit(asdict(result), result.line())
    return 0
