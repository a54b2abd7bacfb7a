"""Published rules in the SQL copy: exported, restored, watched (Additions of 2026-12-07, API.md).

A ``publish`` writes a ``rules`` entry to the scope log (no experiment: ``x`` is empty, the
version number is the entry's ``n`` field) and the scope's rules hash ``{T}:rules``. The export
copies the entry (``log_entries`` and ``rules_versions``); a restore writes it back and rebuilds
the rules hash from the copied versions, so the restored scope is governed by the same rules.
Real Redis; SQLite in tmp_path and the PostgreSQL at 127.0.0.1:5432 (database ``test``), each
test in its own schema.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import aclosing
from typing import Any

import pytest
import sqlalchemy as sa

import redgov
from redgov import (
    ApprovalRequiredError,
    CorruptDataError,
    ErrorRate,
    Governance,
    LifecycleState,
    ManualGate,
    Severity,
)
from redgov.keys import Scope, prefix_pattern
from redgov.records import RulesVersion
from redgov.sql import export, follow, restore, trim
from redgov.sql.copy import ScopeRow
from redgov.sql.schema import log_entries, rules_versions
from redgov.sql.write import Batch

from .conftest import new_prefix
from .test_cluster import Cluster, cluster_fixture, spread_scopes  # noqa: F401 - the module's "cluster" fixture
from .test_export import (  # noqa: F401 - fixtures: bp, target, sql_url (with pg_url), sqlite_url
    SCOPES,
    bp_fixture,
    pg_url_fixture,
    sql_url_fixture,
    sqlite_url_fixture,
    target_fixture,
)

S = LifecycleState


# -- fixtures: test_export's (a SQLite file or a PostgreSQL schema per test; a fresh prefix, an empty one)


# -- helpers -------------------------------------------------------------------------------


def first_rules(bp: redgov.Backplane) -> Governance:
    return Governance(bp, gates=[ManualGate(to_state=S.APPROVED)],
                      policies=[ErrorRate(0.05, severity=Severity.CRITICAL)])


def second_rules(bp: redgov.Backplane) -> Governance:
    return Governance(bp, gates=[ManualGate(to_state=S.APPROVED), ManualGate(to_state=S.RUNNING, approvals=2)],
                      policies=[ErrorRate(0.05, severity=Severity.CRITICAL)])


def publish_twice(bp: redgov.Backplane, scopes: list[tuple[str | None, str | None]] = SCOPES) -> None:
    """Two rules versions in each scope, with experiments written under each of them."""
    for tenant, environment in scopes:
        sc: dict[str, Any] = {"tenant": tenant, "environment": environment}
        assert first_rules(bp).publish(actor="admin", reason="four eyes before Approved", **sc).version == 1
        plain = Governance(bp)  # follows the published rules
        plain.create("exp", actor="op", **sc)
        plain.transition("exp", S.PENDING_APPROVAL, actor="op", **sc)
        plain.approve("exp", S.APPROVED, approver="lead", **sc)
        plain.transition("exp", S.APPROVED, actor="op", **sc)
        assert second_rules(bp).publish(actor="admin", reason="two approvals before Running", **sc).version == 2
        plain.create("later", actor="op", **sc)


def log_length(bp: redgov.Backplane) -> int:
    return sum(int(bp.client.xlen(Scope(bp.prefix, *sc).log)) for sc in SCOPES)


def watch_all(gov: Governance, count: int, **kwargs: Any) -> list[redgov.GovernanceEvent]:
    """The first ``count`` events of the scope's log (``from_id="0"``), waiting up to 15 s for them."""
    out: list[redgov.GovernanceEvent] = []
    for event in gov.watch(from_id="0", block_ms=100, timeout=15, **kwargs):
        out.append(event)
        if len(out) == count:
            break
    return out


def rules_hash_of(bp: redgov.Backplane, tenant: str | None, environment: str | None) -> dict[bytes, bytes]:
    return dict(bp.client.hgetall(Scope(bp.prefix, tenant, environment).rules))


def log_of(bp: redgov.Backplane, tenant: str | None, environment: str | None) -> list[Any]:
    return [(i, list(f.items())) for i, f in bp.client.xrange(Scope(bp.prefix, tenant, environment).log)]


def sql_rows(url: str, table: sa.Table) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table)).mappings()]
    finally:
        engine.dispose()


