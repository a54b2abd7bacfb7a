"""The configuration DSL's input hardening: bounded YAML aliases and nesting, every problem reported at once,
clear file errors, non-JSON values refused, requireTelemetry, and from_config's url/prefix/archive."""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import redgov
import redgov.config.load
from redgov import ConfigError, Governance, LifecycleState, PolicyViolationError
from redgov.config import from_config, load_config

from .conftest import delete_prefix

S = LifecycleState


def config_exception(source: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(source, **kwargs)
    return info.value


# -- YAML aliases and nesting ------------------------------------------------------------

def laughs(levels: int) -> str:
    """A "billion laughs" document: 9**levels strings from a few hundred bytes."""
    lines = ["governance:", '  lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 9, 20])
def test_alias_bomb_is_refused_quickly_with_little_memory(levels: int) -> None:
    text = laughs(levels)
    assert len(text) < 1500
    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = config_exception(text)
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < 1.0, elapsed
    assert peak < 4 * 2**20, peak
    assert "aliases (references to one collection) expand the document by more than 10,000 nodes" in str(error)
    assert "at line " in str(error)


def test_alias_bomb_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs(9))
    assert str(config_exception(path)).startswith(f"{path}: aliases ")


def test_merge_key_bomb_is_refused() -> None:
    lines = ["governance:", "  m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
    lines += [f"  m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, 12)]
    started = time.perf_counter()
    assert "aliases" in str(config_exception("\n".join(lines) + "\n"))
    assert time.perf_counter() - started < 1.0


def test_anchors_aliases_and_merge_keys_still_load() -> None:
    config = load_config("""\
x-gate: &gate
  fromState: Draft
x-roles: &roles [sre, operator]
experimentFramework:
  governance:
    approvalGates:
      - <<: *gate
        type: automatic
        toState: PendingApproval
      - <<: *gate
        type: roleBased
        toState: Rejected
        allowedRoles: *roles
    policies:
      - &errors {type: errorRate, name: errors-a, maxErrorRate: 0.1}
      - <<: *errors
        name: errors-b
""")
    automatic, role = config.gates()
    assert automatic.from_state is S.DRAFT and automatic.to_state is S.PENDING_APPROVAL
    assert role.from_state is S.DRAFT and role.roles == ("sre", "operator")  # type: ignore[attr-defined]
    assert [(p.name, p.max_error_rate) for p in config.policies()] == [  # type: ignore[attr-defined]
        ("errors-a", 0.1), ("errors-b", 0.1)]


@pytest.mark.parametrize("text", ["governance:\n  properties: &a [1, *a]\n",
                                  "x: &a {y: *a}\ngovernance: {}\n"])
def test_recursive_alias_is_refused(text: str) -> None:
    assert "an alias refers to a collection that contains it" in str(config_exception(text))


def test_mappings_given_directly_may_hold_tuples() -> None:
    config = load_config({"governance": {"approvalGates": ({"type": "roleBased", "toState": "Running",
                                                            "allowedRoles": ("${ROLE}",)},)}}, env={"ROLE": "sre"})
    assert config.gates()[0].roles == ("sre",)  # type: ignore[attr-defined]


def test_recursive_mapping_is_refused() -> None:
    section: dict[str, Any] = {}
    section["approvalGates"] = [section]
    message = str(config_exception({"governance": section}))
    assert message.startswith("an alias refers to a collection that contains it")
    assert "at governance.approvalGates[0]" in message


@pytest.mark.parametrize("text", [
    "governance:\n  properties: " + "[" * 300 + "]" * 300 + "\n",
    "governance:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)),
    '{"governance": ' + "[" * 5000 + "]" * 5000 + "}",
])
def test_deep_documents_are_refused(text: str) -> None:
    message = str(config_exception(text))
    assert "nested deeper than 128 levels" in message, message


# -- every problem at once ---------------------------------------------------------------

def test_every_problem_is_reported_with_path_and_value() -> None:
    error = config_exception("""\
governance:
  initalState: Draft
  enableAutoVersioning: maybe
  approvalGates:
    - type: manul
      toState: Running
    - type: roleBased
      toState: Live
      allowedRoles: [sre, '']
  policies:
    - type: trafficLimit
      maxTrafficPercentage: 10
      minStableTime: 30 minutes
    - type: timeWindow
      allowedStartTime: '25:00'
      allowedEndTime: 17:00
      severity: critical
  persistence: {type: inMemory, retainHistory: 0, keyPrefix: ''}
""")
    assert error.errors == (
        "governance.initalState: unknown key; did you mean 'initialState'?",
        "governance.enableAutoVersioning: expected true or false, got 'maybe'",
        "governance.approvalGates[0].type: 'manul' is not one of automatic, manual, roleBased; did you mean 'manual'?",
        ("governance.approvalGates[1].toState: 'Live' is not one of Draft, PendingApproval, Approved, Running, "
         "Ramping, Paused, RolledBack, Archived, Rejected"),
        "governance.approvalGates[1].allowedRoles[1]: expected a non-empty string, got ''",
        "governance.policies[0].minStableTime: expected a duration hh:mm:ss (d.hh:mm:ss for days), got '30 minutes'",
        "governance.policies[1].allowedStartTime: expected a time of day HH:MM or HH:MM:SS, got '25:00'",
        ("governance.policies[1].severity: 'critical' is not one of Info, Warning, Error, Critical; "
         "did you mean 'Critical'?"),
        "governance.persistence.retainHistory: expected true, false or a number of entries >= 1, got 0",
        "governance.persistence.keyPrefix: expected a non-empty string, got ''",
    )
    message = str(error)
    assert message.splitlines()[0] == "10 configuration errors:"
    assert message.splitlines()[1:] == [f"  {line}" for line in error.errors]


def test_many_problems_are_capped_in_the_message() -> None:
    policies = [{"type": "errorRate", "name": f"p{i}", "maxErrorRate": 2 + i} for i in range(25)]
    error = config_exception({"governance": {"policies": policies}})
    assert len(error.errors) == 25
    lines = str(error).splitlines()
    assert lines[0] == "25 configuration errors:"
    assert lines[1] == "  governance.policies[0].maxErrorRate: expected a number from 0 to 1, got 2"
    assert len(lines) == 22 and lines[-1] == "  and 5 more"


def test_environment_and_duplicate_problems_are_collected_too() -> None:
    error = config_exception("governance:\n  persistence: {type: redis, connectionString: '${NOPE_X}'}\n"
                             "  policies:\n    - {type: errorRate, maxErrorRate: '${NOPE_Y}'}\n"
                             "  initialState: Draft\n  initialState: Running\n", env={})
    assert error.errors == (
        "governance.initialState: duplicate key (line 6, column 3)",
        ("governance.persistence.connectionString: environment variable NOPE_X is not set "
         "(set it, or write ${NOPE_X:-default})"),
        ("governance.policies[0].maxErrorRate: environment variable NOPE_Y is not set "
         "(set it, or write ${NOPE_Y:-default})"),
    )


def test_a_typo_is_not_also_reported_missing() -> None:
    error = config_exception("governance:\n  policies:\n    - type: errorRate\n      maxErrorRat: 0.1\n")
    assert error.errors == ("governance.policies[0].maxErrorRat: unknown key; did you mean 'maxErrorRate'?",)


def test_semantic_problems_join_the_others() -> None:
    error = config_exception("governance:\n  initialState: Nope\n  policies:\n"
                             "    - {type: errorRate, maxErrorRate: 0.1}\n    - {type: errorRate, maxErrorRate: 0.2}\n"
                             "  persistence: {type: redis, connectionString: 'a:1,b:2'}\n")
    assert [e.split(":")[0] for e in error.errors] == [
        "governance.initialState", "governance.policies[1]", "governance.persistence.connectionString"]


def test_auto_approve_after_is_kept_under_properties() -> None:
    """``autoApproveAfter`` under a gate's properties (sample 11) is kept as written, not interpreted."""
    config = load_config("governance:\n  approvalGates:\n    - type: automatic\n      toState: Approved\n"
                         "      properties: {autoApproveAfter: '00:15:00', note: '${WHO}'}\n", env={"WHO": "ops"})
    assert config.approval_gates[0].properties == {"autoApproveAfter": "00:15:00", "note": "ops"}


# -- values that are not JSON -------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("governance:\n  policies:\n    - {type: errorRate, maxErrorRate: .nan}\n",
     "governance.policies[0].maxErrorRate: nan is not a finite number"),
    ("governance:\n  policies:\n    - {type: trafficLimit, maxTrafficPercentage: .inf}\n",
     "governance.policies[0].maxTrafficPercentage: inf is not a finite number"),
    ('{"governance": {"policies": [{"type": "errorRate", "maxErrorRate": NaN}]}}',
     "governance.policies[0].maxErrorRate: nan is not a finite number"),
    ("governance:\n  approvalGates:\n    - {type: automatic, toState: Running, properties: {limit: -.inf}}\n",
     "governance.approvalGates[0].properties.limit: -inf is not a finite number"),
    ("governance:\n  approvalGates:\n    - type: roleBased\n      toState: Running\n      allowedRoles: !!set {sre}\n",
     "governance.approvalGates[0].allowedRoles: a set ({'sre'}) cannot be stored"),
    ("governance:\n  approvalGates:\n    - {type: automatic, toState: Running, properties: {teams: !!set {a}}}\n",
     "governance.approvalGates[0].properties.teams: a set ({'a'}) cannot be stored"),
    ("governance:\n  approvalGates:\n    - {type: automatic, toState: Running, properties: {1: x}}\n",
     "governance.approvalGates[0].properties: keys must be strings, got int 1"),
])
def test_values_that_are_not_json_are_refused(text: str, expected: str) -> None:
    error = config_exception(text)
    assert error.errors[0].startswith(expected), str(error)


