"""Lua contract: headers parse and match call sites; every REDGOV_ code maps and is triggered;
scripts work after SCRIPT FLUSH and inside a pipeline; the wheel ships every script."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

import redgov
from redgov import Backplane, ConfigurationVersion, ExperimentState, LifecycleState, StateTransition
from redgov.core import Core
from redgov.errors import ConflictError, CorruptDataError, RedgovError, error_codes, map_reply_error
from redgov.scripts import load_scripts

LUA = Path(__file__).resolve().parent.parent / "lua"


def test_every_script_has_a_parsed_header() -> None:
    specs = load_scripts()
    files = sorted(p.stem for p in LUA.glob("*.lua"))
    assert sorted(specs) == files
    for name, spec in specs.items():
        assert spec.nkeys >= 1 or spec.variadic, name
        assert spec.summary, name
        assert "@include" not in spec.text, f"{name}: include not inlined"


def test_headers_match_key_usage() -> None:
    for name, spec in load_scripts().items():
        used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", spec.text.split("]]", 1)[1])}
        if not spec.variadic:  # a variadic tail (KEYS[n..]) may be used at any position past the fixed keys
            declared = set(range(1, spec.nkeys + 1))
            assert used <= declared, f"{name}.lua uses KEYS {sorted(used)} but declares {sorted(declared)}"
        args = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", spec.text.split("]]", 1)[1])}
        fixed = set(range(1, spec.nargs + 1))
        if spec.variadic_args:
            assert args <= fixed, f"{name}.lua uses ARGV {sorted(args)}, header has {spec.nargs}.."
        else:
            assert args == fixed, f"{name}.lua uses ARGV {sorted(args)}, header has {spec.nargs}"


def test_call_sites_pass_the_declared_key_count() -> None:
    specs = load_scripts()
    with pytest.raises(AssertionError, match="takes 11 keys, got 4"):
        specs["save_state"].check_keys(4)
    with pytest.raises(AssertionError, match="takes 2 keys, got 5"):
        specs["read_versions"].check_keys(5)
    specs["transition"].check_keys(4)  # the lean path
    specs["transition"].check_keys(13)  # a plan: standard keys, an idempotency record, a conflict group


def test_every_call_the_core_builds_matches_its_script() -> None:
    core = Core("gov")
    specs = load_scripts()
    gov = redgov.Governance(redgov.connect("memory://"))
    calls = [core.save_state(ExperimentState(experiment="e", state=LifecycleState.DRAFT), None),
             core.append_transition(StateTransition(experiment="e", to_state=LifecycleState.DRAFT)),
             gov.core.create("e", tenant=None, environment=None, actor=None, configuration={}, metadata=None),
             gov.core.transition("e", LifecycleState.PENDING_APPROVAL),
             gov.core.transition("e", LifecycleState.PENDING_APPROVAL, idempotency_key="k")]
    for call in calls:
        assert call.script is not None
        specs[call.script].check_keys(len(call.keys))
        if not specs[call.script].variadic_args:
            assert len(call.args) == specs[call.script].nargs, call.script


def test_scripts_use_only_portable_lua() -> None:
    for path in LUA.rglob("*.lua"):
        text = path.read_text()
        for banned in ("cmsgpack", "struct.", "bit.", "redis.sha1hex", "math.random", " error(", "cjson.encode"):
            assert banned not in text, f"{path.name} uses {banned}"


def test_every_code_in_lua_has_an_exception() -> None:
    codes = set()
    for path in LUA.rglob("*.lua"):
        codes |= set(re.findall(r"REDGOV_[A-Z_]+", path.read_text()))
    assert codes <= error_codes()
    for code in codes:
        mapped = map_reply_error(redis.ResponseError(f"Command # 1 (EVALSHA) of pipeline caused error: {code} why"))
        assert isinstance(mapped, RedgovError) and str(mapped) == "why"


def test_unknown_code_maps_to_base_error_and_others_pass_through() -> None:
    assert type(map_reply_error(redis.ResponseError("REDGOV_NEW_THING x"))) is RedgovError
    plain = redis.ResponseError("ERR something else")
    assert map_reply_error(plain) is plain


def test_conflict_code_is_triggered(backplane: Backplane) -> None:
    backplane.append_version(ConfigurationVersion(experiment="e", version=1, configuration={}))
    with pytest.raises(ConflictError):
        backplane.append_version(ConfigurationVersion(experiment="e", version=1, configuration={}))


def test_corrupt_code_names_the_key_and_writes_nothing(backplane: Backplane) -> None:
    keys = backplane.core.scope(None, None)
    state_key = keys.experiment("e").state
    backplane.client.set(state_key, "not a hash")
    with pytest.raises(CorruptDataError, match=re.escape(state_key)):
        backplane.save_state(ExperimentState(experiment="e", state=LifecycleState.DRAFT))
    assert backplane.client.exists(keys.log) == 0
    with pytest.raises(CorruptDataError, match=re.escape(state_key)):
        backplane.get_state("e")
    backplane.client.set(keys.experiment("e").versions, "x")
    with pytest.raises(CorruptDataError, match=re.escape(keys.experiment("e").versions)):
        backplane.latest_version("e")


def test_undecodable_state_names_the_key(backplane: Backplane) -> None:
    key = backplane.core.scope(None, None).experiment("e").state
    backplane.client.hset(key, mapping={"s": "Bogus", "e": "x"})
    with pytest.raises(CorruptDataError, match=re.escape(key)):
        backplane.get_state("e")


def test_undecodable_log_entry_names_the_entry(backplane: Backplane) -> None:
    backplane.append_transition(StateTransition(experiment="e", to_state=LifecycleState.DRAFT))
    scope = backplane.core.scope(None, None)
    backplane.client.xadd(scope.log, {"k": "transition", "x": "e", "r": b"{not json"}, id="99999999999999-0")
    backplane.client.rpush(scope.experiment("e").history, "t99999999999999-0")
    with pytest.raises(CorruptDataError, match="99999999999999-0"):
        backplane.transitions("e")


def test_scripts_survive_script_flush(backplane: Backplane) -> None:
    backplane.save_state(ExperimentState(experiment="e", state=LifecycleState.DRAFT))
    backplane.client.script_flush()
    t = backplane.append_transition(StateTransition(experiment="e", to_state=LifecycleState.DRAFT))
    assert backplane.transitions("e") == [t]


def test_scripts_run_inside_a_pipeline(backplane: Backplane) -> None:
    backplane.client.script_flush()
    scripts = backplane._scripts
    core = backplane.core
    calls = [core.append_transition(StateTransition(experiment="e", to_state=LifecycleState.DRAFT)) for _ in range(3)]
    with backplane.client.pipeline() as pipe:
        for call in calls:
            scripts["append_transition"](keys=call.keys, args=call.args, client=pipe)
        replies = pipe.execute()
    assert len(replies) == 3 and len(backplane.transitions("e")) == 3


def test_refusal_inside_a_pipeline_maps_to_the_hierarchy(backplane: Backplane) -> None:
    core = backplane.core
    version = ConfigurationVersion(experiment="e", version=1, configuration={})
    backplane.append_version(version)
    call = core.append_version(version)
    with backplane.client.pipeline() as pipe:
        backplane._scripts["append_version"](keys=call.keys, args=call.args, client=pipe)
        with pytest.raises(redis.ResponseError) as info:
            pipe.execute()
    with pytest.raises(ConflictError):
        call.failed(info.value)


def test_transport_errors_propagate_unwrapped() -> None:
    bp = redgov.connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, retry=None)
    try:
        with pytest.raises(redis.ConnectionError):
            bp.get_state("e")
    finally:
        bp.close()


def test_transition_on_a_corrupt_key_names_it_and_writes_nothing(backplane: Backplane) -> None:
    gov = redgov.Governance(backplane)
    scope = backplane.core.scope(None, None)
    state_key = scope.experiment("e").state
    backplane.client.set(state_key, "not a hash")
    with pytest.raises(CorruptDataError, match=re.escape(state_key)):
        gov.transition("e", LifecycleState.PENDING_APPROVAL)
    backplane.client.delete(state_key)
    created = gov.create("e")
    history = backplane.client.lrange(scope.experiment("e").history, 0, -1)
    log = backplane.client.xrange(scope.log)
    backplane.client.delete(scope.log)
    backplane.client.set(scope.log, "not a stream")
    with pytest.raises(CorruptDataError, match=re.escape(scope.log)):
        gov.transition("e", LifecycleState.PENDING_APPROVAL)
    assert gov.state("e") == created and backplane.client.lrange(scope.experiment("e").history, 0, -1) == history
    backplane.client.delete(scope.log)
    for entry_id, fields in log:
        backplane.client.xadd(scope.log, fields, id=entry_id)
    backplane.client.delete(scope.experiment("e").history)
    backplane.client.set(scope.experiment("e").history, "not a list")
    with pytest.raises(CorruptDataError, match=re.escape(scope.experiment("e").history)):
        gov.transition("e", LifecycleState.PENDING_APPROVAL)
    assert gov.state("e") == created and backplane.client.xrange(scope.log) == log


def test_every_code_is_emitted_by_a_script_and_triggered_through_the_api(redis_url: str, prefix: str) -> None:
    """Each REDGOV_ code of the table is raised by some script, and each is reached here through the public API."""
    emitted = set()
    for path in LUA.rglob("*.lua"):
        text = path.read_text()
        emitted |= set(re.findall(r"REDGOV_([A-Z_]+)", text)) | set(re.findall(r"refuse\('([A-Z_]+)'", text))
    assert {code.removeprefix("REDGOV_") for code in error_codes()} <= emitted

    admin = redis.Redis.from_url(redis_url)
    user = f"u{prefix}"
    gov = redgov.Governance(redgov.connect(redis_url, prefix=prefix), gates=[redgov.ManualGate(to_state="Approved")],
                            policies=[redgov.ConflictPrevention("a", "b")])
    seen: dict[str, type[BaseException]] = {}

    def expect(code: str, error: type[redgov.RedgovError], action: object) -> None:
        with pytest.raises(error) as raised:
            action()  # type: ignore[operator]
        assert type(raised.value) is error
        seen[code] = error

    S = LifecycleState
    try:
        expect("REDGOV_NOT_FOUND", redgov.NotFoundError, lambda: gov.transition("a", S.PENDING_APPROVAL))
        gov.create("a")
        expect("REDGOV_CONFLICT", redgov.ConflictError, lambda: gov.create("a"))
        from datetime import timedelta

        gov.acquire_lease("a", owner="one", ttl=timedelta(seconds=30))
        expect("REDGOV_LEASE", redgov.LeaseError, lambda: gov.acquire_lease("a", owner="two", ttl=timedelta(seconds=1)))
        expect("REDGOV_INVALID_TRANSITION", redgov.InvalidTransitionError, lambda: gov.transition("a", S.RUNNING))
        gov.transition("a", S.PENDING_APPROVAL)
        expect("REDGOV_APPROVAL_REQUIRED", redgov.ApprovalRequiredError, lambda: gov.transition("a", S.APPROVED))
        gov.create("b")
        gov.transition("b", S.PENDING_APPROVAL)
        for name in ("a", "b"):
            gov.approve(name, S.APPROVED, approver="ana")
            gov.transition(name, S.APPROVED)
        gov.transition("b", S.RUNNING)
        expect("REDGOV_POLICY_VIOLATION", redgov.PolicyViolationError, lambda: gov.transition("a", S.RUNNING))
        gov.create("d", actor="ana")
        gov.transition("d", S.PENDING_APPROVAL, actor="ana")  # ana requests the moves out of PendingApproval
        expect("REDGOV_SEPARATION", redgov.SeparationOfDutiesError,
               lambda: gov.approve("d", S.APPROVED, approver="ana"))
        gov.publish(actor="admin")
        # a call decided before the publish (under no published rules) is refused by its script
        expect("REDGOV_RULES_CHANGED", redgov.RulesChangedError,
               lambda: gov.backplane.run(gov.core.transition("d", S.DRAFT)))
        state_key = gov.backplane.core.scope(None, None).experiment("a").state
        admin.hset(state_key, "r", "minus one")
        expect("REDGOV_CORRUPT", redgov.CorruptDataError, lambda: gov.transition("a", S.ARCHIVED))
        admin.execute_command("ACL", "SETUSER", user, "on", ">pw", f"~{prefix}*", "+@all", "-xadd")
        with redgov.Governance(redgov.connect(redis_url, prefix=prefix, username=user, password="pw")) as denied:
            expect("REDGOV_DENIED", redgov.AccessDeniedError, lambda: denied.create("c"))
        assert admin.hget(gov.backplane.core.scope(None, None).experiment("c").state, "s") is None
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        gov.close()
        admin.close()
    assert set(seen) == set(error_codes())