def assert_governed_by_the_published_rules(bp: redgov.Backplane, tenant: str | None,
                                           environment: str | None) -> None:
    """A Governance with no definition of its own is refused by the published ManualGates."""
    sc: dict[str, Any] = {"tenant": tenant, "environment": environment}
    plain = Governance(bp)
    plain.create("fresh", actor="op", **sc)
    plain.transition("fresh", S.PENDING_APPROVAL, actor="op", **sc)
    with pytest.raises(ApprovalRequiredError):
        plain.transition("fresh", S.APPROVED, actor="op", **sc)
    state = plain.state("fresh", **sc)
    assert state is not None and state.state is S.PENDING_APPROVAL
    # the restored experiment, Approved under version 1, now needs version 2's two approvals to run
    with pytest.raises(ApprovalRequiredError):
        plain.transition("exp", S.RUNNING, actor="op", telemetry={"errorRate": 0.01}, **sc)
    plain.approve("exp", S.RUNNING, approver="lead", **sc)
    with pytest.raises(ApprovalRequiredError):
        plain.transition("exp", S.RUNNING, actor="op", telemetry={"errorRate": 0.01}, **sc)
    plain.approve("exp", S.RUNNING, approver="second", **sc)
    plain.transition("exp", S.RUNNING, actor="op", telemetry={"errorRate": 0.01}, **sc)
    # a Governance of other rules is refused before it writes
    with pytest.raises(redgov.RulesMismatchError):
        Governance(bp, gates=[ManualGate(to_state=S.ARCHIVED)]).create("other", actor="op", **sc)


# -- export and restore --------------------------------------------------------------------


def test_published_rules_survive_export_and_restore(bp: redgov.Backplane, target: redgov.Backplane,
                                                    sql_url: str) -> None:
    publish_twice(bp)
    total = log_length(bp)
    summary = export(bp, sql_url, progress=False)
    assert (summary.scopes, summary.entries, summary.warnings) == (2, total, [])
    assert summary.experiments == 4  # exp and later in each scope: a rules entry is no experiment

    # the raw entries: no experiment, the number kept beside the record; the typed rows
    rules_entries = [r for r in sql_rows(sql_url, log_entries) if r["kind"] == "rules"]
    assert len(rules_entries) == 4
    assert {r["experiment"] for r in rules_entries} == {""}
    assert sorted(json.loads(r["extra"])["n"] for r in rules_entries) == ["1", "1", "2", "2"]
    typed = sql_rows(sql_url, rules_versions)
    for tenant, environment in SCOPES:
        history = Governance(bp).rules_history(tenant=tenant, environment=environment)
        rows = sorted((r for r in typed if (r["tenant"], r["environment"]) == (tenant, environment)),
                      key=lambda r: r["version"])
        assert [(r["version"], r["definition"], r["rules_hash"], r["created_by"], r["reason"]) for r in rows] == [
            (v.version, v.definition, v.rules_hash, v.created_by, v.reason) for v in history]

    done = restore(target, sql_url, progress=False)
    assert (done.scopes, done.entries, done.experiments) == (2, total, 4)
    source, restored = Governance(bp), Governance(target)
    for tenant, environment in SCOPES:
        sc: dict[str, Any] = {"tenant": tenant, "environment": environment}
        assert restored.published_rules(**sc) == source.published_rules(**sc)
        assert restored.published_rules(version=1, **sc) == source.published_rules(version=1, **sc)
        assert restored.rules_history(**sc) == source.rules_history(**sc)
        assert [v.version for v in restored.rules_history(**sc)] == [1, 2]
        # the rules hash byte for byte: every version, n, h and the compiled steps and gates
        assert rules_hash_of(target, tenant, environment) == rules_hash_of(bp, tenant, environment)
        assert log_of(target, tenant, environment) == log_of(bp, tenant, environment)
        assert_governed_by_the_published_rules(target, tenant, environment)
        # publishing goes on from the restored version: the same definition writes nothing, a new one is 3
        assert second_rules(target).publish(actor="admin", **sc).version == 2
        assert first_rules(target).publish(actor="admin", **sc).version == 3


