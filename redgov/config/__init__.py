"""The configuration DSL: YAML/JSON file or text -> GovernanceConfig -> Governance.

The seed's shape loads as is: ``experimentFramework.governance`` (or a bare
``governance:`` root); whatever else sits beside ``governance`` (settings,
trials, ...) belongs to other tools and is ignored. Inside ``governance`` every
key is typed by the Structs of ``model`` (``msgspec.convert``), so the JSON Schema
of ``config_schema()`` and the loader cannot disagree. ``${NAME}`` and
``${NAME:-default}`` in string values are replaced from the environment first.
Every problem is reported, in one ConfigError, with its path and value::

    experimentFramework.governance.policies[1].maxErrorRate: expected a number from 0 to 1, got 1.5

Modules: ``model`` (the Structs), ``formats`` (durations, times of day, Redis
connection strings), ``load`` (files, YAML/JSON, alias and nesting bounds),
``check`` (the walk that collects every problem), ``explain`` (the words of the
errors), ``runtime`` (Structs -> gates and policies), ``build`` (``from_config``)
and ``schema`` (``config_schema``).
"""

from .build import from_config
from .formats import parse_duration, redis_url
from .load import load_config
from .model import (
    AutomaticGateConfig,
    ConfigDocument,
    ConflictPreventionConfig,
    EmbeddedPersistenceConfig,
    ErrorRateConfig,
    ExportConfig,
    GovernanceConfig,
    InMemoryPersistenceConfig,
    ManualGateConfig,
    RedisPersistenceConfig,
    RoleGateConfig,
    TimeWindowConfig,
    TrafficLimitConfig,
)
from .schema import config_schema

__all__ = [
    "AutomaticGateConfig",
    "ConfigDocument",
    "ConflictPreventionConfig",
    "EmbeddedPersistenceConfig",
    "ErrorRateConfig",
    "ExportConfig",
    "GovernanceConfig",
    "InMemoryPersistenceConfig",
    "ManualGateConfig",
    "RedisPersistenceConfig",
    "RoleGateConfig",
    "TimeWindowConfig",
    "TrafficLimitConfig",
    "config_schema",
    "from_config",
    "load_config",
    "parse_duration",
    "redis_url",
]
