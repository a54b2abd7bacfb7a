"""The live feed of ``redgov serve`` (``GET /events``) against a real uvicorn and a real Redis.

uvicorn serves the app in a thread on a free port (so the test reaches the hub); clients are
raw sockets (an incremental HTTP/1.1 chunked + Server-Sent Events parser below, shared with
test_web_load) and httpx2 for the plain requests. Writes come from this process and from
subprocesses; what every client got is compared with the scope logs (XRANGE).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
import uvicorn

import redgov
from redgov import Governance
from redgov import LifecycleState as S
from redgov.codec import decode_fields, pairs, text
from redgov.records import to_builtins
from redgov.web import add_user, create_app
from redgov.web.live import CLIENT_NAME, LiveEvent, LiveHub, Subscriber

from .conftest import delete_prefix

SECRET = "s" * 40
PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- SSE over raw HTTP/1.1


@dataclass
class Event:
    """One SSE event (or comment) as a client got it."""

    id: str | None
    event: str | None
    data: str | None
    comment: str | None
    at: float  # time.time() when its bytes arrived

    def json(self) -> Any:
        return json.loads(self.data or "null")


class SSEParser:
    """Feeds on the raw bytes of an HTTP/1.1 response: status, headers, then a chunked (or not)
    body split into SSE events. ``done`` once the body ended (last chunk or EOF)."""

    def __init__(self) -> None:
        self.raw = b""
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.body = b""
        self.done = False
        self._chunk_left: int | None = None  # bytes of the current chunk still to read (None: a size line)
        self._events = b""
        self._block: dict[str, Any] = {}

    def feed(self, data: bytes, at: float) -> list[Event]:
        if not data:
            self.done = True
            return []
        self.raw += data
        if self.status is None:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return []
            head, self.raw = self.raw[:end].decode("latin-1"), self.raw[end + 4:]
            lines = head.split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self.chunked = "chunked" in self.headers.get("transfer-encoding", "")
        if not self.chunked:
            body, self.raw = self.raw, b""
            return self._sse(body, at)
        out: list[Event] = []
        while True:
            if self._chunk_left is None:
                end = self.raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.raw[:end].split(b";")[0], 16)
                self.raw = self.raw[end + 2:]
                if size == 0:
                    self.done = True
                    break
                self._chunk_left = size
            if self._chunk_left > 0:
                if not self.raw:
                    break
                take = min(len(self.raw), self._chunk_left)
                out += self._sse(self.raw[:take], at)
                self.raw = self.raw[take:]
                self._chunk_left -= take
                if self._chunk_left > 0:
                    break
            if len(self.raw) < 2:  # the CRLF after the chunk
                break
            self.raw = self.raw[2:]
            self._chunk_left = None
        return out

    def _sse(self, data: bytes, at: float) -> list[Event]:
        self.body += data if len(self.body) < 65536 else b""
        self._events += data
        out = []
        while True:
            end = self._events.find(b"\n\n")
            if end < 0:
                return out
            block, self._events = self._events[:end].decode("utf-8"), self._events[end + 2:]
            fields: dict[str, str] = {}
            comment = None
            for line in block.split("\n"):
                if line.startswith(":"):
                    comment = line[1:].strip()
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            out.append(Event(fields.get("id"), fields.get("event"), fields.get("data"), comment, at))


def request_bytes(host: str, port: int, path: str, cookie: str | None, last_event_id: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream", "Cache-Control: no-cache"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class SSEClient:
    """A blocking raw-socket SSE client reading in a thread: ``events`` (data events, in order),
    ``comments``, ``ended`` (set when the server ended the body or closed)."""

    def __init__(self, base: str, cookie: str | None, path: str = "/events", last_event_id: str | None = None,
                 timeout: float = 10.0) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.sendall(request_bytes(host, int(port), path, cookie, last_event_id))
        self.parser = SSEParser()
        self.events: list[Event] = []
        self.comments: list[Event] = []
        self.ended = threading.Event()
        self.started = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self.started.wait(timeout):
            raise AssertionError(f"no response to GET {path} in {timeout}s")

    def _read(self) -> None:
        try:
            while not self.parser.done:
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                got = self.parser.feed(data, time.time())
                if self.parser.status is not None:
                    self.started.set()
                with self._lock:
                    for e in got:
                        (self.comments if e.comment is not None and e.event is None and e.data is None
                         else self.events).append(e)
        finally:
            self.started.set()
            self.ended.set()

    @property
    def status(self) -> int | None:
        return self.parser.status

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Event]:
        """The first ``count`` events (AssertionError when fewer came within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.events) >= count:
                    return list(self.events[:count])
            if self.ended.is_set():
                break
            time.sleep(0.01)
        with self._lock:
            raise AssertionError(f"got {len(self.events)} events of {count} (ended={self.ended.is_set()}): "
                                 f"{[(e.event, e.data[:80] if e.data else e.data) for e in self.events[-5:]]}")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)


