"""Every Backplane method on a real 3-master Redis Cluster, sync and asyncio.

The module starts three private ``redis-server --cluster-enabled yes``
processes on free loopback ports, splits the 16384 slots between them and
joins them with CLUSTER MEET from Python (no redis-cli). Each scope's keys
share one hash tag, so one script call never crosses slots; different scopes
land on different masters.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redis.cluster import key_slot

import redgov
import redgov.aio
from redgov import (
    ApprovalRecord,
    ConfigurationVersion,
    ConflictError,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    SaveResult,
    Severity,
    StateTransition,
)
from redgov.keys import Scope

from .servers import RedisProcess

pytestmark = pytest.mark.slow

SLOTS = 16384
MASTERS = 3
FORM_TIMEOUT = 20.0
POLL = 0.05
BUS_OFFSET = 10000  # Redis < 7 has no --cluster-port: the bus is port + 10000


# -- the cluster ---------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_ports(count: int) -> list[int]:
    """Free loopback ports whose cluster bus port (port + 10000) is free too."""
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(500):
        port = rng.randrange(20000, 55000)
        if any(abs(port - other) <= 1 or abs(port + BUS_OFFSET - other) <= 1
               or abs(port - other - BUS_OFFSET) <= 1 for other in chosen):
            continue
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free loopback port pairs for a cluster")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    out: dict[str, str] = {}
    for line in _text(raw).splitlines():
        if ":" in line:
            name, _, value = line.partition(":")
            out[name.strip()] = value.strip()
    return out


@dataclass
class Cluster:
    nodes: list[RedisProcess]
    ranges: list[tuple[int, int]]  # the slot range each node serves, inclusive

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def owner(self, slot: int) -> int:
        """Index in ``nodes`` of the master serving slot."""
        for index, (low, high) in enumerate(self.ranges):
            if low <= slot <= high:
                return index
        raise AssertionError(f"slot {slot} is not assigned")

    def each_client(self) -> Iterator[redis.Redis]:
        for node in self.nodes:
            with node.client() as client:
                yield client


def _form(nodes: list[RedisProcess]) -> list[tuple[int, int]]:
    ranges = [(i * SLOTS // len(nodes), (i + 1) * SLOTS // len(nodes) - 1) for i in range(len(nodes))]
    for epoch, (node, (low, high)) in enumerate(zip(nodes, ranges, strict=False), start=1):
        with node.client() as client:
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for start in range(low, high + 1, 1000):
                client.execute_command("CLUSTER", "ADDSLOTS", *range(start, min(start + 1000, high + 1)))
    with nodes[0].client() as first:
        for node in nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
    deadline = time.monotonic() + FORM_TIMEOUT
    infos: list[dict[str, str]] = []
    for _ in range(int(FORM_TIMEOUT / POLL) + 1):
        infos = []
        for node in nodes:
            with node.client() as client:
                infos.append(_cluster_info(client))
        if all(
            info.get("cluster_state") == "ok"
            and info.get("cluster_known_nodes") == str(len(nodes))
            and info.get("cluster_slots_ok") == str(SLOTS)
            for info in infos
        ):
            return ranges
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    raise RuntimeError(f"cluster did not reach cluster_state:ok within {FORM_TIMEOUT}s: {infos}")


# Registered as "cluster" but defined as cluster_fixture, so modules that import it (tests/test_export*.py)
# can take a ``cluster`` parameter without shadowing the imported name.
@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    nodes: list[RedisProcess] = []
    try:
        for port in _cluster_ports(MASTERS):
            directory = base / f"node-{port}"
            directory.mkdir()
            nodes.append(RedisProcess(
                port,
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / "nodes.conf"),
                "--cluster-node-timeout", "5000",
                directory=str(directory),
            ))
        yield Cluster(nodes, _form(nodes))
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def cluster_prefix() -> str:
    return "c" + uuid.uuid4().hex[:12]


ScopeT = tuple[str | None, str | None]


def spread_scopes(cluster: Cluster, prefix: str) -> list[ScopeT]:
    """One (tenant, environment) per master, so the scopes land on all three nodes."""
    found: dict[int, ScopeT] = {}
    environments = ["prod", "staging", None]
    for i in range(2000):
        scope = (f"tenant-{i}", environments[i % 3]) if i else (None, None)
        node = cluster.owner(key_slot(Scope(prefix, *scope).tag.encode()))
        found.setdefault(node, scope)
        if len(found) == MASTERS:
            return [found[n] for n in sorted(found)]
    raise AssertionError(f"no tenant in 2000 candidates reaches every master: {found}")


# -- one scenario, run on the sync and on the asyncio Backplane -----------------


Caller = Callable[..., Awaitable[Any]]


class _SyncAsAsync:
    """The sync Backplane behind awaitable methods, so one scenario serves both."""

    def __init__(self, backplane: redgov.Backplane) -> None:
        self._backplane = backplane

    def __getattr__(self, name: str) -> Caller:
        method = getattr(self._backplane, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


def _now(offset: int = 0) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=offset)


async def scenario(bp: Any, experiment: str, tenant: str | None, environment: str | None) -> None:
    """Every Backplane method of API.md against one scope."""
    scope = {"tenant": tenant, "environment": environment}

    # state: create, duplicate create, etag-guarded update, stale etag
    assert await bp.get_state(experiment, **scope) is None
    draft = ExperimentState(experiment=experiment, state=LifecycleState.DRAFT, config_version=0,
                            last_modified=_now(), last_modified_by="alice",
                            metadata={"team": "growth", "n": 1}, **scope)
    created = await bp.save_state(draft)
    assert isinstance(created, SaveResult)
    assert created.ok and not created.conflict and created.error is None
    assert created.etag and created.state is not None
    assert created.state.etag == created.etag and created.state.revision == 1

    again = await bp.save_state(draft)
    assert again.ok is False and again.conflict is True and again.state is None

    stored = await bp.get_state(experiment, **scope)
    assert stored is not None
    assert (stored.experiment, stored.state, stored.config_version) == (experiment, LifecycleState.DRAFT, 0)
    assert stored.etag == created.etag and stored.revision == 1
    assert stored.last_modified == draft.last_modified and stored.last_modified_by == "alice"
    assert stored.metadata == {"team": "growth", "n": 1}
    assert (stored.tenant, stored.environment) == (tenant, environment)

    pending = ExperimentState(experiment=experiment, state=LifecycleState.PENDING_APPROVAL, config_version=1,
                              last_modified=_now(1), last_modified_by="bob", **scope)
    updated = await bp.save_state(pending, expected_etag=created.etag)
    assert updated.ok and not updated.conflict
    assert updated.etag and updated.etag != created.etag
    assert updated.state is not None and updated.state.revision == 2

    stale = await bp.save_state(pending, expected_etag=created.etag)
    assert stale.ok is False and stale.conflict is True and stale.error

    current = await bp.get_state(experiment, **scope)
    assert current is not None
    assert current.state == LifecycleState.PENDING_APPROVAL and current.config_version == 1
    assert current.etag == updated.etag and current.revision == 2 and current.last_modified_by == "bob"

    # transitions
    t1 = StateTransition(experiment=experiment, from_state=None, to_state=LifecycleState.DRAFT,
                         timestamp=_now(), actor="alice", **scope)
    t2 = StateTransition(experiment=experiment, from_state=LifecycleState.DRAFT,
                         to_state=LifecycleState.PENDING_APPROVAL, timestamp=_now(1), actor="bob",
                         reason="ready", metadata={"ticket": 7}, **scope)
    assert await bp.append_transition(t1) == t1
    assert await bp.append_transition(t2) == t2
    assert await bp.transitions(experiment, **scope) == [t1, t2]

    # approvals, one linked to a transition
    a1 = ApprovalRecord(experiment=experiment, transition_id=t2.transition_id,
                        from_state=LifecycleState.DRAFT, to_state=LifecycleState.PENDING_APPROVAL,
                        approved=True, approver="carol", timestamp=_now(2), gate="manual", **scope)
    a2 = ApprovalRecord(experiment=experiment, from_state=LifecycleState.PENDING_APPROVAL,
                        to_state=LifecycleState.APPROVED, approved=False, approver="dave",
                        reason="not yet", timestamp=_now(3), gate="manual", **scope)
    assert await bp.append_approval(a1) == a1
    assert await bp.append_approval(a2) == a2
    assert await bp.approvals(experiment, **scope) == [a1, a2]
    assert await bp.approvals_for_transition(t2.transition_id, **scope) == [a1]
    assert await bp.approvals_for_transition(t1.transition_id, **scope) == []

    # versions: O(1) latest, exact lookups, ascending list, duplicate refused
    assert await bp.latest_version(experiment, **scope) is None
    assert await bp.versions(experiment, **scope) == []
    v1 = ConfigurationVersion(experiment=experiment, version=1, configuration={"traffic": 10},
                              configuration_hash="h1", created_at=_now(), created_by="alice", **scope)
    v2 = ConfigurationVersion(experiment=experiment, version=2,
                              configuration={"traffic": 50, "rollout": {"steps": [1, 5, 50]}},
                              configuration_hash="h2", created_at=_now(1), created_by="bob",
                              description="ramp", lifecycle_state=LifecycleState.APPROVED, **scope)
    assert await bp.append_version(v1) == v1
    assert await bp.append_version(v2) == v2
    assert await bp.version(experiment, 1, **scope) == v1
    assert await bp.version(experiment, 2, **scope) == v2
    assert await bp.version(experiment, 3, **scope) is None
    assert await bp.latest_version(experiment, **scope) == v2
    assert await bp.versions(experiment, **scope) == [v1, v2]
    duplicate = ConfigurationVersion(experiment=experiment, version=1, configuration={"traffic": 99},
                                     created_at=_now(2), **scope)
    with pytest.raises(ConflictError):
        await bp.append_version(duplicate)
    assert await bp.versions(experiment, **scope) == [v1, v2]
    assert await bp.version(experiment, 1, **scope) == v1

    # policy evaluations: list in order, O(1) latest per policy
    e1 = PolicyEvaluation(experiment=experiment, policy="traffic", compliant=True, severity=Severity.CRITICAL,
                          timestamp=_now(), current_state=LifecycleState.APPROVED,
                          target_state=LifecycleState.RUNNING, **scope)
    e2 = PolicyEvaluation(experiment=experiment, policy="errors", compliant=True, severity=Severity.CRITICAL,
                          timestamp=_now(1), **scope)
    e3 = PolicyEvaluation(experiment=experiment, policy="traffic", compliant=False, severity=Severity.CRITICAL,
                          reason="60% > 50%", timestamp=_now(2), metadata={"trafficPercentage": 60}, **scope)
    for evaluation in (e1, e2, e3):
        assert await bp.append_policy_evaluation(evaluation) == evaluation
    assert await bp.policy_evaluations(experiment, **scope) == [e1, e2, e3]
    assert await bp.latest_policy_evaluation(experiment, "traffic", **scope) == e3
    assert await bp.latest_policy_evaluation(experiment, "errors", **scope) == e2
    assert await bp.latest_policy_evaluation(experiment, "window", **scope) is None


async def isolation(bp: Any, experiment: str, scopes: list[ScopeT], written: ScopeT) -> None:
    """Scopes other than ``written`` do not see its records."""
    for tenant, environment in scopes:
        if (tenant, environment) == written:
            continue
        assert await bp.get_state(experiment, tenant=tenant, environment=environment) is None
        assert await bp.transitions(experiment, tenant=tenant, environment=environment) == []
        assert await bp.versions(experiment, tenant=tenant, environment=environment) == []


def all_scope_keys(prefix: str, tenant: str | None, environment: str | None, experiment: str,
                   transition_id: str) -> list[str]:
    scope = Scope(prefix, tenant, environment)
    exp = scope.experiment(experiment)
    return [scope.log, scope.index, scope.links, scope.ops(), *exp.standard, exp.idempotency(transition_id),
            exp.lease()]


SCENARIO_SCRIPTS = {
    "save_state", "append_transition", "append_approval", "append_version",
    "append_policy_evaluation", "read_list", "read_versions", "read_hash_entry",
}


def flush_scripts(cluster: Cluster, backplane: Any) -> None:
    shas = [script.sha for script in backplane._scripts.values()]
    assert shas
    for client in cluster.each_client():
        assert client.script_flush() is True
        assert client.script_exists(*shas) == [False] * len(shas)


def assert_reloaded(cluster: Cluster, backplane: Any, tenant: str | None, environment: str | None) -> None:
    """The master serving the scope has every script the scenario ran again (loaded after NOSCRIPT)."""
    slot = key_slot(Scope(backplane.prefix, tenant, environment).tag.encode())
    shas = [script.sha for name, script in backplane._scripts.items() if name in SCENARIO_SCRIPTS]
    with cluster.nodes[cluster.owner(slot)].client() as client:
        assert client.script_exists(*shas) == [True] * len(shas)


# -- tests -----------------------------------------------------------------------


def test_cluster_is_formed(cluster: Cluster) -> None:
    for client in cluster.each_client():
        info = _cluster_info(client)
        assert info["cluster_state"] == "ok"
        assert info["cluster_size"] == str(MASTERS)
    with redgov.connect(cluster.url, prefix="probe") as bp:
        assert isinstance(bp.client, redis.cluster.RedisCluster)
        assert len(bp.client.get_primaries()) == MASTERS


def test_scopes_spread_over_nodes_and_keys_of_a_scope_share_a_slot(cluster: Cluster,
                                                                   cluster_prefix: str) -> None:
    scopes = spread_scopes(cluster, cluster_prefix)
    with redgov.connect(cluster.url, prefix=cluster_prefix) as bp:
        nodes = set()
        for tenant, environment in scopes:
            keys = all_scope_keys(cluster_prefix, tenant, environment, "exp:with{odd}~chars", "t-1")
            slots = {bp.client.keyslot(key) for key in keys}
            assert len(slots) == 1, (tenant, environment, slots)
            (slot,) = slots
            assert slot == key_slot(keys[0].encode())
            node = bp.client.get_node_from_key(keys[0])
            assert node.port == cluster.nodes[cluster.owner(slot)].port
            nodes.add(node.port)
        assert len(nodes) == MASTERS


def test_every_backplane_method_on_cluster(cluster: Cluster, cluster_prefix: str) -> None:
    scopes = spread_scopes(cluster, cluster_prefix)
    with redgov.connect(cluster.url, prefix=cluster_prefix) as bp:
        api = _SyncAsAsync(bp)
        for index, (tenant, environment) in enumerate(scopes):
            experiment = f"checkout-{index}"
            asyncio.run(scenario(api, experiment, tenant, environment))
            asyncio.run(isolation(api, experiment, scopes, (tenant, environment)))
        # the same experiment name in every scope: independent records
        for tenant, environment in scopes:
            asyncio.run(scenario(api, "shared-name", tenant, environment))

    # the data really lives on three different masters, each scope in one slot
    holders = set()
    for tenant, environment in scopes:
        slot = key_slot(Scope(cluster_prefix, tenant, environment).tag.encode())
        owner = cluster.nodes[cluster.owner(slot)]
        with owner.client() as client:
            assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
            holders.add(owner.port)
    assert len(holders) == MASTERS


def test_every_async_backplane_method_on_cluster(cluster: Cluster, cluster_prefix: str) -> None:
    scopes = spread_scopes(cluster, cluster_prefix)

    async def main() -> None:
        bp = redgov.aio.connect(cluster.url, prefix=cluster_prefix)
        try:
            assert isinstance(bp, redgov.aio.AsyncBackplane)
            for index, (tenant, environment) in enumerate(scopes):
                experiment = f"checkout-{index}"
                await scenario(bp, experiment, tenant, environment)
                await isolation(bp, experiment, scopes, (tenant, environment))
        finally:
            await bp.close()

    asyncio.run(main())
    # what the asyncio client wrote, the sync client reads
    with redgov.connect(cluster.url, prefix=cluster_prefix) as bp:
        for index, (tenant, environment) in enumerate(scopes):
            state = bp.get_state(f"checkout-{index}", tenant=tenant, environment=environment)
            assert state is not None and state.state == LifecycleState.PENDING_APPROVAL
            assert [v.version for v in bp.versions(f"checkout-{index}", tenant=tenant,
                                                   environment=environment)] == [1, 2]


def test_scripts_reload_after_script_flush(cluster: Cluster, cluster_prefix: str) -> None:
    scopes = spread_scopes(cluster, cluster_prefix)
    with redgov.connect(cluster.url, prefix=cluster_prefix) as bp:
        api = _SyncAsAsync(bp)
        asyncio.run(scenario(api, "before-flush", *scopes[0]))
        flush_scripts(cluster, bp)
        for index, (tenant, environment) in enumerate(scopes):
            asyncio.run(scenario(api, f"after-flush-{index}", tenant, environment))
            assert_reloaded(cluster, bp, tenant, environment)
            # and flushed again between scopes, so every node answers NOSCRIPT once
            flush_scripts(cluster, bp)
        # reads (script-backed) also recover after a flush
        tenant, environment = scopes[0]
        assert [t.to_state for t in bp.transitions("before-flush", tenant=tenant, environment=environment)] == [
            LifecycleState.DRAFT, LifecycleState.PENDING_APPROVAL]
        flush_scripts(cluster, bp)
        assert bp.latest_version("before-flush", tenant=tenant, environment=environment).version == 2


def test_async_scripts_reload_after_script_flush(cluster: Cluster, cluster_prefix: str) -> None:
    scopes = spread_scopes(cluster, cluster_prefix)

    async def main() -> None:
        bp = redgov.aio.connect(cluster.url, prefix=cluster_prefix)
        try:
            await scenario(bp, "before-flush", *scopes[0])
            flush_scripts(cluster, bp)
            for index, (tenant, environment) in enumerate(scopes):
                await scenario(bp, f"after-flush-{index}", tenant, environment)
                assert_reloaded(cluster, bp, tenant, environment)
                flush_scripts(cluster, bp)
            tenant, environment = scopes[0]
            latest = await bp.latest_policy_evaluation("before-flush", "traffic", tenant=tenant,
                                                       environment=environment)
            assert latest is not None and latest.compliant is False
        finally:
            await bp.close()

    asyncio.run(main())


# -- a slot being migrated ---------------------------------------------------------------


def _node_id(node: RedisProcess) -> str:
    with node.client() as client:
        return _text(client.execute_command("CLUSTER", "MYID"))


def _migrate(cluster: Cluster, slot: int, keys: list[str], source: int, target: int) -> None:
    with cluster.nodes[source].client() as client:
        client.execute_command("MIGRATE", "127.0.0.1", cluster.nodes[target].port, "", 0, 5000, "KEYS", *keys)


def _finish(cluster: Cluster, slot: int, target: int) -> None:
    """CLUSTER SETSLOT <slot> NODE <target> on every node: the migration is over."""
    target_id = _node_id(cluster.nodes[target])
    for node in [cluster.nodes[target]] + [n for i, n in enumerate(cluster.nodes) if i != target]:
        with node.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    low, high = cluster.ranges[target]
    cluster.ranges.append((slot, slot))  # owner() now finds the new owner first for this slot
    cluster.ranges[:] = [(slot, slot)] + [r for r in cluster.ranges if r != (slot, slot)]
    _owners[slot] = target


_owners: dict[int, int] = {}


def _owner(cluster: Cluster, slot: int) -> int:
    return _owners.get(slot, cluster.owner(slot))


def _start_migration(cluster: Cluster, scope: Scope) -> tuple[int, int, int, list[str]]:
    slot = key_slot(scope.tag.encode())
    source = _owner(cluster, slot)
    target = (source + 1) % MASTERS
    with cluster.nodes[target].client() as client:
        client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(cluster.nodes[source]))
    with cluster.nodes[source].client() as client:
        client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(cluster.nodes[target]))
        keys = sorted(_text(k) for k in client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000))
    return slot, source, target, keys


def test_a_write_during_a_slot_migration_waits_for_it_and_applies_once(cluster: Cluster,
                                                                       cluster_prefix: str) -> None:
    gov = redgov.Governance(redgov.connect(cluster.url, prefix=cluster_prefix))
    try:
        gov.create("moving")
        gov.transition("moving", LifecycleState.PENDING_APPROVAL)
        scope = gov.backplane.core.scope(None, None)
        slot, source, target, keys = _start_migration(cluster, scope)
        exp = scope.experiment("moving")
        first = [exp.history, scope.log]  # these move now: the script's keys are split across two nodes
        _migrate(cluster, slot, first, source, target)

        def finish_later() -> None:
            time.sleep(0.8)
            _migrate(cluster, slot, [k for k in keys if k not in first], source, target)
            _finish(cluster, slot, target)

        import threading

        mover = threading.Thread(target=finish_later)
        started = time.monotonic()
        mover.start()
        moved = gov.transition("moving", LifecycleState.APPROVED)  # TRYAGAIN until the slot settles
        mover.join(10)
        assert time.monotonic() - started >= 0.7
        assert moved.from_state is LifecycleState.PENDING_APPROVAL
        history = gov.history("moving")
        assert [t.to_state for t in history] == [LifecycleState.DRAFT, LifecycleState.PENDING_APPROVAL,
                                                 LifecycleState.APPROVED]
        assert gov.state("moving").revision == 3 and gov.verify("moving") == []  # type: ignore[union-attr]
    finally:
        gov.close()


def test_a_slot_that_never_settles_gives_a_named_error_and_writes_nothing(
        cluster: Cluster, cluster_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import redgov.backplane

    monkeypatch.setattr(redgov.backplane, "SLOT_RETRIES", 3)
    gov = redgov.Governance(redgov.connect(cluster.url, prefix=cluster_prefix + "-stuck"))
    try:
        gov.create("stuck")
        scope = gov.backplane.core.scope(None, None)
        slot, source, target, keys = _start_migration(cluster, scope)
        exp = scope.experiment("stuck")
        _migrate(cluster, slot, [exp.history], source, target)
        with pytest.raises(redgov.UnavailableError, match="slot"):
            gov.transition("stuck", LifecycleState.PENDING_APPROVAL)
        _migrate(cluster, slot, [k for k in keys if k != exp.history], source, target)
        _finish(cluster, slot, target)
        assert [t.to_state for t in gov.history("stuck")] == [LifecycleState.DRAFT]  # nothing was written
        assert gov.state("stuck").revision == 1  # type: ignore[union-attr]
        gov.transition("stuck", LifecycleState.PENDING_APPROVAL)  # and it works once the slot settled
    finally:
        gov.close()


def test_the_live_feed_reads_the_scopes_of_every_node(cluster: Cluster, cluster_prefix: str) -> None:
    """redgov serve's live hub on a Cluster: XREAD cannot span slots, so it polls every scope log
    (SCAN of every primary, pipelined XREADs); writes in scopes on all three masters arrive."""
    from redgov.web.live import LiveHub

    scopes = spread_scopes(cluster, cluster_prefix)
    with redgov.connect(cluster.url, prefix=cluster_prefix) as bp:
        gov = redgov.Governance(bp)
        for index, (tenant, environment) in enumerate(scopes):
            gov.create(f"exp-{index}", tenant=tenant, environment=environment)

        async def feed() -> list[Any]:
            hub = LiveHub(gov, handle_signals=False, rediscover=0.2)
            await hub.start()
            try:
                assert hub.stats()["scopes"] == MASTERS
                sub, replay, reset = hub.subscribe({}, None)
                assert replay == [] and reset is None
                for index, (tenant, environment) in enumerate(scopes):
                    await asyncio.to_thread(gov.transition, f"exp-{index}", LifecycleState.PENDING_APPROVAL,
                                            tenant=tenant, environment=environment)
                got: list[Any] = []
                deadline = time.monotonic() + 10
                while len([e for e in got if e.kind == "transition"]) < MASTERS and time.monotonic() < deadline:
                    taken = await asyncio.wait_for(sub.take(), timeout=max(0.1, deadline - time.monotonic()))
                    assert taken is not None
                    got += taken[0]
                return got
            finally:
                await hub.stop()

        events = asyncio.run(feed())
    moved = sorted((e.tenant or "", e.environment or "", e.experiment) for e in events if e.kind == "transition")
    assert moved == sorted((t or "", e or "", f"exp-{i}") for i, (t, e) in enumerate(scopes))
