"""Configuration Structs -> the runtime gate and policy objects Governance runs (pure, no I/O)."""

from __future__ import annotations

from ..gates import AutomaticGate, Gate, ManualGate, RoleGate
from ..policies import ConflictPrevention, ErrorRate, Policy, TimeWindow, TrafficLimit
from .formats import parse_duration, parse_time_of_day
from .model import (
    ErrorRateConfig,
    GateConfig,
    ManualGateConfig,
    PolicyConfig,
    RoleGateConfig,
    TimeWindowConfig,
    TrafficLimitConfig,
)

__all__ = ["gate", "policy"]


def gate(config: GateConfig) -> Gate:
    """The AutomaticGate, ManualGate or RoleGate a gate configuration describes."""
    if isinstance(config, RoleGateConfig):
        return RoleGate(*config.allowed_roles, to_state=config.to_state, from_state=config.from_state)
    kind = ManualGate if isinstance(config, ManualGateConfig) else AutomaticGate
    return kind(to_state=config.to_state, from_state=config.from_state)


def policy(config: PolicyConfig) -> Policy:
    """The TrafficLimit, ErrorRate, TimeWindow or ConflictPrevention a policy configuration describes."""
    if isinstance(config, TrafficLimitConfig):
        stable = None if config.min_stable_time is None else parse_duration(config.min_stable_time)
        return TrafficLimit(config.max_traffic_percentage, stable, name=config.name, severity=config.severity)
    if isinstance(config, ErrorRateConfig):
        return ErrorRate(config.max_error_rate, name=config.name, severity=config.severity)
    if isinstance(config, TimeWindowConfig):
        return TimeWindow(parse_time_of_day(config.allowed_start_time), parse_time_of_day(config.allowed_end_time),
                          name=config.name, severity=config.severity)
    return ConflictPrevention(*config.conflicting_experiments, name=config.name, severity=config.severity)
