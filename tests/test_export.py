"""The durable SQL copy: export, follow, restore, trim and the archive, on real Redis.

SQL engines: SQLite in tmp_path, and the PostgreSQL at 127.0.0.1:5432 (database
``test``, trust auth), each test in its own schema (``search_path`` in the url).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import redgov
from redgov import (
    ErrorRate,
    Governance,
    LifecycleState,
    ManualGate,
    PolicyViolationError,
    RoleGate,
    TrafficLimit,
)
from redgov.keys import Scope, prefix_pattern, scope_pattern
from redgov.records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    PolicyEvaluation,
    Severity,
    StateTransition,
)
from redgov.sql import SqlArchive, SqlCopyError, export, follow, restore, trim
from redgov.sql.copy import SqlCopy
from redgov.sql.restorer import INDEX_CHUNK
from redgov.sql.schema import ENTITY_TABLES, SCHEMA_VERSION, experiment_states, log_entries, metadata, schema_table

from .conftest import new_prefix
from .test_cluster import Cluster, cluster_fixture, spread_scopes  # noqa: F401 - the module's "cluster" fixture

PG_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
S = LifecycleState
SCOPES: list[tuple[str | None, str | None]] = [(None, None), ("acme", "prod")]
ROOT = Path(__file__).resolve().parent.parent


# -- fixtures ------------------------------------------------------------------------------


def _pg_admin(statement: str) -> None:
    engine = sa.create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture(name="pg_url")  # a function name of its own: test_export_rules imports it
def pg_url_fixture() -> Iterator[str]:
    schema = "redgov_" + uuid.uuid4().hex[:10]
    _pg_admin(f"CREATE SCHEMA {schema}")
    yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    _pg_admin(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"], name="sql_url")  # imported by test_export_rules
def sql_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'copy.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(name="sqlite_url")  # a function name of its own: test_export_rules imports it
def sqlite_url_fixture(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'copy.db'}"


def delete_prefix(client: Any, prefix: str) -> None:
    """Delete every key of a prefix (``<prefix>{...``)."""
    keys = list(client.scan_iter(match=prefix_pattern(prefix), count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])


def prefix_keys(client: Any, prefix: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=prefix_pattern(prefix), count=1000))


@pytest.fixture(name="bp")  # a function name of its own: test_export_rules imports it
def bp_fixture(redis_url: str, prefix: str) -> Iterator[redgov.Backplane]:
    backplane = redgov.connect(redis_url, prefix=prefix)
    yield backplane
    delete_prefix(backplane.client, prefix)
    backplane.close()


@pytest.fixture(name="target")  # a function name of its own: test_export_rules imports it
def target_fixture(redis_url: str) -> Iterator[redgov.Backplane]:
    """An empty prefix to restore into."""
    other = new_prefix()
    backplane = redgov.connect(redis_url, prefix=other)
    yield backplane
    delete_prefix(backplane.client, other)
    backplane.close()


def governance(bp: redgov.Backplane) -> Governance:
    return Governance(bp, gates=[ManualGate(to_state=S.APPROVED), RoleGate("sre", to_state=S.RAMPING)],
                      policies=[TrafficLimit(50), ErrorRate(0.1), redgov.ConflictPrevention("a", "b")])


def build_history(bp: redgov.Backplane, scopes: list[tuple[str | None, str | None]] = SCOPES) -> None:
    """Every kind of entry, every script, in each scope."""
    gov = governance(bp)
    for tenant, environment in scopes:
        sc: dict[str, Any] = {"tenant": tenant, "environment": environment}
        gov.create("a", configuration={"rollout": {"steps": [1, 5, 50]}}, actor="ana", metadata={"team": "g"}, **sc)
        gov.transition("a", S.PENDING_APPROVAL, actor="ana", **sc)
        gov.approve("a", S.APPROVED, approver="bob", **sc)
        gov.approve("a", S.APPROVED, approver="bob", approved=False, reason="not yet", **sc)  # withdraws it
        gov.approve("a", S.APPROVED, approver="carl", **sc)
        gov.transition("a", S.APPROVED, actor="ana", **sc)  # consumes carl's approval
        gov.transition("a", S.RUNNING, telemetry={"trafficPercentage": 10}, **sc)
        gov.transition("a", S.RAMPING, metadata={"actorRole": "sre"}, actor="sam", **sc)  # role gate approval
        with pytest.raises(PolicyViolationError):
            gov.transition("a", S.RUNNING, telemetry={"trafficPercentage": 90}, **sc)  # refused, evaluations kept
        gov.create_version("a", {"rollout": {"steps": [1, 10]}}, actor="ana", description="faster", **sc)
        gov.rollback("a", 1, actor="ana", **sc)
        gov.create("b", **sc)
        gov.transition("b", S.PENDING_APPROVAL, **sc)
        gov.approve("b", S.APPROVED, approver="bob", **sc)
        gov.transition("b", S.APPROVED, **sc)
        with pytest.raises(PolicyViolationError):
            gov.transition("b", S.RUNNING, **sc)  # conflict group, decided inside the script
        gov.evaluate_policies("b", telemetry={"errorRate": 0.5}, **sc)
        gov.create("c", **sc)
        gov.transition("c", S.PENDING_APPROVAL, **sc)
        gov.approve("c", S.APPROVED, approver="bob", valid_for=timedelta(hours=1), **sc)  # pending, expiring
        lease = gov.acquire_lease("c", owner="ctl", ttl=timedelta(seconds=30), **sc)  # lt (not exported: leases
        gov.create_version("c", {"x": 1}, lease=lease, **sc)                        # live in Redis only)
        # the plain Backplane scripts
        saved = bp.save_state(ExperimentState(experiment="d", state=S.DRAFT, metadata={"k": [1, 2]}, **sc))
        assert saved.ok
        bp.save_state(ExperimentState(experiment="d", state=S.PENDING_APPROVAL, last_modified_by="x", **sc),
                      expected_etag=saved.etag)
        moved = bp.append_transition(StateTransition(experiment="d", from_state=S.DRAFT,
                                                     to_state=S.PENDING_APPROVAL, actor="x", **sc))
        bp.append_approval(ApprovalRecord(experiment="d", to_state=S.PENDING_APPROVAL, approved=True,
                                          transition_id=moved.transition_id, approver="y", **sc))
        bp.append_version(ConfigurationVersion(experiment="d", version=1, configuration={"a": 1}, **sc))
        bp.append_policy_evaluation(PolicyEvaluation(experiment="d", policy="p", compliant=False,
                                                     severity=Severity.WARNING, **sc))


def experiments(bp: redgov.Backplane, scopes: list[tuple[str | None, str | None]] = SCOPES
                ) -> list[tuple[str | None, str | None, str]]:
    out = []
    for tenant, environment in scopes:
        index = Scope(bp.prefix, tenant, environment).index
        out += [(tenant, environment, k.decode()) for k in bp.client.zrange(index, 0, -1)]
    return out


#: keys that are caches, not history (restore does not write them): idempotency records, leases and
#: the re-send dedupe buckets
_NOT_RESTORED = ("i", "k", "ops")


def dump(client: Any, prefix: str) -> dict[str, Any]:
    """Every key of a prefix (caches aside) and its content, the prefix replaced by P."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(match=prefix_pattern(prefix), count=1000):
        key = raw.decode()
        if key[key.index("}") + 2:].split(":")[0] in _NOT_RESTORED:
            continue
        kind = client.type(raw).decode()
        value: Any
        if kind == "stream":
            value = [(i, list(f.items())) for i, f in client.xrange(raw)]
        elif kind == "list":
            value = client.lrange(raw, 0, -1)
        elif kind == "hash":
            value = client.hgetall(raw)
            value.pop(b"lt", None)  # the last lease token: leases live in Redis only (tokens also grow by time)
            # open approvals and requests: a restore writes the state field, so they lapse (API.md)
            value = {f: v for f, v in value.items() if not (f[:2] in (b"p:", b"q:") or f in (b"pn", b"lv"))}
            if not value:  # only open approvals of an experiment never created
                continue
        elif kind == "zset":
            value = client.zrange(raw, 0, -1, withscores=True)
        else:
            value = (kind, client.get(raw))
        out["P" + key[len(prefix):]] = value
    return out


def log_length(bp: redgov.Backplane, scopes: list[tuple[str | None, str | None]] = SCOPES) -> int:
    return sum(int(bp.client.xlen(Scope(bp.prefix, *sc).log)) for sc in scopes)


def count_rows(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                    for t in metadata.sorted_tables}
    finally:
        engine.dispose()


def sql_rows(url: str, table: sa.Table) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table)).mappings()]
    finally:
        engine.dispose()


