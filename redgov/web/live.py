"""The live feed of ``redgov serve``: Server-Sent Events fed by the scope streams.

One reader per server process: a background thread tails every scope log of the prefix
with ``XREAD BLOCK`` on a connection of its own (client name ``redgov-live``; never one of
the Governance's pooled connections, which a blocking read would hold). The logs are
found by ``SCAN MATCH <prefix>{*:*}:log`` and looked for again every few seconds: the
scopes there when the hub starts are read from their newest entry on, a scope found later
from its first entry. Each entry read becomes one event, encoded once (JSON and SSE frame)
and numbered; the thread hands batches to the event loop (``call_soon_threadsafe``, one
callback per batch however many the loop has not run yet; the thread waits when the loop
is that far behind, and Redis keeps the rest), and the loop appends them to a bounded
replay buffer and to the bounded queue of each subscriber (one per ``GET /events``).

Guarantees and bounds:

- Order: a client gets events in the order the hub read them; within one scope, in log
  order. Nothing read is skipped, nothing is sent twice.
- The reader's connection breaking (``CLIENT KILL``, a restart, a timeout) costs nothing:
  it reconnects with backoff and goes on after the last id read of each log. A log deleted
  and written again (``redgov restore --force``) is read on after the last id read of it, so
  restored entries are not sent a second time.
- A client too slow to keep up (``client_backlog`` events queued and not yet written) is
  disconnected; its browser reconnects with ``Last-Event-ID`` and resumes from the replay
  buffer. Memory is the replay buffer (``replay_events`` events, at most ``replay_bytes``),
  at most ``client_backlog`` references plus one batch per client, and the batches read but
  not yet taken by the event loop (``PENDING_MAX``; the thread waits past it).
- Resume: ``Last-Event-ID`` is the cursor of the last event a client got. When every event
  after it is still in the replay buffer, the stream starts with those (of the client's
  filter) and goes on live: nothing missed, nothing repeated. Otherwise (too old, another
  server process, a restarted server) it starts with ``event: reset`` (data ``{}``, its id
  the newest cursor) and goes on live: the page should reload.
- ``: ping`` every ``ping_interval`` seconds keeps proxies from closing an idle stream.
- A stream lasts as long as its login: every ``check_interval`` seconds (2) the hub judges the
  logins of every open stream at once (``judge``: ``auth.logins_ended``, one MGET), and a logout
  in this process ends that login's streams at once (``end_logins``). A login ended by a logout
  (here or on another server process), its expiry, a changed password or a removed user ends its
  streams with a last event that is no log entry and has no id::

      event: logout
      data: {"reason": "<logout|expired|password|removed|unchecked>", "message": "..."}

  on which the page goes to ``/login?ended=<reason>``. When Redis cannot be asked, the streams
  stay until the next round that can.
- ``await hub.stop()`` ends every stream at once and stops the thread. In the main thread
  (``uvicorn.run``, ``redgov serve``) the hub also ends the streams when SIGINT or SIGTERM
  arrives, before calling the handler that was there (uvicorn's): uvicorn waits for open
  responses before it shuts the application down, and an event stream never ends by itself.

On ``memory://`` and Redis Cluster (XREAD cannot span hash slots) the thread polls every
log without blocking (``POLL_S``) through the Governance's client instead.

The wire format (``GET /events``, viewer or above; filters ``tenant``, ``environment``,
``experiment``, each narrowing the feed: see ``routes``)::

    id: <opaque cursor>
    event: <state|transition|approval|version|policy|rules>
    data: {"id": "<log entry id>", "kind": ..., "experiment": ..., "tenant": ..., "environment": ...,
           "record": {...}}

A ``rules`` event (``Governance.publish``) belongs to the whole scope: its ``experiment`` is
``""`` and it passes an ``experiment`` filter of its scope too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Send
from starlette.types import Scope as ASGIScope

from ..codec import decode_fields, pairs, text
from ..errors import ValidationError
from ..events import streams
from ..keys import parse_log_key, scope_logs, scope_pattern
from ..records import to_builtins
from ..validate import check_name, check_scope_part
from . import auth
from .users import Role

if TYPE_CHECKING:
    from .app import WebContext

__all__ = ["CLIENT_NAME", "LiveEvent", "LiveHub", "Subscriber", "routes"]

log = logging.getLogger("redgov.web.live")

#: the client name of the reader's connection (CLIENT LIST)
CLIENT_NAME = "redgov-live"
THREAD_NAME = "redgov-live-reader"
#: the longest an XREAD blocks (ms): how long stop() may wait for the thread
BLOCK_MS = 500
#: how often the logs of the prefix are looked for again (SCAN), seconds
REDISCOVER_S = 3.0
#: the poll interval where XREAD cannot block (memory://, Cluster), seconds
POLL_S = 0.1
#: most entries read from one log by one XREAD
READ_COUNT = 500
#: most logs in one XREAD (more are polled in groups)
XREAD_STREAMS = 1000
#: after a read that found entries, how long the thread waits before the next one (batches
#: a busy feed into fewer, larger hand-offs; at most this much latency), seconds
LINGER_S = 0.01
#: events kept for resuming (Last-Event-ID), and the most bytes of SSE frames they may hold
REPLAY_EVENTS = 10_000
REPLAY_BYTES = 32 * 1024 * 1024
#: events queued for one client (not yet written to its socket) before it is disconnected
CLIENT_BACKLOG = 2_000
#: events read and not yet taken by the event loop before the thread waits
PENDING_MAX = 10_000
#: live streams one user may have open at once (each browser tab holds one)
STREAMS_PER_USER = 32
#: deleted logs whose last id read is kept (for when they come back)
GONE_KEPT = 10_000
#: seconds between ``: ping`` comments
PING_S = 15.0
#: seconds between two judgements of the open streams' logins (a stream outlives its login by at most this)
LOGIN_CHECK_S = 2.0
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0
#: how long stop() lets streams finish writing before cancelling them, seconds
STOP_GRACE = 1.0
#: how long start() waits for the first discovery of the logs, seconds
START_WAIT = 5.0
#: events written to a resuming client per chunk
REPLAY_CHUNK = 256

PING = b": ping\n\n"
#: the query parameters (and event fields) a stream may be filtered on
FILTERS = ("tenant", "environment", "experiment")
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
#: connection arguments of the Governance's pool that the reader's own connection does not take
_NOT_COPIED = frozenset({
    "retry", "retry_on_error", "retry_on_timeout", "client_name", "protocol", "decode_responses",
    "health_check_interval", "cache", "cache_config", "single_connection_client",
    "maint_notifications_pool_handler", "maint_notifications_config", "himport_registry",
    "orig_host_address", "orig_socket_timeout", "orig_socket_connect_timeout",
})


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One log entry as the feed sends it: its number in the hub, where it is from, its SSE frame."""

    seq: int
    tenant: str | None
    environment: str | None
    experiment: str
    kind: str
    frame: bytes


