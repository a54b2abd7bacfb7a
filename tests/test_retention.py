"""retain_history=N: each experiment keeps about its newest N history entries, with everything indexing them.

Measured on v1 (one scope log trimmed by XTRIM MAXLEN ~ every 64 writes): with retain_history=10
verify() reported differences and history() returned 40 of 401 transitions; a busy experiment
evicted a quiet one's history; indexes grew without bound; an idempotency key whose entry was
trimmed applied its move again. Each test below pins the v2 behaviour on real Redis and memory://.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

import redgov
from redgov import (
    Backplane,
    ConflictPrevention,
    ErrorRate,
    Governance,
    HistoryTrimmedError,
    LifecycleState,
    ManualGate,
    RoleGate,
    TransitionRequest,
)

from .conftest import delete_prefix

S = LifecycleState
RETAIN = 10
#: trimming starts this far past N, and removes down to N (lua/lib/retain.lua)
SLACK = min(32, max(1, RETAIN // 32))


@pytest.fixture
def retained(url: str, prefix: str) -> Iterator[Governance]:
    """Gates only: every history entry of a move is its transition (and a consumed approval's)."""
    bp = redgov.connect(url, prefix=prefix, retain_history=RETAIN)
    gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED), RoleGate("sre", to_state=S.RAMPING)])
    yield gov
    if not url.startswith("memory://"):
        delete_prefix(bp.client, prefix)
    bp.close()


@pytest.fixture
def governed(url: str, prefix: str) -> Iterator[Governance]:
    """Gates and policies: each move also records approvals and evaluations, all counted in N."""
    bp = redgov.connect(url, prefix=prefix, retain_history=RETAIN)
    gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED), RoleGate("sre", to_state=S.RAMPING)],
                     policies=[ErrorRate(0.5), ConflictPrevention("busy", "third")])
    yield gov
    if not url.startswith("memory://"):
        delete_prefix(bp.client, prefix)
    bp.close()


def to_running(gov: Governance, name: str) -> None:
    gov.create(name, configuration={"v": 1})
    gov.transition(name, S.PENDING_APPROVAL)
    gov.approve(name, S.APPROVED, approver="lead")
    gov.transition(name, S.APPROVED)
    gov.transition(name, S.RUNNING)


def cycle(gov: Governance, name: str, moves: int) -> None:
    """Running <-> Ramping <-> Paused moves, with role gates and policies recorded on the way."""
    for _ in range(moves):
        current = gov.state(name)
        assert current is not None
        if current.state is S.RUNNING:
            gov.transition(name, S.RAMPING, metadata={"actorRole": "sre"}, telemetry={"errorRate": 0.1})
        elif current.state is S.RAMPING:
            gov.transition(name, S.PAUSED)
        else:
            gov.transition(name, S.RUNNING)


def history_items(bp: Backplane, name: str) -> list[bytes]:
    return list(bp.client.lrange(bp.core.scope(None, None).experiment(name).history, 0, -1))


def test_each_experiment_keeps_about_n_entries_and_replay_still_equals_state(retained: Governance) -> None:
    gov = retained
    to_running(gov, "busy")
    made = []
    for i in range(401):
        made.append(gov.transition("busy", S.PAUSED if i % 2 == 0 else S.RUNNING))
    history = gov.history("busy")
    assert RETAIN <= len(history) <= RETAIN + SLACK  # about N, the newest, in order
    assert history == made[-len(history):]
    assert len(history_items(gov.backplane, "busy")) <= RETAIN + SLACK
    assert gov.verify("busy") == []
    assert gov.replay("busy") == gov.state("busy")
    assert gov.state("busy").revision == 1 + 3 + 401  # create, three moves to Running, 401  # type: ignore[union-attr]


def test_a_busy_experiment_never_evicts_a_quiet_ones_history(retained: Governance) -> None:
    gov = retained
    gov.create("quiet")
    gov.transition("quiet", S.PENDING_APPROVAL)
    quiet = gov.history("quiet")
    to_running(gov, "busy")
    cycle(gov, "busy", 300)
    assert gov.history("quiet") == quiet
    assert gov.verify("quiet") == [] and gov.verify("busy") == []


def test_every_index_is_bounded_and_points_into_the_log(governed: Governance) -> None:
    gov = governed
    bp = gov.backplane
    to_running(gov, "busy")
    to_running(gov, "other")
    for _ in range(40):  # manual approvals consumed, role gates, policy evaluations, links, versions
        cycle(gov, "busy", 3)
        gov.create_version("busy", {"v": 2})
        gov.transition("busy", S.ROLLED_BACK) if gov.state("busy").state is S.PAUSED else None  # type: ignore[union-attr,func-returns-value]
        if gov.state("busy").state is S.ROLLED_BACK:  # type: ignore[union-attr]
            gov.transition("busy", S.DRAFT)
            gov.transition("busy", S.PENDING_APPROVAL)
            gov.approve("busy", S.APPROVED, approver="lead")
            gov.transition("busy", S.APPROVED)
            gov.transition("busy", S.RUNNING)
    scope = bp.core.scope(None, None)
    exp = scope.experiment("busy")
    client = bp.client
    log_ids = {entry_id for entry_id, _ in client.xrange(scope.log)}
    for item in client.lrange(exp.history, 0, -1):
        assert item[1:] in log_ids
    for key in (exp.approvals, exp.policies):
        ids = client.lrange(key, 0, -1)
        assert len(ids) <= RETAIN + SLACK and set(ids) <= log_ids
    assert set(client.zrange(exp.versions, 0, -1)) <= log_ids
    assert set(client.hvals(exp.latest)) <= log_ids
    links = client.hgetall(scope.links)
    for field, value in links.items():
        if field.startswith(b"a:"):
            assert field[2:] in log_ids
        elif field.startswith(b"t:"):
            assert set(value.split()) <= log_ids
    assert len(links) <= 4 * (RETAIN + SLACK)  # two experiments' worth, not 40 rounds' worth
    assert gov.verify("busy") == [] and gov.verify("other") == []


