"""Policy guardrails, evaluated on every transition. Pure logic, no I/O.

A policy judges a ``PolicyContext`` (the experiment, its current and target
states, the call's telemetry, the time) and says whether the move is compliant
and why. Every evaluation is persisted as a ``PolicyEvaluation``; a non-compliant
``Critical`` one refuses the transition (``PolicyViolationError``).

Telemetry keys: ``trafficPercentage`` (0-100), ``errorRate`` (0-1),
``runningDuration`` (seconds), plus the ``telemetry_keys`` of custom policies;
any other key is a ``ValidationError`` with a did-you-mean. Missing telemetry is
compliant (as in the seed) unless the Governance has ``require_telemetry=True``.

Decided inside the transition script, atomically with the state it depends on:
``ConflictPrevention`` (the other experiments' states) and the stable time of a
``TrafficLimit`` with ``min_stable_time`` (from the moment the experiment last
entered Running or Ramping, kept in its state hash).

Policies are also data: ``Policy.definition`` and ``from_definition`` (the code is in
``redgov.config.runtime``); ``register_policy`` keeps the custom kinds. Kept past ~400
lines: the registry and those hooks belong with the classes they describe.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, TypeVar

from .errors import ValidationError
from .records import LifecycleState, Severity
from .validate import check_data, check_name

__all__ = [
    "BUILT_IN_KINDS",
    "TELEMETRY_KEYS",
    "ConflictPrevention",
    "ErrorRate",
    "Policy",
    "PolicyContext",
    "TimeWindow",
    "TrafficLimit",
    "check_telemetry",
    "policy_kind",
    "register_policy",
    "registered_policy",
]

#: The built-in telemetry keys, accepted whatever policies are configured.
TELEMETRY_KEYS = ("trafficPercentage", "errorRate", "runningDuration")
RUNNING_STATES = (LifecycleState.RUNNING, LifecycleState.RAMPING)
_P = TypeVar("_P", bound="type[Policy]")


def check_telemetry(telemetry: Mapping[str, Any] | None, known: Iterable[str] = TELEMETRY_KEYS) -> dict[str, Any]:
    """Validated telemetry, a new dict; raises ValidationError naming the key and value and changes nothing.

    ``known`` is every accepted key (the built-in ones and the custom policies'
    ``telemetry_keys``); an unknown key is refused with the closest known ones.
    Built-in keys take numbers >= 0 (``runningDuration`` also a timedelta);
    custom keys take any JSON value (finite numbers, strings, lists, mappings).
    """
    if telemetry is None:
        return {}
    if not isinstance(telemetry, Mapping):
        raise ValidationError(f"telemetry must be a mapping, got {type(telemetry).__name__}")
    accepted = tuple(known)
    out: dict[str, Any] = {}
    for key, value in telemetry.items():
        if not isinstance(key, str):
            raise ValidationError(f"telemetry keys must be strings, got {key!r}")
        if key not in accepted:
            raise ValidationError(f"telemetry[{key!r}] is not a known telemetry key{_did_you_mean(key, accepted)}"
                                  f" (known: {', '.join(sorted(accepted))})")
        if key not in TELEMETRY_KEYS:
            out[key] = check_data({key: value}, "telemetry")[key]
            continue
        if key == "runningDuration" and isinstance(value, timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"telemetry[{key!r}] must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValidationError(f"telemetry[{key!r}] must be a finite number >= 0, got {value!r}")
        out[key] = float(value)
    return out


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    by_folded = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(key.casefold(), list(by_folded), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(by_folded[c]) for c in close)}?" if close else ""


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a policy judges.

    ``experiment``: its name; ``target``: the state asked for (None when
    ``evaluate_policies`` was given none); ``current``: its state before the move
    (None when not read, as on the transition path, where stored-state checks run
    in the script); ``telemetry``: the call's validated telemetry; ``now``: the
    Governance clock's time (UTC); ``running_since``: when the experiment last
    entered Running or Ramping (None: unknown or not running); ``require_telemetry``:
    missing telemetry makes a policy non-compliant.
    """

    experiment: str
    target: LifecycleState | None
    current: LifecycleState | None
    telemetry: Mapping[str, Any]
    now: datetime
    running_since: datetime | None = None
    require_telemetry: bool = False

    def stable_seconds(self) -> float:
        """Seconds the experiment has been Running or Ramping without leaving them (0 when it is not)."""
        if self.current not in RUNNING_STATES or self.running_since is None:
            return 0.0
        return max(0.0, (self.now - self.running_since).total_seconds())


