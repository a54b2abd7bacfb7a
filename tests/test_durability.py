"""Durability: ``connect(..., wait_replicas=N, wait_timeout=s, wait_aof=False)``.

A private primary and replica (redis-server >= 7.0 on free loopback ports, stopped
by PID): each write is followed by WAIT on its own connection, in its round trip;
too few confirmations raise DurabilityError while the write stays applied on the
primary. The default (0) sends no WAIT at all. WAITAOF's success path needs Redis
>= 7.2, which these machines lack: only its refusal on 7.0 is tested here.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

import redgov
import redgov.aio
from redgov import DurabilityError, LifecycleState, TransitionRequest, ValidationError

from .conftest import new_prefix
from .servers import RedisProcess, free_port, redis7_server

#: The most seconds a server may take to reach a replication state the test waits for.
SYNC_SECONDS = 5.0


def _wait_until(what: str, done: Any) -> None:
    deadline = time.monotonic() + SYNC_SECONDS
    for _ in range(500):  # bounded in count and in time
        if done():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    pytest.fail(f"{what} did not happen within {SYNC_SECONDS} s")


def _online(primary: RedisProcess) -> bool:
    with primary.client() as client:
        info = client.info("replication")
    replica = info.get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


def _streaming(primary: RedisProcess) -> bool:
    """A write reaches the replica: a fresh replica is "online" before its first ACK starts the stream."""
    with primary.client() as client:
        client.set("~sync-probe", "1")
        return int(client.execute_command("WAIT", 1, 100)) == 1


@pytest.fixture
def pair() -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A primary and its replica, in sync (the replica's link up, the primary sees it online)."""
    binary = redis7_server()
    # disk-based sync: the replica streams at once (a diskless one waits up to 1 s for its first ACK)
    primary = RedisProcess(None, "--repl-diskless-sync", "no", binary=binary)
    try:
        replica = RedisProcess(binary=binary)
        try:
            with replica.client() as client:
                client.replicaof("127.0.0.1", primary.port)

            def link_up() -> bool:
                with replica.client() as client:
                    return bool(client.info("replication").get("master_link_status") == "up")

            _wait_until("the replica's sync", link_up)
            _wait_until("the primary seeing its replica online", lambda: _online(primary))
            _wait_until("the replication stream flowing", lambda: _streaming(primary))
            yield primary, replica
        finally:
            replica.stop()
    finally:
        primary.stop()


def calls(client: redis.Redis, command: str) -> int:
    """How many times the server ran ``command`` (INFO commandstats)."""
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def replica_state(replica: RedisProcess, prefix: str, experiment: str) -> redgov.ExperimentState | None:
    """The experiment's state read on the replica itself (a plain HMGET there, no waiting)."""
    with redgov.Backplane(replica.client(), prefix=prefix) as reader:
        return reader.get_state(experiment)


# -- WAIT after each write ------------------------------------------------------------------


def test_a_write_waits_for_its_replica_and_is_unconfirmed_once_the_replica_is_gone(
        pair: tuple[RedisProcess, RedisProcess]) -> None:
    primary, replica = pair
    prefix = new_prefix()
    with redgov.connect(primary.url, prefix=prefix, wait_replicas=1, wait_timeout=0.5) as bp:
        gov = redgov.Governance(bp)
        gov.create("exp")
        gov.transition("exp", LifecycleState.PENDING_APPROVAL)
        copied = replica_state(replica, prefix, "exp")  # right after the call returned
        assert copied is not None and copied.state is LifecycleState.PENDING_APPROVAL and copied.revision == 2

        replica.stop()
        started = time.monotonic()
        with pytest.raises(DurabilityError) as caught:
            gov.transition("exp", LifecycleState.APPROVED)
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 2.0, elapsed
        error = caught.value
        assert (error.acknowledged, error.wanted) == (0, 1)
        assert isinstance(error.result, redgov.StateTransition) and error.result.to_state is LifecycleState.APPROVED
        assert "applied on the primary" in str(error) and "0 of 1 replica" in str(error), str(error)
        state = gov.state("exp")  # the write is applied, not undone
        assert state is not None and state.state is LifecycleState.APPROVED and state.revision == 3
        assert [t.to_state for t in gov.history("exp")][-1] is LifecycleState.APPROVED


