"""StateCache: ``get_state`` served from process memory, kept fresh by the server.

Redis's server-assisted client-side caching (``CLIENT TRACKING``, Redis >= 6.0)
in broadcasting mode, in RESP2, on every server redgov supports (>= 6.2):

- one *stream* connection, owned by a daemon thread, runs ``CLIENT ID``,
  ``CLIENT SETNAME redgov-cache`` (unless the caller named its connections),
  ``CLIENT TRACKING ON REDIRECT <its own id> BCAST PREFIX <p>...`` (one prefix
  per scope read: ``<prefix>{<tenant>:<env>}:s:``, which only state hashes start
  with) and ``SUBSCRIBE __redis__:invalidate``. From then on the server sends the
  name of every state hash of those scopes that anyone changes. The tracking and
  the stream live on the same connection, so they are lost together: when the
  connection goes (a server ``timeout``, ``CLIENT KILL``, a restart, a proxy's idle
  cut, three health intervals without an answer to PING) every entry is dropped,
  the generation is bumped (fetches in flight are not stored) and nothing is
  cached until a new stream is subscribed;
- the first read of a new scope asks the thread for a stream that also covers
  it. The new connection is subscribed before the old one is retired, and the
  old one is drained up to the reply of a PING sent after that, so no change goes
  unseen; until then that scope is read through, not cached. If the new
  connection cannot be made the old one goes on being read, and the thread tries
  again with backoff;
- misses are ordinary reads on the Backplane's own client (sync or asyncio),
  registered with ``begin`` before they are sent. A fetch invalidated (or evicted
  by a local write, or overtaken by a stream loss) before ``finish`` stores its
  reply is returned to its caller but not stored. What a fetch returns also
  evicts an older cached state of its key and keeps older results of
  overlapping fetches out, so no thread reads a state older than one it has
  read (revisions only grow). ``lookup``, ``begin``, ``finish`` and ``abandon``
  do no I/O and are thread-safe;
- every entry is also bounded in age: a hit is served only within ``max_age``
  seconds (``connect(cache_max_age=...)``, default 1.0) of the moment its fetch
  was *registered* (before the read was sent), whatever failed;
- writes through the owning Backplane evict the state they wrote as soon as
  their reply arrives, so a process reads its own writes at once;
- a process forked from the owner starts with an empty cache and no stream; its
  first miss starts its own thread and stream. The parent's stream socket is
  closed in the child without a shutdown, so the parent is not disturbed.

Not supported: Redis Cluster (tracking is per node; ``connect`` refuses
``cache=True`` there). ``memory://`` ignores ``cache=True``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ValidationError
from .records import ExperimentState
from .tracking import THREAD_NAME, TrackingStream

__all__ = ["CacheStats", "MISS", "THREAD_NAME", "StateCache"]


MAX_ENTRIES = 10_000
MAX_AGE = 1.0
HEALTH_INTERVAL = 0.5
#: how long close() waits for the stream thread (it ends by itself later if it is stuck connecting)
JOIN_TIMEOUT = 2.0
#: a sentinel: the cache has no usable entry
MISS: Any = object()


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of a StateCache (``Backplane.cache.stats()``).

    ``hits`` and ``misses`` of ``get_state``; ``invalidations`` received; ``resets``
    (stream losses, each dropping the cache); ``size`` (entries held); ``active``
    (whether results are being cached now).
    """

    hits: int
    misses: int
    #: invalidation messages received (a flush counts once)
    invalidations: int
    #: times the invalidation stream was lost (and the cache dropped)
    resets: int
    size: int
    #: whether results are being cached (a stream is subscribed)
    active: bool


class _Entry:
    __slots__ = ("at", "prefix", "state")

    def __init__(self, state: ExperimentState | None, prefix: str, at: float) -> None:
        self.state = state
        self.prefix = prefix
        #: when the fetch that read it was registered: the state is at least this fresh
        self.at = at