def scope_memory(client: redis.Redis, prefix: str) -> tuple[int, int]:
    """(keys, bytes) of a prefix, without the expiring re-send dedupe buckets."""
    keys = [k for k in client.scan_iter(match=prefix + "*", count=1000) if b":ops:" not in k]
    return len(keys), sum(int(client.memory_usage(k, samples=0) or 0) for k in keys)


def test_memory_is_flat_under_retention(redis_url: str, prefix: str) -> None:
    bp = redgov.connect(redis_url, prefix=prefix, retain_history=100)
    gov = Governance(bp, policies=[ErrorRate(0.5)])
    try:
        for name in ("a", "b", "c"):
            gov.create(name)
            gov.transition(name, S.PENDING_APPROVAL)
            gov.transition(name, S.APPROVED)
            gov.transition(name, S.RUNNING)

        def write(n: int) -> None:
            for i in range(n):
                for name in ("a", "b", "c"):
                    gov.transition(name, S.PAUSED if i % 2 == 0 else S.RUNNING, telemetry={"errorRate": 0.01})

        write(200)  # 600 transitions (1,200 entries with their evaluations)
        keys_600, bytes_600 = scope_memory(bp.client, prefix)
        write(600)  # 2,400 transitions
        keys_2400, bytes_2400 = scope_memory(bp.client, prefix)
        assert keys_2400 == keys_600
        assert abs(bytes_2400 - bytes_600) <= 0.05 * bytes_600, (bytes_600, bytes_2400)
        for bucket in bp.client.scan_iter(match=prefix + "*:ops:*"):
            assert 0 < bp.client.pttl(bucket) <= 180_000  # dedupe state expires
        assert gov.verify("a") == []
    finally:
        delete_prefix(bp.client, prefix)
        bp.close()


def test_version_numbers_are_never_given_twice_after_trimming(retained: Governance) -> None:
    gov = retained
    to_running(gov, "busy")
    assert gov.create_version("busy", {"v": 2}).version == 2
    cycle(gov, "busy", 60)
    assert gov.backplane.versions("busy") == []  # versions 1 and 2 were trimmed with the rest
    assert gov.create_version("busy", {"v": 3}).version == 3
    with pytest.raises(redgov.ConflictError, match="retention"):
        gov.backplane.append_version(redgov.ConfigurationVersion(experiment="busy", version=2, configuration={}))


def test_an_idempotency_key_works_whatever_was_trimmed(retained: Governance) -> None:
    gov = retained
    to_running(gov, "busy")
    first = gov.transition("busy", S.PAUSED, idempotency_key="pause-1")
    cycle(gov, "busy", 60)  # the entry the key made is long trimmed
    assert first not in gov.history("busy")
    before = gov.state("busy")
    assert gov.transition("busy", S.PAUSED, idempotency_key="pause-1") == first
    assert gov.state("busy") == before


def test_batch_writes_trim_too(retained: Governance) -> None:
    gov = retained
    to_running(gov, "busy")
    for _ in range(30):
        results = gov.transition_many([TransitionRequest(experiment="busy", to=S.PAUSED),
                                       TransitionRequest(experiment="busy", to=S.RUNNING)])
        assert not any(isinstance(r, Exception) for r in results), results
    assert len(history_items(gov.backplane, "busy")) <= RETAIN + SLACK
    assert gov.verify("busy") == []


def test_replay_before_the_cut_needs_an_archive(retained: Governance) -> None:
    gov = retained
    to_running(gov, "busy")
    cycle(gov, "busy", 30)
    with pytest.raises(HistoryTrimmedError, match="archive"):
        gov.replay("busy", until=datetime(2000, 1, 1, tzinfo=UTC))
    now = datetime.now(UTC)
    assert gov.replay("busy", until=now) == gov.state("busy")


def test_paged_reads_count_what_retention_removed(governed: Governance) -> None:
    gov = governed
    to_running(gov, "busy")
    cycle(gov, "busy", 50)
    everything = gov.history("busy")
    assert gov.history("busy", limit=3) == everything[:3]
    assert gov.history("busy", limit=3, newest_first=True) == everything[::-1][:3]
    evaluations = gov.backplane.policy_evaluations("busy")
    assert gov.backplane.policy_evaluations("busy", newest_first=True) == evaluations[::-1]
