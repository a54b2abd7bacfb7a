"""Exit status: the one function that decides it, and the one-line message of an error.

0 success; 1 a governance refusal, or ``redgov wait`` reaching none of its states in time
(``WaitTimeoutError``: the condition asked for does not hold; no status of its own, the five
statuses stay those README and ``redgov --help`` document); 2 bad usage or configuration; 3 the
server or the stored data failed. Anything else is a bug in redgov: exit 4, "internal error".
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import errors
from ..embedded import EmbeddedError
from .parser import UsageError

__all__ = ["FAILED", "INTERNAL", "OK", "REFUSED", "TIMED_OUT", "USAGE", "WaitTimeoutError", "exit_code", "label",
           "message_for", "one_line"]

OK, REFUSED, USAGE, FAILED, INTERNAL = 0, 1, 2, 3, 4
#: ``redgov wait`` timed out: a refusal's status, told apart by its label and error name
TIMED_OUT = REFUSED


class WaitTimeoutError(TimeoutError):
    """``redgov wait``: the experiment did not reach the states within ``--timeout`` (exit 1).

    Raised by the command for the TimeoutError of ``Governance.wait_for`` only, so a socket
    timeout (also a TimeoutError, an OSError) stays a server failure (exit 3)."""

#: RedgovErrors that say the server or its data failed, not that governance refused
_SERVER_FAILURES: tuple[type[BaseException], ...] = tuple(
    cls for cls in (errors.CorruptDataError, errors.AccessDeniedError, errors.UnavailableError, EmbeddedError,
                    getattr(errors, "DurabilityError", None))
    if isinstance(cls, type))


def exit_code(error: BaseException) -> int:
    """The exit status for ``error``: 1 refusal (or ``wait`` timed out), 2 usage or configuration, 3 server
    or data, 4 a bug."""
    if isinstance(error, WaitTimeoutError):
        return TIMED_OUT
    if isinstance(error, _SERVER_FAILURES):
        return FAILED
    if isinstance(error, (UsageError, errors.ConfigError, errors.ValidationError)):  # SqlCopyError too
        return USAGE
    if isinstance(error, errors.RedgovError):  # conflict, invalid transition, approval, policy, lease, not found
        return REFUSED
    if isinstance(error, (RedisError, RedisClusterException, OSError)):  # connect, timeout, server refusals
        return FAILED
    return INTERNAL


def label(code: int, error: BaseException | None = None) -> str:
    """How a failure is labelled (``redgov: <label>: ...``), by what it is: "refused" a governance
    refusal (1), "error" bad usage or configuration (2), "failed" the server or the stored data (3),
    "internal error" a bug (4); "timed out" only for ``wait``'s timeout (it shares the refusals' 1)."""
    if isinstance(error, WaitTimeoutError):
        return "timed out"
    return {REFUSED: "refused", USAGE: "error", FAILED: "failed"}.get(code, "internal error")


def one_line(text: str) -> str:
    """A message on one line (redis-py and SQLAlchemy messages may span several)."""
    return " ".join(str(text).split())


def _unreachable(error: BaseException) -> bool:
    """The server could not be used at all (the message then names the url)."""
    return isinstance(error, (RedisConnectionError, RedisTimeoutError, RedisClusterException, ConnectionError))


def message_for(error: BaseException, code: int, url: str | None, store: str | None = None) -> str:
    """The message of an error, on one line (a ConfigError of several problems: one per line): the url
    when the server could not be reached, a hint for
    ``redis+cluster://`` against a single server, the store looked in (``store``: url, scope and how to
    use another) for a NotFoundError that does not name it yet, and "a bug" for exit 4."""
    message = one_line(str(error)) or type(error).__name__
    if isinstance(error, errors.NotFoundError) and store and (url is None or url not in message):
        message += f"; looked in {store}"
    if isinstance(error, errors.ConfigError) and len(getattr(error, "errors", ())) > 1:
        message = "\n".join(line.rstrip() for line in str(error).splitlines())  # one problem per line
    if _unreachable(error):
        message = f"cannot use {url or 'the server'}: {message}"
        if "cluster mode is not enabled" in message.lower():
            message += " (a single server: use redis:// instead of redis+cluster://)"
    if code == INTERNAL:
        message += " (a bug in redgov: run with --debug for the traceback)"
    return message
