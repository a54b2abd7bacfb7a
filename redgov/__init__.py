"""redgov: Redis-native experiment governance.

Every write is one atomic Lua script; every change is an entry in the
scope's Redis stream; records are typed msgspec Structs.
"""

from typing import TYPE_CHECKING, Any

from .backplane import Backplane
from .changes import Change
from .connect import connect
from .errors import (
    AccessDeniedError,
    ApprovalRequiredError,
    ConfigError,
    ConflictError,
    CorruptDataError,
    DurabilityError,
    HistoryTrimmedError,
    InvalidTransitionError,
    LeaseError,
    NotFoundError,
    PolicyViolationError,
    RedgovError,
    RulesChangedError,
    RulesMismatchError,
    SeparationOfDutiesError,
    UnavailableError,
    ValidationError,
)
from .events import GovernanceEvent
from .gates import AutomaticGate, Gate, ManualGate, RoleGate
from .govcore import TransitionRequest
from .governance import Governance
from .policies import ConflictPrevention, ErrorRate, Policy, TimeWindow, TrafficLimit, register_policy
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    Lease,
    LifecycleState,
    PendingMove,
    PolicyEvaluation,
    RulesVersion,
    SaveResult,
    Severity,
    StateTransition,
)
from .rules import DEFAULT_RULES, Rules

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import aio
    from .config import GovernanceConfig, config_schema, from_config, load_config

#: imported on first use: the asyncio side and the configuration DSL (YAML) are not needed by every user
_LAZY = {"aio": "", "GovernanceConfig": "config", "config_schema": "config", "from_config": "config",
         "load_config": "config"}


def __getattr__(name: str) -> Any:
    """The names of ``_LAZY``, imported on first use (``import redgov`` stays close to ``import redis``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'redgov' has no attribute {name!r}")
    import importlib

    loaded = importlib.import_module(f".{module or name}", __name__)
    return loaded if not module else getattr(loaded, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "AccessDeniedError",
    "AutomaticGate",
    "Change",
    "ConflictPrevention",
    "DEFAULT_RULES",
    "ErrorRate",
    "Gate",
    "Governance",
    "GovernanceConfig",
    "GovernanceEvent",
    "ManualGate",
    "Policy",
    "RoleGate",
    "Rules",
    "TimeWindow",
    "TrafficLimit",
    "TransitionRequest",
    "ApprovalRecord",
    "ApprovalRequiredError",
    "Backplane",
    "ConfigError",
    "ConfigurationVersion",
    "ConflictError",
    "CorruptDataError",
    "DurabilityError",
    "ExperimentState",
    "HistoryTrimmedError",
    "InvalidTransitionError",
    "Lease",
    "LeaseError",
    "LifecycleState",
    "NotFoundError",
    "PendingMove",
    "PolicyEvaluation",
    "PolicyViolationError",
    "RedgovError",
    "RulesChangedError",
    "RulesMismatchError",
    "RulesVersion",
    "SaveResult",
    "SeparationOfDutiesError",
    "Severity",
    "StateTransition",
    "UnavailableError",
    "ValidationError",
    "aio",
    "config_schema",
    "connect",
    "register_policy",
    "from_config",
    "load_config",
]
