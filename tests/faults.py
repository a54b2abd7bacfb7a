"""A loopback TCP proxy in front of a Redis server that loses replies on purpose.

``FaultProxy`` listens on 127.0.0.1 (a free port) and forwards both directions
to the upstream server. It parses the client's RESP stream into commands and
the server's into replies, so every reply is paired with the command it
answers. Armed, it can

* **drop** the reply of a chosen command *after the server ran it*: the reply
  (and every other reply still due on that connection, e.g. the rest of a
  pipelined batch, which the server runs too) is swallowed, then the client
  socket is closed, so the client sees a ConnectionError at once (no timeout)
  and the upstream connection is closed as well. This is a "cut";
* **delay** a chosen reply: hold it for some seconds (the client times out,
  drops the connection and re-sends), then forward it if anyone is listening.

Which replies: ``drop_next(n, match=...)`` the next ``n`` replies of commands
for which ``match(command, reply)`` is true; ``drop_randomly(p, match=...,
seed=...)`` each such reply with probability ``p``; ``delay_next(...)``;
``set_rule(rule)`` any rule ``(command, reply) -> "drop" | "delay" | None``
(a rule with a ``lost(command, reply)`` method is also told of the replies a
cut swallowed after the one it chose).
A NOSCRIPT error reply is never targeted (the server did not run the script).

Threads and blocking sockets only; every wait is bounded; ``stop()`` closes
every socket and joins every thread. Nothing but the standard library.
"""

from __future__ import annotations

import collections
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["Command", "FaultProxy", "ProtocolError", "evalsha", "is_command", "op_id", "reply_length",
           "command_length"]

CRLF = b"\r\n"
#: how long a dropped batch waits for the server's remaining replies before cutting anyway
CUT_WAIT_SECONDS = 2.0
#: socket poll interval: how often a blocked thread looks at the stop flag
POLL_SECONDS = 0.2
JOIN_SECONDS = 5.0

DROP = "drop"
DELAY = "delay"


class ProtocolError(Exception):
    """The stream is not RESP."""


# -- RESP framing ---------------------------------------------------------------------------

def _line(buf: bytes | bytearray, pos: int) -> tuple[bytes, int] | None:
    end = buf.find(CRLF, pos)
    if end < 0:
        return None
    return bytes(buf[pos:end]), end + 2


_AGGREGATES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}
_LINES = frozenset(b"+-:_#,(")
_BLOBS = frozenset(b"$!=")


