"""redgov: Redis-native experiment governance.

Every write is one atomic Lua script; every change is an entry in the
scope's Redis stream; records are typed msgspec Structs.
"""

from . import aio
from .backplane import Backplane
from .config import GovernanceConfig, config_schema, from_config, load_config
from .connect import connect
from .errors import (
    AccessDeniedError,
    ApprovalRequiredError,
    ConfigError,
    ConflictError,
    CorruptDataError,
    HistoryTrimmedError,
    InvalidTransitionError,
    NotFoundError,
    PolicyViolationError,
    RedgovError,
    UnavailableError,
    ValidationError,
)
from .gates import AutomaticGate, Gate, ManualGate, RoleGate
from .governance import Governance
from .changes import Change
from .events import GovernanceEvent
from .govcore import TransitionRequest
from .policies import ConflictPrevention, ErrorRate, Policy, TimeWindow, TrafficLimit
from .rules import DEFAULT_RULES, Rules
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    SaveResult,
    Severity,
    StateTransition,
)

__version__ = "0.1.0"

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
    "ExperimentState",
    "HistoryTrimmedError",
    "InvalidTransitionError",
    "LifecycleState",
    "NotFoundError",
    "PolicyEvaluation",
    "PolicyViolationError",
    "RedgovError",
    "SaveResult",
    "Severity",
    "StateTransition",
    "UnavailableError",
    "ValidationError",
    "aio",
    "config_schema",
    "connect",
    "from_config",
    "load_config",
]
