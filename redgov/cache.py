"""StateCache: ``get_state`` served from process memory, kept fresh by the server.

Redis's server-assisted client-side caching (``CLIENT TRACKING``, Redis >= 6.0)
in the RESP2 redirect mode, so it works on every server redgov supports (>= 6.2)
without redis-py's own cache (which needs RESP3 and Redis >= 7.4):

- a *stream* connection runs ``CLIENT ID`` and ``SUBSCRIBE __redis__:invalidate``;
  a daemon thread reads it with bounded blocking reads and drops the entries
  whose keys the server names (a nil payload, sent on FLUSHDB/FLUSHALL, drops
  everything);
- every miss sends ``CLIENT TRACKING ON REDIRECT <stream id>`` and ``HGETALL``
  pipelined on one connection of the cache's own pool. The server then
  remembers that key for that client and, on the next change to it by anyone,
  sends the key name to the stream. Re-enabling tracking on every miss costs
  no round trip and makes each miss self-sufficient: a pooled connection that
  redis-py silently reconnected is tracked again before it reads.

Freshness. A hit is never staler than the server's delivery of the
invalidation to this process:

- a key is registered as *in flight* before its HGETALL is sent; an
  invalidation (or a local write, flush or stream loss) arriving before the
  reply is stored marks the fetch stale and its result is returned but not
  stored (the race between a read and a concurrent write);
- two overlapping fetches of one key may complete in either order: the store
  keeps the higher ``revision`` (a fencing token that only grows), so no thread
  reads a state older than one it has already seen;
- when the stream connection drops, goes silent (an idle PING every
  ``health_interval`` s, given up after three intervals without a reply) or the
  process forks, every entry is dropped and nothing is stored until the stream
  is subscribed again under its new client id (invalidations sent while it was
  down are lost, so nothing read before may be trusted);
- writes made through the owning Backplane evict every entry of the written
  scope as soon as their reply arrives (``wrote``), so a process reads its own
  writes without waiting for the invalidation to come round.

Entries are the decoded ``ExperimentState`` (immutable) or ``None`` for a
missing experiment, keyed by (prefix, experiment, tenant, environment), at
most ``max_entries`` (least recently used evicted first). One StateCache
belongs to one Backplane, which closes it.

Not supported: Redis Cluster (tracking is per node; ``connect`` refuses
``cache=True`` there) and asyncio (``redgov.aio.connect(cache=True)`` refuses).
``memory://`` ignores ``cache=True``: fakeredis runs in-process already.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ResponseError

from .core import Call, Core
from .errors import RedgovError, ValidationError
from .records import ExperimentState

__all__ = ["CacheStats", "StateCache"]

log = logging.getLogger(__name__)

INVALIDATE_CHANNEL = b"__redis__:invalidate"
MAX_ENTRIES = 10_000
HEALTH_INTERVAL = 1.0
#: silence on the stream (in health intervals, a PING sent after the first) that counts as a lost connection
DEAD_AFTER = 3
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0

EntryKey = tuple[str, str, str | None, str | None]  # (prefix, experiment, tenant, environment)


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    #: invalidation messages received (a flush counts once)
    invalidations: int
    #: times the invalidation stream was lost (and the cache dropped)
    resets: int
    size: int
    active: bool


class _Entry:
    __slots__ = ("key", "log", "state")

    def __init__(self, state: ExperimentState | None, key: bytes, log: str) -> None:
        self.state = state
        self.key = key
        self.log = log


class _Fetch:
    """One miss in flight.

    ``stale`` once anything may have changed its key since it was sent;
    ``floor`` the highest revision an overlapping fetch of the key returned
    meanwhile (a lower result was read earlier and must not be stored).
    """

    __slots__ = ("floor", "key", "log", "stale")

    def __init__(self, key: bytes, log: str) -> None:
        self.key = key
        self.log = log
        self.stale = False
        self.floor = 0


def _revision(state: ExperimentState | None) -> int:
    return 0 if state is None else state.revision


class StateCache:
    """A local, invalidated cache of ``get_state`` over a dedicated RESP2 ``redis.Redis``.

    ``client`` is used by the cache alone (its pool serves the misses and the
    invalidation stream) and is closed by ``close``. Construction subscribes
    the stream and checks that the server accepts ``CLIENT TRACKING``; it
    raises when it cannot.
    """

    def __init__(self, client: redis.Redis, *, max_entries: int = MAX_ENTRIES,
                 health_interval: float = HEALTH_INTERVAL) -> None:
        if client.__class__.__name__ == "RedisCluster" or not isinstance(client, redis.Redis):
            raise ValidationError(
                f"StateCache needs a redis.Redis client (not {type(client).__name__}): "
                "client-side caching is not supported on Redis Cluster"
            )
        options = client.connection_pool.connection_kwargs
        if str(options.get("protocol") or 2) != "2":
            raise ValidationError("StateCache needs a RESP2 client (protocol=2): invalidations arrive by pub/sub")
        if options.get("decode_responses"):
            raise ValidationError("StateCache needs a client that does not decode responses")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValidationError(f"max_entries must be a positive integer, got {max_entries!r}")
        if not health_interval > 0:
            raise ValidationError(f"health_interval must be > 0 seconds, got {health_interval!r}")
        self._client: Any = client  # redis-py's command methods are untyped
        self._encode: Callable[[str], bytes] = client.connection_pool.get_encoder().encode
        self.max_entries = max_entries
        self.health_interval = float(health_interval)
        self._lock = threading.Lock()
        self._entries: OrderedDict[EntryKey, _Entry] = OrderedDict()
        self._keys: dict[bytes, EntryKey] = {}
        self._scopes: dict[str, set[EntryKey]] = {}
        self._inflight: dict[bytes, list[_Fetch]] = {}
        self._hits = self._misses = self._invalidations = self._resets = 0
        #: CLIENT ID of the subscribed stream connection; None while caching is off
        self._redirect: int | None = None
        self._stream: Any = None
        self._stop = threading.Event()
        self._closed = False
        self._pid = os.getpid()
        self._restart_lock = threading.Lock()
        try:
            conn = self._subscribe()
            self._check_tracking()
        except BaseException:
            self._lost(self._stream)
            client.close()
            client.connection_pool.disconnect()
            raise
        self._thread = self._start(conn)
        _caches.add(self)

    # -- reads ----------------------------------------------------------------

    def get_state(self, core: Core, experiment: str, tenant: str | None,
                  environment: str | None) -> ExperimentState | None:
        """The cached state (or cached absence), else one tracked HGETALL."""
        entry_key = (core.prefix, experiment, tenant, environment)
        with self._lock:
            try:
                entry = self._entries[entry_key]
            except (KeyError, TypeError):  # TypeError: an unhashable name, refused by core below
                entry = None
            else:
                self._entries.move_to_end(entry_key)
                self._hits += 1
        if entry is not None:
            return entry.state
        return self._miss(core, entry_key)

    def _miss(self, core: Core, entry_key: EntryKey) -> ExperimentState | None:
        _, experiment, tenant, environment = entry_key
        call = core.get_state(experiment, tenant, environment)  # validates the names
        fetch = _Fetch(self._encode(call.keys[0]), core.scope(tenant, environment).log)
        if self._pid != os.getpid():
            self._restart_after_fork()
        with self._lock:
            self._misses += 1
            redirect = self._redirect
            if redirect is not None:
                self._inflight.setdefault(fetch.key, []).append(fetch)
        if redirect is None:  # the stream is down: read through, store nothing
            return self._read(call)
        state: ExperimentState | None = None
        parsed = cacheable = False
        try:
            tracked, reply = self._tracked_read(redirect, call.args)
            if isinstance(reply, ResponseError):
                return call.failed(reply)
            state = call.parse(reply)
            parsed = True
            cacheable = tracked
        finally:
            # one critical section: an invalidation either marked this fetch stale or comes after the store
            with self._lock:
                self._unregister(fetch)
                if parsed:
                    self._settle(entry_key, fetch, state, cacheable and redirect == self._redirect)
        return state

    def _tracked_read(self, redirect: int, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """CLIENT TRACKING ON REDIRECT + the read, pipelined on one pooled connection (retried as redis-py does).

        (whether the read was tracked, its raw reply or the ResponseError it got)
        """
        pool = self._client.connection_pool
        conn: Any = pool.get_connection()
        packed = conn.pack_commands([("CLIENT", "TRACKING", "ON", "REDIRECT", redirect), args])

        def exchange() -> tuple[bool, Any]:
            conn.send_packed_command(packed)
            tracked = True
            try:
                conn.read_response()
            except ResponseError:  # e.g. the redirect target is gone: the read is not tracked
                tracked = False
            try:
                return tracked, conn.read_response()
            except ResponseError as exc:
                return tracked, exc

        try:
            result: tuple[bool, Any] = conn.retry.call_with_retry(exchange, lambda _error: conn.disconnect())
            return result
        finally:
            pool.release(conn)

    def _read(self, call: Call[ExperimentState | None]) -> ExperimentState | None:
        try:
            reply = self._client.execute_command(*call.args)
        except ResponseError as exc:
            return call.failed(exc)
        return call.parse(reply)

    def _unregister(self, fetch: _Fetch) -> None:
        fetches = self._inflight.get(fetch.key)
        if fetches is not None and fetch in fetches:
            fetches.remove(fetch)
            if not fetches:
                del self._inflight[fetch.key]

    def _settle(self, entry_key: EntryKey, fetch: _Fetch, state: ExperimentState | None, cacheable: bool) -> None:
        """A fetch returned ``state`` to its caller: raise the floor of the overlapping ones; store it if sound.

        Fetches of one key on different connections reach the server in any
        order, so a fetch sent earlier may have read an older state than one
        that already returned; the floor, and dropping an entry older than
        what this one read, keep every later read at or above what any caller
        has seen (monotonic reads).
        """
        revision = _revision(state)
        for other in self._inflight.get(fetch.key, ()):
            if other.floor < revision:
                other.floor = revision
        if cacheable and not fetch.stale and revision >= fetch.floor:
            self._store(entry_key, fetch, state)
            return
        old = self._entries.get(entry_key)
        if old is not None and _revision(old.state) < revision:  # stored by a fetch that read earlier
            self._drop(entry_key)

    def _store(self, entry_key: EntryKey, fetch: _Fetch, state: ExperimentState | None) -> None:
        old = self._entries.get(entry_key)
        if old is not None:
            self._entries.move_to_end(entry_key)
            if _revision(old.state) > _revision(state):  # an overlapping fetch read later
                return
            old.state = state
            return
        self._entries[entry_key] = _Entry(state, fetch.key, fetch.log)
        self._keys[fetch.key] = entry_key
        self._scopes.setdefault(fetch.log, set()).add(entry_key)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, entry_key: EntryKey) -> None:
        entry = self._entries.pop(entry_key)
        del self._keys[entry.key]
        members = self._scopes[entry.log]
        members.discard(entry_key)
        if not members:
            del self._scopes[entry.log]

    # -- invalidation -----------------------------------------------------------

    def invalidate(self, keys: Iterable[bytes | str] | None) -> None:
        """Drop the entries of these Redis keys (None: drop everything), as an invalidation message does."""
        with self._lock:
            self._invalidations += 1
            if keys is None:
                self._clear()
                return
            for key in keys:
                raw = self._encode(key) if isinstance(key, str) else key
                entry_key = self._keys.get(raw)
                if entry_key is not None:
                    self._drop(entry_key)
                for fetch in self._inflight.get(raw, ()):
                    fetch.stale = True

    def wrote(self, *logs: str | None) -> None:
        """A write to these scope logs returned: drop the scopes' entries (read-your-writes)."""
        with self._lock:
            for scope_log in logs:
                if scope_log is None:
                    continue
                for entry_key in self._scopes.get(scope_log, set()).copy():
                    self._drop(entry_key)
                for fetches in self._inflight.values():
                    for fetch in fetches:
                        if fetch.log == scope_log:
                            fetch.stale = True

    def clear(self) -> None:
        """Drop every entry; fetches in flight will not be stored."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._entries.clear()
        self._keys.clear()
        self._scopes.clear()
        for fetches in self._inflight.values():
            for fetch in fetches:
                fetch.stale = True

    # -- the invalidation stream --------------------------------------------------

    def _subscribe(self) -> Any:
        """A pooled connection subscribed to the invalidation channel, published as the redirect target."""
        conn: Any = self._client.connection_pool.get_connection()
        try:
            conn.send_command("CLIENT", "ID")
            client_id = int(conn.read_response())
            conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
            reply = conn.read_response()
            if not (isinstance(reply, list) and reply[:2] == [b"subscribe", INVALIDATE_CHANNEL]):
                raise RedgovError(f"unexpected reply to SUBSCRIBE {INVALIDATE_CHANNEL!r}: {reply!r}")
        except BaseException:
            self._release(conn)
            raise
        with self._lock:
            self._stream = conn
            if not self._stop.is_set():
                self._redirect = client_id
        return conn

    def _check_tracking(self) -> None:
        try:
            self._client.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", self._redirect)
        except ResponseError as exc:
            raise RedgovError(
                f"cache=True needs server-assisted client-side caching (CLIENT TRACKING, Redis >= 6.0) "
                f"and permission to use it: {exc}"
            ) from exc

    def _start(self, conn: Any) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(conn,), name="redgov-cache-invalidations", daemon=True)
        thread.start()
        return thread

    def _run(self, conn: Any) -> None:
        try:
            self._follow(conn)
        finally:  # however this thread ends, nothing is cached without it
            with self._lock:
                self._redirect = None
                self._clear()

    def _follow(self, conn: Any) -> None:
        """Read invalidations until stopped; after a loss, subscribe again (backing off while that fails)."""
        delay = RECONNECT_MIN
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn = self._subscribe()
                except Exception as exc:  # noqa: BLE001 - any failure: wait and try again
                    log.debug("redgov cache: cannot subscribe to invalidations yet: %s", exc)
                    self._stop.wait(delay)
                    delay = min(delay * 2, RECONNECT_MAX)
                    continue
                delay = RECONNECT_MIN
                log.debug("redgov cache: tracking resumed")
            try:
                self._listen(conn)
            except Exception as exc:  # noqa: BLE001 - the stream is gone however it failed
                if not self._stop.is_set():
                    log.warning("redgov cache: invalidation stream lost, cache dropped: %s", exc)
            finally:
                self._lost(conn)
                conn = None

    def _listen(self, conn: Any) -> None:
        interval = self.health_interval
        heard = time.monotonic()
        pinged = False
        while not self._stop.is_set():
            if conn.can_read(timeout=interval):
                self._handle(conn.read_response())
                heard = time.monotonic()
                pinged = False
                continue
            silent = time.monotonic() - heard
            if silent >= DEAD_AFTER * interval:
                raise redis.TimeoutError(f"no reply on the invalidation connection for {silent:.1f}s")
            if not pinged:
                conn.send_command("PING")
                pinged = True

    def _handle(self, message: Any) -> None:
        if isinstance(message, list) and len(message) == 3 and message[0] == b"message" \
                and message[1] == INVALIDATE_CHANNEL:
            self.invalidate(message[2])
        # else: a pong, or a subscribe confirmation: proof of life only

    def _lost(self, conn: Any) -> None:
        with self._lock:
            if self._redirect is not None:
                self._resets += 1
            self._redirect = None
            if self._stream is conn:
                self._stream = None
            self._clear()
        if conn is not None:
            self._release(conn)

    def _release(self, conn: Any) -> None:
        conn.disconnect()
        try:
            self._client.connection_pool.release(conn)
        except Exception:  # noqa: BLE001 - a pool reset by fork or close no longer knows it
            pass

    def _restart_after_fork(self) -> None:
        """In a forked child: the parent's thread and stream are gone; start ours."""
        with self._restart_lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._pid = os.getpid()
            self._thread = self._start(None)

    def _forget_in_child(self) -> None:
        self._lock = threading.Lock()
        self._restart_lock = threading.Lock()
        self._stop = threading.Event()
        self._entries.clear()
        self._keys.clear()
        self._scopes.clear()
        self._inflight.clear()
        self._redirect = None
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.disconnect()  # closes the child's copy; the parent's socket stays open

    # -- state ----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether results are being cached (the invalidation stream is subscribed)."""
        return self._redirect is not None

    @property
    def redirect_id(self) -> int | None:
        """CLIENT ID of the invalidation connection (None while it is down)."""
        return self._redirect

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses, invalidations=self._invalidations,
                              resets=self._resets, size=len(self._entries), active=self._redirect is not None)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Stop the invalidation thread and close the cache's connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._redirect = None
            self._clear()
            stream = self._stream
        if stream is not None:  # wake the blocked read now rather than at its timeout
            sock = getattr(stream, "_sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._pid == os.getpid():
            self._thread.join(timeout=DEAD_AFTER * self.health_interval + 1)
        _caches.discard(self)
        self._client.close()
        self._client.connection_pool.disconnect()

    def __enter__(self) -> StateCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("active" if self.active else "inactive")
        return f"<StateCache {state} entries={len(self._entries)} max_entries={self.max_entries}>"


_caches: weakref.WeakSet[StateCache] = weakref.WeakSet()


def _forget_all_in_child() -> None:
    for cache in list(_caches):
        cache._forget_in_child()


os.register_at_fork(after_in_child=_forget_all_in_child)
