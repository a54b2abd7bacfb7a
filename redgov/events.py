"""Watching a scope's log: ``GovernanceEvent`` and the cursor both shells drive. Sans-IO.

A watch is a loop of ``XREAD BLOCK`` on the scope's log from the last id seen.
Each read blocks at most ``block_ms`` and never longer than the client's
socket timeout allows (the block is cut into pieces that fit), so any
``block_ms`` works on any connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from .codec import decode_fields, pairs, text
from .core import Call, Core, Plan
from .errors import CorruptDataError, ValidationError
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    PolicyEvaluation,
    RulesVersion,
    StateTransition,
)

__all__ = ["EventKind", "GovernanceEvent", "WatchCursor", "streams"]

EventKind = Literal["state", "transition", "approval", "version", "policy", "rules"]
#: the part of a socket timeout a blocking read leaves unused (ms)
BLOCK_MARGIN_MS = 500


class GovernanceEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a scope's log, as ``Governance.watch`` yields it.

    Fields: ``id`` is the log entry id (pass it as ``from_id`` to resume after it);
    ``kind`` is ``"state"``, ``"transition"``, ``"approval"``, ``"version"``,
    ``"policy"`` or ``"rules"``; ``experiment`` the experiment written (``""`` for
    ``"rules"``: a published rules version belongs to the scope); ``tenant`` and
    ``environment`` the scope watched; ``record`` the Struct written
    (ExperimentState, StateTransition, ApprovalRecord, ConfigurationVersion,
    PolicyEvaluation or RulesVersion, its ``version`` the number published).
    """

    id: str
    kind: EventKind
    experiment: str
    tenant: str | None
    environment: str | None
    record: ExperimentState | StateTransition | ApprovalRecord | ConfigurationVersion | PolicyEvaluation | RulesVersion


def streams(reply: Any) -> list[tuple[Any, Any]]:
    """XREAD's reply as [(stream, [(id, fields), ...])], from RESP2 lists or RESP3 maps."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        return [(k, v[0] if v and isinstance(v[0], list) and len(v) == 1 and isinstance(v[0][0], list) else v)
                for k, v in reply.items()]
    return [(item[0], item[1]) for item in reply]


class WatchCursor:
    """Where a watch is in a scope's log, and the next XREAD to send."""

    def __init__(self, core: Core, *, tenant: str | None, environment: str | None,
                 experiments: Iterable[str] | None, from_id: str, block_ms: int, timeout: float | None) -> None:
        if not isinstance(from_id, str) or not from_id:
            raise ValidationError(f"from_id must be '$', '0' or a stream id, got {from_id!r}")
        if isinstance(block_ms, bool) or not isinstance(block_ms, int) or block_ms < 1:
            raise ValidationError(f"block_ms must be a positive integer, got {block_ms!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
            raise ValidationError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        self.scope = core.scope(tenant, environment)
        self.tenant, self.environment = tenant, environment
        self.wanted = None if experiments is None else set(experiments)
        self.last = from_id
        self.block_ms = block_ms
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def start(self) -> Plan[None]:
        """Checks the log's type; resolves '$' to the newest id, so nothing written meanwhile is missed."""
        log = self.scope.log
        kind = yield Call((log,), ("TYPE", log), text)
        if kind not in ("stream", "none"):
            raise CorruptDataError(f"key {log} holds a {kind}, expected a stream")
        if self.last != "$":
            return

        def parse(reply: Any) -> str:
            return text(reply[0][0]) if reply else "0-0"

        self.last = yield Call((log,), ("XREVRANGE", log, "+", "-", "COUNT", 1), parse)

    def active(self) -> bool:
        """Whether the watch may go on (its ``timeout`` has not passed)."""
        return self.deadline is None or time.monotonic() < self.deadline

    def next_read(self, socket_timeout: float | None = None, count: int = 100) -> Call[list[GovernanceEvent]]:
        """The next XREAD: it blocks the least of block_ms, the time left and what the socket allows."""
        wait = self.block_ms
        if self.deadline is not None:
            wait = min(wait, int((self.deadline - time.monotonic()) * 1000))
        if socket_timeout:
            wait = min(wait, max(1, int(socket_timeout * 1000) - BLOCK_MARGIN_MS))
        wait = max(1, wait)
        log = self.scope.log
        tenant, environment = self.tenant, self.environment

        def parse(reply: Any) -> list[GovernanceEvent]:
            out = []
            for _stream, items in streams(reply):
                for entry_id, fields in items:
                    try:
                        name, values = text(entry_id), pairs(fields)
                    except (ValueError, IndexError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
                        raise CorruptDataError(f"log entry {entry_id!r} of {log} cannot be decoded: {exc!r}") from None
                    entry = decode_fields(name, values, log)
                    out.append(GovernanceEvent(id=entry.id, kind=entry.kind,  # type: ignore[arg-type]
                                               experiment=entry.experiment, tenant=tenant, environment=environment,
                                               record=entry.record))
            return out

        return Call((log,), ("XREAD", "COUNT", count, "BLOCK", wait, "STREAMS", log, self.last), parse)

    def accept(self, events: list[GovernanceEvent]) -> list[GovernanceEvent]:
        """Note the last of ``events`` read; return those of the experiments watched (with an
        ``experiments`` filter, only events of those names: no ``"rules"`` events, whose experiment is ``""``)."""
        if events:
            self.last = events[-1].id
        return [e for e in events if self.wanted is None or e.experiment in self.wanted]