# -- export, restore, verify ------------------------------------------------------------------


def test_export_restore_verify_round_trip(bp: redgov.Backplane, target: redgov.Backplane, sql_url: str) -> None:
    build_history(bp)
    total = log_length(bp)
    summary = export(bp, sql_url, progress=False)
    assert (summary.scopes, summary.entries, summary.warnings) == (2, total, [])
    assert summary.experiments == 8  # every experiment with a state, in both scopes
    rows = count_rows(sql_url)
    assert rows["log_entries"] == total
    kinds = [e.kind for sc in SCOPES for e in _entries(bp, sc)]
    for kind, table in ENTITY_TABLES.items():
        assert rows[table.name] == kinds.count(kind), kind
    assert rows["experiment_states"] == 8 and rows["scopes"] == 2 and rows["export_cursors"] == 2

    # the current states in SQL are the stored ones
    for row in sql_rows(sql_url, experiment_states):
        stored = bp.get_state(row["experiment"], tenant=row["tenant"], environment=row["environment"])
        assert stored is not None
        assert (row["state"], row["revision"], row["etag"], row["config_version"], row["last_modified_by"],
                row["metadata"]) == (stored.state.value, stored.revision, stored.etag, stored.config_version,
                                     stored.last_modified_by, stored.metadata)
    # the consumed manual approval names its transition in SQL, as approvals() does
    approvals = [a for a in bp.approvals("a") if a.approver == "carl"]
    engine = sa.create_engine(sql_url)
    try:
        with engine.connect() as conn:
            tids = {r.approval_id: r.transition_id for r in conn.execute(sa.select(ENTITY_TABLES["approval"]))}
    finally:
        engine.dispose()
    assert approvals[0].transition_id is not None and tids[approvals[0].approval_id] == approvals[0].transition_id

    # the entity tables hold what the API reads
    api = {"transition": [], "approval": [], "version": [], "policy": []}
    for tenant, environment, name in experiments(bp):
        sc = {"tenant": tenant, "environment": environment}
        api["transition"] += [(name, t.transition_id, _v(t.from_state), t.to_state.value, t.actor, t.timestamp)
                              for t in bp.transitions(name, **sc)]
        api["approval"] += [(name, a.approval_id, a.transition_id, _v(a.from_state), a.to_state.value, a.approved,
                             a.gate) for a in bp.approvals(name, **sc)]
        api["version"] += [(name, v.version, _v(v.lifecycle_state), v.configuration, v.is_rollback,
                            v.rolled_back_from) for v in bp.versions(name, **sc)]
        api["policy"] += [(name, e.policy, _v(e.current_state), _v(e.target_state), e.compliant, e.severity.value)
                          for e in bp.policy_evaluations(name, **sc)]
    tables = {kind: sql_rows(sql_url, table) for kind, table in ENTITY_TABLES.items()}
    assert sorted(api["transition"], key=repr) == sorted(
        [(r["experiment"], r["transition_id"], r["from_state"], r["to_state"], r["actor"], _utc(r["timestamp"]))
         for r in tables["transition"]], key=repr)
    assert sorted(api["approval"], key=repr) == sorted(
        [(r["experiment"], r["approval_id"], r["transition_id"], r["from_state"], r["to_state"], r["approved"],
          r["gate"]) for r in tables["approval"]], key=repr)
    assert sorted(api["version"], key=repr) == sorted(
        [(r["experiment"], r["version"], r["lifecycle_state"], r["configuration"], r["is_rollback"],
          r["rolled_back_from"]) for r in tables["version"]], key=repr)
    assert sorted(api["policy"], key=repr) == sorted(
        [(r["experiment"], r["policy"], r["current_state"], r["target_state"], r["compliant"], r["severity"])
         for r in tables["policy"]], key=repr)

    # re-running adds nothing
    again = export(bp, sql_url, progress=False)
    assert again.entries == 0 and count_rows(sql_url) == rows

    done = restore(target, sql_url, progress=False)
    assert (done.scopes, done.entries, done.source_prefix) == (2, total, bp.prefix)
    restored = Governance(target)
    for tenant, environment, name in experiments(target):
        assert restored.verify(name, tenant=tenant, environment=environment) == [], name
    assert experiments(target) == experiments(bp)
    # every key, byte for byte: streams with their ids and field order, every index
    assert dump(target.client, target.prefix) == dump(bp.client, bp.prefix)
    # and the restored copy governs: c's open approval lapsed with the restore (a restore writes the
    # state field, as every write of it lapses what was open), so the gate wants it again
    with pytest.raises(redgov.ApprovalRequiredError):
        governance(target).transition("c", S.APPROVED, tenant="acme", environment="prod")
    governance(target).approve("c", S.APPROVED, approver="bob", tenant="acme", environment="prod")
    moved = governance(target).transition("c", S.APPROVED, tenant="acme", environment="prod")
    assert moved.from_state is S.PENDING_APPROVAL
    assert governance(target).backplane.approvals_for_transition(moved.transition_id, tenant="acme",
                                                                  environment="prod")[0].approver == "bob"