def test_nesting_deeper_than_64_levels_in_values_is_refused() -> None:
    deep: Any = "x"
    for _ in range(70):
        deep = {"a": deep}
    error = config_exception({"governance": {"approvalGates": [
        {"type": "automatic", "toState": "Running", "properties": deep}]}})
    assert error.errors[0].startswith("governance.approvalGates[0].properties" + ".a" * 64
                                      + ": nested deeper than 64 levels"), str(error)
    shallow: Any = "x"
    for _ in range(63):
        shallow = {"a": shallow}
    load_config({"governance": {"approvalGates": [{"type": "automatic", "toState": "Running",
                                                   "properties": shallow}]}})


def test_a_substituted_nan_is_refused() -> None:
    error = config_exception("governance:\n  policies:\n    - {type: errorRate, maxErrorRate: '${RATE}'}\n",
                             env={"RATE": "nan"})
    assert error.errors[0] == "governance.policies[0].maxErrorRate: expected a number from 0 to 1, got 'nan'"


# -- files --------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [str, Path])
def test_a_folder_is_named_as_one(tmp_path: Path, make: Any) -> None:
    assert str(config_exception(make(tmp_path))) == (
        f"{str(tmp_path)!r} is a folder, not a configuration file; name a YAML or JSON file in it")


def test_a_one_line_name_without_colon_is_a_file_name() -> None:
    assert str(config_exception("governance-config")) == "configuration file 'governance-config' not found"


