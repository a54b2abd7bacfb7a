"""A parsed document -> GovernanceConfig, every problem collected before one ConfigError.

msgspec stops at the first error, so the governance section is walked here
first, along the Structs' own fields (``msgspec.structs.fields``): unknown keys
(with a did-you-mean), missing keys, unknown ``type`` tags, and each leaf value
converted on its own with ``msgspec.convert(value, field type, strict=False)``,
so the walk accepts exactly what the final conversion accepts. ``${NAME}`` is
substituted on the way, values are checked by ``redgov.validate.check_data``
(NaN, infinities, sets, nesting deeper than 64 levels), and each gate, policy and
connection string that passed is built once to prove Governance will take it.
"""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import msgspec
import msgspec.inspect as mi

from ..errors import ConfigError, ValidationError
from ..validate import check_data
from .explain import Problems, choices, describe, not_one_of, prefixed, show, suggest
from .formats import redis_url
from .model import GateConfig, GovernanceConfig, PolicyConfig, RedisPersistenceConfig
from .runtime import gate, policy

__all__ = ["check_document", "governance_section"]

#: ``persistence.type`` values people write for a database; refused with the way forward
SQL_TYPES = frozenset({"sql", "sqlserver", "mssql", "postgres", "postgresql", "mysql", "sqlite", "oracle"})
#: where a YAML/JSON parser recorded a repeated key: id(mapping) -> (key, "line L, column C")
Duplicates = dict[int, tuple[str, str]]


def check_document(document: object, *, env: Mapping[str, str], duplicates: Duplicates | None = None,
                   where: str = "") -> GovernanceConfig:
    """The GovernanceConfig of a parsed document; ConfigError listing every problem (``where``: the file)."""
    try:
        root, section = governance_section(document)
    except ConfigError as exc:
        raise ConfigError(prefixed(where, str(exc))) from None
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(prefixed(where, f"{root}: expected a mapping, got {show(section)}"))
    problems = Problems()
    walker = _Walker(env, duplicates or {}, problems)
    persistence = section.get("persistence")
    kind = persistence.get("type") if isinstance(persistence, dict) else None
    if isinstance(kind, str) and kind.strip().lower() in SQL_TYPES:
        problems.add(f"{root}.persistence.type", f"{kind!r} is not supported: redgov keeps live state in Redis "
                     f"(type: redis, inMemory or embedded); to keep a SQL copy of the history, set "
                     f"persistence.export.url (e.g. export: {{url: 'postgresql://host/db'}}) and run `redgov export`")
        walker.skip = f"{root}.persistence"
    substituted = walker.struct(section, GovernanceConfig, root)
    problems.raise_if_any(where)
    try:
        return msgspec.convert(substituted, GovernanceConfig, strict=False)
    except msgspec.ValidationError as exc:  # pragma: no cover - the walk accepts what convert accepts
        raise ConfigError(prefixed(where, f"{root}: {exc}")) from None


def governance_section(document: object) -> tuple[str, object]:
    """(its dotted path, the governance section) of a parsed document; ConfigError when there is none."""
    if document is None:
        raise ConfigError("the configuration is empty; expected experimentFramework.governance or governance")
    if not isinstance(document, dict):
        raise ConfigError(f"the configuration root must be a mapping, got {show(document)}")
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
                raise ConfigError(f"experimentFramework: expected a mapping, got {show(framework)}")
            raise ConfigError("experimentFramework: no governance key" + _misspelt(framework, "governance"))
        raise ConfigError("no governance section: expected experimentFramework.governance or a governance root"
                          + (_misspelt(document, "experimentFramework") or _misspelt(document, "governance")))
    return found[0]


def _misspelt(mapping: dict[Any, Any], wanted: str) -> str:
    close = [str(k) for k in mapping if suggest(str(k), [wanted])]
    return f"; found {close[0]!r}: did you mean {wanted!r}?" if close else ""


def _options(annotation: Any) -> tuple[list[Any], bool]:
    """The options of a union (``annotation`` alone otherwise) without None, and whether None is one."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _is_struct(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    """A Struct's fields by config key (resolving the annotations once per class)."""
    return {f.encode_name: f for f in msgspec.structs.fields(cls)}


