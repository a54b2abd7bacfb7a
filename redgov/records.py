"""Typed records: the only values that cross redgov's public API.

Every record is a frozen ``msgspec.Struct``. Times are timezone-aware UTC
datetimes (a naive datetime fails on decode). Encoders and decoders are built
once here; the rest of the package uses them instead of calling
``msgspec.json.encode``/``decode`` per call. Records encode without the fields
that hold their default (``omit_defaults``), which keeps the stored history
small; ``to_builtins(record, full=True)`` gives every field for display.
"""

from __future__ import annotations

import enum
import os
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "ApprovalRecord",
    "ConfigurationVersion",
    "ExperimentState",
    "LifecycleState",
    "PolicyEvaluation",
    "SaveResult",
    "Severity",
    "StateTransition",
    "UTCDateTime",
    "utcnow",
]

UTCDateTime = Annotated[datetime, msgspec.Meta(tz=True)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """128 random bits as 32 hex digits (like uuid4().hex, without its version bits or cost)."""
    return os.urandom(16).hex()


class LifecycleState(enum.StrEnum):
    DRAFT = "Draft"
    PENDING_APPROVAL = "PendingApproval"
    APPROVED = "Approved"
    RUNNING = "Running"
    RAMPING = "Ramping"
    PAUSED = "Paused"
    ROLLED_BACK = "RolledBack"
    ARCHIVED = "Archived"
    REJECTED = "Rejected"


class Severity(enum.StrEnum):
    INFO = "Info"
    WARNING = "Warning"
    ERROR = "Error"
    CRITICAL = "Critical"


class _Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Fields every record shares. New fields get defaults and go last."""


class ExperimentState(_Record, frozen=True, kw_only=True):
    """The current state of one experiment.

    ``revision`` grows by exactly one per state write (a fencing token); ``etag``
    is new on every write and never reused for the experiment. Both are decided
    by the write, not by the caller.
    """

    experiment: str
    state: LifecycleState
    config_version: int = 0
    last_modified: UTCDateTime = msgspec.field(default_factory=utcnow)
    last_modified_by: str | None = None
    etag: str = ""
    revision: int = 0
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    tenant: str | None = None
    environment: str | None = None


class StateTransition(_Record, frozen=True, kw_only=True):
    """One move of an experiment's lifecycle state.

    ``revision`` and ``etag`` are those of the state the transition wrote
    (0 and "" for a transition appended to the history without a state write),
    so a caller holding the returned transition can guard its next write with
    ``expected_etag=transition.etag`` without reading the state again.
    """

    experiment: str
    to_state: LifecycleState
    from_state: LifecycleState | None = None
    transition_id: str = msgspec.field(default_factory=new_id)
    timestamp: UTCDateTime = msgspec.field(default_factory=utcnow)
    actor: str | None = None
    reason: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    tenant: str | None = None
    environment: str | None = None
    revision: int = 0
    etag: str = ""


class ApprovalRecord(_Record, frozen=True, kw_only=True):
    """An approval (or rejection) of a move; ``transition_id`` names the transition it was used by."""

    experiment: str
    to_state: LifecycleState
    approved: bool
    from_state: LifecycleState | None = None
    approval_id: str = msgspec.field(default_factory=new_id)
    transition_id: str | None = None
    approver: str | None = None
    reason: str | None = None
    timestamp: UTCDateTime = msgspec.field(default_factory=utcnow)
    gate: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    tenant: str | None = None
    environment: str | None = None


class ConfigurationVersion(_Record, frozen=True, kw_only=True):
    """An immutable configuration of an experiment, numbered from 1."""

    experiment: str
    version: int
    configuration: dict[str, Any]
    configuration_hash: str = ""
    created_at: UTCDateTime = msgspec.field(default_factory=utcnow)
    created_by: str | None = None
    description: str | None = None
    lifecycle_state: LifecycleState | None = None
    is_rollback: bool = False
    rolled_back_from: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    tenant: str | None = None
    environment: str | None = None


class PolicyEvaluation(_Record, frozen=True, kw_only=True):
    """One policy's verdict on an experiment (and the move it was asked about)."""

    experiment: str
    policy: str
    compliant: bool
    severity: Severity
    evaluation_id: str = msgspec.field(default_factory=new_id)
    reason: str | None = None
    timestamp: UTCDateTime = msgspec.field(default_factory=utcnow)
    current_state: LifecycleState | None = None
    target_state: LifecycleState | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    tenant: str | None = None
    environment: str | None = None


class SaveResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of ``save_state``: the stored state and its etag, or the conflict that refused it."""

    ok: bool
    state: ExperimentState | None = None
    etag: str | None = None
    conflict: bool = False
    error: str | None = None


HistoryRecord = StateTransition | ApprovalRecord | ConfigurationVersion | PolicyEvaluation
Kind = Literal["state", "transition", "approval", "version", "policy"]

# Built once; used everywhere records are encoded or decoded.
ENCODER = msgspec.json.Encoder()
DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "state": msgspec.json.Decoder(ExperimentState),
    "transition": msgspec.json.Decoder(StateTransition),
    "approval": msgspec.json.Decoder(ApprovalRecord),
    "version": msgspec.json.Decoder(ConfigurationVersion),
    "policy": msgspec.json.Decoder(PolicyEvaluation),
}
KIND_OF: dict[type[Any], str] = {
    ExperimentState: "state",
    StateTransition: "transition",
    ApprovalRecord: "approval",
    ConfigurationVersion: "version",
    PolicyEvaluation: "policy",
}
METADATA_DECODER = msgspec.json.Decoder(dict[str, Any])


def to_builtins(value: Any) -> Any:
    """``value`` as plain Python data (dicts, lists, strings, numbers), records with every field
    (also those left out of their encoding because they hold the default)."""
    if isinstance(value, msgspec.Struct):
        return {name: to_builtins(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, dict):
        return {str(k): to_builtins(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtins(v) for v in value]
    return msgspec.to_builtins(value)
