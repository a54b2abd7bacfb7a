"""Scaffolding: Prometheus metrics (replaced by the metrics module of the web UI)."""
from __future__ import annotations

from typing import Any


class Metrics:
    def __init__(self, governance: Any) -> None:
        self.governance = governance
def routes(ctx: Any) -> list[Any]:
    return []