def test_wait_runs_on_the_connection_that_wrote(pair: tuple[RedisProcess, RedisProcess]) -> None:
    """With the replica frozen for 0.3 s, the write's call lasts until the replica confirms it.

    A WAIT on another connection (whose last write is older) would return at once, the
    replica being connected: only a WAIT on the writing connection waits for this write.
    """
    primary, replica = pair
    prefix = new_prefix()
    with redgov.connect(primary.url, prefix=prefix, wait_replicas=1, wait_timeout=2.0) as bp:
        gov = redgov.Governance(bp)
        gov.create("exp")
        pid = replica.process.pid
        os.kill(pid, signal.SIGSTOP)
        thaw = threading.Timer(0.3, os.kill, (pid, signal.SIGCONT))
        thaw.start()
        try:
            started = time.monotonic()
            gov.transition("exp", LifecycleState.PENDING_APPROVAL)
            elapsed = time.monotonic() - started
        finally:
            thaw.cancel()
            os.kill(pid, signal.SIGCONT)
        assert 0.25 <= elapsed < 2.0, elapsed
        copied = replica_state(replica, prefix, "exp")
        assert copied is not None and copied.state is LifecycleState.PENDING_APPROVAL


def test_a_repeated_call_waits_for_the_first_calls_write_too(pair: tuple[RedisProcess, RedisProcess]) -> None:
    """A repeat (idempotency key) whose first call was never confirmed is reported unconfirmed too.

    The repeat writes no history; it rewrites its dedupe record (a replicated write after the first
    call's), so its WAIT covers the first call's write on any server version. (Redis 7.0's WAIT
    already waits for the server's offset here; the rewrite keeps that true where it would not.)
    """
    primary, replica = pair
    prefix = new_prefix()
    with redgov.connect(primary.url, prefix=prefix) as plain, \
            redgov.connect(primary.url, prefix=prefix, wait_replicas=1, wait_timeout=0.3) as durable:
        redgov.Governance(plain).create("exp", idempotency_key="create-exp")  # no WAIT on this connection
        redgov.Governance(durable).create("warm")  # loads the script and is confirmed: nothing pending here
        pid = replica.process.pid
        os.kill(pid, signal.SIGSTOP)  # from here the replica acknowledges nothing
        try:
            with pytest.raises(DurabilityError) as caught:
                redgov.Governance(durable).create("exp", idempotency_key="create-exp")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert caught.value.acknowledged == 0 and caught.value.result is not None
        assert redgov.Governance(durable).create("exp", idempotency_key="create-exp").revision == 1  # confirmed now


def test_no_wait_is_sent_by_default_and_one_per_write_in_the_writes_round_trip(
        pair: tuple[RedisProcess, RedisProcess]) -> None:
    primary, _replica = pair
    prefix = new_prefix()
    with primary.client() as admin:
        waits = calls(admin, "wait")  # the fixture's own
        with redgov.connect(primary.url, prefix=prefix) as plain:
            gov = redgov.Governance(plain)
            gov.create("quiet")
            gov.transition("quiet", LifecycleState.PENDING_APPROVAL)
            gov.state("quiet")
        assert calls(admin, "wait") == waits

        with redgov.connect(primary.url, prefix=prefix, wait_replicas=1, wait_timeout=1.0) as bp:
            gov = redgov.Governance(bp)
            gov.create("exp")  # warm-up: the scripts are loaded, the scope's ACL checked
            before = {name: calls(admin, name) for name in ("wait", "evalsha", "script")}
            gov.transition("exp", LifecycleState.PENDING_APPROVAL)
            gov.transition("exp", LifecycleState.APPROVED)
            after = {name: calls(admin, name) for name in ("wait", "evalsha", "script")}
            # two writes: two EVALSHA, two WAIT, no SCRIPT EXISTS round trip before them
            assert {name: after[name] - before[name] for name in after} == {"wait": 2, "evalsha": 2, "script": 0}
            assert gov.state("exp") is not None and gov.history("exp")  # reads: no WAIT
            assert calls(admin, "wait") == after["wait"]

            admin.script_flush()  # NOSCRIPT: the script is loaded and the pair sent again
            gov.transition("exp", LifecycleState.RUNNING)
            state = gov.state("exp")
            assert state is not None and state.state is LifecycleState.RUNNING and state.revision == 4


