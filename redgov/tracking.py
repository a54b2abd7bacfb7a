"""The invalidation stream of ``StateCache``: one connection, one thread, tracking and pub/sub together.

The stream connection runs ``CLIENT TRACKING ON REDIRECT <its own id> BCAST
PREFIX ...`` and ``SUBSCRIBE __redis__:invalidate``, so tracking and the
invalidations are lost together. The thread (re)opens it, widens it to new scope
prefixes (subscribing the new connection before retiring the old one, draining
the old one up to a PING sent after that), PINGs a silent stream and reports a
lost one (``_lost``: every entry dropped). See ``redgov.cache`` for the whole
protocol.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis

from .errors import RedgovError

__all__ = ["DEAD_AFTER", "INVALIDATE_CHANNEL", "POLL", "STREAM_NAME", "THREAD_NAME", "TrackingStream"]

log = logging.getLogger("redgov.cache")

INVALIDATE_CHANNEL = b"__redis__:invalidate"
#: the client name of the stream connection (CLIENT LIST), unless the caller gave its own
STREAM_NAME = "redgov-cache"
THREAD_NAME = "redgov-cache-invalidations"
#: silence on the stream (health intervals, with a PING sent after the first) that counts as a loss
DEAD_AFTER = 3
#: how often the stream thread looks for new scopes to cover and for close (seconds)
POLL = 0.02
RECONNECT_MIN = 0.05
RECONNECT_MAX = 1.0
#: failed attempts in a row (about 0.35 s) before a stream that cannot be made is logged as a warning
WARN_AFTER = 3


class TrackingStream:
    """The stream-thread half of ``StateCache`` (a mixin over the cache's lock, entries and counters)."""

    if TYPE_CHECKING:  # provided by StateCache
        _lock: threading.Lock
        _connect: Any
        _wanted: set[str]
        _asked: int
        _live: frozenset[str]
        _generation: int
        _resets: int
        _stream: Any
        _stream_id: int | None
        _stop: threading.Event
        _thread: threading.Thread | None
        _closed: bool
        health_interval: float

        def invalidate(self, keys: Any) -> None: ...

        def _clear(self) -> None: ...

    def _start(self) -> None:
        """Start the stream thread (the lock held)."""
        if self._thread is None and not self._closed:
            self._stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(self._stop,), name=THREAD_NAME, daemon=True)
            self._thread = thread
            thread.start()

    def _open(self, prefixes: frozenset[str]) -> tuple[Any, int]:
        """A new connection tracking ``prefixes`` in broadcast mode and subscribed to the invalidations."""
        conn = self._connect()
        try:
            conn.connect()
            named = not getattr(conn, "client_name", None)
            conn.send_command("CLIENT", "ID", check_health=False)
            if named:
                conn.send_command("CLIENT", "SETNAME", STREAM_NAME, check_health=False)
            client_id = int(conn.read_response())
            if named:
                try:
                    conn.read_response()
                except redis.ResponseError:
                    pass  # not allowed to name itself (an ACL): it goes unnamed
            args: list[Any] = ["CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST"]
            for prefix in sorted(prefixes):
                args += ["PREFIX", prefix]
            conn.send_command(*args, check_health=False)
            conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL, check_health=False)
            conn.read_response()  # OK (an error reply raises)
            reply = conn.read_response()
            if not (isinstance(reply, list) and reply[:2] == [b"subscribe", INVALIDATE_CHANNEL]):
                raise RedgovError(f"unexpected reply to SUBSCRIBE {INVALIDATE_CHANNEL!r}: {reply!r}")
        except BaseException:
            conn.disconnect()
            raise
        return conn, client_id

    def _run(self, stop: threading.Event) -> None:
        stream: Any = None
        covered: frozenset[str] = frozenset()
        asked = -1
        delay = RECONNECT_MIN
        retry_at = 0.0
        failures = 0
        try:
            while not stop.is_set():
                if (stream is None or asked != self._asked) and time.monotonic() >= retry_at:
                    with self._lock:
                        wanted, wanted_asked = frozenset(self._wanted), self._asked
                    try:
                        fresh, fresh_id = self._open(wanted)
                    except Exception as exc:  # noqa: BLE001 - any failure: wait and try again
                        # a lasting failure is a warning, once (an ACL without CLIENT TRACKING or the
                        # invalidation channel leaves the cache off); a passing one (a server
                        # starting or restarting) is not
                        failures += 1
                        (log.warning if failures == WARN_AFTER else log.debug)(
                            "redgov cache: cannot subscribe to invalidations (reads go to Redis "
                            "meanwhile): %s", exc)
                        retry_at = time.monotonic() + delay
                        delay = min(delay * 2, RECONNECT_MAX)
                    else:
                        delay = RECONNECT_MIN
                        failures = 0
                        if stream is not None:
                            self._retire(stream, stop)
                            stream = None
                        stream, covered, asked = fresh, wanted, wanted_asked
                        with self._lock:
                            self._stream, self._stream_id = stream, fresh_id
                            if not stop.is_set():
                                self._live = covered
                if stream is None:
                    stop.wait(min(POLL, max(0.0, retry_at - time.monotonic())))
                    continue
                try:
                    self._listen(stream, asked, retry_at, stop)
                except Exception as exc:  # noqa: BLE001 - the stream is gone however it failed
                    if not stop.is_set():
                        log.warning("redgov cache: invalidation stream lost, cache dropped: %s", exc)
                    self._lost()
                    stream.disconnect()
                    stream = None
        except BaseException:  # noqa: BLE001 - never leave entries served without a stream
            log.exception("redgov cache: the invalidation thread failed")
            raise
        finally:
            self._lost(count=False)
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None  # the next miss starts a new one (unless closed)
            if stream is not None:
                stream.disconnect()

    def _retire(self, old: Any, stop: threading.Event) -> None:
        """Read what the old stream still holds, up to the reply of a PING sent now, then close it.

        The new stream is subscribed already, so every change from then on reaches it;
        a failure here drops the cache (some change may have been missed)."""
        token = uuid.uuid4().hex.encode()
        try:
            old.send_command("PING", token, check_health=False)
            deadline = time.monotonic() + DEAD_AFTER * self.health_interval
            while True:
                if time.monotonic() > deadline:
                    raise redis.TimeoutError("no reply to PING on the retired invalidation connection")
                if not old.can_read(timeout=POLL):
                    continue
                message = old.read_response()
                if isinstance(message, list) and len(message) == 2 and message[0] == b"pong" \
                        and message[1] == token:
                    break
                self._handle(message)
        except Exception as exc:  # noqa: BLE001 - the old stream is going anyway
            if not stop.is_set():
                log.warning("redgov cache: could not drain the old invalidation stream, cache dropped: %s", exc)
            self._lost()
        finally:
            old.disconnect()

    def _listen(self, conn: Any, asked: int, retry_at: float, stop: threading.Event) -> None:
        """Read invalidations until a new scope must be covered or close (return), or the stream fails (raise)."""
        heard = time.monotonic()
        pinged = False
        while not stop.is_set():
            if asked != self._asked and time.monotonic() >= retry_at:
                return
            if conn.can_read(timeout=POLL):
                self._handle(conn.read_response())
                heard = time.monotonic()
                pinged = False
                continue
            silent = time.monotonic() - heard
            if silent >= DEAD_AFTER * self.health_interval:
                raise redis.TimeoutError(f"no reply on the invalidation connection for {silent:.1f}s")
            if silent >= self.health_interval and not pinged:
                conn.send_command("PING", check_health=False)
                pinged = True

    def _handle(self, message: Any) -> None:
        if isinstance(message, list) and len(message) == 3 and message[0] == b"message" \
                and message[1] == INVALIDATE_CHANNEL:
            self.invalidate(message[2])
        # else: a pong: proof of life only

    def _lost(self, count: bool = True) -> None:
        """The stream is gone: nothing cached is trusted any more."""
        with self._lock:
            if self._live and count:
                self._resets += 1
            self._live = frozenset()
            self._stream = None
            self._stream_id = None
            self._generation += 1
            self._clear()
