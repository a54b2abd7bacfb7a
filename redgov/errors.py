"""The exception tree, and the one table mapping server refusals onto it.

Scripts refuse with ``redis.error_reply('REDGOV_<CODE> <detail>')``. redis-py
raises that as ``ResponseError`` (inside a pipeline with a prefix such as
"Command # 1 (...) of pipeline caused error: "), so the code is searched for
anywhere in the message. This module is the only place that knows the codes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from .records import PolicyEvaluation

__all__ = [
    "ApprovalRequiredError",
    "ConfigError",
    "ConflictError",
    "CorruptDataError",
    "InvalidTransitionError",
    "NotFoundError",
    "PolicyViolationError",
    "RedgovError",
    "ValidationError",
    "map_reply_error",
]


class RedgovError(Exception):
    """Base of every refusal redgov raises."""


class ConflictError(RedgovError):
    """The etag or state changed underneath; duplicate create; duplicate version."""


class InvalidTransitionError(RedgovError):
    """The lifecycle rules forbid the move."""


class ApprovalRequiredError(RedgovError):
    """A gate did not approve the move."""


class PolicyViolationError(RedgovError):
    """A Critical policy is not compliant; ``evaluations`` says which and why."""

    def __init__(self, message: str, evaluations: Sequence[PolicyEvaluation] = ()) -> None:
        super().__init__(message)
        self.evaluations: tuple[PolicyEvaluation, ...] = tuple(evaluations)


class ConfigError(RedgovError):
    """Bad configuration: the message names the field path and the bad value."""


class NotFoundError(RedgovError):
    """An unknown version, experiment or record."""


class ValidationError(RedgovError, ValueError):
    """Bad input, refused before anything is written."""


class CorruptDataError(RedgovError):
    """A key holds the wrong Redis type or data redgov cannot decode."""


_CODES: dict[str, type[RedgovError]] = {
    "REDGOV_CONFLICT": ConflictError,
    "REDGOV_INVALID_TRANSITION": InvalidTransitionError,
    "REDGOV_APPROVAL_REQUIRED": ApprovalRequiredError,
    "REDGOV_POLICY_VIOLATION": PolicyViolationError,
    "REDGOV_NOT_FOUND": NotFoundError,
    "REDGOV_INVALID": ValidationError,
    "REDGOV_CORRUPT": CorruptDataError,
}
_CODE_RE = re.compile(r"(REDGOV_[A-Z_]+)\s*(.*)", re.DOTALL)


def map_reply_error(exc: ResponseError, keys: Sequence[object] = ()) -> Exception:
    """The exception a server error reply stands for.

    REDGOV_ codes map through the table (an unknown code gives RedgovError);
    WRONGTYPE becomes CorruptDataError naming the keys the call touched; any
    other reply is returned unchanged for the caller to re-raise.
    """
    message = str(exc)
    match = _CODE_RE.search(message)
    if match:
        code, detail = match.group(1), match.group(2).strip()
        cls = _CODES.get(code, RedgovError)
        return cls(detail or code)
    if "WRONGTYPE" in message:
        names = ", ".join(_show(k) for k in keys)
        return CorruptDataError(f"a key holds the wrong Redis type (keys: {names}): {message}")
    return exc


def raise_for_reply(exc: ResponseError, keys: Sequence[object] = ()) -> NoReturn:
    mapped = map_reply_error(exc, keys)
    if mapped is exc:
        raise exc
    raise mapped from exc


def error_codes() -> frozenset[str]:
    return frozenset(_CODES)


def _show(key: object) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return str(key)