def test_empty_and_comment_only_files(tmp_path: Path) -> None:
    for name, text in (("empty.yaml", ""), ("comments.yaml", "# nothing yet\n\n"), ("blank.json", "  \n")):
        (tmp_path / name).write_text(text)
        message = str(config_exception(tmp_path / name))
        assert message.startswith(f"{tmp_path / name}: ") and "empty" in message, message


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("governance: {}\n")
    real_open = Path.open

    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    assert str(config_exception(path)) == f"cannot read configuration file {str(path)!r}: Permission denied"


def test_binary_and_huge_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "binary.yaml").write_bytes(b"governance: {}\n\xff\xfe\x00")
    assert str(config_exception(tmp_path / "binary.yaml")) == (
        f"configuration file {str(tmp_path / 'binary.yaml')!r} is not UTF-8 text (byte 15 is 0xff)")
    monkeypatch.setattr(redgov.config.load, "MAX_FILE_BYTES", 2**20)
    (tmp_path / "huge.yaml").write_text("governance: {}\n" + "#" * 2**20)
    assert str(config_exception(tmp_path / "huge.yaml")).endswith("is larger than 1 MiB")


def test_yaml_syntax_error_in_a_file_has_path_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("governance:\n  policies: [\n")
    message = str(config_exception(path))
    assert message.startswith(f"{path}: YAML syntax error at line 3, column 1: "), message


# -- requireTelemetry ------------------------------------------------------------------------

def test_require_telemetry() -> None:
    assert load_config("governance: {}").require_telemetry is False
    text = ("governance:\n  requireTelemetry: true\n  policies:\n    - {type: errorRate, maxErrorRate: 0.1}\n"
            "  approvalGates: [{type: automatic, toState: PendingApproval}]\n")
    assert load_config(text).require_telemetry is True
    with from_config(text) as gov:
        assert gov.core.require_telemetry is True
        gov.create("e")
        with pytest.raises(PolicyViolationError):
            gov.transition("e", S.PENDING_APPROVAL)  # no errorRate telemetry: not compliant
        gov.transition("e", S.PENDING_APPROVAL, telemetry={"errorRate": 0.01})
    with from_config(text.replace("true", "false")) as gov:
        gov.create("e")
        gov.transition("e", S.PENDING_APPROVAL)
    assert config_exception("governance: {requireTelemetry: sometimes}").errors == (
        "governance.requireTelemetry: expected true or false, got 'sometimes'",)


# -- from_config: url, prefix, archive ---------------------------------------------------------

@pytest.fixture
def live(redis_url: str, prefix: str) -> Iterator[tuple[str, str]]:
    yield redis_url, prefix
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, prefix)


def _config(sql_url: str | None) -> str:
    export = f"    export: {{url: '{sql_url}'}}\n" if sql_url else ""
    return ("governance:\n  persistence:\n    type: redis\n    connectionString: 'nowhere.invalid:1'\n"
            "    keyPrefix: not-this-one\n" + export +
            "  approvalGates: [{type: manual, toState: Approved}]\n"
            "  policies: [{type: trafficLimit, maxTrafficPercentage: 50}]\n")