def _items_of(annotation: Any) -> Any:
    """The item type of ``tuple[X, ...]``, else None."""
    bare = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    args = typing.get_args(bare)
    return args[0] if typing.get_origin(bare) is tuple and len(args) == 2 and args[1] is Ellipsis else None


_VAR_RE = re.compile(r"\$(\$)?\{([^}]*)\}")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_AT_RE = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)


class _Walker:
    """One walk of a governance section: returns it with ``${NAME}`` substituted, records problems."""

    def __init__(self, env: Mapping[str, str], duplicates: Duplicates, problems: Problems) -> None:
        self.env = env
        self.duplicates = duplicates
        self.problems = problems
        #: a subtree left out (persistence of a refused type)
        self.skip: str | None = None
        #: policy name -> the ``policies[i]`` that uses it
        self.policy_names: dict[str, str] = {}

    def value(self, raw: Any, annotation: Any, path: str) -> Any:
        options, optional = _options(annotation)
        if raw is None and optional:
            return None
        if all(_is_struct(o) for o in options):
            if len(options) == 1:
                return self.struct(raw, options[0], path)
            return self.tagged(raw, options, path)
        item = _items_of(annotation)
        if item is not None and all(_is_struct(o) for o in _options(item)[0]):
            if not isinstance(raw, list | tuple):
                self.problems.add(path, f"expected {describe(mi.type_info(annotation))}, got {show(raw)}")
                return raw
            return [self.value(v, item, f"{path}[{i}]") for i, v in enumerate(raw)]
        return self.leaf(raw, annotation, path)

    def tagged(self, raw: Any, options: list[Any], path: str) -> Any:
        """A mapping whose ``type`` picks one of the ``options`` Structs."""
        if not isinstance(raw, dict):
            self.problems.add(path, f"expected a mapping, got {show(raw)}")
            return raw
        field = options[0].__struct_config__.tag_field
        tags = {str(o.__struct_config__.tag): o for o in options}
        at = f"{path}.{field}"
        if field not in raw:
            self.problems.add(at, f"missing required key (expected one of {', '.join(tags)})")
            return raw
        tag = self.data(raw[field], at)
        if not isinstance(tag, str):
            self.problems.add(at, f"expected one of {', '.join(tags)}, got {show(tag)}")
            return raw
        if tag not in tags:
            self.problems.add(at, not_one_of(tag, list(tags)))
            return raw
        return self.struct(raw, tags[tag], path, tag)

    def struct(self, raw: Any, cls: type[msgspec.Struct], path: str, tag: str | None = None) -> Any:
        """A mapping of one Struct's fields: unknown and missing keys, then each field's value."""
        if path == self.skip:
            return raw
        if not isinstance(raw, dict):
            self.problems.add(path, f"expected {describe(mi.type_info(cls))}, got {show(raw)}")
            return raw
        self.repeated(raw, path)
        before = len(self.problems)
        fields = _fields(cls)
        tag_field = cls.__struct_config__.tag_field
        valid = ([tag_field] if tag_field else []) + list(fields)
        out: dict[Any, Any] = {}
        meant: set[str] = set()  # keys an unknown key was taken for: not reported missing as well
        for key, value in raw.items():
            at = f"{path}.{key}"
            if key == tag_field and tag is not None:
                out[key] = tag
            elif isinstance(key, str) and key in fields:
                out[key] = self.value(value, fields[key].type, at)
            else:
                hint = suggest(str(key), valid)
                meant.add(hint or "")
                self.problems.add(at, "unknown key; " + (f"did you mean {hint!r}?" if hint
                                                         else f"valid keys: {', '.join(valid)}"))
        for name, field in fields.items():
            if field.required and name not in raw and name not in meant:
                self.problems.add(f"{path}.{name}", f"missing required key "
                                                    f"(expected {describe(mi.type_info(field.type))})")
        if len(self.problems) == before:
            self.built(out, cls, path)
        return out

    def built(self, value: dict[Any, Any], cls: type[msgspec.Struct], path: str) -> None:
        """What the types alone cannot say: the runtime gate or policy builds, names are distinct, the
        connection string parses."""
        if not issubclass(cls, GateConfig | PolicyConfig | RedisPersistenceConfig):
            return
        try:
            config: Any = msgspec.convert(value, cls, strict=False)
            if isinstance(config, GateConfig):
                gate(config)
            elif isinstance(config, PolicyConfig):
                name = policy(config).name
                label = path.rsplit(".", 1)[-1]
                if name in self.policy_names:
                    self.problems.add(path, f"policy name {name!r} is already used by {self.policy_names[name]}; "
                                            f"give each policy a distinct name")
                self.policy_names.setdefault(name, label)
            elif isinstance(config, RedisPersistenceConfig):
                try:
                    redis_url(config.connection_string)
                except ValueError as exc:
                    self.problems.add(f"{path}.connectionString", str(exc))
        except (msgspec.ValidationError, ValidationError, ValueError) as exc:
            self.problems.add(path, str(exc))

    def leaf(self, raw: Any, annotation: Any, path: str) -> Any:
        """A value that is not a Struct: substituted, checked as data, then converted on its own."""
        before = len(self.problems)
        value = self.data(raw, path)
        if len(self.problems) > before:
            return value
        try:
            if isinstance(value, Mapping):
                check_data(value, path)
            else:
                check_data({"_": value}, "$")
        except ValidationError as exc:
            text = str(exc)
            at, _, problem = text.partition(": ")
            self.problems.add(path + at.removeprefix("$._") if at.startswith("$._") else at, problem)
            return value
        try:
            converted = msgspec.convert(value, annotation, strict=False)
        except msgspec.ValidationError as exc:
            self.problems.add(*self.explain(value, annotation, str(exc), path))
            return value
        if isinstance(converted, float) and not math.isfinite(converted):
            self.problems.add(path, f"expected a finite number, got {show(value)}")
        return value

    def explain(self, value: Any, annotation: Any, message: str, path: str) -> tuple[str, str]:
        """(path, problem) of msgspec's refusal of ``value``: what was expected and the value found."""
        match = _AT_RE.match(message)
        assert match is not None  # the pattern matches any text
        kind = mi.type_info(annotation)
        inner = match.group("at") or ""
        item = re.fullmatch(r"\[(\d+)\]", inner)
        bare = kind.type if isinstance(kind, mi.Metadata) else kind
        if item and isinstance(value, list) and isinstance(bare, mi.VarTupleType):
            path, value, kind = f"{path}{inner}", value[int(item.group(1))], bare.item_type
        accepted = choices(kind)
        if accepted and isinstance(value, str):
            return path, not_one_of(value, accepted)
        return path, f"expected {describe(kind)}, got {show(value)}"

    def repeated(self, mapping: dict[Any, Any], path: str) -> None:
        if id(mapping) in self.duplicates:
            key, at = self.duplicates[id(mapping)]
            self.problems.add(f"{path}.{key}", f"duplicate key ({at})")

    def data(self, value: Any, path: str) -> Any:
        """``value`` with ``${NAME}``/``${NAME:-default}`` replaced in every string; ``$${`` is a literal ``${``."""
        if isinstance(value, dict):
            self.repeated(value, path)
            return {k: self.data(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        failed: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(1):
                return "${" + match.group(2) + "}"
            name, sep, default = match.group(2).partition(":-")
            if not _NAME_RE.fullmatch(name):
                failed.append(f"{match.group(0)!r} is not a valid ${{NAME}} or ${{NAME:-default}} reference")
                return match.group(0)
            found = self.env.get(name)
            if sep and not found:  # as in a shell: the default also replaces an empty value
                return default
            if found is None:
                failed.append(f"environment variable {name} is not set (set it, or write ${{{name}:-default}})")
                return match.group(0)
            return found

        result = _VAR_RE.sub(replace, value)
        if "${" in _VAR_RE.sub("", value):
            failed.append(f"unterminated ${{...}} in {value!r}")
        if failed:
            self.problems.add(path, "; ".join(failed))
        return result
