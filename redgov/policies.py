"""Policy guardrails, evaluated on every transition. Pure logic, no I/O.

Missing telemetry counts as compliant (as in the seed). Telemetry keys:
``trafficPercentage`` (0-100), ``errorRate`` (0-1), ``runningDuration``
(seconds). ConflictPrevention is decided inside the transition script, where
the other experiments' states are read atomically with the write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from .validate import check_name
from .errors import ValidationError
from .records import LifecycleState, Severity

__all__ = [
    "ConflictPrevention",
    "ErrorRate",
    "Policy",
    "PolicyContext",
    "TELEMETRY_KEYS",
    "TimeWindow",
    "TrafficLimit",
    "check_telemetry",
]

TELEMETRY_KEYS = ("trafficPercentage", "errorRate", "runningDuration")
RUNNING_STATES = (LifecycleState.RUNNING, LifecycleState.RAMPING)


def check_telemetry(telemetry: Mapping[str, Any] | None) -> dict[str, float]:
    """Validated telemetry: known keys must be numbers (runningDuration may be a timedelta)."""
    if telemetry is None:
        return {}
    if not isinstance(telemetry, Mapping):
        raise ValidationError(f"telemetry must be a mapping, got {type(telemetry).__name__}")
    out: dict[str, float] = {}
    for key, value in telemetry.items():
        if key not in TELEMETRY_KEYS:
            continue
        if key == "runningDuration" and isinstance(value, timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"telemetry[{key!r}] must be a number, got {type(value).__name__} {value!r}")
        if value != value or value < 0:
            raise ValidationError(f"telemetry[{key!r}] must be a number >= 0, got {value!r}")
        out[key] = float(value)
    return out


@dataclass(frozen=True, slots=True)
class PolicyContext:
    experiment: str
    target: LifecycleState | None
    current: LifecycleState | None
    telemetry: Mapping[str, float]
    now: datetime


class Policy:
    """A named guardrail with a severity."""

    kind = "policy"
    default_severity = Severity.CRITICAL
    __slots__ = ("name", "severity")

    def __init__(self, *, name: str | None = None, severity: Severity | str | None = None) -> None:
        self.name = check_name(name, "policy name") if name is not None else self.kind
        try:
            self.severity = Severity(severity) if severity is not None else self.default_severity
        except ValueError:
            names = ", ".join(s.value for s in Severity)
            raise ValidationError(f"{self.kind} severity {severity!r} is not one of {names}") from None

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, severity={self.severity.value!r})"


class TrafficLimit(Policy):
    """Traffic may exceed ``max_traffic_percentage`` only after ``min_stable_time`` running."""

    kind = "trafficLimit"
    __slots__ = ("max_traffic_percentage", "min_stable_time")

    def __init__(self, max_traffic_percentage: float, min_stable_time: timedelta | None = None, *,
                 name: str | None = None, severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        _number(max_traffic_percentage, "max_traffic_percentage", 0, 100)
        if min_stable_time is not None and not isinstance(min_stable_time, timedelta):
            raise ValidationError(f"min_stable_time must be a timedelta or None, got {min_stable_time!r}")
        self.max_traffic_percentage = float(max_traffic_percentage)
        self.min_stable_time = min_stable_time

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        traffic = ctx.telemetry.get("trafficPercentage")
        if traffic is None:
            return True, "no trafficPercentage telemetry"
        if traffic <= self.max_traffic_percentage:
            return True, f"traffic {traffic:g}% <= {self.max_traffic_percentage:g}%"
        if self.min_stable_time is not None:
            stable = ctx.telemetry.get("runningDuration")
            need = self.min_stable_time.total_seconds()
            if stable is not None and stable >= need:
                return True, f"traffic {traffic:g}% allowed after {stable:g}s stable (>= {need:g}s)"
            return False, (f"traffic {traffic:g}% exceeds {self.max_traffic_percentage:g}% before "
                           f"{need:g}s of stable running (ran {stable if stable is not None else 0:g}s)")
        return False, f"traffic {traffic:g}% exceeds {self.max_traffic_percentage:g}%"


class ErrorRate(Policy):
    kind = "errorRate"
    __slots__ = ("max_error_rate",)

    def __init__(self, max_error_rate: float, *, name: str | None = None,
                 severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        _number(max_error_rate, "max_error_rate", 0, 1)
        self.max_error_rate = float(max_error_rate)

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        rate = ctx.telemetry.get("errorRate")
        if rate is None:
            return True, "no errorRate telemetry"
        if rate <= self.max_error_rate:
            return True, f"error rate {rate:g} <= {self.max_error_rate:g}"
        return False, f"error rate {rate:g} exceeds {self.max_error_rate:g}"


class TimeWindow(Policy):
    """Changes only between ``start`` and ``end`` (time of day of the clock; wraps past midnight)."""

    kind = "timeWindow"
    default_severity = Severity.ERROR
    __slots__ = ("end", "start")

    def __init__(self, start: time, end: time, *, name: str | None = None,
                 severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        for label, value in (("start", start), ("end", end)):
            if not isinstance(value, time):
                raise ValidationError(f"TimeWindow {label} must be a datetime.time, got {value!r}")
        self.start = start.replace(tzinfo=None)
        self.end = end.replace(tzinfo=None)

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        now = ctx.now.time().replace(tzinfo=None)
        window = f"{self.start.isoformat('minutes')}-{self.end.isoformat('minutes')}"
        if self.contains(now):
            return True, f"{now.isoformat('minutes')} is inside {window}"
        return False, f"{now.isoformat('minutes')} is outside {window}"


class ConflictPrevention(Policy):
    """At most one of ``experiments`` may be Running or Ramping at a time in a scope."""

    kind = "conflictPrevention"
    __slots__ = ("experiments",)

    def __init__(self, *experiments: str, name: str | None = None,
                 severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        if len(experiments) < 2:
            raise ValidationError("ConflictPrevention needs at least two experiments")
        self.experiments = tuple(check_name(e, "ConflictPrevention experiment") for e in experiments)

    def covers(self, experiment: str) -> bool:
        return experiment in self.experiments

    def others(self, experiment: str) -> tuple[str, ...]:
        return tuple(e for e in self.experiments if e != experiment)

    def judge(self, experiment: str, states: Mapping[str, LifecycleState | None]) -> tuple[bool, str]:
        """Decision given the other experiments' current states."""
        busy = [f"{e} is {s.value}" for e, s in states.items() if e != experiment and s in RUNNING_STATES]
        if busy:
            return False, f"conflicting experiment {', '.join(busy)}"
        return True, "no conflicting experiment is Running or Ramping"


def _number(value: object, label: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValidationError(f"{label} must be a number from {low:g} to {high:g}, got {value!r}")