class Subscriber:
    """One ``GET /events`` stream: its filter and the events queued for it (used on the event loop only).

    ``filters`` maps ``"tenant"``, ``"environment"`` and ``"experiment"`` to the value an event
    must have (a field not in it: any); ``limit`` is the most events queued before the client
    counts as too slow; ``login`` is what the hub's ``judge`` is asked about (``auth.Login``;
    None: never judged); ``farewell`` the last frame written once it is closed (None: nothing).
    """

    __slots__ = ("closed", "farewell", "filters", "items", "limit", "login", "owner", "ping_due", "task", "waiter")

    def __init__(self, filters: Mapping[str, str | None], limit: int, login: Any = None,
                 owner: str | None = None) -> None:
        unknown = set(filters) - set(FILTERS)
        if unknown:
            raise ValueError(f"unknown filters {sorted(unknown)}")
        self.filters = dict(filters)
        self.limit = limit
        self.login = login
        self.owner = owner
        self.items: deque[LiveEvent] = deque()
        self.closed: str | None = None
        self.farewell: bytes | None = None
        self.ping_due = False
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[Any] | None = None

    def matches(self, event: LiveEvent) -> bool:
        """Whether ``event`` passes this subscriber's filters. An event of the whole scope (no
        experiment: published rules) passes an experiment filter of that scope: it concerns them all."""
        f = self.filters
        return (("tenant" not in f or f["tenant"] == event.tenant)
                and ("environment" not in f or f["environment"] == event.environment)
                and ("experiment" not in f or f["experiment"] == event.experiment or event.experiment == ""))

    def offer(self, events: Sequence[LiveEvent]) -> bool:
        """Queue those of ``events`` that match; False (nothing queued) when ``limit`` events already
        wait (so a client holds at most ``limit`` plus one batch)."""
        if self.closed is not None:
            return True
        if not self.filters:
            fresh: Sequence[LiveEvent] = events
        else:
            fresh = [e for e in events if self.matches(e)]
        if not fresh:
            return True
        if len(self.items) >= self.limit:  # behind already: one big batch alone is no sign of a slow client
            return False
        self.items.extend(fresh)
        self._wake()
        return True

    def ping(self) -> None:
        """Ask for a ``: ping`` comment to be written."""
        self.ping_due = True
        self._wake()

    def close(self, reason: str, farewell: bytes | None = None) -> None:
        """End the stream (``reason``: stop, shutdown, overflow, logout, disconnect); queued events are
        dropped, ``farewell`` (a frame) is the last thing written."""
        if self.closed is None:
            self.closed = reason
            self.farewell = farewell
            self.items.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> tuple[list[LiveEvent], bool] | None:
        """Every event queued (and whether a ping is due), waiting for one; None once closed."""
        while True:
            if self.closed is not None:
                return None
            if self.items or self.ping_due:
                items = list(self.items)
                self.items.clear()
                due, self.ping_due = self.ping_due, False
                return items, due
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class LiveHub:
    """The live feed of one server process: one reader thread, many SSE subscribers.

    ``LiveHub(governance)`` reads every scope log of ``governance.backplane``'s prefix once
    started (``await hub.start()`` on the server's event loop; ``await hub.stop()``, idempotent).
    Keyword arguments (the module's constants by default): ``block_ms`` (the longest XREAD
    block), ``rediscover`` (seconds between looks for new scopes), ``replay_events`` and
    ``replay_bytes`` (the replay buffer's bounds), ``client_backlog`` (events queued for one
    client before it is disconnected as too slow), ``ping_interval`` (seconds between pings),
    ``linger`` (seconds the reader waits after a busy read, to batch), ``handle_signals`` (end
    the streams on SIGINT/SIGTERM when started in the main thread), ``streams_per_user`` (streams
    one user may hold at once; more are refused with 429), ``check_interval`` (seconds between
    judgements of the streams' logins). ``judge`` (set by the ``/events`` route) takes the logins
    of the open streams and returns, for each, why it ended (None: it lasts); run in a worker thread.
    """

    def __init__(self, governance: Any, *, block_ms: int = BLOCK_MS, rediscover: float = REDISCOVER_S,
                 replay_events: int = REPLAY_EVENTS, replay_bytes: int = REPLAY_BYTES,
                 client_backlog: int = CLIENT_BACKLOG, ping_interval: float = PING_S, linger: float = LINGER_S,
                 handle_signals: bool = True, streams_per_user: int = STREAMS_PER_USER,
                 check_interval: float = LOGIN_CHECK_S) -> None:
        self.governance = governance
        self.block_ms = block_ms
        self.rediscover = rediscover
        self.replay_events = replay_events
        self.replay_bytes = replay_bytes
        self.client_backlog = client_backlog
        self.ping_interval = ping_interval
        self.linger = linger
        self.handle_signals = handle_signals
        self.streams_per_user = streams_per_user
        self.check_interval = check_interval
        self.judge: Callable[[list[Any]], Sequence[str | None]] | None = None
        self.messages: Mapping[str, str] = {}  # reason -> what the logout event says (auth.ENDED)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._closing = False
        self._epoch = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._pinger: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._subs: set[Subscriber] = set()
        self._buffer: deque[LiveEvent] = deque()
        self._buffer_bytes = 0
        self._head = 0  # seq of the newest event published
        self._evicted = 0  # seq of the newest event dropped from the buffer (0: none)
        self._cond = threading.Condition()
        self._pending: list[LiveEvent] = []
        self._flush_scheduled = False
        self._signals: dict[int, Any] = {}
        self._source: _Source | None = None
        self._counts = {"events": 0, "resets": 0, "overflows": 0, "reconnects": 0, "resumes": 0}
        self._scopes = 0
        # (tenant, environment) -> events published for the scope so far (WebContext.experiments)
        self._generations: dict[tuple[str | None, str | None], int] = {}

    # -- what the metrics and the tests look at

    @property
    def clients(self) -> int:
        """The SSE clients connected now."""
        return len(self._subs)

    @property
    def running(self) -> bool:
        """Whether the hub is started (and not stopped) and its reader thread alive."""
        thread = self._thread
        return self._running and thread is not None and thread.is_alive()

    @property
    def reader_client_id(self) -> int | None:
        """The Redis CLIENT ID of the reader's connection now (None: not connected, or polling)."""
        source = self._source
        return source.client_id if source is not None else None

    def generation(self, tenant: str | None, environment: str | None) -> tuple[str, int]:
        """This run of the hub and how many events of the scope it has published: it changes once
        the hub read a write to the scope, and with every start (what a cache of the scope's reads
        compares). Safe from any thread."""
        return self._epoch, self._generations.get((tenant, environment), 0)

    def stats(self) -> dict[str, int]:
        """Counters: ``clients``, ``scopes`` (logs read), ``events`` (published), ``buffered`` (in the
        replay buffer), ``resets`` and ``resumes`` (reconnects that could not and could resume),
        ``overflows`` (clients dropped as too slow), ``reconnects`` (of the reader's connection)."""
        return {"clients": self.clients, "scopes": self._scopes, "buffered": len(self._buffer), **self._counts}

    # -- life cycle

    async def start(self) -> None:
        """Start the reader thread on the running loop; returns once the logs were looked for (or
        after ``START_WAIT`` seconds when Redis cannot be reached: the thread keeps trying)."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._closing = False
        self._epoch = secrets.token_hex(6)
        self._generations = {}
        self._buffer.clear()
        self._buffer_bytes = 0
        self._head = self._evicted = 0
        with self._cond:
            self._pending = []
            self._flush_scheduled = False
        self._stop = stop = threading.Event()
        self._ready = ready = threading.Event()
        self._source = _source_for(self.governance.backplane, self.block_ms)
        self._thread = threading.Thread(target=self._run, args=(stop, ready, self._source, self._epoch),
                                        name=THREAD_NAME, daemon=True)
        self._thread.start()
        self._pinger = asyncio.create_task(self._ping_loop())
        self._checker = asyncio.create_task(self._check_loop())
        if self.handle_signals:
            self._chain_signals()
        deadline = time.monotonic() + START_WAIT
        while not ready.is_set() and time.monotonic() < deadline and self._thread.is_alive():
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """End every stream and stop the reader thread (idempotent)."""
        if not self._running:
            return
        self._running = False
        self._stop.set()
        if self._source is not None:
            self._source.interrupt()  # the thread's XREAD BLOCK returns now
        self._restore_signals()
        with self._cond:
            self._cond.notify_all()
        for task in (self._pinger, self._checker):
            if task is not None:
                task.cancel()
        self._pinger = self._checker = None
        tasks = self._close_all("stop")
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=STOP_GRACE)
            for task in late:  # blocked writing to a client that does not read
                task.cancel()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, self.block_ms / 1000 + 2.0)
        self._buffer.clear()
        self._buffer_bytes = 0

    def close_streams(self) -> None:
        """End every stream now and refuse new ones (the server is shutting down); safe from any
        thread and from a signal handler."""
        self._closing = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._close_all, "shutdown")

    def _close_all(self, reason: str) -> set[asyncio.Task[Any]]:
        tasks = set()
        for sub in list(self._subs):
            sub.close(reason)
            if sub.task is not None and not sub.task.done():
                tasks.add(sub.task)
        self._subs.clear()
        return tasks

    def _chain_signals(self) -> None:
        """In the main thread: SIGINT/SIGTERM first end the streams, then do what they did."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def handler(number: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
                self.close_streams()
                previous(number, frame)

            try:
                signal.signal(signum, handler)
            except (ValueError, OSError):
                continue
            self._signals[signum] = (previous, handler)

    def _restore_signals(self) -> None:
        signals, self._signals = self._signals, {}
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, (previous, handler) in signals.items():
            if signal.getsignal(signum) is handler:  # else someone replaced it since: leave theirs
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(signum, previous)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            for sub in list(self._subs):
                sub.ping()

    async def _check_loop(self) -> None:
        """Every ``check_interval`` seconds: judge the logins of the open streams, end the ended."""
        failing = False
        while True:
            await asyncio.sleep(self.check_interval)
            judge = self.judge
            subs = [sub for sub in self._subs if sub.login is not None and sub.closed is None]
            if judge is None or not subs:
                continue
            try:
                reasons = await asyncio.to_thread(judge, [sub.login for sub in subs])
            except Exception as exc:  # noqa: BLE001 - Redis cannot be asked now: the next round asks again
                (log.debug if failing else log.warning)("redgov live: the logins of the streams cannot be "
                                                        "checked now: %r", exc)
                failing = True
                continue
            failing = False
            for sub, reason in zip(subs, reasons, strict=True):
                if reason is not None:
                    self._end_login(sub, reason)

    def logout_frame(self, reason: str) -> bytes:
        """The last frame of a stream whose login ended (no id: it is no log entry)."""
        data = msgspec.json.encode({"reason": reason, "message": self.messages.get(reason, "Your login ended.")})
        return b"event: logout\ndata: %s\n\n" % data

    def _end_login(self, sub: Subscriber, reason: str) -> None:
        self._subs.discard(sub)
        sub.close("logout", self.logout_frame(reason))

    def end_logins(self, ended: Callable[[Any], bool], reason: str) -> int:
        """End now, with ``event: logout`` and ``reason``, every stream whose login ``ended(login)``
        says is over (on the event loop; e.g. a logout). Returns how many."""
        found = [sub for sub in self._subs if sub.login is not None and ended(sub.login)]
        for sub in found:
            self._end_login(sub, reason)
        return len(found)

    def _drop(self, sub: Subscriber, reason: str) -> None:
        self._subs.discard(sub)
        sub.close(reason)
        if reason == "overflow" and sub.task is not None and not sub.task.done():
            # it is behind because its writes block (the client does not read): the stream
            # would wait in send() forever and hold the connection, and the server's shutdown
            # with it; cancelling ends the response unfinished, so the server closes the socket
            sub.task.cancel()

    # -- subscribers (event loop)

    def cursor(self, seq: int) -> str:
        """The opaque SSE id of event ``seq`` of this run of the hub."""
        return f"{self._epoch}-{seq}"

    def _seq_of(self, cursor: str) -> int | None:
        epoch, _, number = cursor.strip().rpartition("-")
        if epoch != self._epoch or not (number.isascii() and number.isdigit()) or len(number) > 19:
            return None
        return int(number)

    def streams_of(self, owner: str) -> int:
        """How many streams ``owner`` (a user name) has open now."""
        return sum(1 for sub in self._subs if sub.owner == owner)

    def subscribe(self, filters: Mapping[str, str | None], last_event_id: str | None, login: Any = None,
                  owner: str | None = None) -> tuple[Subscriber, list[LiveEvent], bytes | None]:
        """Register a subscriber (on the event loop, atomically with publishing).

        ``filters``: see Subscriber; ``login``: what ``judge`` is asked about. Returns the
        subscriber, the events to send first (those after ``last_event_id`` in the replay buffer
        that match the filters) and the reset frame to send first instead when ``last_event_id``
        cannot be resumed (None: no reset).
        """
        sub = Subscriber(filters, self.client_backlog, login, owner)
        replay: list[LiveEvent] = []
        reset: bytes | None = None
        if last_event_id is not None:
            seq = self._seq_of(last_event_id)
            if seq is None or not self._evicted <= seq <= self._head:
                reset = b"id: %s\nevent: reset\ndata: {}\n\n" % self.cursor(self._head).encode()
                self._counts["resets"] += 1
            else:
                replay = [e for e in itertools.islice(self._buffer, seq - self._evicted, None) if sub.matches(e)]
                self._counts["resumes"] += 1
        self._subs.add(sub)
        return sub, replay, reset

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its stream ended)."""
        self._subs.discard(sub)
        sub.close(sub.closed or "disconnect")

    def stream(self, filters: Mapping[str, str | None], last_event_id: str | None, login: Any = None,
               owner: str | None = None) -> Response:
        """The ``text/event-stream`` response of one client (``filters``, ``last_event_id``,
        ``login`` and ``owner`` as for ``subscribe``, which it calls when the response starts)."""
        return EventStream(self, filters, last_event_id, login, owner)

    def _publish(self, events: list[LiveEvent]) -> None:
        """Append a batch read by the thread to the replay buffer and every subscriber (event loop)."""
        if not events or not self._running:
            return
        buffer = self._buffer
        for event in events:
            buffer.append(event)
            self._buffer_bytes += len(event.frame)
        self._head = events[-1].seq
        self._counts["events"] += len(events)
        generations = self._generations
        for event in events:
            scope = (event.tenant, event.environment)
            generations[scope] = generations.get(scope, 0) + 1
        while buffer and (len(buffer) > self.replay_events or self._buffer_bytes > self.replay_bytes):
            old = buffer.popleft()
            self._buffer_bytes -= len(old.frame)
            self._evicted = old.seq
        for sub in list(self._subs):
            if not sub.offer(events):
                self._counts["overflows"] += 1
                log.info("redgov live: a client %d events behind was disconnected (it may resume)", len(sub.items))
                self._drop(sub, "overflow")

    # -- the reader thread

    def _hand_off(self, events: list[LiveEvent], stop: threading.Event) -> None:
        """Give events to the event loop: one scheduled callback takes every batch pending."""
        loop = self._loop
        assert loop is not None
        with self._cond:
            while len(self._pending) >= PENDING_MAX and not stop.is_set():
                self._cond.wait(0.1)
            if stop.is_set():
                return
            self._pending.extend(events)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: the server is gone
            stop.set()

    def _flush(self) -> None:
        with self._cond:
            batch, self._pending = self._pending, []
            self._flush_scheduled = False
            self._cond.notify_all()
        self._publish(batch)

    def _run(self, stop: threading.Event, ready: threading.Event, source: _Source, epoch: str) -> None:
        cursors: dict[str, str] = {}  # log key -> id of the last entry read
        gone: dict[str, str] = {}  # a log deleted since: the last id read of it, for when it comes back
        scopes: dict[str, tuple[str | None, str | None]] = {}
        initial = True
        next_look = 0.0
        delay = RECONNECT_MIN
        failures = 0
        seq = 0
        try:
            while not stop.is_set():
                try:
                    if source.open() and failures:
                        self._counts["reconnects"] += 1
                    if time.monotonic() >= next_look:
                        found = source.discover()
                        fresh = [k for k in found if k not in cursors]
                        # logs there at the start: from their newest entry; found later: from the
                        # first, or after the last id read when it is one that was deleted (a
                        # restore writes the same ids again: nothing is sent twice)
                        start = source.tails(fresh) if initial else {k: gone.pop(k, "0-0") for k in fresh}
                        for key in set(cursors) - set(found):
                            gone[key] = cursors.pop(key)
                            scopes.pop(key, None)
                        while len(gone) > GONE_KEPT:
                            del gone[next(iter(gone))]
                        for key, at in start.items():
                            cursors[key] = at
                            _prefix, tenant, environment = parse_log_key(key)
                            scopes[key] = (tenant, environment)
                        self._scopes = len(cursors)
                        initial = False
                        ready.set()
                        next_look = time.monotonic() + self.rediscover
                    if not cursors:
                        stop.wait(max(0.0, min(self.rediscover, next_look - time.monotonic())))
                        continue
                    wait_ms = max(1, min(self.block_ms, int((next_look - time.monotonic()) * 1000)))
                    reply = source.read(cursors, wait_ms, stop)
                    failures = 0
                    delay = RECONNECT_MIN
                except Exception as exc:  # noqa: BLE001 - whatever broke: reconnect and go on after the last ids
                    if stop.is_set():
                        break
                    failures += 1
                    (log.warning if failures == 3 else log.debug)(
                        "redgov live: reading the scope logs failed (retrying in %.2fs): %r", delay, exc)
                    source.reset()
                    stop.wait(delay)
                    delay = min(delay * 2, RECONNECT_MAX)
                    continue
                events: list[LiveEvent] = []
                for raw_key, items in reply:
                    key = text(raw_key)
                    scope = scopes.get(key)
                    if scope is None or not items:
                        continue
                    for raw_id, fields in items:
                        entry_id = text(raw_id)
                        made = _event(seq + 1, epoch, key, scope, entry_id, fields)
                        if made is not None:
                            seq += 1
                            events.append(made)
                    cursors[key] = text(items[-1][0])
                if events:
                    self._hand_off(events, stop)
                    if self.linger > 0:
                        stop.wait(self.linger)
        except BaseException:  # logged once: the thread must not die silently
            log.exception("redgov live: the reader thread failed; the live feed is stopped")
            raise
        finally:
            ready.set()
            source.close()


def _event(seq: int, epoch: str, key: str, scope: tuple[str | None, str | None], entry_id: str,
           fields: Any) -> LiveEvent | None:
    """One log entry as a LiveEvent with its SSE frame (None: an entry that cannot be decoded, logged)."""
    tenant, environment = scope
    try:
        entry = decode_fields(entry_id, pairs(fields), key, tenant=tenant, environment=environment)
        data = msgspec.json.encode({"id": entry.id, "kind": entry.kind, "experiment": entry.experiment,
                                    "tenant": tenant, "environment": environment,
                                    "record": to_builtins(entry.record)})
    except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the feed
        log.warning("redgov live: skipped log entry %s of %s: %s", entry_id, key, exc)
        return None
    frame = b"id: %s-%d\nevent: %s\ndata: %s\n\n" % (epoch.encode(), seq, entry.kind.encode(), data)
    return LiveEvent(seq, tenant, environment, entry.experiment, entry.kind, frame)


# -- where the thread reads from


class _Source:
    """How the reader thread reaches the logs (used by that thread only, but ``client_id``)."""

    client_id: int | None = None

    def open(self) -> bool:
        """Connect when not connected; True when a new connection was made."""
        return False

    def reset(self) -> None:
        """Drop the connection (after a failure)."""

    def close(self) -> None:
        """Drop the connection for good."""

    def interrupt(self) -> None:
        """Make a read blocked now return at once (any thread; the reader then sees its stop)."""

    def discover(self) -> list[str]:
        raise NotImplementedError

    def tails(self, keys: Sequence[str]) -> dict[str, str]:
        raise NotImplementedError

    def read(self, cursors: dict[str, str], block_ms: int, stop: threading.Event) -> list[tuple[Any, Any]]:
        raise NotImplementedError


def _source_for(backplane: Any, block_ms: int) -> _Source:
    client = backplane.client
    pool = getattr(client, "connection_pool", None)
    if type(client).__module__.split(".")[0] == "fakeredis" or pool is None or not hasattr(pool, "connection_class"):
        return _PollingSource(client, backplane.prefix)
    return _DirectSource(pool, backplane.prefix, block_ms)


class _DirectSource(_Source):
    """XREAD BLOCK on one connection of its own, made like the Governance's but outside its pool."""

    def __init__(self, pool: Any, prefix: str, block_ms: int) -> None:
        kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in _NOT_COPIED}
        timeout = kwargs.get("socket_timeout")
        # a blocked XREAD must never look like a dead socket
        kwargs["socket_timeout"] = block_ms / 1000 + (float(timeout) if timeout else 5.0)
        self._pool = redis.ConnectionPool(connection_class=pool.connection_class, retry=Retry(NoBackoff(), 0),
                                          protocol=2, **kwargs)
        self.prefix = prefix
        self.conn: Any = None

    def open(self) -> bool:
        if self.conn is not None:
            return False
        conn: Any = self._pool.make_connection()
        try:
            conn.connect()
            conn.send_command("CLIENT", "SETNAME", CLIENT_NAME, check_health=False)
            conn.send_command("CLIENT", "ID", check_health=False)
            try:
                conn.read_response()
            except redis.ResponseError:
                pass  # not allowed to name itself (an ACL): it goes unnamed
            try:
                self.client_id = int(conn.read_response())
            except redis.ResponseError:
                self.client_id = None
        except BaseException:
            conn.disconnect()
            raise
        self.conn = conn
        return True

    def reset(self) -> None:
        conn, self.conn = self.conn, None
        self.client_id = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()

    def close(self) -> None:
        self.reset()
        with contextlib.suppress(Exception):
            self._pool.disconnect()

    def interrupt(self) -> None:
        sock = getattr(self.conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _call(self, *args: Any) -> Any:
        self.conn.send_command(*args, check_health=False)
        return self.conn.read_response()

    def discover(self) -> list[str]:
        found: set[str] = set()
        cursor: Any = 0
        pattern = scope_pattern(self.prefix)
        while True:
            cursor, keys = self._call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000, "TYPE", "stream")
            found.update(scope_logs(keys, self.prefix))
            if int(cursor) == 0:
                return sorted(found)

    def tails(self, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        conn = self.conn
        conn.send_packed_command(conn.pack_commands([("XREVRANGE", k, "+", "-", "COUNT", 1) for k in keys]),
                                 check_health=False)
        out = {}
        for key in keys:
            reply = conn.read_response()
            out[key] = text(reply[0][0]) if reply else "0-0"
        return out

    def read(self, cursors: dict[str, str], block_ms: int, stop: threading.Event) -> list[tuple[Any, Any]]:
        keys = list(cursors)
        if len(keys) <= XREAD_STREAMS:
            return streams(self._call("XREAD", "COUNT", READ_COUNT, "BLOCK", block_ms, "STREAMS", *keys,
                                      *(cursors[k] for k in keys)))
        out: list[tuple[Any, Any]] = []
        for start in range(0, len(keys), XREAD_STREAMS):  # too many logs for one XREAD: poll them in groups
            group = keys[start:start + XREAD_STREAMS]
            out += streams(self._call("XREAD", "COUNT", READ_COUNT, "STREAMS", *group, *(cursors[k] for k in group)))
        if not out:
            stop.wait(POLL_S)
        return out


class _PollingSource(_Source):
    """memory:// and Redis Cluster: every log read without blocking through the Governance's client."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def discover(self) -> list[str]:
        keys = self.client.scan_iter(match=scope_pattern(self.prefix), count=1000, _type="STREAM")
        return sorted(set(scope_logs(keys, self.prefix)))

    def tails(self, keys: Sequence[str]) -> dict[str, str]:
        out = {}
        for key in keys:
            reply = self.client.xrevrange(key, "+", "-", count=1)
            out[key] = text(reply[0][0]) if reply else "0-0"
        return out

    def read(self, cursors: dict[str, str], block_ms: int, stop: threading.Event) -> list[tuple[Any, Any]]:
        with self.client.pipeline(transaction=False) as pipe:
            for key, at in cursors.items():
                pipe.xread({key: at}, count=READ_COUNT)
            replies = pipe.execute()
        out = [item for reply in replies for item in streams(reply)]
        if not out:
            stop.wait(min(POLL_S, block_ms / 1000))
        return out


# -- the response


class EventStream(Response):
    """The ``text/event-stream`` response of one subscriber (an ASGI app: registered when it starts)."""

    media_type = "text/event-stream"

    def __init__(self, hub: LiveHub, filters: Mapping[str, str | None], last_event_id: str | None,
                 login: Any = None, owner: str | None = None) -> None:
        self.hub = hub
        self.filters = filters
        self.last_event_id = last_event_id
        self.login = login
        self.owner = owner
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        hub = self.hub
        if not hub.running or hub._closing:
            await PlainTextResponse("the live feed is stopped", status_code=503)(scope, receive, send)
            return
        sub, replay, reset = hub.subscribe(self.filters, self.last_event_id, self.login, self.owner)
        task = sub.task = asyncio.current_task()
        watcher = asyncio.ensure_future(self._watch(receive, sub))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if reset is not None:
                await send({"type": "http.response.body", "body": reset, "more_body": True})
            for start in range(0, len(replay), REPLAY_CHUNK):
                if sub.closed is not None:
                    break
                body = b"".join(e.frame for e in replay[start:start + REPLAY_CHUNK])
                await send({"type": "http.response.body", "body": body, "more_body": True})
            while True:
                got = await sub.take()
                if got is None:
                    break
                events, ping = got
                body = b"".join(e.frame for e in events)
                await send({"type": "http.response.body", "body": body + PING if ping else body, "more_body": True})
            await send({"type": "http.response.body", "body": sub.farewell or b"", "more_body": False})
        except OSError:
            pass  # the client went away
        except asyncio.CancelledError:
            # stop() cancels a stream still blocked writing to a client that does not read
            if sub.closed is None or task is None or not task.cancelling():
                raise
            task.uncancel()
        finally:
            watcher.cancel()
            hub.unsubscribe(sub)

    @staticmethod
    async def _watch(receive: Receive, sub: Subscriber) -> None:
        with contextlib.suppress(Exception):
            while (await receive())["type"] != "http.disconnect":
                pass
        sub.close("disconnect")


# -- the route


def _filters(request: Request) -> dict[str, str | None]:
    """The stream's filters from the query: ``tenant``, ``environment`` (an empty value: the default,
    None, as every page's ``?tenant=&environment=``) and ``experiment`` (empty: any); a parameter
    not given matches anything. ValidationError for a bad name."""
    params = request.query_params
    out: dict[str, str | None] = {}
    for name in ("tenant", "environment"):
        if name in params:
            out[name] = check_scope_part(params[name] or None, name)
    if params.get("experiment"):
        out["experiment"] = check_name(params["experiment"], "experiment")
    return out


def routes(ctx: WebContext) -> list[Route]:
    """``GET /events``: the live feed (viewer or above; not logged in: redirect to /login).

    Query (all optional, each one narrows the feed): ``tenant``, ``environment`` (an empty value
    is the default scope's None) and ``experiment`` (a name); ``?tenant=a&environment=b`` is one
    scope, ``?tenant=&environment=&experiment=x`` experiment x of the default scope, none of them
    every scope.
    Header ``Last-Event-ID`` resumes after that event (or starts with ``event: reset``).
    """

    if ctx.hub is not None:  # the hub judges the logins of its streams (every check_interval seconds)
        ctx.hub.judge = lambda logins: auth.logins_ended(ctx, logins)
        ctx.hub.messages = auth.ENDED

    async def events(request: Request) -> Response:
        user = await run_in_threadpool(auth.require, ctx, request, Role.VIEWER)  # the login: a Redis GET
        hub: LiveHub | None = ctx.hub
        if hub is None or not hub.running or hub._closing:
            return PlainTextResponse("the live feed is off", status_code=503)
        try:
            filters = _filters(request)
        except ValidationError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        login = auth.login_of(ctx, request, user)
        if login is None:  # a session page_user accepted names its login; this one does not
            raise auth.LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        if hub.streams_of(user.name) >= hub.streams_per_user:
            if ctx.metrics is not None:
                ctx.metrics.count_throttled("streams")
            return PlainTextResponse(f"{user.name} has {hub.streams_per_user} live streams open already; close a tab",
                                     status_code=429, headers={"Retry-After": "30"})
        return hub.stream(filters, request.headers.get("last-event-id"), login, user.name)

    return [Route("/events", events, methods=["GET"])]