def _v(state: Any) -> str | None:
    return None if state is None else str(state.value)


def _utc(moment: Any) -> Any:
    from redgov.sql.schema import utc

    return utc(moment)


def _entries(bp: redgov.Backplane, scope: tuple[str | None, str | None]) -> list[Any]:
    from redgov.codec import decode_fields

    log = Scope(bp.prefix, *scope).log
    return [decode_fields(i.decode(), {k.decode(): v for k, v in f.items()}, log) for i, f in bp.client.xrange(log)]


def test_restore_indexes_like_the_write_scripts(bp: redgov.Backplane, target: redgov.Backplane,
                                               sqlite_url: str) -> None:
    """Corner cases of the indexes: every key of the restored prefix equals the original, byte for byte."""
    gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("withdrawn")
    gov.transition("withdrawn", S.PENDING_APPROVAL)
    gov.approve("withdrawn", S.APPROVED, approver="bob")
    gov.approve("withdrawn", S.APPROVED, approver="bob", approved=False)  # no approval pending: a count of 0
    gov.transition("withdrawn", S.REJECTED)  # leaves the count as it is
    gov.transition("withdrawn", S.DRAFT)
    # the seed interface right after a state write: an appended transition is indexed by its id
    saved = bp.save_state(ExperimentState(experiment="seeded", state=S.DRAFT, last_modified_by="x"))
    assert saved.state is not None
    bp.append_transition(StateTransition(experiment="seeded", to_state=S.DRAFT, actor="x",
                                         timestamp=saved.state.last_modified))
    lenient = Governance(bp, gates=[ManualGate(to_state=S.APPROVED)], auto_create=True)
    lenient.approve("never-created", S.PENDING_APPROVAL, approver="ann")  # approvals of a move from Draft
    # a history longer than one restore_index call
    for i in range(INDEX_CHUNK + 20):
        bp.append_policy_evaluation(PolicyEvaluation(experiment="long", policy=f"p{i % 3}", compliant=True,
                                                     severity=Severity.INFO))
    gov.create("long")
    export(bp, sqlite_url, progress=False)
    done = restore(target, sqlite_url, progress=False)
    assert done.experiments == 4
    assert dump(target.client, target.prefix) == dump(bp.client, bp.prefix)
    restored = Governance(target)
    for _tenant, _environment, name in experiments(target, [(None, None)]):
        assert restored.verify(name) == [], name
    assert target.latest_policy_evaluation("long", "p1") == bp.latest_policy_evaluation("long", "p1")
    with pytest.raises(redgov.ConflictError):  # the appended transition's id is known to the restored prefix
        target.append_transition(bp.transitions("seeded")[-1])


