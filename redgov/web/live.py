"""Scaffolding: the live feed (replaced by the live module of the web UI)."""
from __future__ import annotations

from typing import Any


class LiveHub:
    def __init__(self, governance: Any) -> None:
        self.governance = governance
    async def start(self) -> None:
        return None
    async def stop(self) -> None:
        return None
def routes(ctx: Any) -> list[Any]:
    return []
