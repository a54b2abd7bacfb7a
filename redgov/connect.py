"""URL scheme -> client: redis, rediss, unix, redis+cluster, memory, embedded.

``cache=True`` gives the Backplane a ``StateCache`` (see cache.py) on its own
RESP2 connections to the same server: redis://, rediss://, unix:// and
embedded://. memory:// ignores it (fakeredis answers in-process already);
redis+cluster:// and the asyncio client refuse it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import redis

from .backplane import Backplane
from .cache import StateCache
from .embedded import EmbeddedServer
from .errors import ValidationError

__all__ = ["connect", "open_client", "open_async_client"]

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "memory", "embedded")

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


def _scheme(url: str) -> str:
    if not isinstance(url, str):
        raise ValidationError(f"url must be a string, got {type(url).__name__}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValidationError(f"unsupported url {url!r}: the scheme must be one of {', '.join(SCHEMES)}")
    return scheme


def _memory_server(url: str) -> Any:
    """``memory://`` is private to this call; ``memory://name`` is shared in the process."""
    import fakeredis

    name = url.split("://", 1)[1]
    if not name:
        return fakeredis.FakeServer()
    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = _memory_servers[name] = fakeredis.FakeServer()
        return server


def _embedded_path(url: str) -> str:
    path = unquote(url.split("://", 1)[1])
    if not path:
        raise ValidationError("embedded:// needs a data file path, e.g. embedded://.redgov/redgov.db")
    return path


def _check_cache(cache: bool, scheme: str) -> None:
    if cache and scheme.endswith("+cluster"):
        raise ValidationError(
            "cache=True is not supported on Redis Cluster (client-side caching tracks keys per node); "
            "connect without cache, or to a single server"
        )


def open_client(url: str, *, cache: bool = False, **kwargs: Any) -> tuple[Any, Callable[[], None] | None]:
    """A sync client for url, and what to call after closing it (or None)."""
    scheme = _scheme(url)
    kwargs.setdefault("decode_responses", False)
    if kwargs["decode_responses"]:
        raise ValidationError("redgov clients must not decode responses (decode_responses=False)")
    _check_cache(cache, scheme)
    if scheme == "memory":
        import fakeredis

        return fakeredis.FakeRedis(server=_memory_server(url), **kwargs), None
    if scheme == "embedded":
        server = EmbeddedServer(_embedded_path(url))
        socket = server.open()
        client = redis.Redis(unix_socket_path=socket, **kwargs)
        return client, _closer(client, server)
    if scheme.endswith("+cluster"):
        from redis.cluster import RedisCluster

        real = url.replace("+cluster", "", 1)
        return RedisCluster.from_url(real, **kwargs), None
    return redis.Redis.from_url(url, **kwargs), None


def open_async_client(url: str, *, cache: bool = False, **kwargs: Any) -> tuple[Any, Callable[[], None] | None]:
    """An asyncio client for url, and what to call after closing it (or None)."""
    import redis.asyncio as aredis

    scheme = _scheme(url)
    kwargs.setdefault("decode_responses", False)
    if cache:
        raise ValidationError(
            "cache=True is available on the sync client only (redgov.connect); "
            "redgov.aio.connect reads every state from Redis"
        )
    if scheme == "memory":
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=_memory_server(url), **kwargs), None
    if scheme == "embedded":
        server = EmbeddedServer(_embedded_path(url))
        socket = server.open()
        client = aredis.Redis(unix_socket_path=socket, **kwargs)
        return client, _closer(client, server)
    if scheme.endswith("+cluster"):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url.replace("+cluster", "", 1), **kwargs), None
    return aredis.Redis.from_url(url, **kwargs), None


def _closer(client: Any, server: EmbeddedServer) -> Callable[[], None]:
    # If the caller never closes, release the server when the client is collected
    # or the interpreter exits, so the last opener still saves and stops it.
    finalizer = weakref.finalize(client, server.close)
    return finalizer


def _cache_client(url: str, scheme: str, client: Any, kwargs: dict[str, Any]) -> redis.Redis:
    """A second client of the server behind ``client``, RESP2, for the StateCache alone."""
    options = {**kwargs, "protocol": 2}
    for own in ("cache_config", "single_connection_client"):  # the cache's client pools its own connections
        options.pop(own, None)
    if scheme == "embedded":
        return redis.Redis(unix_socket_path=client.connection_pool.connection_kwargs["path"], **options)
    return redis.Redis.from_url(url, **options)


def connect(url: str = "memory://", *, prefix: str = "gov", cache: bool = False, **redis_kwargs: Any) -> Backplane:
    """A Backplane for url (see the scheme table in README).

    ``cache=True`` serves ``get_state`` from a local cache that the server
    invalidates (see ``redgov.cache``); memory:// ignores it.
    """
    optimistic = redis_kwargs.pop("optimistic_concurrency", True)
    retain = redis_kwargs.pop("retain_history", None)
    archive = redis_kwargs.pop("archive", None)
    client, on_close = open_client(url, cache=cache, **redis_kwargs)
    state_cache = None
    try:
        scheme = _scheme(url)
        if cache and scheme != "memory":
            state_cache = StateCache(_cache_client(url, scheme, client, redis_kwargs))
        return Backplane(client, prefix=prefix, optimistic_concurrency=optimistic, retain_history=retain,
                         archive=archive, on_close=on_close, cache=state_cache)
    except BaseException:
        if state_cache is not None:
            state_cache.close()
        client.close()
        if on_close is not None:
            on_close()
        raise
