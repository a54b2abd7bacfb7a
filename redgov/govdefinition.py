"""A Governance's definition as plain data and back, so a scope's rules can be published. Pure, no I/O.

A definition is the DSL's ``governance:`` mapping, camelCase keys as a config file
writes them: ``initialState``, ``approvalGates``, ``policies``, ``requireTelemetry``
(only when true) and ``rules`` (only when not the default lifecycle). ``definition_of``
writes one from rules, gates, policies, initial state and require_telemetry;
``parts_of`` rebuilds those from one, checked against the configuration Structs
(ConfigError with the path). ``rules_hash`` names a definition, ``differences`` says
what two differ in, ``is_empty`` tells the definition of a Governance with nothing of
its own. Policies are written by ``Policy.definition`` and rebuilt by ``Policy.from_definition``
of the class of their kind (built in, or registered with ``redgov.register_policy``).

The configuration package is imported inside the functions: it imports Governance,
which may import this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from .errors import ConfigError, ValidationError
from .gates import Gate
from .policies import BUILT_IN_KINDS, Policy, registered_policy
from .records import LifecycleState
from .rules import Rules
from .validate import check_state

__all__ = [
    "DEFINITION_KEYS",
    "Parts",
    "definition_of",
    "differences",
    "is_empty",
    "parts_of",
    "rules_hash",
]

#: the keys a definition may have, in the order ``definition_of`` writes them
DEFINITION_KEYS = ("initialState", "approvalGates", "policies", "requireTelemetry", "rules")
_GATE_DEFAULTS: dict[str, Any] = {"requiredApprovals": 1, "allowSelfApproval": False}


class Parts(NamedTuple):
    """What a definition describes, as Governance takes it: ``Governance(backplane, **parts._asdict())``.

    ``rules`` (Rules), ``gates`` and ``policies`` (tuples, in the definition's order),
    ``initial_state`` and ``require_telemetry``.
    """

    rules: Rules
    gates: tuple[Gate, ...]
    policies: tuple[Policy, ...]
    initial_state: LifecycleState
    require_telemetry: bool


def definition_of(*, rules: Rules | Mapping[str, Iterable[str]] | None = None, gates: Iterable[Gate] = (),
                  policies: Iterable[Policy] = (), initial_state: LifecycleState | str = LifecycleState.DRAFT,
                  require_telemetry: bool = False) -> dict[str, Any]:
    """The definition (the DSL's ``governance:`` mapping) of a Governance's rules, gates and policies.

    Args:
        rules: the lifecycle (Rules, a mapping of state names, or None: the default one);
            written as ``rules`` (each state that has moves -> its targets, in declaration
            order) only when not the default.
        gates: AutomaticGate, ManualGate and RoleGate objects, kept in order; defaults left out.
        policies: written by each one's ``definition()``, kept in order.
        initial_state: written as ``initialState``.
        require_telemetry: written as ``requireTelemetry: true`` only when true.

    The same arguments always give the same dict, which ``load_config({"governance": ...})``
    loads (custom policy kinds aside) and ``parts_of`` rebuilds.

    Raises:
        ValidationError: an unknown state, a gate of another class, or a policy whose
            ``definition()`` is not JSON data or uses a built-in kind it is not.
    """
    from .config.runtime import gate_definition

    table = _table(rules if isinstance(rules, Rules) else Rules(rules))
    data: dict[str, Any] = {
        "initialState": check_state(initial_state, "initial_state").value,
        "approvalGates": [gate_definition(_gate(g)) for g in gates],
        "policies": [_policy_data(p) for p in policies],
    }
    if require_telemetry:
        data["requireTelemetry"] = True
    if table != _table(Rules()):
        data["rules"] = table
    return data


def parts_of(definition: Mapping[str, Any]) -> Parts:
    """The rules, gates, policies, initial state and require_telemetry ``definition`` describes.

    Checked strictly against the configuration Structs (no ``${NAME}`` substitution).
    Each policy is rebuilt by the class of its ``type``: a built-in one or one registered
    with ``redgov.register_policy``.

    Raises:
        ConfigError: naming the path (``governance.policies[1].maxErrorRate``) and the value:
            bad data, a key that is not one of DEFINITION_KEYS, a policy kind neither built
            in nor registered, or two policies of one name.
    """
    from .config.model import GovernanceConfig
    from .config.runtime import convert, default_policy_from_definition, gate

    if not isinstance(definition, Mapping):
        raise ConfigError(f"governance: expected a mapping, got {_text(definition)}")
    section = dict(definition)
    for key in section:
        if key not in DEFINITION_KEYS:
            raise ConfigError(f"governance.{key}: not part of a rules definition (keys: {', '.join(DEFINITION_KEYS)})")
    raw = section.pop("policies", None)
    raw = [] if raw is None else raw
    config: GovernanceConfig = convert(section, GovernanceConfig, "governance")
    gates = []
    for i, item in enumerate(config.approval_gates):
        try:
            gates.append(gate(item))
        except ValueError as exc:  # ValidationError too
            raise ConfigError(f"governance.approvalGates[{i}]: {exc}") from None
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"governance.policies: expected a list, got {_text(raw)}")
    policies: list[Policy] = []
    names: dict[str, int] = {}
    for i, entry in enumerate(raw):
        built = default_policy_from_definition(Policy, entry, path=f"governance.policies[{i}]")
        if built.name in names:
            raise ConfigError(f"governance.policies[{i}].name: {built.name!r} is already the name of "
                              f"policies[{names[built.name]}]; policy names must be distinct")
        names[built.name] = i
        policies.append(built)
    return Parts(config.lifecycle(), tuple(gates), tuple(policies), config.initial_state, config.require_telemetry)


def rules_hash(definition: Mapping[str, Any]) -> str:
    """``"sha256:"`` + the hex SHA-256 of ``definition``'s canonical JSON (msgspec, keys sorted).

    Raises ValidationError when ``definition`` is not JSON data.
    """
    try:
        encoded = msgspec.json.encode(dict(definition), order="sorted")
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(f"a rules definition must be JSON data: {exc}") from None
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


def is_empty(definition: Mapping[str, Any]) -> bool:
    """Whether ``definition`` is the default one, a Governance's with nothing of its own.

    That is: default rules, no gates, no policies, initialState Draft, requireTelemetry
    false (keys may be missing). Unknown keys or unreadable rules make it not empty.
    """
    if any(key not in DEFINITION_KEYS for key in definition):
        return False
    if definition.get("approvalGates") or definition.get("policies") or definition.get("requireTelemetry"):
        return False
    return definition.get("initialState", "Draft") == "Draft" and _rules_of(definition) == _table(Rules())


def differences(mine: Mapping[str, Any], published: Mapping[str, Any]) -> list[str]:
    """Readable lines naming what ``mine`` (this process's definition) and ``published`` differ in; [] when equal.

    Missing keys count as their defaults. Gates are matched by type and move, policies by
    name: ``approvalGates[0]: manual Approved->Running requiredApprovals 1 here, 2 published``,
    ``policies: errorRate 'error-rate' only here``, ``initialState: Draft here,
    PendingApproval published``, ``rules: Approved -> Ramping only published``.
    """
    lines: list[str] = []
    for key, default in (("initialState", "Draft"), ("requireTelemetry", False)):
        here, there = mine.get(key, default), published.get(key, default)
        if here != there:
            lines.append(f"{key}: {_text(here)} here, {_text(there)} published")
    here_rules, there_rules = _rules_of(mine), _rules_of(published)
    if "?" in here_rules or "?" in there_rules:  # unreadable: shown as given
        if here_rules != there_rules:
            lines.append(f"rules: {_text(mine.get('rules'))} here, {_text(published.get('rules'))} published")
        here_rules = there_rules = {}
    for state in LifecycleState:
        for target in LifecycleState:
            ours = target.value in here_rules.get(state.value, [])
            if ours != (target.value in there_rules.get(state.value, [])):
                lines.append(f"rules: {state.value} -> {target.value} only {'here' if ours else 'published'}")
    lines += _list_differences("approvalGates", "gates", _items(mine, "approvalGates"),
                               _items(published, "approvalGates"), _gate_label, _GATE_DEFAULTS)
    lines += _list_differences("policies", "policies", _items(mine, "policies"), _items(published, "policies"),
                               _policy_label, {})
    for key in sorted(set(mine) | set(published)):
        if key not in DEFINITION_KEYS and mine.get(key) != published.get(key):
            lines.append(f"{key}: {_text(mine.get(key))} here, {_text(published.get(key))} published")
    return lines


# -- helpers -----------------------------------------------------------------------------

def _gate(value: object) -> Gate:
    if not isinstance(value, Gate):
        raise ValidationError(f"gates must be Gate objects, got {type(value).__name__} {value!r}")
    return value


def _policy_data(policy: object) -> dict[str, Any]:
    """``policy.definition()``, checked: JSON data whose ``type`` is the policy's own kind."""
    from .config.runtime import json_data

    if not isinstance(policy, Policy):
        raise ValidationError(f"policies must be Policy objects, got {type(policy).__name__} {policy!r}")
    cls = type(policy)
    data = policy.definition()
    where = f"{cls.__qualname__}.definition()"
    if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
        raise ValidationError(f"{where} must return a mapping with a 'type', got {data!r}")
    kind = data["type"]
    if kind in BUILT_IN_KINDS and registered_policy(kind) is not cls:
        raise ValidationError(f"{where} gives the built-in kind {kind!r}; give {cls.__qualname__} a kind of its own")
    return json_data(data, where)


def _table(rules: Rules) -> dict[str, list[str]]:
    return {source: targets for source, targets in rules.as_dict().items() if targets}


def _rules_of(definition: Mapping[str, Any]) -> dict[str, list[str]]:
    """The rules table of a definition (the default when it has none); {"?": [...]} when unreadable."""
    raw = definition.get("rules")
    try:
        return _table(Rules(raw))
    except (ValidationError, AttributeError, TypeError):
        return {"?": [repr(raw)]}


def _items(definition: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = definition.get(key) or []
    items = value if isinstance(value, list | tuple) else [value]
    return [dict(item) if isinstance(item, Mapping) else {"type": _text(item)} for item in items]


def _gate_label(item: Mapping[str, Any]) -> str:
    return f"{item.get('type')} {item.get('fromState') or '*'}->{item.get('toState')}"


def _policy_label(item: Mapping[str, Any]) -> str:
    return repr(str(item.get("name") or item.get("type")))


def _list_differences(key: str, what: str, mine: list[dict[str, Any]], published: list[dict[str, Any]],
                      label: Any, defaults: Mapping[str, Any]) -> list[str]:
    """Lines for one list: items matched by ``label`` (in order), then their keys compared."""
    lines: list[str] = []
    left = list(range(len(published)))
    for i, item in enumerate(mine):
        match = next((j for j in left if label(published[j]) == label(item)), None)
        name = label(item) if key == "approvalGates" else f"{item.get('type')} {label(item)}"
        if match is None:
            lines.append(f"{key}: {name} only here")
            continue
        left.remove(match)
        other = published[match]
        if key == "policies" and other.get("type") != item.get("type"):
            lines.append(f"{key}[{i}]: {label(item)} is {item.get('type')} here, {other.get('type')} published")
            continue
        for field in sorted(set(item) | set(other)):
            ours, theirs = item.get(field, defaults.get(field)), other.get(field, defaults.get(field))
            if ours != theirs:
                lines.append(f"{key}[{i}]: {name} {field} {_text(ours)} here, {_text(theirs)} published")
    for j in left:
        item = published[j]
        name = label(item) if key == "approvalGates" else f"{item.get('type')} {label(item)}"
        lines.append(f"{key}: {name} only published")
    if not lines and [label(i) for i in mine] != [label(i) for i in published]:
        lines.append(f"{key}: the same {what} in another order (here: {', '.join(label(i) for i in mine)}; "
                     f"published: {', '.join(label(i) for i in published)})")
    return lines


def _text(value: object) -> str:
    """A value as the lines show it: true/false/none, numbers with %g, lists in brackets."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
