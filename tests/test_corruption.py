"""Corrupt every key and field of a scope in turn; every API call raises only RedgovError, and changes
nothing when it raises.

Measured on v1: corrupt stored data surfaced as a raw ResponseError ("hash value is not an integer",
"Invalid stream ID"), a Lua runtime error, IndexError, UnicodeDecodeError or ValueError, and a
command refused by the ACL surfaced as CorruptDataError.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import redgov
from redgov import (
    ApprovalRecord,
    ConfigurationVersion,
    ConflictPrevention,
    ErrorRate,
    ExperimentState,
    Governance,
    LifecycleState,
    ManualGate,
    PolicyEvaluation,
    RedgovError,
    RoleGate,
    Severity,
    StateTransition,
    TransitionRequest,
)

from .conftest import delete_prefix

S = LifecycleState
#: in the list of calls, the ones after this marker write (the ones before only read)
WRITES = "-- writes --"
GARBAGE = [b"garbage", b"", b"-1", b"{", b"99999999999999999999999", b"\xff\xfe", b"1-x", b"T", b'{"a":1}']


def populate(gov: Governance) -> dict[str, Any]:
    """A scope with every kind of key and field redgov writes; returns handles the calls below use."""
    gov.create("x", actor="ana", configuration={"rollout": {"percent": 5}}, idempotency_key="create-x")
    gov.create("y")
    gov.transition("x", S.PENDING_APPROVAL, idempotency_key="to-pa")
    gov.approve("x", S.APPROVED, approver="lead")
    approved = gov.transition("x", S.APPROVED)
    gov.transition("x", S.RUNNING, telemetry={"errorRate": 0.01})
    gov.transition("x", S.RAMPING, metadata={"actorRole": "sre"})
    gov.create_version("x", {"rollout": {"percent": 20}})
    gov.rollback("x", 2)  # version 3 (version 1 is already cut by retention)
    gov.evaluate_policies("x", telemetry={"errorRate": 0.2})
    gov.transition("x", S.PAUSED)
    gov.approve("x", S.ARCHIVED, approver="lead")  # left pending
    bp = gov.backplane
    bp.append_transition(StateTransition(experiment="x", to_state=S.PAUSED, transition_id="appended"))
    bp.append_approval(ApprovalRecord(experiment="x", to_state=S.PAUSED, approved=True, transition_id="appended"))
    return {"tid": approved.transition_id}


def calls(gov: Governance, handles: dict[str, Any]) -> list[tuple[str, Callable[[], object]]]:
    bp = gov.backplane
    counter = itertools.count(100)
    state = gov.state  # noqa: F841 - keeps the list below readable

    def etag() -> str:
        try:
            current = bp.get_state("x")
        except RedgovError:
            return "none"
        return current.etag if current else "none"

    return [
        ("state", lambda: gov.state("x")),
        ("history", lambda: gov.history("x")),
        ("history newest", lambda: gov.history("x", limit=2, newest_first=True)),
        ("approvals", lambda: bp.approvals("x")),
        ("evaluations", lambda: bp.policy_evaluations("x", newest_first=True)),
        ("versions", lambda: bp.versions("x")),
        ("latest version", lambda: bp.latest_version("x")),
        ("version 2", lambda: bp.version("x", 2)),
        ("latest evaluation", lambda: bp.latest_policy_evaluation("x", "errorRate")),
        ("linked approvals", lambda: bp.approvals_for_transition(handles["tid"])),
        ("replay", lambda: gov.replay("x")),
        ("verify", lambda: gov.verify("x")),
        ("experiments", lambda: gov.experiments()),
        ("allowed", lambda: gov.allowed_transitions("x")),
        ("diff", lambda: gov.diff("x", 2, 3)),
        ("watch", lambda: list(gov.watch(from_id="0", timeout=0.01))),
        (WRITES, lambda: None),
        ("transition", lambda: gov.transition("x", S.RUNNING)),
        ("transition guarded", lambda: gov.transition("x", S.RUNNING, expected_etag=etag())),
        ("transition again with a key", lambda: gov.transition("x", S.PENDING_APPROVAL, idempotency_key="to-pa")),
        ("transition gated", lambda: gov.transition("x", S.ARCHIVED)),
        ("conflict group", lambda: gov.transition("y", S.PENDING_APPROVAL)),
        ("batch", lambda: gov.transition_many([TransitionRequest(experiment="x", to=S.RUNNING)])),
        ("approve", lambda: gov.approve("x", S.RUNNING, approver="lead")),
        ("create version", lambda: gov.create_version("x", {"n": next(counter)})),
        ("rollback", lambda: gov.rollback("x", 2)),
        ("evaluate", lambda: gov.evaluate_policies("x", telemetry={"errorRate": 0.9}, target=S.RUNNING)),
        ("create again", lambda: gov.create("x", idempotency_key="create-x")),
        ("create new", lambda: gov.create(f"new-{next(counter)}")),
        ("save state", lambda: bp.save_state(ExperimentState(experiment="x", state=S.PAUSED),
                                             expected_etag=etag())),
        ("append transition", lambda: bp.append_transition(StateTransition(experiment="x", to_state=S.DRAFT))),
        ("append approval", lambda: bp.append_approval(ApprovalRecord(experiment="x", to_state=S.DRAFT,
                                                                      approved=False))),
        ("append version", lambda: bp.append_version(ConfigurationVersion(experiment="x", version=next(counter),
                                                                          configuration={}))),
        ("append evaluation", lambda: bp.append_policy_evaluation(PolicyEvaluation(
            experiment="x", policy="p", compliant=True, severity=Severity.INFO))),
    ]


# -- snapshots and corruptions ---------------------------------------------------------------


def keys_of(client: Any, prefix: str) -> list[bytes]:
    return sorted(client.scan_iter(match=prefix + "*", count=1000))


def _without_ops(taken: dict[bytes, tuple[str, Any]]) -> dict[bytes, tuple[str, Any]]:
    """A snapshot without the scopes' re-send dedupe buckets (``{T}:ops:<minute>``)."""
    return {key: value for key, value in taken.items() if b"}:ops:" not in key}