# ---------------------------------------------------------------- the server


class ServerThread:
    """uvicorn serving ``app`` in a thread on a free port of 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio: TCP_NODELAY
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)

    @property
    def hub(self) -> LiveHub:
        return self.app.state.ctx.hub  # type: ignore[no-any-return]

    def on_loop(self, make: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run a coroutine (``make()``) on the server's event loop and return its result."""
        loop = self.hub._loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout)

    def stop(self) -> None:
        self.hub.close_streams()
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


def login(base: str, user: str = "vera", password: str = PASSWORD) -> str:
    """Log in with the form (CSRF token from GET /login); the Cookie header value of the session."""
    with httpx2.Client(base_url=base, follow_redirects=False, timeout=10) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token, page.text[:500]
        done = client.post("/login", data={"csrf": token.group(1), "username": user, "password": password,
                                           "next": "/"})
        assert done.status_code == 303, (done.status_code, done.text[:300])
        return "; ".join(f"{k}={v}" for k, v in client.cookies.items())


@dataclass
class Live:
    """A served app around a Governance of the test's prefix."""

    url: str
    prefix: str
    users: Path
    gov: Governance
    server: ServerThread
    cookie: str
    clients: list[SSEClient] = field(default_factory=list)

    @property
    def hub(self) -> LiveHub:
        return self.server.hub

    def connect(self, path: str = "/events", last_event_id: str | None = None, cookie: str | None = "") -> SSEClient:
        client = SSEClient(self.server.base, self.cookie if cookie == "" else cookie, path, last_event_id)
        self.clients.append(client)
        return client


def make_users(tmp_path: Path) -> Path:
    users = tmp_path / "users.json"
    add_user(users, "vera", "viewer", PASSWORD)
    add_user(users, "otto", "operator", PASSWORD)
    return users


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return make_users(tmp_path)


@pytest.fixture
def live_factory(redis_url: str, prefix: str, users_file: Path) -> Iterator[Callable[..., Live]]:
    made: list[Live] = []

    def make(url: str | None = None, **hub_options: Any) -> Live:
        bp = redgov.connect(url or redis_url, prefix=prefix)
        gov = Governance(bp)
        app = create_app(gov, users_file, SECRET)
        hub = app.state.ctx.hub
        hub.rediscover = 0.2
        for name, value in hub_options.items():
            setattr(hub, name, value)
        server = ServerThread(app)
        live = Live(url or redis_url, prefix, users_file, gov, server, "")
        made.append(live)  # stopped at the end even when logging in fails
        live.cookie = login(server.base)
        return live

    yield make
    for live in made:
        for client in live.clients:
            client.close()
        live.server.stop()
        if not live.url.startswith("memory://"):
            delete_prefix(live.gov.backplane.client, prefix)
        live.gov.backplane.close()


@pytest.fixture
def live(live_factory: Callable[..., Live]) -> Live:
    return live_factory()


# ---------------------------------------------------------------- writing


WRITER = textwrap.dedent("""
    import sys, time
    import redgov
    from redgov import Governance, LifecycleState as S
    url, prefix, tenant, environment, names, count, interval = sys.argv[1:8]
    tenant = tenant or None
    environment = environment or None
    gov = Governance(redgov.connect(url, prefix=prefix))
    names = names.split(",")
    nxt = {S.RUNNING: S.PAUSED, S.PAUSED: S.RUNNING}
    states = {n: gov.state(n, tenant=tenant, environment=environment).state for n in names}
    start = time.monotonic()
    for i in range(int(count)):
        name = names[i % len(names)]
        states[name] = nxt[states[name]]
        gov.transition(name, states[name], actor="writer", tenant=tenant, environment=environment)
        pause = start + (i + 1) * float(interval) - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    gov.backplane.close()
    print("done", flush=True)
""")


