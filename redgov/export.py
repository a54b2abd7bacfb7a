"""SQL export, restore and trimming (the durable copy): not built yet."""

from __future__ import annotations

import sys
from typing import Any


def cli(ctx: Any) -> int:
    sys.stderr.write(f"redgov: {ctx.args.command}: not available yet (the SQL copy is a later issue)\n")
    return 2