class Fetch:
    """One miss in flight: stored only if nothing may have changed its key since it was sent."""

    __slots__ = ("at", "floor", "generation", "key", "prefix", "stale")

    def __init__(self, key: str, prefix: str, generation: int, at: float) -> None:
        self.key = key
        self.prefix = prefix
        self.generation = generation
        self.at = at
        self.stale = False
        #: the highest revision another fetch of the key returned meanwhile: an older result is not stored
        self.floor = 0


def _revision(state: ExperimentState | None) -> int:
    """Revisions of a key only grow (from 1); absence counts as 0."""
    return 0 if state is None else state.revision


class StateCache(TrackingStream):
    """A local, server-invalidated cache of experiment states, keyed by their state-hash key.

    ``connect`` makes a new RESP2 ``redis.Connection`` to the server each call
    (the cache owns them; see ``connect.stream_connector``). The cache starts its
    stream thread on the first miss. ``lookup``, ``begin``, ``finish`` and
    ``abandon`` do no I/O and are thread-safe, so the sync and the asyncio
    Backplane share it.

    ``max_entries`` bounds the entries held (least recently used dropped first);
    ``max_age`` is the most seconds an entry is served after its fetch was
    registered (``connect(cache_max_age=...)``); ``health_interval`` the seconds
    between PINGs of a silent stream (three unanswered count as a loss). Raises
    ValidationError for a bad argument.
    """

    def __init__(self, connect: Callable[[], Any], *, max_entries: int = MAX_ENTRIES, max_age: float = MAX_AGE,
                 health_interval: float = HEALTH_INTERVAL) -> None:
        if not callable(connect):
            raise ValidationError(f"connect must make a new redis Connection when called, got {connect!r}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValidationError(f"max_entries must be a positive integer, got {max_entries!r}")
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or not max_age > 0:
            raise ValidationError(f"cache_max_age must be a number of seconds > 0, got {max_age!r}")
        if isinstance(health_interval, bool) or not isinstance(health_interval, int | float) or not health_interval > 0:
            raise ValidationError(f"health_interval must be a number of seconds > 0, got {health_interval!r}")
        self._connect = connect
        self.max_entries = max_entries
        self.max_age = float(max_age)
        self.health_interval = float(health_interval)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, list[Fetch]] = {}
        #: scope prefixes asked for (``_asked`` counts additions), and those the current stream covers
        self._wanted: set[str] = set()
        self._asked = 0
        self._live: frozenset[str] = frozenset()
        #: bumped whenever the stream is lost: entries and fetches of an older generation are void
        self._generation = 0
        self._hits = self._misses = self._invalidations = self._resets = 0
        #: the current stream connection and its CLIENT ID (set by the stream thread)
        self._stream: Any = None
        self._stream_id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pid = os.getpid()
        _caches.add(self)

    # -- reads (no I/O) -----------------------------------------------------------------

    def lookup(self, key: str) -> ExperimentState | None:
        """The cached state of a state-hash key (None: cached absence), or ``MISS``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.prefix not in self._live or time.monotonic() - entry.at > self.max_age:
                return MISS  # type: ignore[no-any-return]
            self._entries.move_to_end(key)
            self._hits += 1
            return entry.state

    def begin(self, key: str, prefix: str) -> Fetch | None:
        """Register a miss of ``key`` (in the scope whose state keys start with ``prefix``) before
        it is read. While no stream covers the scope yet, its result is not stored (but still
        keeps older states out, see ``finish``); None once the cache is closed."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            if self._closed:
                return None
            self._misses += 1
            if prefix not in self._wanted:
                self._wanted.add(prefix)
                self._asked += 1
            if self._thread is None:
                self._start()
            fetch = Fetch(key, prefix, self._generation, time.monotonic())
            fetch.stale = prefix not in self._live  # read through until a stream covers the scope
            self._inflight.setdefault(key, []).append(fetch)
            return fetch

    def finish(self, fetch: Fetch | None, state: ExperimentState | None) -> None:
        """A fetch's result: stored unless something may have changed its key meanwhile."""
        if fetch is None:
            return
        revision = _revision(state)
        with self._lock:
            self._forget(fetch)
            # What this fetch read is returned to its caller, stored or not. So that no thread reads
            # an older state after it (a state read by a fetch that began earlier, whose
            # invalidation is still on its way), nothing older stays cached or is stored after it.
            old = self._entries.get(fetch.key)
            if old is not None and _revision(old.state) < revision:
                del self._entries[fetch.key]
                old = None
            for other in self._inflight.get(fetch.key, ()):
                other.floor = max(other.floor, revision)
            if fetch.stale or fetch.generation != self._generation or fetch.prefix not in self._live \
                    or revision < fetch.floor or time.monotonic() - fetch.at > self.max_age:
                return
            if old is not None and _revision(old.state) > revision:
                return  # an overlapping fetch read a newer state already
            self._entries[fetch.key] = _Entry(state, fetch.prefix, fetch.at)
            self._entries.move_to_end(fetch.key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def abandon(self, fetch: Fetch | None) -> None:
        """A fetch that failed: forget it."""
        if fetch is None:
            return
        with self._lock:
            self._forget(fetch)

    def _forget(self, fetch: Fetch) -> None:
        fetches = self._inflight.get(fetch.key)
        if fetches is not None:
            for i, other in enumerate(fetches):
                if other is fetch:
                    del fetches[i]
                    break
            if not fetches:
                del self._inflight[fetch.key]

    # -- invalidation -------------------------------------------------------------------

    def invalidate(self, keys: Iterable[bytes | str] | None) -> None:
        """Drop the entries of these Redis keys (None: drop everything), as an invalidation message does."""
        with self._lock:
            self._invalidations += 1
            if keys is None:
                self._clear()
                return
            for raw in keys:
                key = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
                self._drop(key)

    def wrote(self, *keys: str | None) -> None:
        """Writes to these state keys returned: drop them (read-your-writes)."""
        with self._lock:
            for key in keys:
                if key is not None:
                    self._drop(key)

    def _drop(self, key: str) -> None:
        self._entries.pop(key, None)
        for fetch in self._inflight.get(key, ()):
            fetch.stale = True

    def clear(self) -> None:
        """Drop every entry; fetches in flight will not be stored."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._entries.clear()
        for fetches in self._inflight.values():
            for fetch in fetches:
                fetch.stale = True

    # -- fork, state, close -------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread is not here and its stream is not ours."""
        with _fork_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._lock = threading.Lock()  # it may have been held by a thread that is not here
            self._stop = threading.Event()
            self._entries.clear()
            self._inflight.clear()
            self._live = frozenset()
            self._generation += 1
            self._thread = None  # the next miss starts this process's own
            stream, self._stream, self._stream_id = self._stream, None, None
            sock = getattr(stream, "_sock", None)
            if sock is not None:
                try:  # close this process's copy of the descriptor: no shutdown, the parent's socket lives on
                    sock.close()
                except OSError:
                    pass

    @property
    def active(self) -> bool:
        """Whether results are being cached (a stream covers at least one scope)."""
        return bool(self._live)

    @property
    def stream_id(self) -> int | None:
        """The CLIENT ID of the current stream connection (None: no stream)."""
        return self._stream_id

    def covers(self, prefix: str) -> bool:
        """Whether the current stream covers the scope whose state keys start with ``prefix``."""
        return prefix in self._live

    def stats(self) -> CacheStats:
        """A snapshot of the cache's counters."""
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses, invalidations=self._invalidations,
                              resets=self._resets, size=len(self._entries), active=bool(self._live))

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Stop the stream thread (it closes the stream connection) and drop every entry."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._live = frozenset()
            self._clear()
            thread = self._thread
        _caches.discard(self)
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join(timeout=JOIN_TIMEOUT)

    def __enter__(self) -> StateCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("active" if self.active else "inactive")
        return f"<StateCache {state} entries={len(self._entries)} max_age={self.max_age:g}s>"


_caches: weakref.WeakSet[StateCache] = weakref.WeakSet()
_fork_lock = threading.Lock()


def _forget_all_in_child() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()
    for cache in list(_caches):
        cache._after_fork()


os.register_at_fork(after_in_child=_forget_all_in_child)