def snapshot(client: Any, prefix: str) -> dict[bytes, tuple[str, Any]]:
    """Every key's type and content (streams with their last id): three pipelined round trips."""
    keys = keys_of(client, prefix)
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        kinds = [k.decode() for k in pipe.execute()]
    with client.pipeline(transaction=False) as pipe:
        for key, kind in zip(keys, kinds, strict=False):
            if kind == "string":
                pipe.get(key)
            elif kind == "hash":
                pipe.hgetall(key)
            elif kind == "list":
                pipe.lrange(key, 0, -1)
            elif kind == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                pipe.xrange(key)
                pipe.xinfo_stream(key)
            else:
                pipe.exists(key)
        values = iter(pipe.execute(raise_on_error=False))
    out: dict[bytes, tuple[str, Any]] = {}
    for key, kind in zip(keys, kinds, strict=False):
        value = next(values)
        if kind == "stream":
            info = next(values)
            value = (value, info.get("last-generated-id") if isinstance(info, dict) else None)
        out[key] = (kind, value)
    return out


def rebuild(client: Any, prefix: str, saved: dict[bytes, tuple[str, Any]]) -> None:
    for key in keys_of(client, prefix):
        client.delete(key)
    for key, (kind, value) in saved.items():
        if kind == "string":
            client.set(key, value)
        elif kind == "hash":
            client.hset(key, mapping=value)
        elif kind == "list":
            client.rpush(key, *value)
        elif kind == "zset":
            client.zadd(key, {member: score for member, score in value})
        elif kind == "stream":
            for entry_id, fields in value[0]:
                client.xadd(key, fields, id=entry_id)


