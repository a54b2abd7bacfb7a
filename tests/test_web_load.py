"""Load on the live feed: 50 SSE clients, 200 transitions per second from other processes, 30 s.

The server (uvicorn + create_app) runs in a subprocess so its RSS can be sampled (psutil);
four writer processes pace themselves at 50 transitions/s each over two scopes; the 50
clients are raw asyncio sockets in this process (test_web_live's parser). One more client
sends its request and never reads: the server must drop it (too slow) without the others
noticing (the server's kernel send buffers are capped at 64 KiB, so that client's writes block
within the run instead of Linux buffering megabytes for it on loopback). Checked: every client
got every event once, in log order (XRANGE), the same sequence as every other client; the
server's memory is flat over the run (the replay buffer is set to 1,000 events, so it is full
after 5 s); latency p99 under 2 s; SIGTERM ends the open streams and the server at once.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import redgov
from redgov import Governance

from .conftest import delete_prefix
from .test_web_live import (
    ROOT,
    SECRET,
    Event,
    SSEParser,
    data_of,
    finish,
    last_id,
    latency,
    log_entries,
    login,
    make_users,
    percentile,
    request_bytes,
    run_writer,
    running,
)

CLIENTS = 50
WRITERS = 4
PER_WRITER_RATE = 50  # transitions per second each: 200/s in all
SECONDS = 30
REPLAY = 1000
SCOPES = [("acme", "prod"), ("beta", "dev")]

SERVER = textwrap.dedent("""
    import json, socket, sys, threading, time
    import uvicorn
    import redgov
    from redgov import Governance
    from redgov.web import create_app
    url, prefix, users, secret, replay = sys.argv[1:6]
    gov = Governance(redgov.connect(url, prefix=prefix))
    app = create_app(gov, users, secret)
    hub = app.state.ctx.hub
    hub.replay_events = int(replay)
    hub.streams_per_user = 100  # the 51 clients here are one user
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio turns Nagle off
    # accepted sockets inherit this: 64 KiB of kernel send buffer per client instead of the
    # megabytes Linux autotunes to on loopback, so the client that never reads fills it (and
    # then its backlog) within the run rather than after ~3 MB of kernel buffering
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)

    def report():
        while True:
            time.sleep(0.5)
            print(json.dumps({"stats": hub.stats()}), flush=True)

    threading.Thread(target=report, daemon=True).start()
    # no timeout_graceful_shutdown: the hub itself must end the streams on SIGTERM
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws="none")).run(sockets=[sock])
    print(json.dumps({"exited": True}), flush=True)
""")


class Server:
    def __init__(self, url: str, prefix: str, users: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, url, prefix, str(users), SECRET, str(REPLAY)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self._start()
        except BaseException:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def _start(self) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        first = self.proc.stdout.readline() if ready else ""
        if not first:
            raise AssertionError("the server did not start in 20 s")
        self.port = json.loads(first)["port"]
        self.base = f"http://127.0.0.1:{self.port}"
        self.stats: dict[str, Any] = {}
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 20
        while True:  # serving once a request is answered
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("the server does not answer") from None
                time.sleep(0.05)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            message = json.loads(line)
            if "stats" in message:
                self.stats = message["stats"]

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the server did not exit within 15 s of SIGTERM; stats {self.stats}; "
                                 f"stderr: {err[-3000:]}") from None
        return time.monotonic() - started


    def close(self) -> None:
        """Kill the process if it still runs; close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


class Sampler(threading.Thread):
    """The RSS of a process every ``interval`` seconds: [(time.monotonic(), bytes)]."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.samples.append((time.monotonic(), self.process.memory_info().rss))
            except psutil.Error:
                return


class AsyncClient:
    """One raw-socket SSE client on the event loop."""

    def __init__(self) -> None:
        self.parser = SSEParser()
        self.events: list[Event] = []
        self.started = asyncio.Event()

    async def run(self, port: int, cookie: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("127.0.0.1", port, "/events", cookie))
        await writer.drain()
        try:
            while not self.parser.done:
                data = await reader.read(65536)
                if not data:  # the server closed the connection without ending the body
                    break
                got = self.parser.feed(data, time.time())
                if self.parser.status is not None:
                    self.started.set()
                self.events += [e for e in got if e.data is not None]
        finally:
            self.started.set()
            writer.close()


def stalled_client(port: int, cookie: str) -> socket.socket:
    """A client that asks for the stream and never reads a byte of it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request_bytes("127.0.0.1", port, "/events", cookie))
    return sock


