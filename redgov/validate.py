"""Input validation: every value a caller passes is checked here before anything is sent.

Each check names the field and the value it refuses (``ValidationError``, a
``RedgovError`` and a ``ValueError``). Nothing in this module performs I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .errors import ValidationError
from .records import LifecycleState

__all__ = ["MAX_DEPTH", "MAX_NAME_LENGTH", "check_data", "check_name", "check_scope_part", "check_state",
           "check_version_number"]

#: Longest experiment name, tenant, environment, policy, actor or id (characters).
MAX_NAME_LENGTH = 1024
#: Deepest nesting of metadata and configurations.
MAX_DEPTH = 64
_STATE_NAMES = ", ".join(s.value for s in LifecycleState)
#: names that passed check_name (bounded; a set lookup is cheaper than checking again)
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 8192


def _has_control(value: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value)


def check_etag(value: object, what: str = "expected_etag") -> str | None:
    """``value`` when it is None or a non-empty string (an etag to compare with), else ValidationError."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ValidationError(f"{what} must be a non-empty string or None, got {value!r}")
    return value


def check_name(value: object, what: str) -> str:
    """A non-empty, non-blank name of at most MAX_NAME_LENGTH characters without control characters."""
    if value.__class__ is str and value in _GOOD_NAMES:  # names in use are checked once per process
        return value  # type: ignore[return-value, unused-ignore]
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value or value.isspace():
        raise ValidationError(f"{what} must not be empty or blank, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not value.isprintable() and _has_control(value):
        raise ValidationError(f"{what} {value!r} contains a control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} {value!r} is not valid Unicode text") from None
    if len(_GOOD_NAMES) >= _GOOD_NAMES_MAX:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(value)
    return value


def check_scope_part(value: object, what: str) -> str | None:
    """A tenant or environment: None, or a name (the empty string is a name distinct from None)."""
    if value is None or value == "":
        return value
    return check_name(value, what)


def check_state(value: object, what: str = "state") -> LifecycleState:
    if value.__class__ is LifecycleState:
        return value  # type: ignore[return-value, unused-ignore]
    try:
        return LifecycleState(value if isinstance(value, str) else repr(value))
    except ValueError:
        raise ValidationError(f"{what} {value!r} is not one of {_STATE_NAMES}") from None


def check_data(value: object, what: str) -> dict[str, Any]:
    """A metadata or configuration mapping that JSON round-trips exactly.

    Keys must be strings; values None, bool, int, finite float, str, lists and
    mappings of them (also datetimes, which are stored as ISO strings), nested
    at most MAX_DEPTH levels. NaN, infinities, sets, bytes and other objects are
    refused with the path of the offending value.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"{what} must be a mapping, got {type(value).__name__} {value!r}")
    _walk(value, what, 1)
    return dict(value)


def _walk(value: object, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValidationError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{path}: keys must be strings, got {type(key).__name__} {key!r}")
            if isinstance(item, (Mapping, list, tuple)) or not isinstance(item, (str, int, bool)) or item is None:
                _walk(item, f"{path}.{key}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", depth + 1)
        return
    if value is None or isinstance(value, (str, bool, int, datetime)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{path}: {value!r} is not a finite number (JSON has no NaN or infinity)")
        return
    raise ValidationError(f"{path}: a {type(value).__name__} ({value!r}) cannot be stored; use strings, numbers, "
                          "booleans, null, lists and mappings")


def check_version_number(value: object, what: str) -> int:
    """A version number: an integer from 1 to 2**53 - 1 (sorted-set scores are exact up to there)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**53 - 1:
        raise ValidationError(f"{what} must be an integer from 1 to 2**53 - 1, got {value!r}")
    return value
