"""Commands around the governance API: demo, schema, bench, and the SQL copy's export, restore, trim."""

from __future__ import annotations

import os
from collections.abc import Callable

import msgspec

from .context import Context

__all__ = ["COMMANDS"]


def cmd_demo(ctx: Context) -> int:
    from ..demo import run_demo

    return run_demo(ctx.url, ctx.prefix, ctx.out.as_json)


def cmd_schema(ctx: Context) -> int:
    from ..config import config_schema

    ctx.out.stdout.write(msgspec.json.format(msgspec.json.encode(config_schema())).decode() + "\n")
    return 0


def cmd_bench(ctx: Context) -> int:
    from ..bench import run_benchmarks

    chosen = ctx.args.url or os.environ.get("REDGOV_URL")
    return run_benchmarks(ctx.url if chosen else None, ctx.args.n, ctx.out.as_json)


def cmd_sql(ctx: Context) -> int:
    from ..sql.command import cli

    return cli(ctx)


COMMANDS: dict[str, Callable[[Context], int]] = {
    "demo": cmd_demo, "schema": cmd_schema, "bench": cmd_bench, "export": cmd_sql, "restore": cmd_sql,
    "trim": cmd_sql,
}