def reply_length(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """The end of the one RESP2/RESP3 value starting at ``pos`` (None: not complete yet).

    An attribute (``|``) is returned as a value of its own; callers pair the
    value after it with the command.
    """
    stack = [1]  # values still to read at each nesting level
    while stack:
        if pos >= len(buf):
            return None
        kind = buf[pos]
        got = _line(buf, pos + 1)
        if got is None:
            return None
        head, pos = got
        stack[-1] -= 1
        if kind in _BLOBS:
            size = int(head)
            if size >= 0:
                if len(buf) < pos + size + 2:
                    return None
                pos += size + 2
        elif kind in _AGGREGATES:
            count = int(head)
            if count > 0:
                stack.append(count * _AGGREGATES[kind])
        elif kind not in _LINES:
            raise ProtocolError(f"unexpected RESP type byte {bytes([kind])!r} at {pos}")
        while stack and stack[-1] == 0:
            stack.pop()
    return pos


def command_length(buf: bytes | bytearray, pos: int = 0) -> tuple[list[bytes], int] | None:
    """The next client command (its arguments) and its end, or None when incomplete.

    Clients send arrays of bulk strings; an inline command (a plain line) is
    split on spaces.
    """
    if pos >= len(buf):
        return None
    if buf[pos] != ord("*"):
        got = _line(buf, pos)
        if got is None:
            return None
        line, end = got
        return line.split(), end
    got = _line(buf, pos + 1)
    if got is None:
        return None
    head, pos = got
    args = []
    for _ in range(int(head)):
        if pos >= len(buf):
            return None
        if buf[pos] != ord("$"):
            raise ProtocolError(f"a command argument must be a bulk string, got {bytes(buf[pos:pos + 1])!r}")
        got = _line(buf, pos + 1)
        if got is None:
            return None
        size_text, pos = got
        size = int(size_text)
        if len(buf) < pos + size + 2:
            return None
        args.append(bytes(buf[pos:pos + size]))
        pos += size + 2
    return args, pos


@dataclass(frozen=True)
class Command:
    """One client command as sent: its arguments (bytes)."""

    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return self.args[0].decode("latin-1").upper() if self.args else ""

    @property
    def script_sha(self) -> str | None:
        """The script SHA of an EVALSHA (None for other commands)."""
        if self.name in ("EVALSHA", "EVALSHA_RO") and len(self.args) > 1:
            return self.args[1].decode("latin-1").lower()
        return None

    @property
    def script_args(self) -> tuple[bytes, ...]:
        """ARGV of an EVAL/EVALSHA (empty for other commands)."""
        if self.name not in ("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO") or len(self.args) < 3:
            return ()
        return self.args[3 + int(self.args[2]):]


Match = Callable[[Command, bytes], bool]
Rule = Callable[[Command, bytes], str | None]


def op_id(command: Command) -> bytes | None:
    """redgov's operation id of a write script call (its ARGV[1]), or None."""
    argv = command.script_args
    return argv[0] if argv else None


def evalsha(*shas: str) -> Match:
    """Matches EVALSHA of any of these scripts (of any script when none is named)."""
    wanted = {s.lower() for s in shas}

    def match(command: Command, _reply: bytes) -> bool:
        sha = command.script_sha
        return sha is not None and (not wanted or sha in wanted)

    return match


def is_command(*names: str) -> Match:
    """Matches commands by name (case-insensitive)."""
    wanted = {n.upper() for n in names}
    return lambda command, _reply: command.name in wanted


def anything(_command: Command, _reply: bytes) -> bool:
    return True


# -- the proxy ------------------------------------------------------------------------------

@dataclass
class Counters:
    connections: int = 0
    commands: int = 0
    replies: int = 0
    #: replies swallowed by cuts (the targeted ones and those due after them on the same connection)
    dropped: int = 0
    #: the replies a rule chose to drop (each caused one cut)
    targeted: int = 0
    cuts: int = 0
    delayed: int = 0
    errors: list[str] = field(default_factory=list)


class _Link:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.pending: collections.deque[Command] = collections.deque()
        self.lock = threading.Lock()
        self.cutting = False
        self.cut_counted = False
        self.closed = threading.Event()
        self.threads = [
            threading.Thread(target=self._guard, args=(self._client_to_server,), daemon=True,
                             name=f"faultproxy-c2s-{proxy.port}"),
            threading.Thread(target=self._guard, args=(self._server_to_client,), daemon=True,
                             name=f"faultproxy-s2c-{proxy.port}"),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def _guard(self, pump: Callable[[], None]) -> None:
        try:
            pump()
        except (OSError, ValueError):
            pass  # a socket closed under us: the link ends
        except Exception as exc:  # noqa: BLE001 - recorded for the test, never raised in a thread
            self.proxy._record_error(f"{pump.__name__}: {exc!r}")
        finally:
            self.close()
            with self.lock:
                count = self.cutting and not self.cut_counted
                self.cut_counted = True
            if count:
                self.proxy._cut_done()

    def _recv(self, sock: socket.socket) -> bytes | None:
        """Some bytes, b'' at the end, None when nothing came within POLL_SECONDS."""
        while not self.closed.is_set() and not self.proxy._stopping.is_set():
            try:
                return sock.recv(65536)
            except TimeoutError:
                return None
        return b""

    def _client_to_server(self) -> None:
        buf = bytearray()
        while True:
            data = self._recv(self.client)
            if data is None:
                continue
            if not data:
                return
            with self.lock:
                if self.cutting:
                    continue  # the connection is being cut: nothing more reaches the server
                buf += data
                pos = 0
                while True:
                    got = command_length(buf, pos)
                    if got is None:
                        break
                    args, pos = got
                    self.pending.append(Command(tuple(args)))
                    self.proxy._count("commands")
                del buf[:pos]
                # commands are queued before the server can answer them
                self.upstream.sendall(data)

    def _server_to_client(self) -> None:
        buf = bytearray()
        cut_deadline = 0.0
        while True:
            if self.cutting and (not self.pending or time.monotonic() > cut_deadline):
                return  # _guard closes both sockets (the client sees the connection end) and counts the cut
            data = self._recv(self.upstream)
            if data is None:
                continue
            if not data:
                return
            buf += data
            out = bytearray()
            pos = 0
            while True:
                end = reply_length(buf, pos)
                if end is None:
                    break
                reply = bytes(buf[pos:end])
                pos = end
                kind = reply[:1]
                if kind == b">" or kind == b"|":  # a push or an attribute: not the answer to a command
                    if not self.cutting:
                        out += reply
                    continue
                command = self.pending.popleft() if self.pending else Command(())
                self.proxy._count("replies")
                if self.cutting:
                    self.proxy._count("dropped")
                    self.proxy._lost(command, reply)
                    continue
                action = self.proxy._decide(command, reply)
                if action == DROP:
                    with self.lock:
                        self.cutting = True
                    cut_deadline = time.monotonic() + CUT_WAIT_SECONDS
                    self.proxy._count("dropped")
                    continue
                if action == DELAY:
                    if out:
                        self.client.sendall(out)
                        out = bytearray()
                    self.proxy._count("delayed")
                    self.proxy._stopping.wait(self.proxy.delay_seconds)
                out += reply
            del buf[:pos]
            if out:
                self.client.sendall(out)


class FaultProxy:
    """A loopback TCP proxy to ``upstream`` that can lose or hold chosen replies (see module doc)."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 6379), *, port: int = 0) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self._listener.settimeout(POLL_SECONDS)
        self.port: int = self._listener.getsockname()[1]
        self.host = "127.0.0.1"
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._links: set[_Link] = set()
        self._rule: Rule | None = None
        self.delay_seconds = 0.0
        self.counters = Counters()
        self._cuts_open = 0
        self._accepting = threading.Thread(target=self._accept, daemon=True, name=f"faultproxy-accept-{self.port}")
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    # -- arming ---------------------------------------------------------------------------

    def set_rule(self, rule: Rule | None) -> None:
        """``rule(command, reply)`` returns "drop", "delay" or None for each reply (None: disarmed)."""
        with self._lock:
            self._rule = rule

    def disarm(self) -> None:
        self.set_rule(None)

    def drop_next(self, n: int = 1, match: Match = anything) -> _Budget:
        """Cut the connection instead of delivering the next ``n`` replies to commands matching ``match``."""
        budget = _Budget(n, match, DROP)
        self.set_rule(budget)
        return budget

    def delay_next(self, seconds: float, n: int = 1, match: Match = anything) -> _Budget:
        """Hold the next ``n`` matching replies for ``seconds`` before forwarding them."""
        self.delay_seconds = seconds
        budget = _Budget(n, match, DELAY)
        self.set_rule(budget)
        return budget

    def drop_randomly(self, p: float, match: Match = anything, seed: int = 0) -> None:
        """Cut instead of delivering each matching reply with probability ``p`` (seeded)."""
        rng = random.Random(seed)

        def rule(command: Command, reply: bytes) -> str | None:
            return DROP if match(command, reply) and rng.random() < p else None

        self.set_rule(rule)

    # -- counters -------------------------------------------------------------------------

    @property
    def cuts(self) -> int:
        return self.counters.cuts

    @property
    def dropped(self) -> int:
        return self.counters.dropped

    @property
    def targeted(self) -> int:
        return self.counters.targeted

    @property
    def delayed(self) -> int:
        return self.counters.delayed

    def _count(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + by)

    def _record_error(self, text: str) -> None:
        with self._lock:
            self.counters.errors.append(text)

    def _decide(self, command: Command, reply: bytes) -> str | None:
        if reply.startswith(b"-NOSCRIPT"):
            return None  # the server did not run it: nothing to lose
        with self._lock:
            rule = self._rule
            if rule is None:
                return None
            action = rule(command, reply)
            if action == DROP:
                self.counters.targeted += 1
                self._cuts_open += 1
            return action

    def _lost(self, command: Command, reply: bytes) -> None:
        """A reply swallowed by a cut already under way: a rule with a ``lost`` method hears of it."""
        with self._lock:
            lost = getattr(self._rule, "lost", None)
            if lost is not None:
                lost(command, reply)

    def _cut_done(self) -> None:
        with self._lock:
            self.counters.cuts += 1
            self._cuts_open -= 1

    def settled(self, timeout: float = 5.0) -> bool:
        """Wait until every targeted reply's cut is complete (the client connection closed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._cuts_open == 0:
                    return True
            time.sleep(0.005)
        return False

    # -- lifecycle ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=5.0)
            except OSError as exc:
                self._record_error(f"upstream connect: {exc!r}")
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(POLL_SECONDS)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                if self._stopping.is_set():
                    link.close()
                    return
                self._links.add(link)
                self.counters.connections += 1
                # forget links that ended (bounded memory over thousands of cuts)
                self._links = {lnk for lnk in self._links if not lnk.closed.is_set() or lnk is link}
            link.start()

    def stop(self) -> None:
        """Stop accepting, close every connection, join every thread (bounded)."""
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self._accepting.join(JOIN_SECONDS)
        with self._lock:
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.close()
        stuck = [link for link in links if not link.join(JOIN_SECONDS)]
        if self._accepting.is_alive() or stuck:
            raise RuntimeError(f"FaultProxy on port {self.port}: {len(stuck)} connection(s) did not stop")

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        c = self.counters
        return (f"<FaultProxy 127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]} "
                f"connections={c.connections} replies={c.replies} cuts={c.cuts} dropped={c.dropped} "
                f"delayed={c.delayed}>")


class _Budget:
    """A rule: ``action`` for the next ``n`` matching replies, then nothing."""

    def __init__(self, n: int, match: Match, action: str) -> None:
        self.left = n
        self.match = match
        self.action = action

    def __call__(self, command: Command, reply: bytes) -> str | None:
        if self.left > 0 and self.match(command, reply):
            self.left -= 1
            return self.action
        return None

    @property
    def spent(self) -> bool:
        return self.left == 0


def iter_commands(data: bytes) -> Iterable[list[bytes]]:
    """Every complete command in data (a helper for the parser's own tests)."""
    pos = 0
    while True:
        got = command_length(data, pos)
        if got is None:
            return
        args, pos = got
        yield args
