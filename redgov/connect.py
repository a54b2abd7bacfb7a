"""URL scheme -> client: redis, rediss, unix, redis+cluster, memory, embedded.

Every real client gets the socket timeout ``timeout`` and redis-py's ``Retry``
with jittered exponential backoff for ``retries`` re-sends of a command whose
connection broke or timed out; redgov's scripts make each re-sent write apply
once. ``cache=True`` adds a ``StateCache`` with its own connection (redis://,
rediss://, unix://, embedded://); memory:// ignores it and redis+cluster://
refuses it. ``wait_replicas``/``wait_aof`` (WAIT/WAITAOF after each write) are
refused on memory:// and redis+cluster:// before any client is made.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from .backplane import Backplane
from .cache import MAX_AGE, StateCache
from .durability import check_durability_target
from .errors import ValidationError

__all__ = ["connect", "open_async_client", "open_client"]

if TYPE_CHECKING:
    from .embedded import EmbeddedServer

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "memory", "embedded")

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


def scheme_of(url: str) -> str:
    """The scheme of ``url`` (lowercase); ValidationError when it is not one of SCHEMES."""
    if not isinstance(url, str):
        raise ValidationError(f"url must be a string, got {type(url).__name__}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValidationError(f"unsupported url {url!r}: the scheme must be one of {', '.join(SCHEMES)}")
    return scheme


def memory_server(url: str) -> Any:
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


def embedded_server(url: str) -> EmbeddedServer:
    """The EmbeddedServer of an ``embedded://path`` url (not started); ValidationError without a path."""
    from .embedded import EmbeddedServer  # only embedded:// needs it

    path = unquote(url.split("://", 1)[1])
    if not path:
        raise ValidationError("embedded:// needs a data file path, e.g. embedded://.redgov/redgov.db")
    return EmbeddedServer(path)


def retry_policy(retries: int) -> Retry:
    """redis-py's Retry: ``retries`` re-sends after a broken or timed-out connection, backing off."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValidationError(f"retries must be an integer >= 0, got {retries!r}")
    return Retry(ExponentialWithJitterBackoff(base=0.02, cap=1.0), retries)


def client_options(timeout: float, retries: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The redis-py keyword arguments of a redgov client (the caller's win)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValidationError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    options = dict(kwargs)
    options.setdefault("decode_responses", False)
    if options["decode_responses"]:
        raise ValidationError("redgov clients must not decode responses (decode_responses=False)")
    options.setdefault("socket_timeout", timeout)
    options.setdefault("socket_connect_timeout", timeout)
    options.setdefault("retry", retry_policy(retries))
    return options


def check_durability(scheme: str, wait_replicas: int, wait_aof: bool) -> None:
    """Refuse ``wait_replicas`` > 0 or ``wait_aof`` for a ``scheme`` that cannot honour them (memory, cluster).

    Only the scheme is judged here (the values are checked by the Backplane); raises
    ValidationError naming the setting and why.
    """
    where = "memory" if scheme == "memory" else "cluster" if scheme.endswith("+cluster") else scheme
    valid = isinstance(wait_replicas, int) and not isinstance(wait_replicas, bool) and wait_replicas >= 0
    if valid and isinstance(wait_aof, bool):  # bad values: the Backplane names them
        check_durability_target(where, wait_replicas, wait_aof)


def check_cache(cache: bool, scheme: str) -> None:
    """Refuse ``cache=True`` on a Redis Cluster ``scheme`` (ValidationError)."""
    if cache and scheme.endswith("+cluster"):
        raise ValidationError(
            "cache=True is not supported on Redis Cluster (client-side caching tracks keys per node); "
            "connect without cache, or to a single server"
        )


def open_client(url: str, *, timeout: float = 5.0, retries: int = 3,
                **kwargs: Any) -> tuple[Any, Callable[[], None] | None]:
    """A sync client for url, and what to call after closing it (or None)."""
    scheme = scheme_of(url)
    if scheme == "memory":
        import fakeredis

        kwargs.pop("socket_timeout", None)
        return fakeredis.FakeRedis(server=memory_server(url), **kwargs), None
    options = client_options(timeout, retries, kwargs)
    if scheme == "embedded":
        server = embedded_server(url)
        path = server.open()
        client = redis.Redis(unix_socket_path=path, **options)
        return client, _closer(client, server)
    if scheme.endswith("+cluster"):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url.replace("+cluster", "", 1), **options), None
    return redis.Redis.from_url(url, **options), None


def open_async_client(url: str, *, timeout: float = 5.0, retries: int = 3,
                      **kwargs: Any) -> tuple[Any, EmbeddedServer | None]:
    """An asyncio client for url, and the embedded server behind it (started by its first use)."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry as AsyncRetry

    scheme = scheme_of(url)
    if scheme == "memory":
        import fakeredis

        kwargs.pop("socket_timeout", None)
        return fakeredis.FakeAsyncRedis(server=memory_server(url), **kwargs), None
    options = client_options(timeout, retries, kwargs)
    if isinstance(options.get("retry"), Retry):
        options["retry"] = AsyncRetry(ExponentialWithJitterBackoff(base=0.02, cap=1.0), retries)
    if scheme == "embedded":
        server = embedded_server(url)
        return aredis.Redis(unix_socket_path=server.socket, **options), server
    if scheme.endswith("+cluster"):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url.replace("+cluster", "", 1), **options), None
    return aredis.Redis.from_url(url, **options), None


