"""Scaffolding: the HTML pages (replaced by the pages module of the web UI)."""
from __future__ import annotations

from typing import Any


def routes(ctx: Any) -> list[Any]:
    return []