def _walk(gov: Governance) -> None:
    gov.create("checkout", actor="ana", configuration={"percent": 5})
    gov.transition("checkout", S.PENDING_APPROVAL, actor="ana")
    gov.approve("checkout", S.APPROVED, approver="lead")
    gov.transition("checkout", S.APPROVED, actor="ana")
    gov.create_version("checkout", {"percent": 10}, actor="ana")
    gov.transition("checkout", S.RUNNING, actor="ana", telemetry={"trafficPercentage": 10})


def test_from_config_url_prefix_and_the_export_url_as_archive(live: tuple[str, str], tmp_path: Path) -> None:
    from redgov.sql import SqlArchive, export, trim

    redis_url, prefix = live
    sql_url = f"sqlite:///{tmp_path / 'copy.db'}"
    text = _config(sql_url)
    with pytest.warns(RuntimeWarning, match="history reads use Redis only"):  # no copy exported yet
        gov = from_config(text, url=redis_url, prefix=prefix)
    with gov:
        assert gov.backplane.prefix == prefix and gov.backplane.core.archive is None
        _walk(gov)
        history, state = gov.history("checkout"), gov.state("checkout")
        assert len(history) == 4 and gov.replay("checkout") == state
        export(gov.backplane, sql_url, progress=False)
        assert trim(gov.backplane, sql_url).trimmed > 0
        assert gov.history("checkout") != history  # trimmed from Redis, and this Governance has no archive
    with from_config(text, url=redis_url, prefix=prefix) as fresh:
        assert isinstance(fresh.backplane.core.archive, SqlArchive)
        assert fresh.history("checkout") == history
        assert fresh.replay("checkout") == state == fresh.state("checkout")
        assert fresh.verify("checkout") == []
        assert [v.version for v in fresh.backplane.versions("checkout")] == [1, 2]
    # the same copy named explicitly, on a config without an export url; and archive=False for none
    with from_config(_config(None), url=redis_url, prefix=prefix, archive=sql_url) as explicit:
        assert explicit.history("checkout") == history and explicit.verify("checkout") == []
    with from_config(text, url=redis_url, prefix=prefix, archive=False) as bare:
        assert bare.backplane.core.archive is None and bare.history("checkout") != history
    with SqlArchive(sql_url) as archive, from_config(text, url=redis_url, prefix=prefix, archive=archive) as given:
        assert given.backplane.core.archive is archive and given.history("checkout") == history


def test_from_config_closes_the_archive_it_opened_when_it_fails(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from redgov.sql import SqlArchive, export

    sql_url = f"sqlite:///{tmp_path / 'copy.db'}"
    with redgov.connect("memory://") as bp:
        export(bp, sql_url, progress=False)  # an (empty) copy exists
    closed: list[SqlArchive] = []
    real_close = SqlArchive.close

    def close(self: SqlArchive) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(SqlArchive, "close", close)
    with pytest.raises(ConfigError, match="persistence: "):
        from_config(_config(sql_url), url="bogus://nowhere")
    assert len(closed) == 1
    with pytest.raises(ConfigError, match="persistence: "):
        from_config(_config(None), url="bogus://nowhere", archive=sql_url)
    assert len(closed) == 2
    with from_config(_config(None), url="memory://", archive=sql_url):
        pass
    assert len(closed) == 3  # closing the Governance closes its archive


def test_from_config_without_sqlalchemy_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redgov.sql", None)  # as if the SQL extra were not installed
    with pytest.raises(ConfigError, match=r"persistence\.export\.url: .*pip install 'redgov\[sql\]'"):
        from_config(_config("sqlite:///nowhere.db"), url="memory://")
    with pytest.raises(ConfigError, match=r"archive: .*pip install 'redgov\[sql\]'"):
        from_config(_config(None), url="memory://", archive="sqlite:///nowhere.db")
    with from_config(_config(None), url="memory://") as gov:  # no SQL copy configured: nothing needed
        assert gov.backplane.core.archive is None


def test_from_config_client_and_url_exclude_each_other() -> None:
    import fakeredis

    with pytest.raises(redgov.ValidationError, match="client or url"):
        from_config("governance: {}", client=fakeredis.FakeRedis(), url="memory://")


def test_wrong_types_in_json_text() -> None:
    error = config_exception('{"governance": {"initialState": 1, "policies": "none"}}')
    assert error.errors == (("governance.initialState: expected one of Draft, PendingApproval, Approved, Running, "
                             "Ramping, Paused, RolledBack, Archived, Rejected, got 1"),
                            "governance.policies: expected a list, got 'none'")