def test_restore_follows_the_current_version_not_the_first(bp: redgov.Backplane, target: redgov.Backplane,
                                                          sqlite_url: str) -> None:
    """Version 2 drops the gate of version 1: the restored scope moves without approval."""
    first_rules(bp).publish(actor="admin")
    Governance(bp, policies=[ErrorRate(0.05, severity=Severity.CRITICAL)]).publish(actor="admin", reason="no gate")
    export(bp, sqlite_url, progress=False)
    restore(target, sqlite_url, progress=False)
    assert rules_hash_of(target, None, None) == rules_hash_of(bp, None, None)
    plain = Governance(target)
    plain.create("exp", actor="op")
    plain.transition("exp", S.PENDING_APPROVAL, actor="op")
    plain.transition("exp", S.APPROVED, actor="op")  # no ManualGate in version 2
    current = plain.published_rules()
    assert current is not None and current.version == 2 and current.definition["approvalGates"] == []


def test_a_scope_that_only_published_is_exported_and_restored(bp: redgov.Backplane, target: redgov.Backplane,
                                                              sqlite_url: str) -> None:
    first_rules(bp).publish(actor="admin", tenant="t", environment="e")
    summary = export(bp, sqlite_url, progress=False)
    assert (summary.scopes, summary.entries, summary.experiments) == (1, 1, 0)
    done = restore(target, sqlite_url, progress=False)
    assert (done.scopes, done.entries, done.experiments) == (1, 1, 0)
    assert rules_hash_of(target, "t", "e") == rules_hash_of(bp, "t", "e")
    assert Governance(target).published_rules(tenant="t", environment="e") == \
        Governance(bp).published_rules(tenant="t", environment="e")


def test_trim_keeps_the_rules_entries(bp: redgov.Backplane, target: redgov.Backplane, sqlite_url: str) -> None:
    """Trimming removes exported experiment entries; rules entries belong to no experiment and stay."""
    publish_twice(bp)
    export(bp, sqlite_url, progress=False, trim=True)
    trim(bp, sqlite_url)
    for tenant, environment in SCOPES:
        kinds = [dict(f)[b"k"] for _, f in log_of(bp, tenant, environment)]
        assert kinds.count(b"rules") == 2
        assert [v.version for v in Governance(bp).rules_history(tenant=tenant, environment=environment)] == [1, 2]
    done = restore(target, sqlite_url, progress=False)
    assert done.scopes == 2
    for tenant, environment in SCOPES:
        assert rules_hash_of(target, tenant, environment) == rules_hash_of(bp, tenant, environment)
        assert_governed_by_the_published_rules(target, tenant, environment)


def test_a_rules_entry_touches_no_experiment(bp: redgov.Backplane) -> None:
    """``follow --trim`` trims the experiments a batch touched: a rules entry is none of them."""
    first_rules(bp).publish(actor="admin")
    log = Scope(bp.prefix, None, None).log
    batch = Batch()
    batch.add(ScopeRow(1, bp.prefix, None, None, log), bp.client.xrange(log))
    assert len(batch) == 1 and batch.touched == {} and batch.writes == {}
    [row] = batch.entities["rules"]
    assert row[:6] == (1, *batch.parts[1].end, None, None, 1)


def _copied_versions(url: str) -> int:
    try:
        return len(sql_rows(url, rules_versions))
    except sa.exc.OperationalError:  # the follower has not created the schema yet
        return 0


def test_follow_with_trim_copies_rules_and_keeps_them(bp: redgov.Backplane, sqlite_url: str) -> None:
    stop = threading.Event()
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(
        follow(bp, sqlite_url, progress=False, stop=stop, block_ms=100, rediscover=0.2, handle_signals=False,
               trim=True)))
    worker.start()
    try:
        publish_twice(bp)
        total = log_length(bp)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (_copied_versions(sqlite_url) < 4 or log_length(bp) == total):
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(10)
    summary = result[0]
    assert summary.warnings == [] and summary.entries >= 4 and summary.trimmed > 0
    assert sorted(r["version"] for r in sql_rows(sqlite_url, rules_versions)) == [1, 1, 2, 2]
    for tenant, environment in SCOPES:
        kinds = [dict(f)[b"k"] for _, f in log_of(bp, tenant, environment)]
        assert kinds.count(b"rules") == 2
    assert total >= summary.entries


def test_a_copy_without_the_rules_table_gets_it_on_the_next_export(bp: redgov.Backplane, target: redgov.Backplane,
                                                                  sqlite_url: str) -> None:
    """A copy made before rules_versions existed (same schema version) is completed, not refused."""
    Governance(bp).create("exp", actor="op")
    export(bp, sqlite_url, progress=False)
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE rules_versions")
    finally:
        engine.dispose()
    first_rules(bp).publish(actor="admin")
    assert export(bp, sqlite_url, progress=False).entries == 1
    assert [r["version"] for r in sql_rows(sqlite_url, rules_versions)] == [1]
    restore(target, sqlite_url, progress=False)
    assert rules_hash_of(target, None, None) == rules_hash_of(bp, None, None)


