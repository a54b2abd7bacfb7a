"""Durability: the WAIT / WAITAOF a backplane sends after each write, and what its reply means.

Shared by ``Backplane`` and ``AsyncBackplane`` (no I/O here): checking the
``wait_replicas``, ``wait_timeout`` and ``wait_aof`` settings, the command to send,
the refusal of WAITAOF on servers older than Redis 7.2 (from a HELLO reply), and
turning too few acknowledgements into a ``DurabilityError`` that carries the
write's result (the write is applied on the primary either way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from .calls import Call
from .errors import DurabilityError, ValidationError

__all__ = ["aof_refusal", "check_durability_target", "confirm", "describe_write",
           "durable_results", "evalsha", "hello_failed", "init_durability", "weakest"]

#: The first Redis version with WAITAOF.
WAITAOF_SINCE = (7, 2)


def check_durability_target(where: str, wait_replicas: int, wait_aof: bool) -> None:
    """Refuse ``wait_replicas`` > 0 or ``wait_aof`` where they cannot work: ``where`` is "memory" or "cluster".

    Raises ValidationError naming the setting and why; other values of ``where`` pass.
    """
    if not wait_replicas and not wait_aof:
        return
    asked = f"wait_replicas={wait_replicas}" if wait_replicas else "wait_aof=True"
    if where == "memory":
        raise ValidationError(
            f"{asked} cannot be met on memory://: the in-process fake server has no replicas and no "
            f"append-only file; use wait_replicas=0 and wait_aof=False there, or a real Redis server")
    if where == "cluster":
        raise ValidationError(
            f"{asked} is not supported on Redis Cluster: WAIT must be sent on the connection of the node "
            f"that took the write, and redis-py's RedisCluster picks the node and connection per command; "
            f"connect to a single primary (redis://), or use wait_replicas=0 and wait_aof=False")


def init_durability(shell: Any, client: Any, wait_replicas: int, wait_timeout: float, wait_aof: bool) -> None:
    """Check the durability settings and store them on ``shell`` with the command sent after each write.

    ``shell._wait`` is ``("WAIT", n, ms)``, ``("WAITAOF", 1, n, ms)`` or None (nothing is
    sent: the default). Raises ValidationError for a bad value, for memory:// or a
    Cluster client with durability asked, and for a ``wait_timeout`` over half the
    client's socket timeout (the WAIT reply must arrive before the socket gives up,
    or the client's Retry would re-send the write and wait again).
    """
    if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int) or wait_replicas < 0:
        raise ValidationError(f"wait_replicas must be an integer >= 0 (the replicas that must confirm each "
                              f"write), got {wait_replicas!r}")
    if (isinstance(wait_timeout, bool) or not isinstance(wait_timeout, int | float) or not math.isfinite(wait_timeout)
            or wait_timeout <= 0):
        raise ValidationError(f"wait_timeout must be a finite number of seconds > 0, got {wait_timeout!r}")
    if not isinstance(wait_aof, bool):
        raise ValidationError(f"wait_aof must be True or False, got {wait_aof!r}")
    #: replicas that must confirm each write (0: none asked)
    shell.wait_replicas = wait_replicas
    #: the most seconds a write waits for them
    shell.wait_timeout = float(wait_timeout)
    #: True: WAITAOF (the primary's AOF fsync and the replicas' ones) instead of WAIT
    shell.wait_aof = wait_aof
    shell._wait = None
    shell._aof_checked = True
    if not wait_replicas and not wait_aof:
        return
    if type(client).__module__.split(".")[0] == "fakeredis":
        check_durability_target("memory", wait_replicas, wait_aof)
    if shell._cluster:
        check_durability_target("cluster", wait_replicas, wait_aof)
    socket = shell.socket_timeout
    if socket is not None and wait_timeout > socket / 2:
        raise ValidationError(
            f"wait_timeout={wait_timeout!r} must be at most half the socket timeout ({socket:g} s): the WAIT reply "
            f"must arrive well before the socket gives up, or the write is re-sent and waited for again; "
            f"lower wait_timeout or raise timeout")
    ms = max(1, math.ceil(wait_timeout * 1000))  # never 0: WAIT 0 blocks forever
    shell._wait = ("WAITAOF", 1, wait_replicas, ms) if wait_aof else ("WAIT", wait_replicas, ms)
    shell._aof_checked = not wait_aof


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def aof_refusal(hello: Any) -> ValidationError | None:
    """The refusal of ``wait_aof=True`` for a server older than Redis 7.2, from its ``HELLO`` reply (None: fine)."""
    if isinstance(hello, list | tuple):
        hello = dict(zip(hello[::2], hello[1::2], strict=False))
    info = {_text(key): value for key, value in dict(hello).items()}
    server, version = _text(info.get("server", "redis")), _text(info.get("version", "0"))
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        found = (0, 0)
    if found >= WAITAOF_SINCE:
        return None
    return ValidationError(
        f"wait_aof=True needs the WAITAOF command of Redis >= {WAITAOF_SINCE[0]}.{WAITAOF_SINCE[1]}, but the server "
        f"is {server} {version}; nothing was written: use wait_aof=False (WAIT: replicas confirm the write in "
        f"memory) or upgrade the server")


def hello_failed(exc: ResponseError) -> ValidationError:
    """The refusal of ``wait_aof=True`` when the server does not answer HELLO (its version is unknown)."""
    return ValidationError(f"wait_aof=True needs Redis >= 7.2, and the server's version cannot be read "
                           f"(HELLO was refused: {exc}); nothing was written")


def describe_write(call: Call[Any]) -> str:
    """``transition on gov{...}:x:exp:state``: the write a DurabilityError is about."""
    return f"{call.script or call.args[0]} on {call.keys[0]}" if call.keys else str(call.script)


def evalsha(script: Any, call: Call[Any]) -> tuple[Any, ...]:
    """The EVALSHA command of ``call`` (queued raw, so a pipeline runs no SCRIPT EXISTS before it)."""
    return ("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)


def confirm(shell: Any, what: str, ack: Any, result: Any) -> None:
    """Check the reply ``ack`` of the WAIT/WAITAOF sent after the write ``what``, whose parsed result is ``result``.

    Returns when enough replicas (and, with WAITAOF, the primary's AOF) confirmed it;
    raises DurabilityError (acknowledged, wanted, result) otherwise, and when the
    WAIT itself was refused (the write is applied either way).
    """
    wanted = shell.wait_replicas
    command = shell._wait[0]
    undone = ("the write is not undone: it may still reach the replicas, or be lost if the primary fails "
              "before they copy it")
    if isinstance(ack, Exception):
        raise DurabilityError(f"{what} is applied on the primary, but {command} failed: {ack}; {undone}",
                              acknowledged=0, wanted=wanted, result=result)
    seconds = f"{shell.wait_timeout:g} s"
    if command == "WAITAOF":
        local, replicas = int(ack[0]), int(ack[1])
        if local >= 1 and replicas >= wanted:
            return
        fsync = "the primary fsynced it to its AOF" if local >= 1 else "the primary did not confirm its AOF fsync"
        raise DurabilityError(f"{what} is applied on the primary, but within {seconds} {fsync} and {replicas} of "
                              f"{wanted} replica(s) confirmed theirs (WAITAOF); {undone}",
                              acknowledged=replicas, wanted=wanted, result=result)
    acknowledged = int(ack)
    if acknowledged >= wanted:
        return
    raise DurabilityError(f"{what} is applied on the primary, but only {acknowledged} of {wanted} replica(s) "
                          f"confirmed it within {seconds} (WAIT); {undone}",
                          acknowledged=acknowledged, wanted=wanted, result=result)


def weakest(errors: Sequence[DurabilityError], result: Any) -> DurabilityError:
    """One DurabilityError for several unconfirmed writes: the fewest acknowledgements, with ``result``."""
    worst = min(errors, key=lambda error: error.acknowledged)
    return DurabilityError(str(worst) if len(errors) == 1 else f"{len(errors)} writes were not confirmed; the "
                           f"weakest: {worst}", acknowledged=worst.acknowledged, wanted=worst.wanted, result=result)


def durable_results(results: list[Any]) -> list[Any]:
    """Results of writes run one by one, each DurabilityError replaced by its ``result``; raises one
    DurabilityError (``weakest``, ``result`` the whole list) when there were any."""
    unconfirmed = [result for result in results if isinstance(result, DurabilityError)]
    if not unconfirmed:
        return results
    raise weakest(unconfirmed, [r.result if isinstance(r, DurabilityError) else r for r in results])
