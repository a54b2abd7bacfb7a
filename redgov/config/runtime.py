"""Configuration Structs <-> the runtime gate and policy objects Governance runs (pure, no I/O).

``gate`` and ``policy`` build the objects a configuration describes; ``gate_definition`` and
``policy_definition`` write built-in ones back as the DSL's data (the keys a config file
uses), and ``convert`` checks published data against the Structs strictly (no ``${NAME}``,
no text for numbers), so ``redgov.govdefinition`` can rebuild them. Custom policies are
written and rebuilt from their ``__init__`` parameters (``default_policy_definition``,
``default_policy_from_definition``: the defaults of ``Policy.definition`` and
``Policy.from_definition``).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from ..errors import ConfigError, ValidationError
from ..gates import AutomaticGate, Gate, ManualGate, RoleGate
from ..policies import (
    BUILT_IN_KINDS,
    ConflictPrevention,
    ErrorRate,
    Policy,
    TimeWindow,
    TrafficLimit,
    policy_kind,
    registered_policy,
)
from ..records import Severity
from ..validate import check_data, check_name
from .explain import show
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

__all__ = ["convert", "default_policy_definition", "default_policy_from_definition", "format_duration",
           "format_time_of_day", "gate", "gate_definition", "json_data", "policy", "policy_definition", "time_zone",
           "time_zone_name"]

_OFFSET_RE = re.compile(r"^([+-])([01]\d|2[0-3]):([0-5]\d)$")
_AT_RE = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)
_STEP_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MISSING = object()
#: the parameters every policy takes, written under their own keys
_NAMED_BY_CALL = ("name", "severity")


def gate(config: GateConfig) -> Gate:
    """The AutomaticGate, ManualGate or RoleGate a gate configuration describes."""
    if isinstance(config, RoleGateConfig):
        return RoleGate(*config.allowed_roles, to_state=config.to_state, from_state=config.from_state)
    if isinstance(config, ManualGateConfig):
        return ManualGate(to_state=config.to_state, from_state=config.from_state,
                          approvals=config.required_approvals, self_approval=config.allow_self_approval)
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
    """The TrafficLimit, ErrorRate, TimeWindow or ConflictPrevention a policy configuration describes.

    Raises ValueError for an unknown ``timeZone`` and ValidationError for values the policy refuses.
    """
    if isinstance(config, TrafficLimitConfig):
        stable = None if config.min_stable_time is None else parse_duration(config.min_stable_time)
        return TrafficLimit(config.max_traffic_percentage, stable, name=config.name, severity=config.severity)
    if isinstance(config, ErrorRateConfig):
        return ErrorRate(config.max_error_rate, name=config.name, severity=config.severity)
    if isinstance(config, TimeWindowConfig):
        zone = None if config.time_zone is None else time_zone(config.time_zone)
        start, end = (parse_time_of_day(t).replace(tzinfo=zone)
                      for t in (config.allowed_start_time, config.allowed_end_time))
        return TimeWindow(start, end, name=config.name, severity=config.severity)
    return ConflictPrevention(*config.conflicting_experiments, name=config.name, severity=config.severity)


def gate_definition(rule: Gate) -> dict[str, Any]:
    """A gate as the DSL writes it: ``{type, toState, fromState?, allowedRoles?, requiredApprovals?,
    allowSelfApproval?, autoApproveAfter?}``, defaults left out.

    Raises ValidationError for a gate that is none of AutomaticGate, ManualGate, RoleGate.
    """
    if not isinstance(rule, AutomaticGate | ManualGate | RoleGate):
        raise ValidationError(f"a {type(rule).__name__} cannot be written as configuration; gates are "
                              "AutomaticGate, ManualGate and RoleGate")
    data: dict[str, Any] = {"type": rule.kind, "toState": rule.to_state.value}
    if rule.from_state is not None:
        data["fromState"] = rule.from_state.value
    if isinstance(rule, RoleGate):
        data["allowedRoles"] = list(rule.roles)
    elif isinstance(rule, ManualGate):
        if rule.approvals != 1:
            data["requiredApprovals"] = rule.approvals
        if rule.self_approval:
            data["allowSelfApproval"] = True
    elif rule.after is not None:
        data["autoApproveAfter"] = format_duration(rule.after)
    return data


def policy_definition(rule: Policy) -> dict[str, Any]:
    """A built-in policy (TrafficLimit, ErrorRate, TimeWindow, ConflictPrevention) as the DSL writes it.

    ``{"type", "name", "severity", <its keys>}``: maxTrafficPercentage and minStableTime
    (hh:mm:ss, left out when None); maxErrorRate; allowedStartTime, allowedEndTime (HH:MM or
    HH:MM:SS) and timeZone (left out for naive times); conflictingExperiments. Raises
    ValidationError for another class or a value the DSL cannot write (fractions of a second
    in a time of day, a timezone that is neither a ZoneInfo nor a fixed offset).
    """
    data: dict[str, Any] = {"type": rule.kind, "name": rule.name, "severity": rule.severity.value}
    if type(rule) is TrafficLimit:
        data["maxTrafficPercentage"] = rule.max_traffic_percentage
        if rule.min_stable_time is not None:
            data["minStableTime"] = format_duration(rule.min_stable_time)
    elif type(rule) is ErrorRate:
        data["maxErrorRate"] = rule.max_error_rate
    elif type(rule) is TimeWindow:
        data["allowedStartTime"] = format_time_of_day(rule.start)
        data["allowedEndTime"] = format_time_of_day(rule.end)
        if rule.start.tzinfo is not None:
            data["timeZone"] = time_zone_name(rule.start.tzinfo)
    elif type(rule) is ConflictPrevention:
        data["conflictingExperiments"] = list(rule.experiments)
    else:
        raise ValidationError(f"{type(rule).__name__} is not a built-in policy")
    return data


def format_duration(span: timedelta) -> str:
    """``span`` (>= 0) as the DSL writes a duration: ``[d.]hh:mm:ss[.ffffff]`` (what ``parse_duration`` reads)."""
    if span < timedelta(0):
        raise ValidationError(f"a duration must be >= 0, got {span!r}")
    hours, rest = divmod(span.seconds, 3600)
    text = f"{span.days}." if span.days else ""
    text += f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return text + (f".{span.microseconds:06d}" if span.microseconds else "")


def format_time_of_day(moment: time) -> str:
    """``moment`` as the DSL writes a time of day: ``HH:MM``, or ``HH:MM:SS`` with seconds.

    Raises ValidationError for fractions of a second (the DSL has none).
    """
    if moment.microsecond:
        raise ValidationError(f"a time of day in the configuration has whole seconds, got {moment.isoformat()}")
    return moment.strftime("%H:%M:%S" if moment.second else "%H:%M")


def time_zone(name: str) -> tzinfo:
    """The timezone of a ``timeZone`` value: ``UTC``, a fixed offset ``+HH:MM`` or an IANA name.

    Raises ValueError for a name the system's time zone database does not know.
    """
    if name == "UTC":
        return UTC
    offset = _OFFSET_RE.match(name)
    if offset:
        sign, hours, minutes = offset.groups()
        span = timedelta(hours=int(hours), minutes=int(minutes))
        return timezone(-span if sign == "-" else span)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timeZone: {name!r} is not a known time zone (an IANA name such as Europe/Berlin, "
                         f"UTC or an offset +HH:MM)") from None


def time_zone_name(zone: tzinfo) -> str:
    """The ``timeZone`` value of ``zone`` (a ZoneInfo's key, UTC or +HH:MM); ValidationError for others."""
    if isinstance(zone, ZoneInfo) and zone.key:
        return zone.key
    if isinstance(zone, timezone):
        span = zone.utcoffset(None)
        if span == timedelta(0):
            return "UTC"
        minutes, seconds = divmod(abs(int(span.total_seconds())), 60)
        if not seconds and not span.microseconds:
            return f"{'-' if span < timedelta(0) else '+'}{minutes // 60:02d}:{minutes % 60:02d}"
    raise ValidationError(f"the timezone {zone!r} cannot be written as configuration; use a ZoneInfo or a "
                          f"fixed offset of whole minutes")


def convert(data: object, kind: Any, path: str) -> Any:
    """``data`` as the configuration type ``kind`` (a Struct or a union of them), converted strictly.

    Strict: no ``${NAME}`` substitution and no text for numbers (published data is exact).
    Raises ConfigError naming the path under ``path`` and the value found there.
    """
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        match = _AT_RE.match(str(exc))
        assert match is not None  # the pattern matches any text
        text, inner = re.sub(r", got `[^`]*`$", "", match.group("text")), match.group("at") or ""
        value = _lookup(data, inner)
        found = "" if value is _MISSING or text.startswith(("Object ", "Invalid")) else f", got {show(value)}"
        raise ConfigError(f"{path}{inner}: {text[:1].lower()}{text[1:]}{found}") from None


def _lookup(data: object, inner: str) -> object:
    """The value at msgspec's path ``inner`` (``.key[0].other``) of ``data``, else _MISSING."""
    for key, index in _STEP_RE.findall(inner):
        if key and isinstance(data, dict) and key in data:
            data = data[key]
        elif index and isinstance(data, list | tuple) and int(index) < len(data):
            data = data[int(index)]
        else:
            return _MISSING
    return data


# -- policies as data: the default of Policy.definition and Policy.from_definition ------------

def default_policy_definition(rule: Policy) -> dict[str, Any]:
    """``Policy.definition``'s default: built-in kinds in the DSL's keys, custom ones from ``__init__``.

    For a custom subclass: ``type`` is its kind (``policy_kind``), then ``name``,
    ``severity``, and each parameter of its ``__init__`` other than ``name``, ``severity``
    and ``**kwargs``, read from the attribute of the same name and written under its
    camelCase key (``max_latency_ms`` -> ``maxLatencyMs``); a ``*args`` parameter is
    written as a list, a None left out when None is its default. Values must be JSON
    data (tuples become lists); override ``definition`` and ``from_definition`` otherwise.

    Raises:
        ValidationError: a missing attribute, a value that is not JSON data, or a custom
            class whose kind is a built-in one.
    """
    cls = type(rule)
    kind = policy_kind(cls)
    if kind in BUILT_IN_KINDS:
        if registered_policy(kind) is not cls:
            raise ValidationError(f"{cls.__qualname__} has the built-in kind {kind!r}; give it a kind of its own")
        return policy_definition(rule)
    data: dict[str, Any] = {"type": kind, "name": rule.name, "severity": rule.severity.value}
    for param in _parameters(cls):
        if not hasattr(rule, param.name):
            raise ValidationError(f"{cls.__qualname__}.definition(): no attribute {param.name!r} for the __init__ "
                                  f"parameter of that name; keep it, or override definition() and from_definition()")
        value = getattr(rule, param.name)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            value = list(value)
        elif value is None and param.default is None:
            continue
        data[_camel(param.name)] = value
    return json_data(data, f"{cls.__qualname__}.definition()")


def default_policy_from_definition(cls: type[Policy], data: Mapping[str, Any], *, path: str = "policy") -> Policy:
    """``Policy.from_definition``'s default: the policy of class ``cls`` (of the class of ``data["type"]``
    when ``cls`` is Policy) that ``data`` describes; ``path`` names ``data`` in errors.

    Built-in kinds are checked against the configuration Structs; a custom class gets each
    ``__init__`` parameter from its camelCase key (see ``default_policy_definition``), and
    ``name`` and ``severity``. A registered class that overrides ``from_definition`` is asked.

    Raises:
        ConfigError: ``data`` not a mapping, a kind neither built in nor registered (with how
            to register it), another class's kind, unknown or missing keys, refused values.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {show(data)}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ConfigError(f"{path}.type: expected a policy kind, got {show(kind)}")
    if cls is Policy:
        found = registered_policy(kind)
        if found is None:
            raise ConfigError(f"{path}.type: policy kind {kind!r} is neither built in ({', '.join(BUILT_IN_KINDS)})"
                              f" nor registered; call redgov.register_policy(<its Policy subclass>) in this process")
        if any("from_definition" in vars(k) for k in found.__mro__[:found.__mro__.index(Policy)]):
            try:
                return found.from_definition(data)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            except (ValueError, TypeError) as exc:  # ValidationError too
                raise ConfigError(f"{path}: {found.__qualname__}.from_definition refused it: {exc}") from None
        cls = found
    elif kind != policy_kind(cls):
        raise ConfigError(f"{path}.type: {kind!r} is not {cls.__qualname__}'s kind {policy_kind(cls)!r}")
    if kind in BUILT_IN_KINDS and registered_policy(kind) is cls:
        try:
            return policy(convert(dict(data), PolicyConfig, path))
        except ValueError as exc:  # ValidationError too
            raise ConfigError(f"{path}: {exc}") from None
    return _build(cls, data, path)


def _build(cls: type[Policy], data: Mapping[str, Any], path: str) -> Policy:
    params = {_camel(p.name): p for p in _parameters(cls)}
    valid = ["type", *_NAMED_BY_CALL, *params]
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"{path}.{key}: unknown key for policy kind {data['type']!r}; {hint}")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    spread = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    for key, param in params.items():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            items = data.get(key, [])
            if not isinstance(items, list | tuple):
                raise ConfigError(f"{path}.{key}: expected a list, got {show(items)}")
            args.extend(items)
        elif key not in data and param.default is inspect.Parameter.empty:
            raise ConfigError(f"{path}.{key}: missing required key")
        elif param.kind is inspect.Parameter.POSITIONAL_ONLY or (
                spread and param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD):
            args.append(data.get(key, param.default))
        elif key in data:
            kwargs[param.name] = data[key]
    signature = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    later = {k: data[k] for k in _NAMED_BY_CALL if data.get(k) is not None}
    for key in [k for k in later if k in signature or takes_any]:
        kwargs[key] = later.pop(key)
    try:
        built = cls(*args, **kwargs)
        if "name" in later:
            built.name = check_name(later["name"], "policy name")
        if "severity" in later:
            built.severity = Severity(later["severity"])
    except (ValueError, TypeError) as exc:  # ValidationError too
        raise ConfigError(f"{path}: {cls.__qualname__} refused the definition: {exc}") from None
    return built


def _parameters(cls: type[Policy]) -> list[inspect.Parameter]:
    """The parameters of ``cls.__init__`` a definition carries: not self, name, severity or ``**kwargs``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p for p in params if p.name not in _NAMED_BY_CALL and p.kind is not inspect.Parameter.VAR_KEYWORD]


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def json_data(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` as JSON gives it back (tuples as lists, enums as their values); ``where`` names it in errors.

    Raises ValidationError for what JSON cannot carry back unchanged (NaN, sets, objects, datetimes).
    """
    check_data(data, where)  # NaN, infinities, sets, objects, depth; datetimes pass it but not here
    pending: list[object] = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, datetime):
            raise ValidationError(f"{where}: a datetime ({value!r}) would come back as text; write it as a "
                                  f"string, or override definition() and from_definition()")
        pending.extend(value.values() if isinstance(value, Mapping) else value if isinstance(value, list | tuple)
                       else ())
    plain: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(data))
    return plain