def test_a_rules_version_that_cannot_be_compiled_restores_nothing(bp: redgov.Backplane, target: redgov.Backplane,
                                                                  sqlite_url: str) -> None:
    publish_twice(bp)
    export(bp, sqlite_url, progress=False)
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            rows = conn.execute(sa.select(log_entries.c.entry_ms, log_entries.c.entry_seq, log_entries.c.record)
                                .where(log_entries.c.kind == "rules")).all()
            for ms, seq, record in rows:
                data = json.loads(record)
                data["definition"]["approvalGates"] = [{"type": "manul", "toState": "Approved"}]
                conn.execute(sa.update(log_entries).where(log_entries.c.entry_ms == ms)
                             .where(log_entries.c.entry_seq == seq).values(record=json.dumps(data)))
    finally:
        engine.dispose()
    with pytest.raises(CorruptDataError, match="rules version 2 .* cannot be compiled"):
        restore(target, sqlite_url, progress=False)
    assert list(target.client.scan_iter(match=prefix_pattern(target.prefix), count=1000)) == []


def test_cluster_restore_rebuilds_the_rules(cluster: Cluster, sqlite_url: str) -> None:
    """On a Cluster the rules HSETs go with the XADDs, pipelined per scope (each scope on its own slot)."""
    source, dest = new_prefix(), new_prefix()
    scopes = spread_scopes(cluster, source)
    bp = redgov.connect(cluster.url, prefix=source)
    target = redgov.connect(cluster.url, prefix=dest)
    try:
        publish_twice(bp, scopes)
        export(bp, sqlite_url, progress=False)
        done = restore(target, sqlite_url, progress=False)
        assert done.scopes == 3 and done.experiments == 6
        for tenant, environment in scopes:
            assert rules_hash_of(target, tenant, environment) == rules_hash_of(bp, tenant, environment)
            sc: dict[str, Any] = {"tenant": tenant, "environment": environment}
            assert Governance(target).rules_history(**sc) == Governance(bp).rules_history(**sc)
            assert_governed_by_the_published_rules(target, tenant, environment)
    finally:
        for backplane, name in ((bp, source), (target, dest)):
            for key in list(backplane.client.scan_iter(match=prefix_pattern(name))):
                backplane.client.delete(key)
            backplane.close()


# -- watch ---------------------------------------------------------------------------------


def test_watch_yields_rules_events(bp: redgov.Backplane, target: redgov.Backplane, sqlite_url: str,
                                   redis_url: str) -> None:
    publish_twice(bp)
    history = Governance(bp).rules_history()
    length = int(bp.client.xlen(Scope(bp.prefix, None, None).log))
    events = watch_all(Governance(bp), length)
    assert len(events) == length
    rules = [e for e in events if e.kind == "rules"]
    assert [e.experiment for e in rules] == ["", ""]
    assert all(isinstance(e.record, RulesVersion) for e in rules)
    assert [e.record for e in rules] == history
    assert {e.experiment for e in events if e.kind != "rules"} == {"exp", "later"}
    # an experiments filter takes the experiments' events only, and does not trip over rules entries
    wanted = sum(1 for e in events if e.experiment == "exp")
    only = watch_all(Governance(bp), wanted, experiments=["exp"])
    assert len(only) == wanted and {e.experiment for e in only} == {"exp"}

    async def watch_async() -> list[redgov.GovernanceEvent]:
        async with redgov.aio.connect(redis_url, prefix=bp.prefix) as abp:
            gov = redgov.aio.AsyncGovernance(abp)
            out = []
            async with aclosing(gov.watch(from_id="0", block_ms=100, timeout=15)) as watched:
                async for event in watched:
                    out.append(event)
                    if len(out) == length:
                        break
            return [e for e in out if e.kind == "rules"]

    assert [e.record for e in asyncio.run(watch_async())] == history

    # the restored log replays the same events
    export(bp, sqlite_url, progress=False)
    restore(target, sqlite_url, progress=False)
    replayed = watch_all(Governance(target), length)
    assert [(e.id, e.kind, e.experiment, e.record) for e in replayed] == [
        (e.id, e.kind, e.experiment, e.record) for e in events]
