"""Configuration versions compared: ``diff`` and the canonical ``config_hash``. Pure functions."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

__all__ = ["Change", "config_hash", "diff"]


class Change(msgspec.Struct, frozen=True):
    """One path-level difference between two configurations, as ``Governance.diff`` returns them.

    Fields: ``kind`` is ``"added"``, ``"modified"`` or ``"removed"``; ``path`` is dotted
    with list indexes in brackets (``rollout.steps[2].percent``); ``old`` is the value
    before (None for an added path), ``new`` the value after (None for a removed one).
    A value whose type changes (``1`` to ``"1"``) is ``"modified"``.
    """

    kind: Literal["added", "modified", "removed"]
    path: str
    old: Any = None
    new: Any = None


def config_hash(configuration: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (keys sorted, no spaces) of a configuration."""
    return hashlib.sha256(msgspec.json.encode(configuration, order="sorted")).hexdigest()


def diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """Path-level changes from ``old`` to ``new`` through nested dicts and lists, under ``path``.

    Changes under the keys of ``old`` come first, in its order, then the keys only in
    ``new``; list items are compared by index. Pure: no I/O.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[Change] = []
        for key in old:
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                changes.append(Change("removed", sub, old[key], None))
            else:
                changes.extend(diff(old[key], new[key], sub))
        for key in new:
            if key not in old:
                changes.append(Change("added", f"{path}.{key}" if path else str(key), None, new[key]))
        return changes
    if isinstance(old, list) and isinstance(new, list):
        changes = []
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(new):
                changes.append(Change("removed", sub, old[i], None))
            elif i >= len(old):
                changes.append(Change("added", sub, None, new[i]))
            else:
                changes.extend(diff(old[i], new[i], sub))
        return changes
    if type(old) is not type(new) or old != new:
        return [Change("modified", path, old, new)]
    return []