@pytest.mark.slow
def test_fifty_clients_two_hundred_transitions_per_second(redis_url: str, prefix: str, tmp_path: Path) -> None:
    began = time.monotonic()
    users = make_users(tmp_path)
    bp = redgov.connect(redis_url, prefix=prefix)
    gov = Governance(bp)
    names = {w: [f"w{w}-{k}" for k in range(4)] for w in range(WRITERS)}
    for w, experiments in names.items():
        running(gov, experiments, *SCOPES[w % len(SCOPES)])
    marks = {s: last_id(gov, *s) for s in SCOPES}
    server = Server(redis_url, prefix, users)
    stalled: socket.socket | None = None
    writers: list[subprocess.Popen[str]] = []
    try:
        cookie = login(server.base)
        sampler = Sampler(server.proc.pid)
        sampler.start()

        async def scenario() -> tuple[list[AsyncClient], float, float, float, int, dict[str, Any]]:
            nonlocal stalled
            clients = [AsyncClient() for _ in range(CLIENTS)]
            tasks = [asyncio.create_task(c.run(server.port, cookie)) for c in clients]
            await asyncio.wait_for(asyncio.gather(*(c.started.wait() for c in clients)), 10)
            assert all(c.parser.status == 200 for c in clients)
            writers.extend(run_writer(redis_url, prefix, *SCOPES[w % len(SCOPES)], names[w],
                                      PER_WRITER_RATE * SECONDS, 1 / PER_WRITER_RATE) for w in range(WRITERS))
            started = time.monotonic()
            for proc in writers:
                while proc.poll() is None:
                    assert time.monotonic() < started + SECONDS + 60, "a writer did not finish"
                    await asyncio.sleep(0.1)
                finish(proc)
            ended = time.monotonic()
            total = WRITERS * PER_WRITER_RATE * SECONDS
            deadline = time.monotonic() + 15
            while any(len(c.events) < total for c in clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # anything more (a repeat) would arrive now
            sampler.done.set()
            stats = dict(server.stats)
            # the hub dropped it (overflow, checked below) but uvicorn still holds its connection,
            # closing, with unsent bytes the client will never take: a graceful shutdown would wait
            # for it (`redgov serve` caps that wait with timeout_graceful_shutdown); its client going
            # away ends it, as here
            assert stalled is not None
            stalled.close()
            stalled = None
            # SIGTERM while the 50 streams are open: the hub must end each of them (the body ends)
            stopped_in = await asyncio.to_thread(server.stop)
            _done, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            ended_cleanly = sum(1 for c in clients if c.parser.done)
            return clients, started, ended, stopped_in, ended_cleanly, stats

        stalled = stalled_client(server.port, cookie)
        setup = time.monotonic() - began
        clients, started, ended, stopped_in, ended_cleanly, stats = asyncio.run(scenario())
        sampler.join(2)
        expected = {scope: log_entries(gov, *scope, after=marks[scope]) for scope in SCOPES}
    finally:
        for proc in writers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        if stalled is not None:
            stalled.close()
        server.close()
        delete_prefix(bp.client, prefix)
        bp.close()

    # every client: every event once, in log order, the same sequence as the others
    total = WRITERS * PER_WRITER_RATE * SECONDS
    counts = [len(c.events) for c in clients]
    assert counts == [total] * CLIENTS, counts
    reference = [e.data for e in clients[0].events]
    for client in clients[1:]:
        assert [e.data for e in client.events] == reference
        assert [e.id for e in client.events] == [e.id for e in clients[0].events]
    got = data_of(clients[0].events)
    for scope in SCOPES:
        assert len(expected[scope]) == total // len(SCOPES)
        assert [b for b in got if (b["tenant"], b["environment"]) == scope] == expected[scope]
    seqs = [int(e.id.rsplit("-", 1)[1]) for e in clients[0].events if e.id]
    assert seqs == sorted(seqs) and len(set(seqs)) == total

    # latency of every event at every client: its Redis id's time to its arrival
    lat = [x for c in clients for x in latency(c.events)]
    # memory: RSS over the write window, first third against last third
    window = [rss for at, rss in sampler.samples if started <= at <= ended]
    third = len(window) // 3
    first, last = window[:third], window[-third:]
    mib = 1024 * 1024
    print(f"\nlive load: {CLIENTS} clients x {total} events ({total / (ended - started):.0f}/s over "
          f"{ended - started:.1f} s) = {CLIENTS * total:,} deliveries; server stats {stats}")
    print(f"latency over all deliveries: p50 {percentile(lat, 50) * 1000:.1f} ms, "
          f"p99 {percentile(lat, 99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms")
    print(f"server RSS ({len(window)} samples): first third max {max(first) / mib:.1f} MiB, last third max "
          f"{max(last) / mib:.1f} MiB (min {min(window) / mib:.1f}, max {max(window) / mib:.1f}); "
          f"SIGTERM to exit with {CLIENTS} streams open: {stopped_in:.2f} s; setup {setup:.1f} s, "
          f"test {time.monotonic() - began:.1f} s")
    assert percentile(lat, 99) < 2.0
    assert max(last) <= max(first) + max(4 * mib, 0.05 * max(first)), (max(first), max(last))
    assert stats["overflows"] >= 1, stats  # the client that never reads was dropped
    assert stats["clients"] == CLIENTS, stats
    assert stopped_in < 5.0
    assert ended_cleanly == CLIENTS  # each open stream was ended by the server on SIGTERM, not cut