def test_run_many_ends_with_one_wait_and_plans_wait_after_their_write(
        pair: tuple[RedisProcess, RedisProcess]) -> None:
    primary, replica = pair
    prefix = new_prefix()
    with primary.client() as admin, \
            redgov.connect(primary.url, prefix=prefix, wait_replicas=1, wait_timeout=0.5) as bp:
        gov = redgov.Governance(bp)
        for name in ("a", "b"):
            gov.create(name)
        gov.create_version("a", {"v": 1})
        gov.create_version("a", {"v": 2})
        waits = calls(admin, "wait")
        done = gov.transition_many([TransitionRequest(experiment=name, to=LifecycleState.PENDING_APPROVAL)
                                    for name in ("a", "b")])
        assert all(isinstance(t, redgov.StateTransition) for t in done), done
        assert calls(admin, "wait") == waits + 1
        for name in ("a", "b"):
            copied = replica_state(replica, prefix, name)
            assert copied is not None and copied.state is LifecycleState.PENDING_APPROVAL

        replica.stop()
        with pytest.raises(DurabilityError) as batch:
            gov.transition_many([TransitionRequest(experiment=name, to=LifecycleState.APPROVED)
                                 for name in ("a", "b")])
        assert (batch.value.acknowledged, batch.value.wanted) == (0, 1)
        results: Any = batch.value.result
        assert [t.to_state for t in results] == [LifecycleState.APPROVED] * 2
        assert [gov.state(name).state for name in ("a", "b")] == [LifecycleState.APPROVED] * 2  # type: ignore[union-attr]

        with pytest.raises(DurabilityError) as plan:  # rollback: a plan (a read, then the write)
            gov.rollback("a", 1)
        restored = plan.value.result
        assert isinstance(restored, redgov.ConfigurationVersion)
        assert (restored.version, restored.is_rollback, restored.configuration) == (3, True, {"v": 1})
        latest = bp.latest_version("a")
        assert latest is not None and latest.version == 3


def test_a_refused_wait_is_a_durability_error_after_the_write(pair: tuple[RedisProcess, RedisProcess]) -> None:
    primary, _replica = pair
    prefix = new_prefix()
    with primary.client() as admin:
        admin.execute_command("ACL", "SETUSER", "nowait", "on", ">pw", "~*", "&*", "+@all", "-wait")
    with redgov.connect(primary.url, prefix=prefix, wait_replicas=1, wait_timeout=0.5, username="nowait",
                        password="pw") as bp:
        gov = redgov.Governance(bp)
        with pytest.raises(DurabilityError) as caught:
            gov.create("exp")
        assert "WAIT failed" in str(caught.value) and "no permissions" in str(caught.value), str(caught.value)
        assert isinstance(caught.value.result, redgov.ExperimentState)
        assert gov.state("exp") is not None  # applied


def test_a_tiny_wait_timeout_never_becomes_wait_forever(pair: tuple[RedisProcess, RedisProcess]) -> None:
    """``WAIT n 0`` blocks forever: 0.1 ms is sent as 1 ms, and the call returns at once."""
    primary, replica = pair
    replica.stop()
    _wait_until("the primary losing its replica", lambda: not _online(primary))
    with redgov.connect(primary.url, prefix=new_prefix(), wait_replicas=1, wait_timeout=0.0001, timeout=2.0) as bp:
        gov = redgov.Governance(bp)
        started = time.monotonic()
        with pytest.raises(DurabilityError) as caught:
            gov.create("exp")
        assert time.monotonic() - started < 1.0
        assert caught.value.acknowledged == 0


# -- asyncio ------------------------------------------------------------------------------


def test_async_writes_wait_too(pair: tuple[RedisProcess, RedisProcess]) -> None:
    primary, replica = pair
    prefix = new_prefix()

    async def body() -> None:
        async with redgov.aio.connect(primary.url, prefix=prefix, wait_replicas=1, wait_timeout=0.5) as bp:
            gov = redgov.aio.AsyncGovernance(bp)
            await gov.create("exp")
            await gov.create("other")
            await gov.create_version("exp", {"v": 1})
            await gov.transition("exp", LifecycleState.PENDING_APPROVAL)
            copied = replica_state(replica, prefix, "exp")
            assert copied is not None and copied.state is LifecycleState.PENDING_APPROVAL

            replica.stop()
            started = time.monotonic()
            with pytest.raises(DurabilityError) as caught:
                await gov.transition("exp", LifecycleState.APPROVED)
            assert 0.45 <= time.monotonic() - started < 2.0
            assert (caught.value.acknowledged, caught.value.wanted) == (0, 1)
            moved: Any = caught.value.result
            assert moved.to_state is LifecycleState.APPROVED
            state = await gov.state("exp")
            assert state is not None and state.state is LifecycleState.APPROVED

            with pytest.raises(DurabilityError) as batch:
                await gov.transition_many([TransitionRequest(experiment="other", to=LifecycleState.PENDING_APPROVAL)])
            results: Any = batch.value.result
            assert [t.to_state for t in results] == [LifecycleState.PENDING_APPROVAL]
            with pytest.raises(DurabilityError) as plan:
                await gov.rollback("exp", 1)
            restored: Any = plan.value.result
            assert restored.version == 2 and restored.is_rollback

    asyncio.run(body())