def _closer(client: Any, server: EmbeddedServer) -> Callable[[], None]:
    # If the caller never closes, release the server when the client is collected
    # or the interpreter exits, so the last opener still saves and stops it.
    return weakref.finalize(client, server.close)


def stream_connector(url: str, timeout: float, kwargs: dict[str, Any],
                     socket_path: str | None = None) -> Callable[[], Any]:
    """Makes the StateCache's own RESP2 connections to the server of url (new ones each call)."""
    options = {k: v for k, v in kwargs.items() if k not in ("retry", "cache_config", "single_connection_client",
                                                            "decode_responses", "protocol")}
    options.setdefault("socket_timeout", timeout)
    options.setdefault("socket_connect_timeout", timeout)
    if socket_path is not None:
        pool = redis.ConnectionPool(connection_class=redis.UnixDomainSocketConnection, path=socket_path,
                                    protocol=2, **options)
    else:
        pool = redis.ConnectionPool.from_url(url, protocol=2, **options)
    return pool.make_connection


def connect(url: str = "memory://", *, prefix: str = "gov", cache: bool = False, timeout: float = 5.0,
            retries: int = 3, retain_history: int | None = None, archive: Any = None,
            cache_max_age: float = MAX_AGE, wait_replicas: int = 0, wait_timeout: float = 1.0,
            wait_aof: bool = False, **redis_kwargs: Any) -> Backplane:
    """A Backplane for ``url``: a real Redis, a Cluster, an in-process fake or an embedded server.

    ``url`` schemes: ``redis://host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``;
    ``redis+cluster://host:port`` (a Redis Cluster; ``rediss+cluster://`` with TLS); ``memory://`` (in-process
    fakeredis running the same Lua scripts, private to this call; ``memory://name``
    is shared within the process); ``embedded://path.db`` (a redis-server started
    for that data file and shared by every process opening the same path).

    - ``prefix``: starts every key, literally (no ``{`` or ``}``).
    - ``cache``: True serves ``get_state`` from a local cache the server invalidates
      (redis, rediss, unix, embedded; memory:// ignores it, redis+cluster:// refuses it).
    - ``timeout``: every command's socket (and connect) timeout, in seconds.
    - ``retries``: how often a command whose connection broke or timed out is sent
      again (redis-py ``Retry`` with jittered backoff); writes still apply once.
    - ``retain_history``: keep about the newest N history entries of each experiment
      in Redis (None: all).
    - ``archive``: a ``redgov.sql.SqlArchive``; history reads include what retention
      or ``trim`` removed from Redis.
    - ``cache_max_age``: the most seconds a cached state is served (default 1.0).
    - ``wait_replicas``: after each write, wait (Redis ``WAIT``, sent on the write's
      connection in the same round trip) until that many replicas confirmed it; 0 (the
      default) sends nothing more. Fewer within ``wait_timeout`` raises
      ``DurabilityError``: the write IS applied on the primary, only unconfirmed.
      Refused on memory:// (no replicas) and redis+cluster:// (see README, Durability).
    - ``wait_timeout``: the most seconds each write waits (default 1.0; at most half
      of ``timeout``).
    - ``wait_aof``: True waits with ``WAITAOF 1 <wait_replicas>`` instead: the primary's
      and the replicas' append-only files fsynced the write. Needs Redis >= 7.2 with
      ``appendonly yes``; connect asks the server's version (one HELLO) and refuses an
      older one with ValidationError.
    - ``redis_kwargs``: ``optimistic_concurrency=False`` makes ``save_state``
      last-writer-wins; every other keyword goes to the redis-py client
      (``username``, ``password``, ``ssl_ca_certs``, ...; not ``decode_responses=True``).

    No command is sent yet, except that a Cluster client reads the cluster's slots,
    an embedded server is started, and ``wait_aof=True`` sends one HELLO. Close the
    Backplane (``with`` or ``close()``). Raises ValidationError for an unknown scheme
    or a bad argument (durability settings included), UnavailableError when an
    embedded server cannot start, and redis-py's errors when a Cluster (or, with
    ``wait_aof``, the server) cannot be reached.
    """
    optimistic = redis_kwargs.pop("optimistic_concurrency", True)
    scheme = scheme_of(url)
    check_cache(cache, scheme)
    check_durability(scheme, wait_replicas, wait_aof)
    client, on_close = open_client(url, timeout=timeout, retries=retries, **redis_kwargs)
    state_cache = None
    try:
        if cache and scheme != "memory":
            socket_path = client.connection_pool.connection_kwargs["path"] if scheme == "embedded" else None
            state_cache = StateCache(stream_connector(url, timeout, redis_kwargs, socket_path), max_age=cache_max_age)
        backplane = Backplane(client, prefix=prefix, optimistic_concurrency=optimistic, retain_history=retain_history,
                              archive=archive, on_close=on_close, cache=state_cache, wait_replicas=wait_replicas,
                              wait_timeout=wait_timeout, wait_aof=wait_aof)
        if wait_aof:
            backplane._check_aof()  # refuse a server without WAITAOF now, not at the first write
        return backplane
    except BaseException:
        if state_cache is not None:
            state_cache.close()
        client.close()
        if on_close is not None:
            on_close()
        raise