class Policy:
    """A named guardrail with a severity; subclass it for a custom one.

    ``name`` (default: the kind) names the policy in evaluations and must be
    unique in a Governance; ``severity`` (a ``Severity`` or its name; default
    per kind) decides what a non-compliant evaluation does: ``Critical`` refuses
    the transition, the others are recorded only.

    A custom policy sets ``kind`` and ``telemetry_keys`` (the telemetry it reads:
    they become accepted keys, and with ``require_telemetry`` their absence makes
    it non-compliant) and implements ``evaluate``. Raises ValidationError for a
    blank name or an unknown severity.
    """

    kind = "policy"
    default_severity = Severity.CRITICAL
    #: the telemetry keys this policy reads
    telemetry_keys: tuple[str, ...] = ()
    #: those of ``telemetry_keys`` never required (the policy has another source for them)
    optional_telemetry: tuple[str, ...] = ()
    __slots__ = ("name", "severity")

    def __init__(self, *, name: str | None = None, severity: Severity | str | None = None) -> None:
        self.name = check_name(name, "policy name") if name is not None else self.kind
        try:
            self.severity = Severity(severity) if severity is not None else self.default_severity
        except ValueError:
            names = ", ".join(s.value for s in Severity)
            raise ValidationError(f"{self.kind} severity {severity!r} is not one of {names}") from None

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        """Judge the move: return (compliant, reason); pure, no I/O. Subclasses implement it.

        ``ctx`` is the PolicyContext (experiment, states, validated telemetry, time). The
        reason is kept on the recorded PolicyEvaluation.
        """
        raise NotImplementedError(f"{type(self).__name__}.evaluate")

    def decide(self, ctx: PolicyContext) -> tuple[bool, str]:
        """Judge ``ctx`` as Governance does: ``evaluate``, after the ``require_telemetry`` check.

        With ``ctx.require_telemetry``, a missing key of ``telemetry_keys`` (not in
        ``optional_telemetry``) makes the policy non-compliant without calling ``evaluate``.
        """
        if ctx.require_telemetry:
            missing = [k for k in self.telemetry_keys if k not in ctx.telemetry and k not in self.optional_telemetry]
            if missing:
                return False, f"required telemetry missing: {', '.join(missing)}"
        return self.evaluate(ctx)

    def definition(self) -> dict[str, Any]:
        """This policy as the DSL's data, ``{"type": kind, "name", "severity", <parameters>}``: built-in kinds
        in the DSL's keys, custom ones by ``redgov.config.runtime.default_policy_definition``."""
        from .config.runtime import default_policy_definition

        return default_policy_definition(self)

    @classmethod
    def from_definition(cls, data: Mapping[str, Any]) -> Policy:
        """The policy ``data`` describes (on ``Policy``: of any registered kind); ConfigError when it cannot be
        built (``redgov.config.runtime.default_policy_from_definition``)."""
        from .config.runtime import default_policy_from_definition

        return default_policy_from_definition(cls, data)

    def _args(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        args = self._args()
        if self.name != self.kind:
            args.append(f"name={self.name!r}")
        if self.severity is not self.default_severity:
            args.append(f"severity={self.severity.value!r}")
        return f"{type(self).__name__}({', '.join(args)})"


class TrafficLimit(Policy):
    """Traffic above ``max_traffic_percentage`` is allowed only after ``min_stable_time`` of stable running.

    ``max_traffic_percentage``: 0-100, compared with the ``trafficPercentage``
    telemetry. ``min_stable_time`` (a timedelta, or None: never above the limit):
    how long the experiment must have been Running or Ramping. redgov measures
    that itself, from the moment the experiment last entered Running or Ramping
    (its stored state, judged inside the transition script against the
    Governance clock); a ``runningDuration`` telemetry value (seconds) is used
    instead when given. Default severity Critical. Raises ValidationError for
    values out of range.
    """

    kind = "trafficLimit"
    telemetry_keys = ("trafficPercentage", "runningDuration")
    optional_telemetry = ("runningDuration",)
    __slots__ = ("max_traffic_percentage", "min_stable_time")

    def __init__(self, max_traffic_percentage: float, min_stable_time: timedelta | None = None, *,
                 name: str | None = None, severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        _number(max_traffic_percentage, "max_traffic_percentage", 0, 100)
        if min_stable_time is not None and (not isinstance(min_stable_time, timedelta)
                                            or min_stable_time < timedelta(0)):
            raise ValidationError(f"min_stable_time must be a timedelta >= 0 or None, got {min_stable_time!r}")
        self.max_traffic_percentage = float(max_traffic_percentage)
        self.min_stable_time = min_stable_time

    def stored_stability(self, telemetry: Mapping[str, Any]) -> timedelta | None:
        """The stable time the verdict needs from the stored state, given the call's ``telemetry``.

        None when the telemetry alone decides (no traffic above the limit, no
        ``min_stable_time``, or a ``runningDuration`` given).
        """
        traffic = telemetry.get("trafficPercentage")
        if (self.min_stable_time is None or traffic is None or traffic <= self.max_traffic_percentage
                or "runningDuration" in telemetry):
            return None
        return self.min_stable_time

    def verdicts(self, telemetry: Mapping[str, Any]) -> tuple[str, str]:
        """The (compliant, non-compliant) reasons recorded when the script decides from the stored state.

        ``telemetry`` is the call's validated telemetry (its ``trafficPercentage`` is quoted).
        """
        traffic, need = telemetry["trafficPercentage"], self._need()
        return (f"traffic {traffic:g}% allowed: Running or Ramping for at least {need:g}s",
                (f"traffic {traffic:g}% exceeds {self.max_traffic_percentage:g}% before {need:g}s of "
                 "stable running (measured from entering Running or Ramping)"))

    def _need(self) -> float:
        return self.min_stable_time.total_seconds() if self.min_stable_time is not None else 0.0

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        """Compliant when ``ctx``'s traffic is within the limit, or above it after ``min_stable_time`` running.

        The stable time is ``ctx.telemetry["runningDuration"]`` when given, else measured from
        ``ctx.running_since`` (0 when the experiment is not Running or Ramping).
        """
        traffic = ctx.telemetry.get("trafficPercentage")
        if traffic is None:
            return True, "no trafficPercentage telemetry"
        if traffic <= self.max_traffic_percentage:
            return True, f"traffic {traffic:g}% <= {self.max_traffic_percentage:g}%"
        if self.min_stable_time is None:
            return False, f"traffic {traffic:g}% exceeds {self.max_traffic_percentage:g}%"
        need = self._need()
        stable = ctx.telemetry.get("runningDuration")
        source = "runningDuration telemetry" if stable is not None else "since entering Running or Ramping"
        if stable is None:
            stable = ctx.stable_seconds()
        if stable >= need:
            return True, f"traffic {traffic:g}% allowed after {stable:g}s stable (>= {need:g}s, {source})"
        return False, (f"traffic {traffic:g}% exceeds {self.max_traffic_percentage:g}% before "
                       f"{need:g}s of stable running (ran {stable:g}s, {source})")

    def _args(self) -> list[str]:
        args = [f"{self.max_traffic_percentage:g}"]
        if self.min_stable_time is not None:
            args.append(f"min_stable_time={self.min_stable_time!r}")
        return args


class ErrorRate(Policy):
    """The ``errorRate`` telemetry (0-1) must not exceed ``max_error_rate`` (0-1). Default severity Critical.

    Raises ValidationError when ``max_error_rate`` is not a number from 0 to 1.
    """

    kind = "errorRate"
    telemetry_keys = ("errorRate",)
    __slots__ = ("max_error_rate",)

    def __init__(self, max_error_rate: float, *, name: str | None = None,
                 severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        _number(max_error_rate, "max_error_rate", 0, 1)
        self.max_error_rate = float(max_error_rate)

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        """Compliant when ``ctx.telemetry`` has no errorRate or it is at most ``max_error_rate``."""
        rate = ctx.telemetry.get("errorRate")
        if rate is None:
            return True, "no errorRate telemetry"
        if rate <= self.max_error_rate:
            return True, f"error rate {rate:g} <= {self.max_error_rate:g}"
        return False, f"error rate {rate:g} exceeds {self.max_error_rate:g}"

    def _args(self) -> list[str]:
        return [f"{self.max_error_rate:g}"]


class TimeWindow(Policy):
    """Changes only between ``start`` and ``end`` (``datetime.time``; the window wraps past midnight).

    Times with a timezone (``time(9, tzinfo=ZoneInfo("Europe/Berlin"))`` or a fixed
    offset) are judged in that timezone; naive times in UTC. ``start`` and ``end``
    must share their timezone. The moment judged is the Governance clock's.
    Default severity Error (recorded, not refusing). Raises ValidationError for
    non-time values or mixed timezones.
    """

    kind = "timeWindow"
    default_severity = Severity.ERROR
    __slots__ = ("end", "start")

    def __init__(self, start: time, end: time, *, name: str | None = None,
                 severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        for label, value in (("start", start), ("end", end)):
            if not isinstance(value, time):
                raise ValidationError(f"TimeWindow {label} must be a datetime.time, got {value!r}")
        if start.tzinfo != end.tzinfo:
            raise ValidationError(f"TimeWindow start and end must share a timezone, got {start.tzinfo!r} "
                                  f"and {end.tzinfo!r}")
        self.start = start
        self.end = end

    @property
    def timezone(self) -> Any:
        """The timezone the window is judged in (UTC for naive times)."""
        return self.start.tzinfo or UTC

    def contains(self, moment: datetime | time) -> bool:
        """Whether ``moment`` (an aware datetime, or a time of day in the window's timezone) is inside."""
        local = moment.astimezone(self.timezone).time() if isinstance(moment, datetime) else moment
        local, start, end = (t.replace(tzinfo=None) for t in (local, self.start, self.end))
        if start <= end:
            return start <= local < end
        return local >= start or local < end

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        """Compliant when ``ctx.now`` (the clock's time), in the window's timezone, is inside the window."""
        local = ctx.now.astimezone(self.timezone)
        zone = "" if self.start.tzinfo is None else f" {local.strftime('%Z') or local.strftime('%z')}"
        window = f"{self.start.isoformat('minutes')[:5]}-{self.end.isoformat('minutes')[:5]}{zone}"
        moment = local.time().isoformat("minutes")
        if self.contains(ctx.now):
            return True, f"{moment} is inside {window}"
        return False, f"{moment} is outside {window}"

    def _args(self) -> list[str]:
        return [repr(self.start), repr(self.end)]


class ConflictPrevention(Policy):
    """At most one of ``experiments`` (two or more names) may be Running or Ramping at a time in a scope.

    Decided inside the transition script, atomically with the other experiments'
    states; each group is judged on its own. Default severity Critical (refuses);
    another severity records the violation and lets the move happen.
    Raises ValidationError for fewer than two experiments or a bad name.
    """

    kind = "conflictPrevention"
    __slots__ = ("experiments",)

    def __init__(self, *experiments: str, name: str | None = None,
                 severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        if len(experiments) < 2:
            raise ValidationError("ConflictPrevention needs at least two experiments")
        self.experiments = tuple(check_name(e, "ConflictPrevention experiment") for e in experiments)

    def covers(self, experiment: str) -> bool:
        """Whether ``experiment`` is one of the group."""
        return experiment in self.experiments

    def others(self, experiment: str) -> tuple[str, ...]:
        """The group's experiments other than ``experiment``."""
        return tuple(e for e in self.experiments if e != experiment)

    def judge(self, experiment: str, states: Mapping[str, LifecycleState | None]) -> tuple[bool, str]:
        """(compliant, reason) given the states of the group's experiments (``experiment`` itself ignored)."""
        busy = [f"{e} is {s.value}" for e, s in states.items() if e != experiment and s in RUNNING_STATES]
        if busy:
            return False, f"conflicting experiment {', '.join(busy)}"
        return True, "no conflicting experiment is Running or Ramping"

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        """Judge a move that cannot conflict (``ctx.target`` is not Running or Ramping): always compliant.

        Moves into Running or Ramping are judged with ``judge`` against the members' states
        (inside the transition script, or by ``evaluate_policies``).
        """
        target = ctx.target.value if ctx.target else "no target"
        return True, f"{target} is not Running or Ramping"

    def _args(self) -> list[str]:
        return [repr(e) for e in self.experiments]


#: the built-in kinds, and the custom ones ``register_policy`` added: kind -> class
_KINDS: dict[str, type[Policy]] = {c.kind: c for c in (TrafficLimit, ErrorRate, TimeWindow, ConflictPrevention)}
#: the kinds of the built-in policies
BUILT_IN_KINDS = tuple(_KINDS)


def policy_kind(cls: type[Policy]) -> str:
    """The kind ``cls`` is written as: its ``kind``, or its class name when it has only Policy's."""
    return cls.__name__ if cls.kind == Policy.kind else cls.kind


def register_policy(cls: _P) -> _P:
    """Register the custom Policy subclass ``cls`` under its kind, so published rules naming it can be rebuilt.

    Usable as a decorator; returns ``cls``. Built-in policies count as registered; registering a
    class of the same module and name again (a reloaded module) replaces it. Raises
    ValidationError when ``cls`` is not a Policy subclass, its kind is a built-in one or another
    class holds it.
    """
    if not isinstance(cls, type) or not issubclass(cls, Policy) or cls is Policy:
        raise ValidationError(f"register_policy takes a subclass of redgov.Policy, got {cls!r}")
    kind = check_name(policy_kind(cls), "policy kind")
    known = _KINDS.get(kind)
    same = known is not None and (known.__module__, known.__qualname__) == (cls.__module__, cls.__qualname__)
    if known is not None and known is not cls and (kind in BUILT_IN_KINDS or not same):
        held = "built in" if kind in BUILT_IN_KINDS else "registered"
        raise ValidationError(f"policy kind {kind!r} is already {held} as {known.__module__}.{known.__qualname__}; "
                              f"give {cls.__qualname__} another kind")
    _KINDS[kind] = cls
    return cls


def registered_policy(kind: str) -> type[Policy] | None:
    """The Policy class of ``kind``, built in or registered with ``register_policy``; else None."""
    return _KINDS.get(kind)


def _number(value: object, label: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValidationError(f"{label} must be a number from {low:g} to {high:g}, got {value!r}")
