"""asyncio twins: ``connect``, ``AsyncBackplane`` and ``AsyncGovernance``.

The same core Calls and plans as the sync classes, awaited; every method is a
coroutine with the sync method's signature (``watch`` an async iterator). No
blocking I/O runs on the event loop: reads of the SQL archive and the embedded
server's start and stop run in a worker thread (``asyncio.to_thread``); the
cache's invalidation stream has its own thread.
"""

from __future__ import annotations

from typing import Any

from ..cache import MAX_AGE, StateCache
from ..connect import (
    check_cache,
    check_durability,
    open_async_client,
    scheme_of,
    stream_connector,
)
from .backplane import AsyncBackplane
from .governance import AsyncGovernance

__all__ = ["AsyncBackplane", "AsyncGovernance", "connect"]


def connect(url: str = "memory://", *, prefix: str = "gov", cache: bool = False, timeout: float = 5.0,
            retries: int = 3, retain_history: int | None = None, archive: Any = None,
            cache_max_age: float = MAX_AGE, wait_replicas: int = 0, wait_timeout: float = 1.0,
            wait_aof: bool = False, **redis_kwargs: Any) -> AsyncBackplane:
    """An AsyncBackplane for ``url``: the schemes and arguments of ``redgov.connect``.

    ``url`` (redis://, rediss://, unix://, redis+cluster://, memory://, embedded://),
    ``prefix``, ``cache``, ``timeout``, ``retries``, ``retain_history``, ``archive``,
    ``cache_max_age``, ``wait_replicas``, ``wait_timeout``, ``wait_aof`` and
    ``redis_kwargs`` (``optimistic_concurrency`` and redis-py client keywords) mean
    what they mean there; the client is a ``redis.asyncio`` one. Differences: it is a
    plain function (not a coroutine) and does no I/O itself, not even for a Cluster:
    an embedded server is started (in a worker thread) by the first call, and
    ``wait_aof=True`` asks the server's version (HELLO) at the first write, refusing
    a server older than Redis 7.2 with ValidationError before that write is sent.
    Raises ValidationError for an unknown scheme or a bad argument (durability
    settings included; durability on memory:// or redis+cluster://).
    """
    optimistic = redis_kwargs.pop("optimistic_concurrency", True)
    scheme = scheme_of(url)
    check_cache(cache, scheme)
    check_durability(scheme, wait_replicas, wait_aof)
    client, server = open_async_client(url, timeout=timeout, retries=retries, **redis_kwargs)
    state_cache = None
    try:
        if cache and scheme != "memory":
            state_cache = StateCache(stream_connector(url, timeout, redis_kwargs, server.socket if server else None),
                                     max_age=cache_max_age)
        return AsyncBackplane(client, prefix=prefix, optimistic_concurrency=optimistic,
                              retain_history=retain_history, archive=archive, cache=state_cache, server=server,
                              wait_replicas=wait_replicas, wait_timeout=wait_timeout, wait_aof=wait_aof)
    except BaseException:
        if state_cache is not None:
            state_cache.close()
        raise
