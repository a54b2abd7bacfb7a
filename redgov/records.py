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
    "RulesVersion",
    "SaveResult",
    "Severity",
    "StateTransition",
    "UTCDateTime",
    "utcnow",
]

UTCDateTime = Annotated[datetime, msgspec.Meta(tz=True)]


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime (the default ``clock`` of Governance)."""
    return datetime.now(UTC)


def new_id() -> str:
    """128 random bits as 32 hex digits (like uuid4().hex, without its version bits or cost)."""
    return os.urandom(16).hex()


class LifecycleState(enum.StrEnum):
    """The lifecycle states of an experiment; each value is its name as stored and shown (``"PendingApproval"``).

    ``LifecycleState("Running")`` looks a state up by its value. Which state may
    move to which is decided by ``Rules`` (``DEFAULT_RULES`` by default); Archived
    is terminal there.
    """

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
    """How much a policy's non-compliance matters: ``Info``, ``Warning``, ``Error``, ``Critical``.

    A non-compliant Critical policy refuses the transition (``PolicyViolationError``);
    non-compliant evaluations of the other severities are recorded and let the move
    happen, including those decided inside the transition script (ConflictPrevention
    groups, a TrafficLimit's stable time).
    """

    INFO = "Info"
    WARNING = "Warning"
    ERROR = "Error"
    CRITICAL = "Critical"


class _Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the stored records: frozen, keyword-only msgspec Structs encoded without default fields.

    New fields get defaults and go last, so older stored records still decode.
    """


class ExperimentState(_Record, frozen=True, kw_only=True):
    """The current state of one experiment, as ``Governance.state`` and ``Backplane.get_state`` return it.

    Fields:

    - ``experiment``: the experiment's name (unique within its scope).
    - ``state``: its ``LifecycleState``.
    - ``config_version``: the number of the configuration version the state follows
      (0: none; set by ``create(configuration=...)`` and ``create_version`` when
      auto-versioning).
    - ``last_modified``: when the state was last written (aware UTC datetime, from
      Governance's ``clock``).
    - ``last_modified_by``: the actor of that write (None: none given).
    - ``etag``: new on every state write and never reused for the experiment; pass
      it as ``expected_etag`` to write only if nothing changed since.
    - ``revision``: 1 after ``create``, exactly one more on every later state write
      (a monotonic fencing token).
    - ``metadata``: free-form JSON data given at ``create`` (or ``save_state``).
    - ``tenant``, ``environment``: the scope (None is a scope part of its own,
      distinct from ``""``).

    ``etag`` and ``revision`` are decided by the write, never by the caller: those
    of a state passed to ``save_state`` are ignored.
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
    """One move of an experiment's lifecycle state: an entry of its history.

    Fields:

    - ``experiment``: the experiment moved.
    - ``to_state``: the state it moved to.
    - ``from_state``: the state it left (None for the entry ``create`` writes).
    - ``transition_id``: 32 random hex digits, unique in the scope; approvals are
      linked to a transition by it.
    - ``timestamp``: when it happened (aware UTC datetime, Governance's ``clock``).
    - ``actor``: who moved it (None: not given).
    - ``reason``: why (``"created"`` for ``create``'s entry).
    - ``metadata``: the call's metadata (``actorRole`` for a RoleGate, ...).
    - ``tenant``, ``environment``: the scope.
    - ``revision``, ``etag``: those of the state the transition wrote (0 and ``""``
      for a transition appended with ``Backplane.append_transition``, which writes no
      state), so the next write can be guarded with ``expected_etag=transition.etag``
      without reading the state again.
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
    """An approval (or rejection) of a move, recorded by ``Governance.approve`` or by a gate.

    Fields:

    - ``experiment``: the experiment whose move it is about.
    - ``to_state``: the target state of the move.
    - ``approved``: True for an approval, False for a rejection.
    - ``from_state``: the state the experiment was in when it was recorded.
    - ``approval_id``: 32 random hex digits.
    - ``transition_id``: the transition it was linked to: the one that consumed it
      (a manual approval), or wrote it (a RoleGate's); None while unused.
    - ``approver``: who approved (a RoleGate's approval: the transition's actor).
    - ``reason``: why (a RoleGate's: which role matched).
    - ``timestamp``: when it was recorded (aware UTC datetime).
    - ``gate``: the name of the gate it is for (``"manual:*->Approved"``, a RoleGate's
      ``"roleBased:Draft->PendingApproval"``; ``"manual"`` when no ManualGate guards
      the move).
    - ``metadata``: free-form data (a RoleGate's carries ``actorRole``).
    - ``tenant``, ``environment``: the scope.
    - ``valid_until``: when an approval given with ``valid_for`` stops satisfying its gate
      (the Redis server's clock); None: until it is consumed or lapses.
    - ``config_version``: the experiment's configuration version when it was recorded (set by
      the script). A new configuration version or a rollback lapses the approvals given before it.
    """

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
    valid_until: UTCDateTime | None = None
    config_version: int = 0


class ConfigurationVersion(_Record, frozen=True, kw_only=True):
    """An immutable configuration of an experiment, numbered from 1; never edited or deleted.

    Fields:

    - ``experiment``: the experiment it configures.
    - ``version``: its number, from 1; ``create_version`` assigns the next one.
    - ``configuration``: the configuration itself (JSON-like dict).
    - ``configuration_hash``: SHA-256 hex digest of the canonical JSON of
      ``configuration`` (keys sorted); ``""`` when appended without one.
    - ``created_at``: when it was written (aware UTC datetime).
    - ``created_by``: the actor (None: not given).
    - ``description``: free text (``"initial configuration"``, ``"rollback to version N"``).
    - ``lifecycle_state``: the experiment's state when the version was written
      (None: it had no state).
    - ``is_rollback``: True when written by ``rollback``.
    - ``rolled_back_from``: for a rollback, the number of the version whose
      configuration it restores.
    - ``metadata``: free-form data.
    - ``tenant``, ``environment``: the scope.
    """

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
    """One policy's verdict on an experiment (and the move it was asked about); persisted for audit.

    Fields:

    - ``experiment``: the experiment judged.
    - ``policy``: the policy's name (unique per Governance).
    - ``compliant``: whether the policy is satisfied.
    - ``severity``: the policy's ``Severity``; a non-compliant Critical one refuses
      the transition.
    - ``evaluation_id``: 32 random hex digits.
    - ``reason``: a readable explanation of the verdict.
    - ``timestamp``: when it was evaluated (aware UTC datetime).
    - ``current_state``: the experiment's state at the time.
    - ``target_state``: the state of the move asked about (None: no move).
    - ``metadata``: the policy's type and the telemetry (or the conflict group) it read.
    - ``tenant``, ``environment``: the scope.
    """

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


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A lease on one experiment, held by ``owner`` until ``expires_at`` (the Redis server's clock).

    Fields:

    - ``experiment``: the experiment leased.
    - ``owner``: who holds it (any non-blank name: a host, a process, a controller).
    - ``token``: the fencing token. It grows by at least 1 on every acquisition of this
      experiment's lease (it is at least the server's time in ms at acquisition, so it keeps
      growing even across a restore); renewing keeps it. A write made with ``lease=`` is
      refused unless this token is the experiment's current, unexpired lease.
    - ``expires_at``: when the lease ends unless renewed (aware UTC datetime, server clock).
    - ``tenant``, ``environment``: the scope.
    """

    experiment: str
    owner: str
    token: int
    expires_at: UTCDateTime
    tenant: str | None = None
    environment: str | None = None


class PendingMove(msgspec.Struct, frozen=True, kw_only=True):
    """A requested move a ManualGate still blocks (``Governance.awaiting_approval``, ``Governance.request``).

    Fields: ``experiment``; ``from_state`` (its current state) and ``to_state`` (the move's
    target); ``gate``, the ManualGate's name (``""`` when no ManualGate guards the move);
    ``state``, the experiment's current ExperimentState (who moved it last, and when);
    ``tenant``, ``environment``: the scope; ``requested_by``, ``requested_at`` and ``reason``:
    who asked for the move, when and why (entering PendingApproval is the request for the moves
    out of it: that transition's actor, time and reason); ``approvals_given``: the distinct
    approvers who count so far (unexpired, not the requester); ``approvals_needed``: how many
    the gate needs.
    """

    experiment: str
    from_state: LifecycleState
    to_state: LifecycleState
    gate: str
    state: ExperimentState
    tenant: str | None = None
    environment: str | None = None
    requested_by: str | None = None
    requested_at: UTCDateTime | None = None
    reason: str | None = None
    approvals_given: int = 0
    approvals_needed: int = 1


class RulesVersion(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One published version of a scope's rules (``Governance.publish``): immutable, numbered 1, 2, ...

    Fields: ``version``; ``definition``, the DSL's ``governance:`` mapping (camelCase keys as in a
    config file: ``initialState``, ``approvalGates``, ``policies``, ``requireTelemetry``, ``rules``
    when not the default), so it loads with ``load_config({"governance": definition})``;
    ``rules_hash``, ``"sha256:<hex>"`` of its canonical JSON; ``created_at`` (aware UTC);
    ``created_by``; ``reason``; ``tenant``, ``environment``: the scope.
    """

    version: int
    definition: dict[str, Any]
    rules_hash: str
    created_at: UTCDateTime
    created_by: str | None = None
    reason: str | None = None
    tenant: str | None = None
    environment: str | None = None


class SaveResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of ``Backplane.save_state``: the stored state, or the conflict that refused it.

    Fields: ``ok`` (True: written); ``state`` (the state as stored, with its new
    ``revision`` and ``etag``; None on conflict); ``etag`` (the new etag; None on
    conflict); ``conflict`` (True: refused because the experiment exists or its
    etag changed, nothing written); ``error`` (the conflict's message; None when ok).
    """

    ok: bool
    state: ExperimentState | None = None
    etag: str | None = None
    conflict: bool = False
    error: str | None = None


HistoryRecord = StateTransition | ApprovalRecord | ConfigurationVersion | PolicyEvaluation
Kind = Literal["state", "transition", "approval", "version", "policy", "rules"]

# Built once; used everywhere records are encoded or decoded.
ENCODER = msgspec.json.Encoder()
DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "state": msgspec.json.Decoder(ExperimentState),
    "transition": msgspec.json.Decoder(StateTransition),
    "approval": msgspec.json.Decoder(ApprovalRecord),
    "version": msgspec.json.Decoder(ConfigurationVersion),
    "policy": msgspec.json.Decoder(PolicyEvaluation),
    "rules": msgspec.json.Decoder(RulesVersion),
}
KIND_OF: dict[type[Any], str] = {
    ExperimentState: "state",
    StateTransition: "transition",
    ApprovalRecord: "approval",
    ConfigurationVersion: "version",
    PolicyEvaluation: "policy",
    RulesVersion: "rules",
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
