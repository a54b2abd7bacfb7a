"""Configuration Structs -> the runtime gate and policy objects Governance runs (pure, no I/O)."""

from __future__ import annotations

from datetime import timedelta

from ..gates import AutomaticGate, Gate, ManualGate, RoleGate
from ..policies import ConflictPrevention, ErrorRate, Policy, TimeWindow, TrafficLimit
from .formats import parse_duration, parse_time_of_day
from .model import (
    AutomaticGateConfig,
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
    if isinstance(config, ManualGateConfig):
        return ManualGate(to_state=config.to_state, from_state=config.from_state)
    return AutomaticGate(to_state=config.to_state, from_state=config.from_state, after=_auto_approve_after(config))


def _auto_approve_after(config: AutomaticGateConfig) -> timedelta | None:
    """``autoApproveAfter``, as a key of the gate or (the seed's sample 11) of its ``properties``."""
    given = config.properties.get("autoApproveAfter")
    if given is not None and config.auto_approve_after is not None and given != config.auto_approve_after:
        raise ValueError(f"autoApproveAfter is given twice, {config.auto_approve_after!r} and "
                         f"properties.autoApproveAfter {given!r}; keep one")
    text = config.auto_approve_after if config.auto_approve_after is not None else given
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"properties.autoApproveAfter: expected a duration hh:mm:ss, got {text!r}")
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"autoApproveAfter: {exc}") from None


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