def corruptions(saved: dict[bytes, tuple[str, Any]]) -> Iterator[tuple[str, Callable[[Any], None]]]:
    """(what, how) for every key: another type, and a bad value in each field, item or entry."""
    for key, (kind, value) in saved.items():
        shown = key.decode(errors="replace")
        if kind != "string":
            yield f"{shown} is a string", lambda c, k=key: (c.delete(k), c.set(k, b"garbage"))
        if kind != "hash":
            yield f"{shown} is a hash", lambda c, k=key: (c.delete(k), c.hset(k, "f", "v"))
        if kind == "string":
            for bad in GARBAGE[:3]:
                yield f"{shown} = {bad!r}", lambda c, k=key, b=bad: c.set(k, b)
        elif kind == "hash":
            for n, field in enumerate(value):  # three bad values per field, every bad value over the fields
                for bad in (GARBAGE[n % len(GARBAGE)], GARBAGE[(n + 3) % len(GARBAGE)],
                            GARBAGE[(n + 6) % len(GARBAGE)]):
                    yield (f"{shown}[{field!r}] = {bad!r}", lambda c, k=key, f=field, b=bad: c.hset(k, f, b))
        elif kind == "list":
            for index in {0, len(value) - 1}:
                for bad in (b"garbage", b"T1-x", b"\xff\xfe"):
                    yield f"{shown}[{index}] = {bad!r}", lambda c, k=key, i=index, b=bad: c.lset(k, i, b)
        elif kind == "zset":
            for bad in (b"garbage", b"1-1", b"T1-1"):
                yield f"{shown} + {bad!r}", lambda c, k=key, b=bad: c.zadd(k, {b: 999})
            yield f"{shown} scored 2**60", lambda c, k=key, m=value[-1][0]: c.zadd(k, {m: 2**60 + 0.5})
        elif kind == "stream":
            entries = value[0]
            for position in {1, len(entries) - 1}:
                entry_id, fields = entries[position]
                for field in fields:
                    for bad in (b"garbage", b"{", b""):
                        def corrupt(c: Any, k: bytes = key, e: Any = entries, p: int = position, f: Any = field,
                                    b: bytes = bad) -> None:
                            c.delete(k)
                            for i, (eid, fs) in enumerate(e):
                                c.xadd(k, {**fs, f: b} if i == p else fs, id=eid)

                        yield f"{shown} entry {entry_id!r}[{field!r}] = {bad!r}", corrupt


@pytest.mark.parametrize("engine_url", ["memory", "redis"])
def test_every_corruption_gives_a_named_error_and_changes_nothing(engine_url: str, redis_url: str,
                                                                   prefix: str) -> None:
    url = redis_url if engine_url == "redis" else "memory://"
    bp = redgov.connect(url, prefix=prefix, retain_history=10)
    gov = Governance(bp, gates=[ManualGate(to_state=S.APPROVED), ManualGate(to_state=S.ARCHIVED),
                                RoleGate("sre", to_state=S.RAMPING)],
                     policies=[ErrorRate(0.5), ConflictPrevention("x", "y")])
    client = bp.client
    try:
        handles = populate(gov)
        saved = snapshot(client, prefix)
        kinds = {kind for kind, _ in saved.values()}
        assert kinds == {"string", "hash", "list", "zset", "stream"}, kinds
        assert any(b":b:" in key for key in saved)  # retention has cut: the base hash is there too
        cases = list(corruptions(saved))
        assert len(cases) > 150
        leaks: list[str] = []
        unchanged: list[str] = []
        for what, corrupt in cases:
            rebuild(client, prefix, saved)
            corrupt(client)
            before = snapshot(client, prefix)
            writing = False
            for name, call in calls(gov, handles):
                if name == WRITES:
                    writing = True
                    continue
                if not writing:  # a read writes nothing, whatever it raises
                    try:
                        call()
                    except RedgovError:
                        pass
                    except Exception as exc:  # noqa: BLE001 - what this test hunts
                        leaks.append(f"{what}: {name} raised {type(exc).__name__}: {str(exc)[:160]}")
                    continue
                try:
                    call()
                except redgov.PolicyViolationError:
                    before = snapshot(client, prefix)  # a policy refusal records its evaluations, by design
                except RedgovError as refused:
                    after = snapshot(client, prefix)
                    if not isinstance(refused, redgov.CorruptDataError):
                        # a governance refusal is remembered under its operation id (a re-send gets the
                        # same answer): the ops bucket changes by design, nothing else may
                        after, before = _without_ops(after), _without_ops(before)
                    if after != before:
                        unchanged.append(f"{what}: {name} raised {type(refused).__name__} but wrote")
                    before = snapshot(client, prefix)
                except Exception as exc:  # noqa: BLE001 - what this test hunts
                    leaks.append(f"{what}: {name} raised {type(exc).__name__}: {str(exc)[:160]}")
                    before = snapshot(client, prefix)
                else:
                    before = snapshot(client, prefix)
        assert not leaks, "\n".join(leaks[:40])
        assert not unchanged, "\n".join(unchanged[:40])
    finally:
        if engine_url == "redis":
            delete_prefix(client, prefix)
        bp.close()
