"""URL scheme -> client: redis, rediss, unix, redis+cluster, memory, embedded."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import redis

from .backplane import Backplane
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


def _check_cache(cache: bool, scheme: str, kwargs: dict[str, Any]) -> None:
    if not cache:
        return
    if scheme in ("memory", "embedded"):
        return  # local and fast already; nothing to cache
    from redis.cache import CacheConfig

    kwargs.setdefault("protocol", 3)
    kwargs.setdefault("cache_config", CacheConfig())


def open_client(url: str, *, cache: bool = False, **kwargs: Any) -> tuple[Any, Callable[[], None] | None]:
    """A sync client for url, and what to call after closing it (or None)."""
    scheme = _scheme(url)
    kwargs.setdefault("decode_responses", False)
    if kwargs["decode_responses"]:
        raise ValidationError("redgov clients must not decode responses (decode_responses=False)")
    _check_cache(cache, scheme, kwargs)
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
        raise ValidationError("cache=True is available on the sync client only (redis-py's client-side cache)")
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


def connect(url: str = "memory://", *, prefix: str = "gov", cache: bool = False, **redis_kwargs: Any) -> Backplane:
    """A Backplane for url (see the scheme table in README)."""
    optimistic = redis_kwargs.pop("optimistic_concurrency", True)
    retain = redis_kwargs.pop("retain_history", None)
    archive = redis_kwargs.pop("archive", None)
    client, on_close = open_client(url, cache=cache, **redis_kwargs)
    try:
        return Backplane(client, prefix=prefix, optimistic_concurrency=optimistic, retain_history=retain,
                         archive=archive, on_close=on_close)
    except BaseException:
        client.close()
        if on_close is not None:
            on_close()
        raise