def test_restore_index_calls_sent_twice_index_once(bp: redgov.Backplane, target: redgov.Backplane, sqlite_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A Cluster client re-sends a script call whose reply was lost: every restore_index call twice
    must leave the same keys as once."""
    from redgov.sql import restorer as restorer_module

    gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED)])
    gov.create("twice")
    gov.transition("twice", S.PENDING_APPROVAL)
    gov.approve("twice", S.APPROVED, approver="bob")
    gov.transition("twice", S.APPROVED)
    for i in range(INDEX_CHUNK + 5):
        bp.append_policy_evaluation(PolicyEvaluation(experiment="many", policy=f"p{i % 2}", compliant=True,
                                                     severity=Severity.INFO))
    export(bp, sqlite_url, progress=False)
    once = restorer_module.ScopeRebuild.commands

    def twice(self: Any) -> Any:
        for command in once(self):
            yield command
            if isinstance(command, restorer_module.IndexCall):
                yield command  # the re-send

    monkeypatch.setattr(restorer_module.ScopeRebuild, "commands", twice)
    restore(target, sqlite_url, progress=False)
    assert dump(target.client, target.prefix) == dump(bp.client, bp.prefix)
    assert Governance(target).verify("twice") == [] and Governance(target).verify("many") == []


def test_interrupted_export_resumes(bp: redgov.Backplane, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build_history(bp)
    from redgov.sql import write as sqlwrite

    real = sqlwrite.Writer.commit
    calls = {"n": 0}

    def failing(self: sqlwrite.Writer, batch: sqlwrite.Batch) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk on fire")
        return real(self, batch)

    monkeypatch.setattr(sqlwrite.Writer, "commit", failing)
    with pytest.raises(RuntimeError):
        export(bp, sqlite_url, progress=False, chunk=7)
    partial = count_rows(sqlite_url)["log_entries"]
    assert partial == 21  # three committed batches of 7; the fourth wrote nothing
    monkeypatch.setattr(sqlwrite.Writer, "commit", real)
    summary = export(bp, sqlite_url, progress=False, chunk=7)
    assert summary.entries == log_length(bp) - partial
    rows = count_rows(sqlite_url)
    assert rows["log_entries"] == log_length(bp)
    with SqlCopy(sqlite_url, create=False) as copy:
        for row in copy.scopes():
            got = list(copy.read_log(row.scope_id))
            want = [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in bp.client.xrange(row.log_key)]
            assert got == want
            assert row.cursor == want[-1][0] and row.entries == len(want)


def test_concurrent_exporters_write_each_entry_once(bp: redgov.Backplane, redis_url: str, sql_url: str) -> None:
    build_history(bp)
    export(bp, sql_url, progress=False, chunk=3)  # creates the schema and the scopes first
    gov = Governance(bp)
    for i in range(60):
        gov.create(f"x{i}", tenant="acme" if i % 2 else None, environment="prod" if i % 2 else None)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        other = redgov.connect(redis_url, prefix=bp.prefix)
        try:
            results.append(export(other, sql_url, progress=False, chunk=3))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            other.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(r.entries for r in results) == 120  # each new entry written by exactly one of them
    assert count_rows(sql_url)["log_entries"] == log_length(bp)


def test_restore_refuses_a_non_empty_prefix_unless_forced(bp: redgov.Backplane, sqlite_url: str) -> None:
    build_history(bp)
    export(bp, sqlite_url, progress=False)
    before = dump(bp.client, bp.prefix)
    extra = bp.save_state(ExperimentState(experiment="late", state=S.DRAFT))  # not in the copy
    with pytest.raises(SqlCopyError, match="not empty"):
        restore(bp, sqlite_url, progress=False)
    assert bp.get_state("late") == extra.state
    done = restore(bp, sqlite_url, progress=False, force=True)
    assert done.replaced_keys > 0
    # the copy's scopes are replaced by the copy; the experiment written since is gone with them
    assert dump(bp.client, bp.prefix) == before
    assert bp.get_state("late") is None


def test_restore_is_all_or_nothing_per_scope(bp: redgov.Backplane, target: redgov.Backplane, sqlite_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    build_history(bp)
    export(bp, sqlite_url, progress=False)
    from redgov.sql import restorer as restore_module

    real = restore_module.ScopeRebuild.commands
    seen = {"scopes": 0}

    def failing(self: restore_module.ScopeRebuild) -> Iterator[tuple[Any, ...] | restore_module.IndexCall]:
        seen["scopes"] += 1
        calls = 0
        for command in real(self):
            calls += isinstance(command, restore_module.IndexCall)
            if seen["scopes"] == 2 and calls == 2:  # every XADD and a restore_index call are queued
                raise RuntimeError("lost the SQL connection")
            yield command

    monkeypatch.setattr(restore_module.ScopeRebuild, "commands", failing)
    with pytest.raises(RuntimeError):
        restore(target, sqlite_url, progress=False)
    written = {k.split("}")[0] for k in prefix_keys(target.client, target.prefix)}
    assert len(written) == 1  # the first scope whole, nothing at all of the second
    monkeypatch.setattr(restore_module.ScopeRebuild, "commands", real)
    restore(target, sqlite_url, progress=False, force=True)
    assert dump(target.client, target.prefix) == dump(bp.client, bp.prefix)


def test_a_restore_the_server_refuses_midway_leaves_nothing_of_the_scope(
        bp: redgov.Backplane, target: redgov.Backplane, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build_history(bp, [(None, None)])
    export(bp, sqlite_url, progress=False)
    from redgov.sql import restorer as restore_module

    real = restore_module.ScopeRebuild.commands

    def refused(self: restore_module.ScopeRebuild) -> Iterator[tuple[Any, ...] | restore_module.IndexCall]:
        for command in real(self):
            if isinstance(command, restore_module.IndexCall) and command.experiment == "b":
                command = restore_module.IndexCall("b", command.keys, (*command.args, "1-1"))  # not in the log
            yield command

    monkeypatch.setattr(restore_module.ScopeRebuild, "commands", refused)
    with pytest.raises(redgov.CorruptDataError, match="nothing of it was restored"):
        restore(target, sqlite_url, progress=False)
    assert prefix_keys(target.client, target.prefix) == []  # the XADDs EXEC applied are deleted again


def test_prefixes_stay_apart(bp: redgov.Backplane, redis_url: str, target: redgov.Backplane,
                             sqlite_url: str) -> None:
    similar = redgov.connect(redis_url, prefix=bp.prefix + "x")  # shares the first characters
    try:
        bp.save_state(ExperimentState(experiment="mine", state=S.DRAFT))
        similar.save_state(ExperimentState(experiment="theirs", state=S.DRAFT, tenant="t"))
        assert export(bp, sqlite_url, progress=False).scopes == 1
        assert export(similar, sqlite_url, progress=False).scopes == 1
        with pytest.raises(SqlCopyError, match="holds the prefixes"):
            restore(target, sqlite_url, progress=False)  # which one?
        with pytest.raises(SqlCopyError, match="no scope of prefix 'nope'"):
            restore(target, sqlite_url, progress=False, source_prefix="nope")
        done = restore(target, sqlite_url, progress=False, source_prefix=similar.prefix)
        assert done.entries == 1 and target.get_state("theirs", tenant="t") is not None
        assert target.get_state("mine") is None
    finally:
        delete_prefix(similar.client, similar.prefix)
        similar.close()


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from redgov.sql.copy import progress_bar

    assert progress_bar(True, 10, "export") is None  # pytest's stderr is not a terminal
    assert progress_bar(False, 10, "export") is None

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    bar = progress_bar(True, 10, "export")
    assert bar is not None
    bar.update(10)
    bar.close()
    assert "export" in screen.getvalue()


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("url, message", [
    ("nosuchdb://x/y", "unknown database dialect"),
    ("postgresql+psycopg://postgres@127.0.0.1:1/test", "cannot reach the database"),
    ("this is not a url", "not a database url"),
    ("", "needs a database url"),
])
def test_bad_database_urls(bp: redgov.Backplane, url: str, message: str) -> None:
    bp.save_state(ExperimentState(experiment="e", state=S.DRAFT))
    with pytest.raises(SqlCopyError, match=message):
        export(bp, url, progress=False)
    with pytest.raises(SqlCopyError, match=message):
        restore(bp, url, progress=False)


def test_unreachable_sqlite_directory(bp: redgov.Backplane, tmp_path: Path) -> None:
    with pytest.raises(SqlCopyError, match="cannot reach"):
        export(bp, f"sqlite:///{tmp_path / 'missing' / 'copy.db'}", progress=False)


def test_incompatible_schema_version_is_refused(bp: redgov.Backplane, target: redgov.Backplane,
                                                sql_url: str) -> None:
    build_history(bp)
    export(bp, sql_url, progress=False)
    engine = sa.create_engine(sql_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(schema_table).values(version=99))
    finally:
        engine.dispose()
    before = count_rows(sql_url)
    bp.save_state(ExperimentState(experiment="new", state=S.DRAFT))
    for attempt in (lambda: export(bp, sql_url, progress=False), lambda: restore(target, sql_url, progress=False),
                    lambda: trim(bp, sql_url), lambda: SqlArchive(sql_url)):
        with pytest.raises(SqlCopyError, match="schema version 99"):
            attempt()
    assert count_rows(sql_url) == before
    assert prefix_keys(target.client, target.prefix) == []


def test_reading_a_copy_that_does_not_exist_creates_no_file(bp: redgov.Backplane, target: redgov.Backplane,
                                                            tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    url = f"sqlite:///{missing}"
    for attempt in (lambda: SqlArchive(url), lambda: trim(bp, url), lambda: restore(target, url, progress=False)):
        with pytest.raises(SqlCopyError, match="does not exist"):
            attempt()
    assert not missing.exists()
    assert export(bp, url, progress=False).url  # exporting creates it
    assert missing.exists()


def test_a_database_that_is_not_a_copy_is_refused(bp: redgov.Backplane, sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE scopes (id INTEGER)")
    finally:
        engine.dispose()
    with pytest.raises(SqlCopyError, match="not a redgov copy"):
        export(bp, sqlite_url, progress=False)
    with pytest.raises(SqlCopyError, match="no redgov SQL copy"):
        restore(bp, sqlite_url, progress=False)


def test_empty_tables_of_an_interrupted_creation_are_completed(bp: redgov.Backplane, sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    try:
        metadata.create_all(engine, tables=[log_entries, experiment_states])  # as if killed mid-creation
    finally:
        engine.dispose()
    build_history(bp)
    assert export(bp, sqlite_url, progress=False).entries == log_length(bp)


def test_schema_compiles_for_mysql_and_sql_server() -> None:
    from sqlalchemy.dialects import mssql, mysql
    from sqlalchemy.schema import CreateIndex, CreateTable

    for dialect in (mysql.dialect(), mssql.dialect()):
        for table in metadata.sorted_tables:
            assert "CREATE TABLE" in str(CreateTable(table).compile(dialect=dialect))
            for index in table.indexes:
                assert "CREATE" in str(CreateIndex(index).compile(dialect=dialect))
    text = str(CreateIndex(next(i for i in log_entries.indexes)).compile(dialect=mysql.dialect()))
    assert "experiment(191)" in text  # long names take a prefix index on MySQL


# -- trim and the archive -----------------------------------------------------------------------


def test_trim_never_removes_an_unexported_entry(bp: redgov.Backplane, sql_url: str) -> None:
    build_history(bp)
    export(bp, sql_url, progress=False)
    gov = governance(bp)
    exported = {sc: [i for i, _ in bp.client.xrange(Scope(bp.prefix, *sc).log)] for sc in SCOPES}
    gov.transition("a", S.PAUSED, actor="ana")  # written after the export: not in the copy
    gov.approve("c", S.APPROVED, approver="dora", tenant="acme", environment="prod")
    later = {sc: [i for i, _ in bp.client.xrange(Scope(bp.prefix, *sc).log)][len(exported[sc]):] for sc in SCOPES}
    assert all(later.values())

    states = {(t, e, name): bp.get_state(name, tenant=t, environment=e) for t, e, name in experiments(bp)}

    kept = trim(bp, sql_url, keep=__import__("datetime").timedelta(hours=1))  # everything is younger
    assert kept.trimmed == 0 and kept.experiments == len(states)
    summary = trim(bp, sql_url)
    assert summary.trimmed == sum(len(v) for v in exported.values())
    assert (summary.scopes, summary.experiments, summary.remaining) == (2, len(states),
                                                                       sum(len(v) for v in later.values()))
    for sc in SCOPES:
        left = [i for i, _ in bp.client.xrange(Scope(bp.prefix, *sc).log)]
        assert left == later[sc]  # every unexported entry is still there, and only those
    # what Redis holds still reads, indexed: the unexported transition, the pending approval
    assert [t.to_state for t in gov.history("a")] == [S.PAUSED]
    assert [a.approver for a in bp.approvals("c", tenant="acme", environment="prod")] == ["dora"]
    for (tenant, environment, name), state in states.items():  # the state and its replay are untouched
        assert bp.get_state(name, tenant=tenant, environment=environment) == state
        assert gov.verify(name, tenant=tenant, environment=environment) == [], name
    assert trim(bp, sql_url).trimmed == 0  # nothing more is exported
    # export again, then trim as part of the export
    done = export(bp, sql_url, progress=False, trim=True)
    assert done.entries == sum(len(v) for v in later.values())
    # everything exported is trimmed from the history; c's open approval by dora stays in the log until it
    # is consumed or lapses (no trim removes an open approval)
    assert done.trimmed == done.entries and log_length(bp) == 1
    kept = _entries(bp, ("acme", "prod"))
    assert [(e.kind, e.record.approver) for e in kept] == [("approval", "dora")]


def test_trimmed_history_reads_whole_through_the_archive(bp: redgov.Backplane, redis_url: str,
                                                         sql_url: str) -> None:
    build_history(bp)
    gov = governance(bp)
    reads = {}
    for tenant, environment, name in experiments(bp):
        sc: dict[str, Any] = {"tenant": tenant, "environment": environment}
        reads[(tenant, environment, name)] = (
            gov.history(name, **sc), bp.approvals(name, **sc), bp.versions(name, **sc),
            bp.policy_evaluations(name, **sc), gov.replay(name, **sc), bp.state_writes(name, **sc))
    export(bp, sql_url, progress=False, trim=True)
    assert log_length(bp) == 0
    assert gov.history("a") == []  # trimmed, and no archive configured
    with SqlArchive(sql_url) as archive:
        archived = redgov.connect(redis_url, prefix=bp.prefix, archive=archive)
        agov = Governance(archived)
        try:
            for (tenant, environment, name), want in reads.items():
                sc = {"tenant": tenant, "environment": environment}
                got = (agov.history(name, **sc), archived.approvals(name, **sc), archived.versions(name, **sc),
                       archived.policy_evaluations(name, **sc), agov.replay(name, **sc),
                       archived.state_writes(name, **sc))
                assert got == want, name
                assert agov.verify(name, **sc) == []
            tid = next(t for t in reads[(None, None, "a")][0] if t.to_state is S.APPROVED).transition_id
            assert [a.approver for a in archived.approvals_for_transition(tid)] == ["carl"]
            ramp = next(t for t in reads[(None, None, "a")][0] if t.to_state is S.RAMPING).transition_id
            assert [a.gate for a in archived.approvals_for_transition(ramp)] == ["roleBased:*->Ramping"]  # a role gate
            assert archived.approvals_for_transition("no-such-transition") == []
            # limit and newest_first, read from the archive alone
            history, approvals, versions, evaluations = reads[(None, None, "a")][:4]
            for limit in (None, 0, 1, 3, 100):
                for newest in (False, True):
                    def cut(items: list[Any], newest: bool = newest, limit: int | None = limit) -> list[Any]:
                        ordered = items[::-1] if newest else items
                        return ordered if limit is None else ordered[:limit]

                    kw: dict[str, Any] = {"limit": limit, "newest_first": newest}
                    assert agov.history("a", **kw) == cut(history)
                    assert archived.approvals("a", **kw) == cut(approvals)
                    assert archived.versions("a", **kw) == cut(versions)
                    assert archived.policy_evaluations("a", **kw) == cut(evaluations)
        finally:
            archived.close()


def test_retained_history_reads_whole_through_the_archive(redis_url: str, prefix: str, sql_url: str) -> None:
    """retain_history=10 keeps about 10 entries per experiment in Redis; an exporter run often enough
    copies every entry before retention removes it, and the archive gives the whole history back."""
    from redgov.sql.exporter import Exporter

    bp = redgov.connect(redis_url, prefix=prefix, retain_history=10)
    sc: dict[str, Any] = {"tenant": "acme", "environment": "prod"}
    warnings: list[str] = []
    sql = SqlCopy(sql_url, create=True)

    def copy() -> None:  # export(bp, sql_url), without opening the database each time
        exporter = Exporter(bp, sql)
        exporter.snapshot()
        warnings.extend(exporter.finish().warnings)

    try:
        gov = Governance(bp, gates=[ManualGate(to_state=S.RUNNING, from_state=S.PAUSED)], policies=[TrafficLimit(50)])
        gov.create("busy", configuration={"round": 0}, actor="ana", **sc)
        gov.create("quiet", actor="bob", **sc)  # one experiment's retention never evicts another's history
        copy()
        made = 1  # create wrote the first transition
        moves = [S.PENDING_APPROVAL, S.APPROVED] + [S.RUNNING, S.PAUSED] * 200
        while made < 401:
            target = moves[made - 1]
            if target is S.RUNNING and made > 3:
                gov.approve("busy", S.RUNNING, approver=f"lead{made}", **sc)
            gov.transition("busy", target, actor="ana", telemetry={"trafficPercentage": 10}, **sc)
            made += 1
            if made % 50 == 0:
                gov.create_version("busy", {"round": made}, actor="ana", **sc)
            if made % 2 == 0:  # at most 6 entries between two exports, while retention keeps 10
                copy()
        copy()
        assert warnings == []
        history_key = Scope(prefix, "acme", "prod").experiment("busy").history
        assert bp.client.llen(history_key) <= 11  # Redis holds about 10 entries of the experiment
        assert len(gov.history("busy", **sc)) < 20  # and without an archive the reads end there
        assert len(gov.history("quiet", **sc)) == 1
        assert gov.verify("busy", **sc) == []  # the fold starts from the state kept at the cut

        archived = redgov.connect(redis_url, prefix=prefix, retain_history=10, archive=SqlArchive(sql_url))
        try:
            agov = Governance(archived)
            history = agov.history("busy", **sc)
            assert len(history) == 401 and archived.transitions("busy", **sc) == history
            assert history[0].reason == "created" and history[0].from_state is None
            assert all(a.to_state is b.from_state for a, b in zip(history[1:], history[2:], strict=False))
            assert len({t.transition_id for t in history}) == 401
            rows = [r for r in sql_rows(sql_url, ENTITY_TABLES["transition"]) if r["experiment"] == "busy"]
            assert [t.transition_id for t in history] == [
                r["transition_id"] for r in sorted(rows, key=lambda r: (r["entry_ms"], r["entry_seq"]))]
            assert agov.verify("busy", **sc) == [] and agov.replay("busy", **sc) == agov.state("busy", **sc)
            writes_seen = archived.state_writes("busy", **sc)
            assert writes_seen[-1] == agov.state("busy", **sc)
            assert [w.revision for w in writes_seen] == list(range(1, len(writes_seen) + 1))

            approvals = archived.approvals("busy", **sc)
            assert len(approvals) == 198 and all(a.transition_id for a in approvals)
            by_tid = {t.transition_id: t for t in history}
            for approval in approvals:  # each consumed by the Paused -> Running move after it
                moved = by_tid[str(approval.transition_id)]
                assert (moved.from_state, moved.to_state) == (S.PAUSED, S.RUNNING)
            oldest = approvals[0]
            assert archived.approvals_for_transition(str(oldest.transition_id), **sc) == [oldest]

            evaluations = archived.policy_evaluations("busy", **sc)
            assert len(evaluations) == 400  # one per transition
            assert archived.latest_policy_evaluation("busy", "trafficLimit", **sc) == evaluations[-1]
            versions = archived.versions("busy", **sc)
            assert [v.version for v in versions] == list(range(1, 10))  # the first, then one every 50
            assert archived.version("busy", 1, **sc) == versions[0]
            assert archived.latest_version("busy", **sc) == versions[-1]

            # limit and newest_first across the boundary between the archive and Redis
            for limit in (None, 1, 5, 390, 395, 400, 401, 500):
                for newest in (False, True):
                    def cut(items: list[Any], newest: bool = newest, limit: int | None = limit) -> list[Any]:
                        ordered = items[::-1] if newest else items
                        return ordered if limit is None else ordered[:limit]

                    kw: dict[str, Any] = {"limit": limit, "newest_first": newest, **sc}
                    assert agov.history("busy", **kw) == cut(history), (limit, newest)
                    assert archived.approvals("busy", **kw) == cut(approvals), (limit, newest)
                    assert archived.policy_evaluations("busy", **kw) == cut(evaluations), (limit, newest)
                    assert archived.versions("busy", **kw) == cut(versions), (limit, newest)
        finally:
            archived.close()
    finally:
        sql.close()
        delete_prefix(bp.client, prefix)
        bp.close()


def test_trimmed_single_entry_reads_use_the_archive(bp: redgov.Backplane, redis_url: str, sqlite_url: str) -> None:
    build_history(bp)
    latest, first, evaluation = bp.latest_version("a"), bp.version("a", 1), bp.latest_policy_evaluation("d", "p")
    export(bp, sqlite_url, progress=False, trim=True)
    with SqlArchive(sqlite_url) as archive:
        archived = redgov.connect(redis_url, prefix=bp.prefix, archive=archive)
        try:
            assert archived.latest_version("a") == latest and archived.version("a", 1) == first
            assert archived.latest_policy_evaluation("d", "p") == evaluation is not None
            assert Governance(archived).diff("a", 1, 3) is not None
        finally:
            archived.close()


def test_gap_before_export_is_reported(bp: redgov.Backplane, sqlite_url: str) -> None:
    build_history(bp)
    log = Scope(bp.prefix).log
    bp.client.xtrim(log, maxlen=3, approximate=False)  # e.g. retain_history trimmed before any export
    summary = export(bp, sqlite_url, progress=False)
    assert any("removed from Redis before they were exported" in w for w in summary.warnings)


# -- follow --------------------------------------------------------------------------------------


def test_follow_picks_up_new_scopes_and_stops(bp: redgov.Backplane, sql_url: str) -> None:
    stop = threading.Event()
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(
        follow(bp, sql_url, progress=False, stop=stop, block_ms=100, rediscover=0.2, handle_signals=False)))
    worker.start()
    try:
        gov = Governance(bp)
        gov.create("x")
        time.sleep(0.5)
        gov.create("y", tenant="fresh")  # a scope that did not exist when follow started
        gov.transition("y", S.PENDING_APPROVAL, tenant="fresh")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if count_rows(sql_url)["log_entries"] == 5:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    summary = result[0]
    assert (summary.entries, summary.scopes, summary.mode, summary.stopped_by) == (5, 2, "follow", "stop")
    states = {r["experiment"]: r["state"] for r in sql_rows(sql_url, experiment_states)}
    assert states == {"x": "Draft", "y": "PendingApproval"}


def test_follow_with_trim_removes_what_it_exported(bp: redgov.Backplane, redis_url: str, sqlite_url: str) -> None:
    stop = threading.Event()
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(
        follow(bp, sqlite_url, progress=False, stop=stop, block_ms=100, rediscover=0.2, handle_signals=False,
               trim=True)))
    gov = Governance(bp)
    gov.create("x", actor="ana")
    worker.start()
    try:
        for target in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING, S.PAUSED):
            gov.transition("x", target, actor="ana")
        deadline = time.monotonic() + 15
        path = Path(sqlite_url[len("sqlite:///"):])
        while time.monotonic() < deadline and (_exported(path) < 6 or log_length(bp) > 0):
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(10)
    summary = result[0]
    assert (summary.entries, summary.trimmed, log_length(bp)) == (6, 6, 0)
    assert gov.history("x") == [] and gov.verify("x") == []
    with SqlArchive(sqlite_url) as archive:
        archived = redgov.connect(redis_url, prefix=bp.prefix, archive=archive)
        try:
            assert [t.to_state for t in Governance(archived).history("x")] == [
                S.DRAFT, S.PENDING_APPROVAL, S.APPROVED, S.RUNNING, S.PAUSED]
        finally:
            archived.close()


WRITER = textwrap.dedent("""
    import random, sys, time
    import redgov
    from redgov import Governance, LifecycleState as S, PolicyEvaluation, Severity

    url, prefix, worker, events = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    bp = redgov.connect(url, prefix=prefix)
    gov = Governance(bp)
    scopes = [("w%d" % worker, "prod"), (None, None)]
    written = 0
    def start(name, tenant, environment):
        global written
        gov.create(name, tenant=tenant, environment=environment)
        for target in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
            gov.transition(name, target, tenant=tenant, environment=environment)
        written += 5
    for tenant, environment in scopes:
        start("e%d" % worker, tenant, environment)
    up = {sc: True for sc in scopes}
    while written < events:
        if written > events // 2 and len(scopes) == 2:
            scopes.append(("late%d" % worker, None))  # a new scope while the follower runs
            start("e%d" % worker, "late%d" % worker, None)
            up[scopes[-1]] = True
        tenant, environment = random.choice(scopes)
        if random.random() < 0.7:
            up[(tenant, environment)] = not up[(tenant, environment)]
            gov.transition("e%d" % worker, S.RUNNING if up[(tenant, environment)] else S.PAUSED,
                           tenant=tenant, environment=environment)
        else:
            bp.append_policy_evaluation(PolicyEvaluation(experiment="e%d" % worker, policy="p", compliant=True,
                                                         severity=Severity.INFO, tenant=tenant,
                                                         environment=environment))
        written += 1
        if written % 25 == 0:
            time.sleep(0.15)  # spread the load over several seconds, so the follower dies mid-way
    bp.close()
""")


@pytest.mark.slow
def test_follower_killed_at_random_moments_loses_and_doubles_nothing(bp: redgov.Backplane, redis_url: str,
                                                                     prefix: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'follow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("REDGOV_URL", "REDGOV_EXPORT_URL")}
    follower_cmd = [sys.executable, "-m", "redgov", "--url", redis_url, "--prefix", prefix, "--json",
                    "export", "--to", url, "--follow"]

    def start_follower() -> subprocess.Popen[str]:
        return subprocess.Popen(follower_cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    writers = [subprocess.Popen([sys.executable, "-c", WRITER, redis_url, prefix, str(i), "1250"], cwd=tmp_path,
                                env=env, stderr=subprocess.PIPE, text=True) for i in range(4)]
    rng = random.Random()
    kills = 0
    follower = start_follower()
    try:
        while any(w.poll() is None for w in writers) and kills < 6:
            _wait_for_progress(tmp_path / "follow.db", timeout=5.0)  # the follower is busy exporting...
            time.sleep(rng.uniform(0.0, 0.4))
            follower.kill()  # SIGKILL, anywhere: mid-read, mid-transaction, mid-commit
            follower.communicate(timeout=10)
            kills += 1
            follower = start_follower()
        for w in writers:
            _, err = w.communicate(timeout=60)
            assert w.returncode == 0, err
        # the last follower catches up (with an entry only it can have exported), then stops on SIGTERM
        bp.save_state(ExperimentState(experiment="sentinel", state=S.DRAFT))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _caught_up(bp, url):
            time.sleep(0.2)
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=15)
    finally:
        for proc in [follower, *writers]:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert kills >= 3
    assert follower.returncode == 0, err
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["mode"] == "follow" and summary["stopped_by"] == "SIGTERM"

    logs = sorted(k.decode() for k in bp.client.scan_iter(match=scope_pattern(prefix)))
    assert len(logs) == 9  # the shared scope, and each writer's own and late one
    total = 0
    with SqlCopy(url, create=False) as copy:
        rows = {r.log_key: r for r in copy.scopes()}
        assert sorted(rows) == logs
        for log in logs:
            want = [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in bp.client.xrange(log)]
            got = list(copy.read_log(rows[log].scope_id))
            assert got == want, log  # no gap, no duplicate, same order, same bytes
            assert rows[log].cursor == want[-1][0] and rows[log].entries == len(want)
            total += len(want)
    assert total >= 5000
    counts = count_rows(url)
    assert counts["log_entries"] == total
    assert counts["state_transitions"] + counts["policy_evaluations"] + counts["approval_records"] \
        + counts["configuration_versions"] == total - sum(1 for r in sql_rows(url, log_entries) if r["kind"] == "state")
    for row in sql_rows(url, experiment_states):
        stored = bp.get_state(row["experiment"], tenant=row["tenant"], environment=row["environment"])
        assert stored is not None and (row["state"], row["revision"], row["etag"]) == (
            stored.state.value, stored.revision, stored.etag)


def _exported(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM log_entries").fetchone()[0])
    except sqlite3.OperationalError:  # no tables yet
        return 0
    finally:
        conn.close()


def _wait_for_progress(path: Path, timeout: float) -> None:
    start = _exported(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _exported(path) == start:
        time.sleep(0.05)


def _caught_up(bp: redgov.Backplane, url: str) -> bool:
    try:
        with SqlCopy(url, create=False) as copy:
            rows = {r.log_key: r for r in copy.scopes()}
    except SqlCopyError:
        return False
    for raw in bp.client.scan_iter(match=scope_pattern(bp.prefix)):
        log = raw.decode()
        last = bp.client.xrevrange(log, count=1)
        if log not in rows or (last and rows[log].cursor != last[0][0].decode()):
            return False
    return True


# -- command line ------------------------------------------------------------------------------------


def _cli(cwd: Path, redis_url: str, prefix: str, *args: str, env: dict[str, str] | None = None,
         code: int = 0) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDGOV_URL", "REDGOV_EXPORT_URL")}
    done = subprocess.run([sys.executable, "-m", "redgov", "--url", redis_url, "--prefix", prefix, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120, env={**base, **(env or {})})
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_cli_export_restore_trim_and_exit_codes(bp: redgov.Backplane, target: redgov.Backplane, redis_url: str,
                                               tmp_path: Path) -> None:
    build_history(bp)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    out = _cli(tmp_path, redis_url, bp.prefix, "--json", "export", "--to", url).stdout
    summary = json.loads(out)
    assert summary["entries"] == log_length(bp) and summary["scopes"] == 2
    text = _cli(tmp_path, redis_url, bp.prefix, "export", "--to", url).stdout
    assert text.startswith("exported 0 new entries")

    done = _cli(tmp_path, redis_url, bp.prefix, "restore", "--from", url, code=2)  # the source is not empty
    assert "not empty" in done.stderr and "--force" in done.stderr
    _cli(tmp_path, redis_url, target.prefix, "--json", "restore", "--from", url)
    assert "ok" in _cli(tmp_path, redis_url, target.prefix, "verify").stdout
    _cli(tmp_path, redis_url, target.prefix, "--tenant", "acme", "--env", "prod", "verify")
    _cli(tmp_path, redis_url, target.prefix, "restore", "--from", url, "--force")

    for bad in ("nosuchdb://x", "postgresql+psycopg://postgres@127.0.0.1:1/test"):
        done = _cli(tmp_path, redis_url, bp.prefix, "export", "--to", bad, code=2)
        assert done.stderr.startswith("redgov: error:")
        _cli(tmp_path, redis_url, target.prefix, "restore", "--from", bad, code=2)

    done = _cli(tmp_path, redis_url, bp.prefix, "trim", code=2)
    assert "REDGOV_EXPORT_URL" in done.stderr
    trimmed = json.loads(_cli(tmp_path, redis_url, bp.prefix, "--json", "trim",
                              env={"REDGOV_EXPORT_URL": url}).stdout)
    assert trimmed["trimmed"] == summary["entries"] and log_length(bp) == 0

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(schema_table).values(version=SCHEMA_VERSION + 1))
    finally:
        engine.dispose()
    done = _cli(tmp_path, redis_url, bp.prefix, "export", "--to", url, code=2)
    assert f"schema version {SCHEMA_VERSION + 1}" in done.stderr


# -- Redis Cluster ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cluster_export_follow_restore_trim(cluster: Cluster, sqlite_url: str) -> None:
    source, dest = new_prefix(), new_prefix()
    scopes = spread_scopes(cluster, source)
    bp = redgov.connect(cluster.url, prefix=source)
    target = redgov.connect(cluster.url, prefix=dest)
    try:
        build_history(bp, scopes)
        total = log_length(bp, scopes)
        summary = export(bp, sqlite_url, progress=False)
        assert (summary.scopes, summary.entries) == (3, total)  # scan_iter found the scopes on every master

        stop = threading.Event()
        result: list[Any] = []
        worker = threading.Thread(target=lambda: result.append(follow(
            bp, sqlite_url, progress=False, stop=stop, block_ms=100, rediscover=0.2, handle_signals=False)))
        worker.start()
        try:
            for tenant, environment in scopes:  # polled per scope: XREAD cannot span slots
                governance(bp).transition("a", S.PAUSED, tenant=tenant, environment=environment)
            grown = log_length(bp, scopes)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and count_rows(sqlite_url)["log_entries"] < grown:
                time.sleep(0.1)
        finally:
            stop.set()
            worker.join(10)
        assert result[0].entries == grown - total > 0

        done = restore(target, sqlite_url, progress=False)  # one MULTI/EXEC per scope, each on its own slot
        assert done.scopes == 3 and done.source_prefix == source
        restored = Governance(target)
        for tenant, environment, name in experiments(target, scopes):
            assert restored.verify(name, tenant=tenant, environment=environment) == []
        assert dump(target.client, dest) == dump(bp.client, source)

        trimmed = trim(bp, sqlite_url)
        assert trimmed.trimmed == grown and log_length(bp, scopes) == 0
    finally:
        for backplane, name in ((bp, source), (target, dest)):
            for key in list(backplane.client.scan_iter(match=prefix_pattern(name))):
                backplane.client.delete(key)
            backplane.close()
