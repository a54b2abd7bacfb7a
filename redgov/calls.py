"""The sans-IO protocol between the cores and the shells: Calls, plans and archive reads.

A ``Call`` is one round trip (a Lua script, a plain command or a pipeline of plain
commands) with how to turn its reply, or its refusal, into a typed result. A *plan*
is a generator that yields Calls (and ``ArchiveRead`` steps for the SQL copy) and
receives their results. ``Backplane`` and ``AsyncBackplane`` run them; nothing here
performs I/O. The id makers (etags, operation ids, transition ids) live here too:
every write's envelope carries them.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from redis.exceptions import ResponseError

from .errors import RedgovError, map_reply_error, raise_for_reply
from .keys import Scope

__all__ = ["Archive", "ArchiveRead", "Call", "Plan", "Step", "new_etag", "new_ids", "new_op", "settle"]

T = TypeVar("T")


class Call(Generic[T]):
    """One round trip: a Lua script (``script``), a plain command (``args``), or a pipeline of plain
    commands (``batch``: ``args`` is a tuple of commands, the reply a list with a ResponseError in place
    of each refused command)."""

    __slots__ = ("args", "batch", "keys", "parse", "recover", "scope", "script", "state_key")

    def __init__(self, keys: tuple[str, ...], args: tuple[Any, ...], parse: Callable[[Any], T],
                 script: str | None = None, recover: Callable[[RedgovError], T] | None = None,
                 state_key: str | None = None, scope: Scope | None = None, batch: bool = False) -> None:
        self.keys = keys
        self.args = args
        self.parse = parse
        self.batch = batch
        self.script = script
        #: turns a mapped refusal into a result instead of raising it
        self.recover = recover
        #: the state hash this call may write (a local cache drops it when the call returns)
        self.state_key = state_key
        #: the scope a write goes to (its ACL is checked once before the first write there)
        self.scope = scope

    def failed(self, exc: ResponseError) -> T:
        """Map a server error reply; recover from it or raise it."""
        mapped = map_reply_error(exc, self.keys, script=self.script)
        if mapped is exc:
            raise exc
        if self.recover is not None and isinstance(mapped, RedgovError):
            return self.recover(mapped)
        raise mapped from exc

    def __repr__(self) -> str:
        return f"Call(script={self.script!r}, keys={self.keys!r})"


@dataclass(frozen=True, slots=True)
class ArchiveRead(Generic[T]):
    """A read from the SQL copy (blocking I/O: the asyncio shell runs it in a thread)."""

    run: Callable[[], T]


Step = Call[Any] | ArchiveRead[Any]
Plan = Generator[Step, Any, T]


def settle(call: Call[Any], reply: Any) -> Any:
    """A pipelined reply as a result, or the RedgovError it stands for."""
    try:
        if isinstance(reply, ResponseError):
            return call.failed(reply)
        return call.parse(reply)
    except RedgovError as error:
        return error


class Archive(Protocol):
    """Where history removed from Redis can still be read (the SQL copy: ``SqlArchive``).

    Entries come back as ``(entry id, fields)`` in log order (newest first when asked).
    """

    def fetch(self, log_key: str, ids: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """The fields of each entry found, by entry id."""
        ...

    def history(self, log_key: str, experiment: str, kinds: Sequence[str], *, before: str | None,
                limit: int | None, newest_first: bool,
                state_writes: bool = False) -> list[tuple[str, dict[str, bytes]]]:
        """The experiment's entries of these kinds with an id at or below ``before`` (None: all)."""
        ...

    def version(self, log_key: str, experiment: str, number: int | None) -> tuple[str, dict[str, bytes]] | None:
        """Version ``number`` of the experiment (None: the highest)."""
        ...

    def latest_policy(self, log_key: str, experiment: str, policy: str) -> tuple[str, dict[str, bytes]] | None:
        ...

    def linked_approvals(self, log_key: str, transition_id: str) -> list[tuple[str, dict[str, bytes]]]:
        ...


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def new_etag() -> str:
    """96 random bits, URL-safe (16 characters)."""
    return binascii.b2a_base64(os.urandom(12), newline=False).translate(_URLSAFE).decode()


def new_op() -> str:
    """An operation id: 96 random bits (16 URL-safe characters, as an etag), made once per logical call."""
    return new_etag()


def new_ids() -> tuple[str, str, str]:
    """(etag, operation id, transition id) from one read of the OS's random source: 96, 96 and 128 bits."""
    raw = os.urandom(40)
    text_ = binascii.b2a_base64(raw[:24], newline=False).translate(_URLSAFE).decode()
    return text_[:16], text_[16:], raw[24:].hex()


def is_entry_id(value: str) -> bool:
    ms, dash, seq = value.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii()


def settled(keys: tuple[str, ...]) -> Callable[[Any], list[Any]]:
    """A pipeline's replies, each refused command raised as the error it stands for."""

    def parse(replies: Any) -> list[Any]:
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise_for_reply(reply, keys)
        return list(replies)

    return parse