# -- WAITAOF --------------------------------------------------------------------------------


def _keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=prefix + "*", count=1000))


def _has_waitaof(client: redis.Redis) -> bool:
    """Whether the server knows WAITAOF (Redis >= 7.2, Valkey): asked of the server, not assumed."""
    try:
        client.execute_command("WAITAOF", 0, 0, 0)  # waits for nothing: an unknown command is refused
    except redis.ResponseError:
        return False
    return True


def test_wait_aof_waits_for_the_primarys_fsync_where_the_server_has_it(tmp_path: Path) -> None:
    """WAITAOF's success path, on a private server of the tests' own binary with its AOF on (skipped by
    nothing: on a server without WAITAOF the refusal test below is the one that runs)."""
    with RedisProcess(None, "--appendonly", "yes", "--appendfsync", "everysec",
                      directory=str(tmp_path)) as server, server.client() as admin:
        if not _has_waitaof(admin):
            with pytest.raises(ValidationError, match="7.2"):
                redgov.connect(server.url, prefix=new_prefix(), wait_aof=True)
            return
        with redgov.connect(server.url, prefix=new_prefix(), wait_aof=True) as bp:
            gov = redgov.Governance(bp)
            state = gov.create("exp", actor="ana")
            moved = gov.transition("exp", LifecycleState.PENDING_APPROVAL, actor="ana")
            assert (state.revision, moved.revision) == (1, 2)  # each write waited for its fsync, none refused
        with redgov.connect(server.url, prefix=new_prefix(), wait_aof=True, wait_replicas=1,
                            wait_timeout=0.2) as bp, pytest.raises(DurabilityError) as short:
            redgov.Governance(bp).create("exp")
        assert short.value.wanted == 1 and short.value.acknowledged == 0  # no replica: applied, not confirmed


def test_wait_aof_is_refused_on_redis_7_0_before_anything_is_written(redis_url: str) -> None:
    """WAITAOF came with Redis 7.2: on a server without it (the machine's Redis 7.0) it is refused."""
    with redis.Redis.from_url(redis_url) as admin:
        version = admin.info("server")["redis_version"]
        if _has_waitaof(admin):  # Valkey, Redis >= 7.2: accepted (its success path is tested above)
            redgov.connect(redis_url, prefix=new_prefix(), wait_aof=True).close()
            return
        with pytest.raises(ValidationError) as at_connect:
            redgov.connect(redis_url, prefix=new_prefix(), wait_aof=True)
        assert version in str(at_connect.value) and "7.2" in str(at_connect.value), str(at_connect.value)

        prefix = new_prefix()  # a wrapped client: refused at the first write, before it is sent
        bp = redgov.Backplane(redis.Redis.from_url(redis_url), prefix=prefix, wait_aof=True, wait_replicas=1)
        with bp, pytest.raises(ValidationError, match="WAITAOF"):
            redgov.Governance(bp).create("exp")
        assert _keys(admin, prefix) == []

        async def body() -> None:
            async with redgov.aio.connect(redis_url, prefix=prefix, wait_aof=True) as abp:
                with pytest.raises(ValidationError, match="7.2"):
                    await redgov.aio.AsyncGovernance(abp).create("exp")
                with pytest.raises(ValidationError, match="7.2"):
                    await abp.run_many([abp.core.append_transition(
                        redgov.StateTransition(experiment="exp", to_state=LifecycleState.DRAFT))])

        asyncio.run(body())
        assert _keys(admin, prefix) == []


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"wait_replicas": -1}, "wait_replicas"),
    ({"wait_replicas": True}, "wait_replicas"),
    ({"wait_replicas": 1.0}, "wait_replicas"),
    ({"wait_replicas": "1"}, "wait_replicas"),
    ({"wait_replicas": 1, "wait_timeout": 0}, "wait_timeout"),
    ({"wait_replicas": 1, "wait_timeout": -0.5}, "wait_timeout"),
    ({"wait_replicas": 1, "wait_timeout": math.nan}, "wait_timeout"),
    ({"wait_replicas": 1, "wait_timeout": math.inf}, "wait_timeout"),
    ({"wait_replicas": 1, "wait_timeout": "1"}, "wait_timeout"),
    ({"wait_replicas": 1, "wait_timeout": True}, "wait_timeout"),
    ({"wait_aof": "yes"}, "wait_aof"),
    ({"wait_aof": 1}, "wait_aof"),
    ({"wait_replicas": 1, "wait_timeout": 3.0}, "half the socket timeout"),  # timeout is 5.0
])
def test_bad_durability_settings_are_refused_by_name(redis_url: str, kwargs: dict[str, Any], named: str) -> None:
    for make, url in ((redgov.connect, redis_url), (redgov.aio.connect, redis_url), (redgov.connect, "memory://")):
        if url == "memory://":  # values are checked even when nothing is waited for
            if named == "half the socket timeout":
                continue  # memory:// has no socket timeout
            if named != "wait_replicas":
                kwargs = {**kwargs, "wait_replicas": 0}
        with pytest.raises(ValidationError) as caught:
            make(url, prefix=new_prefix(), **kwargs)
        assert named in str(caught.value), str(caught.value)
        if named in kwargs:  # the message shows the bad value
            assert repr(kwargs[named]) in str(caught.value), str(caught.value)


