"""The exception tree, and the one place mapping server refusals onto it.

Scripts refuse with ``redis.error_reply('REDGOV_<CODE> <detail>')``. redis-py
raises that as ``ResponseError`` (inside a pipeline with a prefix such as
"Command # 1 (...) of pipeline caused error: "), so the code is searched for
anywhere in the message. Other server refusals are mapped here too: an ACL
refusal (``NOPERM``, or a script's "user executing the script can't ...") is
``AccessDeniedError``, a wrong key type ``CorruptDataError``, a server that
cannot take writes now (out of memory, read-only replica, loading, a Cluster
slot moving) ``UnavailableError``, and a failure inside a script that is not
a refusal (a Lua runtime error) ``CorruptDataError`` naming the keys the call
touched. Connection and timeout errors are not refusals: they propagate as
redis-py raised them (after the client's retries).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

if TYPE_CHECKING:
    from .records import LifecycleState, PolicyEvaluation

__all__ = [
    "AccessDeniedError",
    "ApprovalRequiredError",
    "ConfigError",
    "ConflictError",
    "CorruptDataError",
    "DurabilityError",
    "HistoryTrimmedError",
    "InvalidTransitionError",
    "LeaseError",
    "NotFoundError",
    "PolicyViolationError",
    "RedgovError",
    "RulesChangedError",
    "RulesMismatchError",
    "SeparationOfDutiesError",
    "UnavailableError",
    "ValidationError",
    "map_reply_error",
]


class RedgovError(Exception):
    """Base of every refusal redgov raises: ``except redgov.RedgovError`` catches them all.

    Raised as itself for a server refusal with a ``REDGOV_`` code this version does
    not know (an ``embedded://`` server that cannot start raises ``EmbeddedError``, an
    ``UnavailableError``). Connection and
    timeout errors are not refusals: they propagate as redis-py raised them
    (``redis.ConnectionError``, ``redis.TimeoutError``) after the client's retries.
    """


class ConflictError(RedgovError):
    """A write refused because what it expected is not what is stored; nothing was written.

    Raised when a transition's ``expected_etag`` no longer matches (the state changed
    underneath), ``create`` finds the experiment exists, ``Backplane.append_version``
    finds the number taken (or not above the highest version retention removed),
    ``Backplane.append_transition`` finds the ``transition_id`` recorded, or an
    ``idempotency_key`` is reused for a different operation. (``Backplane.save_state``
    reports its conflicts in the ``SaveResult`` instead.)

    ``message`` says what was expected and found. Attributes ``current_etag`` and
    ``current_state`` (a ``LifecycleState``) are what the transition script found
    when an ``expected_etag`` did not match an existing state, so a caller can
    decide and retry without reading the state again; None otherwise.
    """

    def __init__(self, message: str, *, current_etag: str | None = None,
                 current_state: LifecycleState | None = None) -> None:
        super().__init__(message)
        self.current_etag = current_etag
        self.current_state = current_state


class LeaseError(ConflictError):
    """The experiment's lease is held by another owner, or the lease passed in has expired or been
    taken over (its fencing token is no longer the current one); nothing was written.

    Raised by ``acquire_lease`` (another owner holds it unexpired), ``renew_lease`` (the lease
    is no longer this one), and by ``transition``/``create_version`` given ``lease=`` when that
    lease is not the experiment's current, unexpired lease (checked inside the same script).
    """


class DurabilityError(RedgovError):
    """A write was applied on the primary but too few replicas confirmed it in time.

    Raised after a write when ``connect(..., wait_replicas=N)`` (Redis ``WAIT``) or
    ``wait_aof=True`` (``WAITAOF``) got fewer acknowledgements than asked within
    ``wait_timeout``. The write is NOT undone: it is on the primary and may reach the replicas
    later, or be lost if the primary fails before they copy it. ``message`` says so and names
    the counts (or quotes the server when it refused the WAIT itself); ``acknowledged`` is the
    number of replicas that confirmed it, ``wanted`` the number asked for, and ``result`` what
    the call would have returned: the write's result, the list of results of ``run_many``, or
    the result of a multi-step operation (``rollback``: every step was applied).
    """

    def __init__(self, message: str, *, acknowledged: int = 0, wanted: int = 0, result: object = None) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged
        self.wanted = wanted
        self.result = result


class InvalidTransitionError(RedgovError):
    """The lifecycle rules forbid the move; nothing was written.

    Raised by ``transition`` (the rules do not allow the current state to move to
    the target) and by ``approve`` (no rule allows that move, so it cannot be
    approved). The message names the experiment and both states.
    """


class ApprovalRequiredError(RedgovError):
    """A gate did not approve the move; nothing was written.

    Raised by ``transition`` when a ManualGate on the move has no recorded approval
    (``Governance.approve``) or a RoleGate does not accept ``metadata["actorRole"]``.
    The message names the gate and what it lacks.
    """


class SeparationOfDutiesError(ApprovalRequiredError):
    """Four eyes: the person may not approve or make this move; nothing was written.

    Raised by ``approve`` when the approver is the one who requested the move, and by
    ``transition`` when its actor is one of the move's approvers, unless the ManualGate was
    built with ``self_approval=True``. Judged inside the script from the published rules. An
    ``ApprovalRequiredError``.
    """


class PolicyViolationError(RedgovError):
    """A Critical policy is not compliant (or a ConflictPrevention group is busy): the transition is refused.

    The state, history and approvals are untouched; the evaluations themselves are
    persisted for audit. ``message`` names the failing policies and why.
    Attribute ``evaluations``: a tuple of every ``PolicyEvaluation`` of the refused
    attempt (compliant ones included), as recorded.
    """

    def __init__(self, message: str, evaluations: Sequence[PolicyEvaluation] = ()) -> None:
        super().__init__(message)
        self.evaluations: tuple[PolicyEvaluation, ...] = tuple(evaluations)


class ConfigError(RedgovError):
    """Bad configuration: the message names the field path and the bad value.

    Raised by ``load_config`` and ``from_config`` (unknown keys, bad values, an
    unreadable file, ``type: sql`` persistence); the SQL copy's ``SqlCopyError`` is one.
    ``message`` lists every problem found (the first 20, then how many more); attribute
    ``errors`` is a tuple of all of them, one ``<path>: <problem>`` string each (just the
    message when the error is a single problem).
    """

    def __init__(self, message: str, *, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors: tuple[str, ...] = tuple(errors) or (message,)


class RulesMismatchError(ConfigError):
    """This Governance's own definition differs from the rules published for the scope; nothing was written.

    Raised on the first write to a scope that has published rules (``Governance.publish``) by a
    Governance built with rules, gates or policies of its own that are not the published ones.
    The message names what differs; ``errors`` lists each difference. Build the Governance
    without a definition (it then follows the published one) or publish yours. A ``ConfigError``.
    """


class RulesChangedError(ConflictError):
    """The scope's published rules changed between the decision and the write; nothing was written.

    Governance reads the new rules and decides again by itself (a few times), so callers see it
    only when rules keep changing under a write. ``version`` is the scope's current rules version.
    A ``ConflictError``.
    """

    def __init__(self, message: str, *, version: int = 0) -> None:
        super().__init__(message)
        self.version = version


class NotFoundError(RedgovError):
    """An unknown experiment, version or record; nothing was written.

    Raised by ``transition``, ``approve``, ``create_version``, ``rollback``,
    ``evaluate_policies`` and ``allowed_transitions`` on an experiment never created
    (unless ``auto_create=True``), and by ``rollback`` and ``diff`` for a version
    that does not exist.
    """


class HistoryTrimmedError(NotFoundError):
    """The history asked for was removed from Redis (retention, ``redgov trim``) and no archive is attached.

    Raised by ``replay(until=...)`` for a moment before the retention cut. Pass
    ``archive=SqlArchive(url)`` to ``connect`` to read that history from the SQL copy.
    A ``NotFoundError``.
    """


class ValidationError(RedgovError, ValueError):
    """Bad input, refused before anything is written.

    Raised for a name that is not a string, blank, too long or holds a control
    character; ``metadata``/``configuration`` holding NaN, infinities, sets or other
    non-JSON values or nested deeper than 64 levels; an unknown state name or
    telemetry key (with a did-you-mean); a bad ``url``, ``prefix`` (``{``/``}``),
    ``limit``, ``expected_etag`` or other argument.
    The message names the argument or path and the bad value. Also a ``ValueError``.
    """


class CorruptDataError(RedgovError):
    """A key holds the wrong Redis type or data redgov cannot decode; the message names the key.

    Raised by reads that meet such data, and by writes before their first change
    (a script refuses before writing, so nothing was written).
    """


class AccessDeniedError(RedgovError):
    """The server's ACL refused a command; the message names the command or key. Nothing was written.

    Writes check the ACL once per scope before their first write there, so a
    missing permission is reported before anything is changed.
    """


class UnavailableError(RedgovError):
    """The server cannot serve the call now (out of memory, a read-only replica, loading, a Cluster
    slot being migrated for longer than redgov waits). Nothing was written."""


_CODES: dict[str, type[RedgovError]] = {
    "REDGOV_CONFLICT": ConflictError,
    "REDGOV_INVALID_TRANSITION": InvalidTransitionError,
    "REDGOV_APPROVAL_REQUIRED": ApprovalRequiredError,
    "REDGOV_POLICY_VIOLATION": PolicyViolationError,
    "REDGOV_NOT_FOUND": NotFoundError,
    "REDGOV_CORRUPT": CorruptDataError,
    "REDGOV_DENIED": AccessDeniedError,
    "REDGOV_LEASE": LeaseError,
    "REDGOV_RULES_CHANGED": RulesChangedError,
    "REDGOV_SEPARATION": SeparationOfDutiesError,
}
_CODE_RE = re.compile(r"(REDGOV_[A-Z_]+)\s*(.*)", re.DOTALL)
#: a time in a script's message, '@ms:<epoch ms>' or '@us:<epoch µs>', shown as ISO 8601 UTC
_MS_RE = re.compile(r"@(ms|us):(\d{1,19})")
_FOUND_RE = re.compile(r"expected etag \S+, found (\S+) \((\w+)\)$")
_DENIED = ("NOPERM", "user executing the script can't", "NOAUTH", "WRONGPASS")
_UNAVAILABLE = ("OOM ", "READONLY", "LOADING", "BUSY ", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS",
                "MISCONF")
_SCRIPT_FAILURE = ("Error running script", "user_script:", "@user_script", "script:", "Script attempted")


def map_reply_error(exc: ResponseError, keys: Sequence[object] = (), *, script: str | None = None) -> Exception:
    """The exception a server error reply stands for.

    REDGOV_ codes map through the table (an unknown code gives RedgovError); ACL
    refusals give AccessDeniedError; WRONGTYPE and failures inside a script give
    CorruptDataError naming the keys the call touched; server states that refuse
    writes give UnavailableError. Any other reply is returned unchanged for the
    caller to re-raise.
    """
    message = str(exc)
    match = _CODE_RE.search(message)
    if match:
        code, detail = match.group(1), _MS_RE.sub(_iso, match.group(2).strip())
        cls = _CODES.get(code, RedgovError)
        if cls is RulesChangedError:
            number, _, text = detail.partition(" ")
            if number.isdigit():  # the scripts put the current version first
                return RulesChangedError(text or detail, version=int(number))
            return RulesChangedError(detail)
        if cls is ConflictError:
            found = _FOUND_RE.search(detail)
            if found and found.group(1) != "none":
                from .records import LifecycleState

                try:
                    state = LifecycleState(found.group(2))
                except ValueError:
                    state = None
                return ConflictError(detail, current_etag=found.group(1), current_state=state)
        return cls(detail or code)
    names = ", ".join(_show(k) for k in keys) or "none"
    if isinstance(exc, (NoPermissionError, AuthenticationError)) or any(marker in message for marker in _DENIED):
        what = f"script {script}" if script else "the command"
        return AccessDeniedError(f"the server's ACL refused {what} on keys {names}: {message}; nothing was written")
    if "WRONGTYPE" in message:
        return CorruptDataError(f"a key holds the wrong Redis type (keys: {names}): {message}")
    if any(message.startswith(marker) or f" {marker}" in message[:40] for marker in _UNAVAILABLE):
        return UnavailableError(f"the server refused the call now: {message}")
    if script is not None and any(marker in message for marker in _SCRIPT_FAILURE):
        return CorruptDataError(f"script {script} failed on keys {names} (their data is not what redgov wrote): "
                                f"{message}")
    return exc


def _iso(found: re.Match[str]) -> str:
    from datetime import UTC, datetime, timedelta

    unit, value = found.group(1), int(found.group(2))
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value * (1000 if unit == "ms" else 1))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def raise_for_reply(exc: ResponseError, keys: Sequence[object] = (), *, script: str | None = None) -> NoReturn:
    """Raise what ``map_reply_error(exc, keys, script=script)`` gives (``exc`` itself when unmapped)."""
    mapped = map_reply_error(exc, keys, script=script)
    if mapped is exc:
        raise exc
    raise mapped from exc


def error_codes() -> frozenset[str]:
    """The ``REDGOV_`` codes the table maps (a test requires each to be triggered)."""
    return frozenset(_CODES)


def _show(key: object) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return str(key)