def run_writer(url: str, prefix: str, tenant: str | None, environment: str | None, names: list[str], count: int,
               interval: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, prefix, tenant or "", environment or "",
                             ",".join(names), str(count), str(interval)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "done" in out, err[-2000:]


def running(gov: Governance, names: list[str], tenant: str | None = None, environment: str | None = None) -> None:
    """Create each experiment and move it to Running (5 log entries each)."""
    for name in names:
        gov.create(name, tenant=tenant, environment=environment, actor="setup")
        for state in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
            gov.transition(name, state, tenant=tenant, environment=environment, actor="setup")


def flip(gov: Governance, name: str, times: int, tenant: str | None = None, environment: str | None = None) -> None:
    """``times`` transitions Running <-> Paused of an experiment in Running."""
    state = gov.state(name, tenant=tenant, environment=environment)
    assert state is not None
    current = state.state
    for _ in range(times):
        current = S.PAUSED if current == S.RUNNING else S.RUNNING
        gov.transition(name, current, tenant=tenant, environment=environment, actor="here")


def log_key(prefix: str, tenant: str | None, environment: str | None) -> str:
    from redgov.keys import Scope

    return Scope(prefix, tenant, environment).log


def log_entries(gov: Governance, tenant: str | None, environment: str | None, after: str = "-") -> list[dict[str, Any]]:
    """The scope's log entries after ``after`` as the feed's data objects."""
    key = log_key(gov.backplane.prefix, tenant, environment)
    low = after if after == "-" else "(" + after
    out = []
    for raw_id, fields in gov.backplane.client.xrange(key, min=low, max="+"):
        entry = decode_fields(text(raw_id), pairs(fields), key, tenant=tenant, environment=environment)
        out.append({"id": entry.id, "kind": entry.kind, "experiment": entry.experiment, "tenant": tenant,
                    "environment": environment, "record": json.loads(json.dumps(to_builtins(entry.record)))})
    return out


def caught_up(live: Live, *scopes: tuple[str | None, str | None], timeout: float = 10.0) -> None:
    """Wait until the hub has found each scope and published every entry its log holds (its generation
    of the scope reaches the log's length): what a sleep used to outwait, now checked."""
    client = live.gov.backplane.client
    deadline = time.monotonic() + timeout
    while True:
        behind = [scope for scope in scopes
                  if live.hub.generation(*scope)[1] < client.xlen(log_key(live.gov.backplane.prefix, *scope))]
        if not behind:
            return
        assert time.monotonic() < deadline, f"the hub has not published the logs of {behind} in {timeout} s"
        time.sleep(0.02)


def last_id(gov: Governance, tenant: str | None, environment: str | None) -> str:
    reply = gov.backplane.client.xrevrange(log_key(gov.backplane.prefix, tenant, environment), "+", "-", count=1)
    return text(reply[0][0]) if reply else "0-0"


def data_of(events: list[Event]) -> list[dict[str, Any]]:
    return [e.json() for e in events]


def check_frames(events: list[Event]) -> None:
    """Every event carries an id, its kind as the event name, and the contract's fields; ids increase."""
    seqs = []
    for e in events:
        assert e.id and e.event and e.data is not None
        body = e.json()
        assert set(body) == {"id", "kind", "experiment", "tenant", "environment", "record"}
        assert e.event == body["kind"] in ("state", "transition", "approval", "version", "policy")
        assert "\n" not in e.data
        seqs.append(int(e.id.rsplit("-", 1)[1]))
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency(events: list[Event]) -> list[float]:
    """Seconds from each entry's Redis id (server ms; same host clock) to its arrival."""
    return [e.at - int(e.json()["id"].split("-")[0]) / 1000 for e in events]


# ---------------------------------------------------------------- tests


def test_not_logged_in_is_refused(live: Live) -> None:
    with httpx2.Client(base_url=live.server.base, follow_redirects=False, timeout=10) as client:
        anonymous = client.get("/events")
        assert anonymous.status_code == 303
        assert anonymous.headers["location"].startswith("/login?next=/events")
        forged = client.get("/events", headers={"Cookie": "redgov_session=forged"})
        assert forged.status_code == 303
    raw = live.connect(cookie=None)  # returns once the status line came (the connection may stay open)
    assert raw.status == 303 and raw.events == []
    assert live.hub.clients == 0


def test_stream_headers_and_every_event_in_order(live: Live) -> None:
    """Writes from this process and from another one arrive at every client, in log order, once,
    with the contract's fields; the other process's transitions arrive well within 2 s (p99)."""
    gov, prefix = live.gov, live.prefix
    running(gov, ["a1", "a2"], "acme", "prod")
    running(gov, ["b1"], None, None)
    caught_up(live, ("acme", "prod"), (None, None))
    start_acme, start_default = last_id(gov, "acme", "prod"), last_id(gov, None, None)
    # httpx2 as a real client: headers, then the first event
    with httpx2.Client(base_url=live.server.base, timeout=10, follow_redirects=False) as client, \
            client.stream("GET", "/events", headers={"Cookie": live.cookie}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        first = live.connect()
        second = live.connect()
        flip(gov, "b1", 1)
        chunks = b""
        for chunk in response.iter_bytes():
            chunks += chunk
            if b"\n\n" in chunks:
                break
        assert chunks.startswith(b"id: ") and b"\nevent: transition\ndata: {" in chunks
    writer = run_writer(live.url, prefix, "acme", "prod", ["a1", "a2"], 100, 0.02)
    flip(gov, "b1", 20)
    finish(writer)
    expected_acme = log_entries(gov, "acme", "prod", start_acme)
    expected_default = log_entries(gov, None, None, start_default)
    assert len(expected_acme) == 100 and len(expected_default) == 21
    total = len(expected_acme) + len(expected_default)
    for client in (first, second):
        got = client.wait_for(total, timeout=15)
        check_frames(got)
        bodies = data_of(got)
        assert [b for b in bodies if b["tenant"] == "acme"] == expected_acme
        assert [b for b in bodies if b["tenant"] is None] == expected_default
    flip(gov, "b1", 1)  # a last write: the feed is in log order, so a repeat would come before it
    sentinel = log_entries(gov, None, None, expected_default[-1]["id"])
    for client in (first, second):
        assert data_of(client.wait_for(total + 1, timeout=15)[total:]) == sentinel
        assert len(client.events) == total + 1  # nothing repeated
    lat = latency([e for e in first.events if e.json()["tenant"] == "acme"])
    print(f"\nlive latency, another process's transitions ({len(lat)}): p50 {percentile(lat, 50) * 1000:.1f} ms, "
          f"p99 {percentile(lat, 99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms")
    assert percentile(lat, 99) < 2.0
    assert live.hub.clients == 2


def test_filters_by_scope_and_experiment(live: Live) -> None:
    gov = live.gov
    running(gov, ["e1", "e2"], "acme", "prod")
    running(gov, ["e1"], "beta", "dev")
    running(gov, ["e1"], None, None)
    caught_up(live, ("acme", "prod"), ("beta", "dev"), (None, None))
    marks = {s: last_id(gov, *s) for s in (("acme", "prod"), ("beta", "dev"), (None, None))}
    one_scope = live.connect("/events?tenant=acme&environment=prod")
    one_experiment = live.connect("/events?tenant=acme&environment=prod&experiment=e1")
    default_scope = live.connect("/events?tenant=&environment=")
    tenant_only = live.connect("/events?tenant=beta")
    everything = live.connect("/events")
    for _ in range(3):
        flip(gov, "e1", 1, "acme", "prod")
        flip(gov, "e2", 1, "acme", "prod")
        flip(gov, "e1", 1, "beta", "dev")
        flip(gov, "e1", 1, None, None)
    logs = {s: log_entries(gov, *s, after=m) for s, m in marks.items()}
    acme = logs[("acme", "prod")]
    assert data_of(one_scope.wait_for(6)) == acme
    assert data_of(one_experiment.wait_for(3)) == [b for b in acme if b["experiment"] == "e1"]
    assert data_of(default_scope.wait_for(3)) == logs[(None, None)]
    assert data_of(tenant_only.wait_for(3)) == logs[("beta", "dev")]
    got = data_of(everything.wait_for(12))
    for scope, expected in logs.items():
        assert [b for b in got if (b["tenant"], b["environment"]) == scope] == expected
    time.sleep(0.3)
    assert [len(c.events) for c in (one_scope, one_experiment, default_scope, tenant_only, everything)] == \
        [6, 3, 3, 3, 12]
    with httpx2.Client(base_url=live.server.base, timeout=10) as client:
        bad = client.get("/events?experiment=%01", headers={"Cookie": live.cookie})
        assert bad.status_code == 400


def test_published_rules_reach_every_page_of_their_scope(live: Live) -> None:
    """A ``rules`` event (no experiment: it concerns the whole scope) passes an experiment filter of
    its scope, so an open experiment page shows the rules in force without a reload; other scopes'
    streams do not get it."""
    gov = live.gov
    running(gov, ["e1"], "acme", "prod")
    running(gov, ["e1"], "beta", "dev")
    caught_up(live, ("acme", "prod"), ("beta", "dev"))
    page = live.connect("/events?tenant=acme&environment=prod&experiment=e1")
    other = live.connect("/events?tenant=beta&environment=dev&experiment=e1")
    published = gov.publish(actor="lead", reason="baseline", tenant="acme", environment="prod")
    flip(gov, "e1", 1, "acme", "prod")
    got = page.wait_for(2)
    assert [(e.event, e.json()["experiment"]) for e in got] == [("rules", ""), ("transition", "e1")]
    record = got[0].json()["record"]
    assert (record["version"], record["created_by"], record["rules_hash"]) == (1, "lead", published.rules_hash)
    time.sleep(0.3)
    assert other.events == []


def test_resume_after_a_dropped_connection(live: Live) -> None:
    """Events written while a client was away arrive once when it comes back with Last-Event-ID."""
    gov = live.gov
    running(gov, ["r1", "r2"], "acme", "prod")
    caught_up(live, ("acme", "prod"))
    mark = last_id(gov, "acme", "prod")
    client = live.connect()
    narrow = live.connect("/events?tenant=acme&environment=prod&experiment=r1")
    flip(gov, "r1", 2, "acme", "prod")
    flip(gov, "r2", 2, "acme", "prod")
    seen = client.wait_for(4)
    seen_narrow = narrow.wait_for(2)
    client.close()
    narrow.close()
    flip(gov, "r1", 3, "acme", "prod")  # while both are away
    flip(gov, "r2", 3, "acme", "prod")
    time.sleep(0.3)
    back = live.connect(last_event_id=seen[-1].id)
    back_narrow = live.connect("/events?tenant=acme&environment=prod&experiment=r1", last_event_id=seen_narrow[-1].id)
    flip(gov, "r1", 1, "acme", "prod")  # after they came back
    expected = log_entries(gov, "acme", "prod", mark)
    assert len(expected) == 11
    again = back.wait_for(7)
    assert data_of(seen) + data_of(again) == expected
    check_frames(seen + again)
    again_narrow = back_narrow.wait_for(4)
    assert data_of(seen_narrow) + data_of(again_narrow) == [b for b in expected if b["experiment"] == "r1"]
    time.sleep(0.3)
    assert len(back.events) == 7 and len(back_narrow.events) == 4
    assert live.hub.stats()["resumes"] >= 2


def test_a_cursor_too_old_gets_reset(live_factory: Callable[..., Live]) -> None:
    live = live_factory(replay_events=5)
    gov = live.gov
    running(gov, ["o1"], "acme", "prod")
    caught_up(live, ("acme", "prod"))
    client = live.connect()
    flip(gov, "o1", 1, "acme", "prod")
    old = client.wait_for(1)[0].id
    client.close()
    flip(gov, "o1", 10, "acme", "prod")  # more than the replay buffer holds
    time.sleep(0.3)
    for cursor in (old, "garbage", "0123456789ab-1"):
        late = live.connect(last_event_id=cursor)
        reset = late.wait_for(1)[0]
        assert reset.event == "reset" and reset.data == "{}" and reset.id
        flip(gov, "o1", 1, "acme", "prod")
        after = late.wait_for(2)[1]
        assert after.event == "transition"  # then live from now on
        assert after.json()["id"] == last_id(gov, "acme", "prod")
        # the reset's id is a cursor that resumes (nothing in between)
        late.close()
        resumed = live.connect(last_event_id=reset.id)
        assert resumed.wait_for(1)[0].id == after.id
        resumed.close()
    assert live.hub.stats()["resets"] == 3


def test_reader_survives_its_connection_killed(live: Live, redis_url: str) -> None:
    gov = live.gov
    running(gov, ["k1"], "acme", "prod")
    caught_up(live, ("acme", "prod"))
    mark = last_id(gov, "acme", "prod")
    client = live.connect()
    flip(gov, "k1", 3, "acme", "prod")
    client.wait_for(3)
    admin = redis.Redis.from_url(redis_url)
    try:
        for round_ in range(2):
            reader = live.hub.reader_client_id
            named = [c for c in admin.client_list() if c.get("name") == CLIENT_NAME and int(c["id"]) == reader]
            assert len(named) == 1, admin.client_list()
            assert admin.execute_command("CLIENT", "KILL", "ID", reader) == 1
            flip(gov, "k1", 10, "acme", "prod")  # while the reader reconnects
            client.wait_for(3 + 10 * (round_ + 1), timeout=15)
            assert live.hub.reader_client_id not in (None, reader)
    finally:
        admin.close()
    time.sleep(0.5)
    assert data_of(client.events) == log_entries(gov, "acme", "prod", mark)
    assert live.hub.stats()["reconnects"] >= 2


def test_stop_ends_every_stream_promptly(live: Live) -> None:
    running(live.gov, ["s1"], "acme", "prod")
    clients = [live.connect(), live.connect("/events?tenant=acme&environment=prod")]
    time.sleep(0.5)  # the reader is blocked in XREAD on the scope's log
    assert live.hub.clients == 2
    thread = live.hub._thread
    started = time.monotonic()
    live.server.on_loop(live.hub.stop)
    for client in clients:
        assert client.ended.wait(2), "stream still open after hub.stop()"
    took = time.monotonic() - started
    print(f"\nhub.stop(): streams ended and reader stopped in {took * 1000:.0f} ms")
    assert took < 1.0
    assert live.hub.clients == 0 and thread is not None and not thread.is_alive()
    live.server.on_loop(live.hub.stop)  # idempotent
    with httpx2.Client(base_url=live.server.base, timeout=10) as client:
        assert client.get("/events", headers={"Cookie": live.cookie}).status_code == 503


def test_one_user_has_a_bounded_number_of_streams(live: Live) -> None:
    live.hub.streams_per_user = 3
    streams = [live.connect() for _ in range(3)]
    deadline = time.monotonic() + 5
    while live.hub.streams_of("vera") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.hub.streams_of("vera") == 3
    with httpx2.Client(base_url=live.server.base, timeout=5) as client:
        refused = client.get("/events", headers={"Cookie": live.cookie})
        assert refused.status_code == 429 and "3 live streams" in refused.text
        assert 'redgov_throttled_total{reason="streams"} 1.0' in client.get("/metrics").text
        other = login(live.server.base, "otto")  # another user is not counted with vera
        with client.stream("GET", "/events", headers={"Cookie": other}) as answer:
            assert answer.status_code == 200
    streams[0].close()
    deadline = time.monotonic() + 5
    while live.hub.streams_of("vera") > 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.connect().status == 200  # one closed: room again


def test_pings_and_a_removed_user_loses_the_stream(live_factory: Callable[..., Live]) -> None:
    live = live_factory(ping_interval=0.3)
    client = live.connect()
    deadline = time.monotonic() + 5
    while not client.comments and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.comments and client.comments[0].comment == "ping"
    assert client.parser.body.count(b": ping\n\n") >= 1
    document = json.loads(live.users.read_text())
    del document["users"]["vera"]
    live.users.write_text(json.dumps(document))
    assert client.ended.wait(3), "a removed user still has the stream"
    assert [(e.event, e.json()["reason"]) for e in client.events] == [("logout", "removed")]


def test_a_new_scope_is_read_from_its_first_entry(live: Live) -> None:
    client = live.connect()
    running(live.gov, ["n1"], "fresh", "scope")  # a scope that did not exist when the hub started
    expected = log_entries(live.gov, "fresh", "scope")
    assert len(expected) == 5
    assert data_of(client.wait_for(5, timeout=5)) == expected


def test_a_log_deleted_and_restored_is_not_sent_again(live: Live) -> None:
    client = live.connect()
    running(live.gov, ["r1"], "gone", "soon")
    assert len(client.wait_for(5, timeout=5)) == 5
    key = log_key(live.gov.backplane.prefix, "gone", "soon")
    redis_client = live.gov.backplane.client
    entries = redis_client.xrange(key)
    scopes = live.hub.stats()["scopes"]
    redis_client.delete(key)

    def hub_reads(count: int) -> None:  # the hub looks for the logs again every 0.2 s here
        deadline = time.monotonic() + 5
        while live.hub.stats()["scopes"] != count:
            assert time.monotonic() < deadline, live.hub.stats()
            time.sleep(0.02)

    hub_reads(scopes - 1)  # it saw the log gone
    for entry_id, fields in entries:  # as `redgov restore --force` writes them: the same ids
        redis_client.xadd(key, fields, id=entry_id)
    hub_reads(scopes)  # and found again
    flip(live.gov, "r1", 1, "gone", "soon")  # one new entry
    events = client.wait_for(6, timeout=5)
    time.sleep(0.3)
    assert len(client.events) == 6, [e.data for e in client.events]  # the restored five were not sent again
    assert data_of(events)[-1]["record"]["to_state"] == "Paused"


def test_memory_url_is_polled(live_factory: Callable[..., Live]) -> None:
    live = live_factory("memory://live-test")
    running(live.gov, ["m1"], "acme", "prod")
    time.sleep(0.5)
    client = live.connect()
    flip(live.gov, "m1", 3, "acme", "prod")
    assert [b["record"]["to_state"] for b in data_of(client.wait_for(3))] == ["Paused", "Running", "Paused"]


# ---------------------------------------------------------------- the hub alone (no Redis)


def _event(seq: int, tenant: str = "t", experiment: str = "x") -> LiveEvent:
    frame = b"id: e-%d\nevent: transition\ndata: {}\n\n" % seq
    return LiveEvent(seq, tenant, "env", experiment, "transition", frame)


def test_a_slow_client_is_dropped_and_memory_stays_bounded() -> None:
    async def scenario() -> None:
        hub = LiveHub(None, replay_events=50, client_backlog=20)
        hub._running, hub._epoch = True, "e"
        slow, _, _ = hub.subscribe({}, None)
        fast, _, _ = hub.subscribe({}, None)
        other, _, _ = hub.subscribe({"tenant": "u"}, None)
        seq = 0
        got = []
        for _ in range(10):
            batch = [_event(seq := seq + 1) for _ in range(5)]
            hub._publish(batch)
            taken = await fast.take()
            assert taken is not None
            got += taken[0]
        assert [e.seq for e in got] == list(range(1, 51))
        assert slow.closed == "overflow" and not slow.items  # dropped after 20 queued, its queue freed
        assert await slow.take() is None
        assert other.closed is None and not other.items  # filtered out: nothing queued
        assert hub.clients == 2 and hub.stats()["overflows"] == 1
        hub._publish([_event(seq := seq + 1) for _ in range(100)])
        assert len(hub._buffer) == 50 and hub._evicted == seq - 50  # bounded replay buffer
        # a batch larger than the backlog, to a client that had taken everything: queued, not dropped
        assert fast.closed is None and len(fast.items) == 100
        taken = await fast.take()
        assert taken is not None and len(taken[0]) == 100
        # a cursor still in the buffer resumes exactly after it; an evicted one resets
        sub, replay, reset = hub.subscribe({}, hub.cursor(seq - 10))
        assert reset is None and [e.seq for e in replay] == list(range(seq - 9, seq + 1))
        sub, replay, reset = hub.subscribe({}, hub.cursor(seq - 60))
        assert reset is not None and replay == []
        for bad in ("e-\u00b2", "e-" + "9" * 25, "e--1", "e-", "other-3", ""):  # a reset, never a failure
            assert hub.subscribe({}, bad)[2] is not None, bad
        hub._running = False

    asyncio.run(scenario())


def test_a_scope_event_passes_the_experiment_filters_of_its_scope() -> None:
    page = Subscriber({"tenant": "t", "environment": "env", "experiment": "x"}, 10)
    rules = LiveEvent(1, "t", "env", "", "rules", b"")
    assert page.matches(rules) and page.matches(_event(2))
    assert not page.matches(_event(3, experiment="y"))
    assert not page.matches(LiveEvent(4, "u", "env", "", "rules", b""))  # another scope's rules


def test_subscriber_rejects_unknown_filters() -> None:
    with pytest.raises(ValueError):
        Subscriber({"state": "Running"}, 10)


if os.environ.get("REDGOV_LIVE_DEBUG"):  # pragma: no cover - manual runs
    import logging

    logging.basicConfig(level=logging.DEBUG)


# ---------------------------------------------------------------- a stream ends with its login (issue 16)


def csrf_token(base: str, cookie: str) -> str:
    """The CSRF token of the session behind ``cookie`` (a page's meta tag)."""
    with httpx2.Client(base_url=base, follow_redirects=False, timeout=10) as client:
        page = client.get("/", headers={"Cookie": cookie})
        found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert page.status_code == 200 and found, (page.status_code, page.text[:300])
        return found.group(1)


def farewell(client: SSEClient, within: float) -> dict[str, Any]:
    """The ``logout`` event that ended ``client``'s stream within ``within`` seconds (its data)."""
    assert client.ended.wait(within), f"the stream is still open {within} s after its login ended"
    last = client.events[-1]
    assert last.event == "logout" and last.id is None, (last.event, last.data)
    data: dict[str, Any] = last.json()
    assert set(data) == {"reason", "message"} and data["message"]
    return data


def test_logout_ends_the_stream_at_once_and_says_why(live: Live) -> None:
    running(live.gov, ["lo1"])
    caught_up(live, (None, None))  # what running() wrote is published before the client comes
    client = live.connect()
    flip(live.gov, "lo1", 1)
    client.wait_for(1)  # the stream is live (the move's transition entry arrived)
    with httpx2.Client(base_url=live.server.base, follow_redirects=False, timeout=10) as http:
        answer = http.post("/logout", data={"csrf": csrf_token(live.server.base, live.cookie)},
                           headers={"Cookie": live.cookie})
        assert answer.status_code == 303
    started = time.monotonic()
    assert farewell(client, 5)["reason"] == "logout"
    print(f"\nlogout -> stream ended in {(time.monotonic() - started) * 1000:.0f} ms")
    seen = len(client.events)
    finish(run_writer(live.url, live.prefix, None, None, ["lo1"], 4, 0.01))  # another process writes
    time.sleep(0.5)
    assert len(client.events) == seen and live.hub.clients == 0
    again = live.connect()  # the cookie of the ended login opens no stream
    assert again.status == 303 and again.events == []


def test_a_login_ended_elsewhere_ends_its_streams_within_seconds(live: Live) -> None:
    """Ended by another server process (its login key deleted), a changed password, a removed user:
    with the default ping interval (15 s) each stream still ends within seconds."""
    assert live.hub.ping_interval >= 15
    otto = login(live.server.base, "otto")
    add_user(live.users, "ida", "viewer", PASSWORD)
    ida = login(live.server.base, "ida")
    streams = {"vera": live.connect(), "otto": live.connect(cookie=otto), "ida": live.connect(cookie=ida)}
    deadline = time.monotonic() + 5
    while live.hub.clients < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.hub.clients == 3

    client = live.gov.backplane.client
    vera_logins = [key for key in client.scan_iter(match=live.prefix + "{web}:session:*")
                   if text(client.get(key)).startswith("vera ")]
    client.delete(*vera_logins)  # as a logout on another server process of the installation does
    add_user(live.users, "otto", "operator", "a new password")
    document = json.loads(live.users.read_text())
    del document["users"]["ida"]
    live.users.write_text(json.dumps(document))
    reasons = {name: farewell(stream, 5)["reason"] for name, stream in streams.items()}
    assert reasons == {"vera": "logout", "otto": "password", "ida": "removed"}
    assert live.hub.clients == 0


def test_the_page_goes_to_the_login_form_and_says_why(live: Live) -> None:
    """In a browser: logging out in one tab sends the other tab's live page to the login form, with why."""
    from playwright.sync_api import sync_playwright

    running(live.gov, ["tab"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/lib/chromium/chromium", args=["--no-sandbox"])
        try:
            context = browser.new_context()
            page = context.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if "Content-Security-Policy" in m.text else None)
            page.goto(live.server.base + "/login")
            page.fill("input[name=username]", "vera")
            page.fill("input[name=password]", PASSWORD)
            page.click("[data-testid=login]")
            page.goto(live.server.base + "/experiments/tab")
            page.wait_for_function("() => { const s = document.getElementById('live-status');"
                                   " return s && !s.hidden && !s.classList.contains('off'); }", timeout=10_000)
            other = context.new_page()
            other.goto(live.server.base + "/")
            other.click("[data-testid=logout]")
            page.wait_for_url("**/login?**", timeout=5_000)
            assert "logged out" in page.text_content("[data-testid=error]")
            assert page.input_value("input[name=next]") == "/experiments/tab"
            assert problems == []
        finally:
            browser.close()