def test_memory_and_cluster_refuse_durability() -> None:
    nobody = f"redis+cluster://127.0.0.1:{free_port()}"  # refused before any connection is tried
    for make in (redgov.connect, redgov.aio.connect):
        with pytest.raises(ValidationError, match="memory://.*no replicas"):
            make("memory://", wait_replicas=1)
        with pytest.raises(ValidationError, match="memory://"):
            make("memory://", wait_aof=True)
        with pytest.raises(ValidationError, match="Cluster: WAIT must be sent on the connection of the node"):
            make(nobody, wait_replicas=2)
    with pytest.raises(ValidationError, match="no replicas"):
        redgov.Backplane(fakeredis.FakeRedis(), wait_replicas=1)
    with redgov.connect("memory://", wait_replicas=0, wait_timeout=0.5) as bp:  # the default: fine anywhere
        redgov.Governance(bp).create("exp")
        assert bp._wait is None and "wait" not in repr(bp)


def test_the_settings_are_kept_and_shown(redis_url: str) -> None:
    with redgov.connect(redis_url, prefix=new_prefix(), wait_replicas=2, wait_timeout=0.25) as bp:
        assert (bp.wait_replicas, bp.wait_timeout, bp.wait_aof) == (2, 0.25, False)
        assert "wait_replicas=2" in repr(bp)
    abp = redgov.aio.connect(redis_url, prefix=new_prefix(), wait_replicas=1)
    assert (abp.wait_replicas, abp.wait_timeout, abp.wait_aof) == (1, 1.0, False)
    asyncio.run(abp.close())


def test_waitaof_replies_and_server_versions_are_read_right() -> None:
    """Without a Redis >= 7.2 here, WAITAOF's reply handling is checked on reply values alone."""
    from types import SimpleNamespace

    from redgov.durability import aof_refusal, confirm

    shell = SimpleNamespace(wait_replicas=1, wait_timeout=0.5, _wait=("WAITAOF", 1, 1, 500))
    confirm(shell, "w", [1, 1], "result")  # local fsync and one replica: confirmed
    for reply, acknowledged, says in (([1, 0], 0, "fsynced it to its AOF and 0 of 1"),
                                      ([0, 1], 1, "did not confirm its AOF fsync")):
        with pytest.raises(DurabilityError) as caught:
            confirm(shell, "w", reply, "result")
        assert (caught.value.acknowledged, caught.value.result) == (acknowledged, "result")
        assert says in str(caught.value), str(caught.value)
    for hello, refused in (({b"server": b"redis", b"version": b"7.2.4"}, False),
                           ({b"server": b"valkey", b"version": b"8.0.1"}, False),
                           ([b"server", b"redis", b"version", b"7.0.15", b"proto", 2], True),
                           ({b"server": b"redis", b"version": b"6.2.14"}, True)):
        assert (aof_refusal(hello) is not None) is refused, hello
