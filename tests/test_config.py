"""The configuration DSL: the seed's samples load as they are, every refusal names path and value."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fakeredis
import pytest
import redis
import yaml

from redgov import (
    ApprovalRequiredError,
    AutomaticGate,
    ConfigError,
    ConflictPrevention,
    ErrorRate,
    Governance,
    LifecycleState,
    ManualGate,
    PolicyViolationError,
    RoleGate,
    Severity,
    TimeWindow,
    TrafficLimit,
)
from redgov.config import (
    AutomaticGateConfig,
    ErrorRateConfig,
    GovernanceConfig,
    InMemoryPersistenceConfig,
    config_schema,
    from_config,
    load_config,
    parse_duration,
    redis_url,
)

from .conftest import delete_prefix

S = LifecycleState

SAMPLE_NAMES = {
    "sql": "10-governance-with-sql-persistence.yaml",
    "redis": "11-governance-with-redis-persistence.yaml",
    "memory": "12-governance-with-inmemory-persistence.yaml",
    "example": "governance-example.yaml",
}
#: the seed's samples, verbatim: a copy in the repository first, else the shared seed
SAMPLE_DIRS = [Path(__file__).parent / "samples", Path(__file__).parent.parent / "examples",
               Path("/work/shared/seed/samples")]


@pytest.fixture(scope="module")
def samples() -> dict[str, Path]:
    for folder in SAMPLE_DIRS:
        if all((folder / name).is_file() for name in SAMPLE_NAMES.values()):
            return {key: folder / name for key, name in SAMPLE_NAMES.items()}
    pytest.fail(f"the seed samples ({', '.join(SAMPLE_NAMES.values())}) are in none of "
                f"{', '.join(map(str, SAMPLE_DIRS))}")


@pytest.fixture
def seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CONNECTION", "127.0.0.1:6379")
    monkeypatch.setenv("GOVERNANCE_DB_CONNECTION", "Server=db;Database=governance")


def config_error(source: Any) -> str:
    return str(config_exception(source))


def config_exception(source: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(source)
    return info.value


# -- the seed's samples ---------------------------------------------------------------

class SteppedClock:
    """A Governance clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_sample_11_redis(samples: dict[str, Path], seed_env: None) -> None:
    config = load_config(samples["redis"])
    assert config.initial_state is S.DRAFT
    assert config.auto_versioning is True
    assert config.url() == "redis://127.0.0.1:6379/0"
    assert config.prefix == "prod:governance:"
    assert config.optimistic_concurrency is True
    assert config.retain_history is None  # retainHistory: true keeps every entry
    assert config.export_url is None
    assert config.gates() == [
        AutomaticGate(from_state=S.DRAFT, to_state=S.PENDING_APPROVAL),
        AutomaticGate(from_state=S.PENDING_APPROVAL, to_state=S.APPROVED, after=timedelta(minutes=15)),
        RoleGate("deployment-automation", from_state=S.APPROVED, to_state=S.RUNNING),
    ]
    assert config.approval_gates[1].properties == {"autoApproveAfter": "00:15:00"}  # the seed's place for it
    traffic, errors = config.policies()
    assert isinstance(traffic, TrafficLimit) and isinstance(errors, ErrorRate)
    assert (traffic.max_traffic_percentage, traffic.min_stable_time) == (25.0, timedelta(minutes=10))
    assert errors.max_error_rate == 0.10
    assert {traffic.severity, errors.severity} == {Severity.CRITICAL}


def test_sample_12_in_memory(samples: dict[str, Path]) -> None:
    config = load_config(samples["memory"])
    assert config.url() == "memory://"
    assert config.prefix == "gov"
    assert config.gates() == [AutomaticGate(to_state=s) for s in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING)]
    traffic, errors = config.policies()
    assert isinstance(traffic, TrafficLimit) and isinstance(errors, ErrorRate)
    assert (traffic.max_traffic_percentage, traffic.min_stable_time) == (100.0, None)
    assert errors.max_error_rate == 1.0


def test_governance_example(samples: dict[str, Path]) -> None:
    config = load_config(samples["example"])
    assert config.persistence is None and config.url() == "memory://" and config.prefix == "gov"
    assert config.initial_state is S.DRAFT
    assert config.gates() == [
        AutomaticGate(from_state=S.DRAFT, to_state=S.PENDING_APPROVAL),
        ManualGate(from_state=S.PENDING_APPROVAL, to_state=S.APPROVED),
        RoleGate("operator", "sre", from_state=S.APPROVED, to_state=S.RUNNING),
        RoleGate("sre", from_state=S.RUNNING, to_state=S.RAMPING),
    ]
    traffic, errors, window, conflicts = config.policies()
    assert isinstance(traffic, TrafficLimit) and traffic.min_stable_time == timedelta(minutes=30)
    assert traffic.max_traffic_percentage == 10.0
    assert isinstance(errors, ErrorRate) and errors.max_error_rate == 0.05
    assert isinstance(window, TimeWindow) and (window.start, window.end) == (time(9), time(17))
    assert window.severity is Severity.ERROR
    assert isinstance(conflicts, ConflictPrevention)
    assert conflicts.experiments == ("checkout-redesign", "payment-flow-v2", "shipping-calculator-update")
    assert [p.name for p in config.policies()] == ["trafficLimit", "errorRate", "timeWindow", "conflictPrevention"]


@pytest.mark.parametrize("with_env", [True, False])
def test_sample_10_sql_is_refused_with_the_way_forward(samples: dict[str, Path], with_env: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if with_env:
        monkeypatch.setenv("GOVERNANCE_DB_CONNECTION", "Server=db")
    else:
        monkeypatch.delenv("GOVERNANCE_DB_CONNECTION", raising=False)
    message = config_error(samples["sql"])
    assert "experimentFramework.governance.persistence.type: 'sql'" in message
    assert "live state in Redis" in message
    assert "persistence.export.url" in message
    assert SAMPLE_NAMES["sql"] in message  # the file is named


def test_sql_copy_is_configured_under_export() -> None:
    config = load_config("governance:\n  persistence:\n    type: redis\n    connectionString: redis://h:6379/2\n"
                         "    export:\n      url: postgresql://db/governance\n")
    assert config.url() == "redis://h:6379/2"
    assert config.export_url == "postgresql://db/governance"


def test_sample_names_as_str_and_path(samples: dict[str, Path]) -> None:
    assert load_config(str(samples["memory"])) == load_config(samples["memory"])
    assert load_config(samples["memory"].read_text()) == load_config(samples["memory"])


# -- from_config ----------------------------------------------------------------------

def test_from_config_sample_12_creates_and_transitions(samples: dict[str, Path]) -> None:
    with from_config(samples["memory"]) as gov:
        assert isinstance(gov, Governance)
        assert gov.backplane.prefix == "gov"
        state = gov.create("checkout", actor="ana")
        assert state.state is S.DRAFT
        for target in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
            gov.transition("checkout", target, actor="ana", telemetry={"trafficPercentage": 50, "errorRate": 0.2})
        current = gov.state("checkout")
        assert current is not None and current.state is S.RUNNING
        assert [t.to_state for t in gov.history("checkout")] == [S.DRAFT, S.PENDING_APPROVAL, S.APPROVED, S.RUNNING]
        assert gov.verify("checkout") == []


def test_from_config_policies_are_enforced(samples: dict[str, Path], seed_env: None) -> None:
    text = samples["redis"].read_text().replace("type: redis\n", "type: inMemory\n").replace(
        "      connectionString: ${REDIS_CONNECTION}\n", "")
    clock = SteppedClock()
    with from_config(text, clock=clock) as gov:
        gov.create("e")
        gov.transition("e", S.PENDING_APPROVAL)
        with pytest.raises(ApprovalRequiredError, match="for 15m; allowed from 2026-03-02T10:15:00"):
            gov.transition("e", S.APPROVED, telemetry={"errorRate": 0.05})  # autoApproveAfter: 00:15:00
        clock.now += timedelta(minutes=15)
        with pytest.raises(PolicyViolationError):
            gov.transition("e", S.APPROVED, telemetry={"errorRate": 0.5})
        gov.transition("e", S.APPROVED, telemetry={"errorRate": 0.05})
        with pytest.raises(ApprovalRequiredError):
            gov.transition("e", S.RUNNING, metadata={"actorRole": "dev"})


@pytest.fixture
def live_prefix(redis_url: str, prefix: str) -> Iterator[str]:
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, prefix)


def test_from_config_sample_11_on_redis(samples: dict[str, Path], redis_url: str, live_prefix: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    parts = urlsplit(redis_url)
    plain = parts.scheme == "redis" and not parts.password and parts.path in ("", "/", "/0")
    connection = f"{parts.hostname}:{parts.port or 6379}" if plain else redis_url  # StackExchange style if we can
    monkeypatch.setenv("REDIS_CONNECTION", connection)
    text = samples["redis"].read_text().replace('"prod:governance:"', f'"{live_prefix}"')
    clock = SteppedClock()
    with from_config(text, clock=clock) as gov:
        assert gov.backplane.prefix == live_prefix
        gov.create("recs")
        gov.transition("recs", S.PENDING_APPROVAL)
        clock.now += timedelta(minutes=14, seconds=59)
        with pytest.raises(ApprovalRequiredError, match="once the experiment has been PendingApproval for 15m"):
            gov.transition("recs", S.APPROVED)
        clock.now += timedelta(seconds=1)
        gov.transition("recs", S.APPROVED)
        with pytest.raises(ApprovalRequiredError):
            gov.transition("recs", S.RUNNING)
        gov.transition("recs", S.RUNNING, metadata={"actorRole": "deployment-automation"})
        current = gov.state("recs")
        assert current is not None and current.state is S.RUNNING and current.revision == 4


def test_from_config_wraps_a_given_client() -> None:
    config = load_config("governance:\n  persistence: {type: inMemory, keyPrefix: app, optimisticConcurrency: false}\n"
                         "  approvalGates: [{type: manual, toState: PendingApproval}]\n")
    assert config.optimistic_concurrency is False
    client = fakeredis.FakeRedis()
    with from_config(config, client=client) as gov:
        assert gov.backplane.client is client
        assert gov.backplane.prefix == "app"
        assert gov.backplane.core.optimistic_concurrency is False
        gov.create("e")
        with pytest.raises(ApprovalRequiredError):
            gov.transition("e", S.PENDING_APPROVAL)
        gov.approve("e", S.PENDING_APPROVAL, approver="lead")
        assert gov.transition("e", S.PENDING_APPROVAL).to_state is S.PENDING_APPROVAL


def test_from_config_connects_without_optimistic_concurrency() -> None:
    with from_config("governance:\n  persistence: {type: inMemory, optimisticConcurrency: false}\n") as gov:
        assert gov.backplane.core.optimistic_concurrency is False
    with from_config("governance: {}\n") as gov:
        assert gov.backplane.core.optimistic_concurrency is True


def test_from_config_programmatic_config() -> None:
    config = GovernanceConfig(initial_state=S.APPROVED, enable_auto_versioning=False,
                              approval_gates=(AutomaticGateConfig(to_state=S.RUNNING),),
                              policy_configs=(ErrorRateConfig(max_error_rate=0.1),),
                              persistence=InMemoryPersistenceConfig(key_prefix="p"))
    with from_config(config) as gov:
        assert gov.core.initial_state is S.APPROVED
        gov.create("e")
        assert gov.transition("e", S.RUNNING).from_state is S.APPROVED


def test_embedded_url(tmp_path: Path) -> None:
    config = load_config(f"governance:\n  persistence:\n    type: embedded\n    path: {tmp_path / 'g.db'}\n")
    assert config.url() == f"embedded://{tmp_path / 'g.db'}"
    assert load_config("governance: {persistence: {type: embedded}}").url() == "embedded://.redgov/redgov.db"
    with from_config(config) as gov:
        assert gov.create("e").state is S.DRAFT
    assert (tmp_path / "g.db").exists()


# -- sources --------------------------------------------------------------------------

def test_json_text_and_files(tmp_path: Path) -> None:
    document = {"experimentFramework": {"settings": {"x": 1}, "governance": {
        "initialState": "Approved", "approvalGates": [{"type": "manual", "toState": "Running"}],
        "policies": [{"type": "errorRate", "name": "errors", "maxErrorRate": 0.25, "severity": "Warning"}]}}}
    text = json.dumps(document, indent="\t")  # tabs: valid JSON, not valid YAML indentation
    config = load_config(text)
    assert config.initial_state is S.APPROVED
    assert config.gates() == [ManualGate(to_state=S.RUNNING)]
    (policy,) = config.policies()
    assert (policy.name, policy.severity) == ("errors", Severity.WARNING)
    assert load_config(json.dumps(document)) == config
    (tmp_path / "g.json").write_text(text)
    assert load_config(tmp_path / "g.json") == config
    assert load_config(str(tmp_path / "g.json")) == config
    (tmp_path / "g.yml").write_text(yaml.safe_dump(document))
    assert load_config(tmp_path / "g.yml") == config
    (tmp_path / "noext").write_text(yaml.safe_dump(document))
    assert load_config(str(tmp_path / "noext")) == config
    assert load_config(document) == config  # an already parsed mapping


def test_json_syntax_error_has_line_and_column() -> None:
    message = config_error('{"governance": {\n  "initialState": "Draft",\n}}')
    assert message.startswith("JSON syntax error at line 3, column 1:")


def test_json_file_syntax_error_names_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("governance: {}\n")  # YAML, but named .json
    message = config_error(tmp_path / "bad.json")
    assert message.startswith(f"{tmp_path / 'bad.json'}: JSON syntax error at line 1, column 1")


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = "governance:\n  initialState: Draft\n  policies:\n    - type: errorRate\n   maxErrorRate: [0.1\n"
    message = config_error(text)
    assert re.match(r"YAML syntax error at line \d+, column \d+: ", message), message
    text = "governance:\n  initialState: Draft\n  enableAutoVersioning: true: false\n"
    assert config_error(text).startswith("YAML syntax error at line 3, column 29: mapping values are not allowed")
    (tmp_path / "bad.yaml").write_text(text)
    assert config_error(tmp_path / "bad.yaml").startswith(f"{tmp_path / 'bad.yaml'}: YAML syntax error at line 3, ")


@pytest.mark.parametrize("make", [str, Path])
def test_missing_file_is_named(tmp_path: Path, make: Any) -> None:
    missing = tmp_path / "nope.yaml"
    assert config_error(make(missing)) == f"configuration file {str(missing)!r} not found"
    assert "'conf.yml' not found" in config_error("conf.yml")


def test_one_line_text_is_not_a_path() -> None:
    assert load_config("governance: {initialState: Running}").initial_state is S.RUNNING
    assert load_config('{"governance": {}}') == GovernanceConfig()


def test_unquoted_times_stay_strings() -> None:
    # YAML 1.1 reads 17:00 as the integer 1020; the loader keeps it a time of day.
    config = load_config("governance:\n  policies:\n    - type: timeWindow\n      allowedStartTime: 9:30\n"
                         "      allowedEndTime: 17:00:30\n    - type: trafficLimit\n      maxTrafficPercentage: 5\n"
                         "      minStableTime: 10:00:00\n")
    window, traffic = config.policies()
    assert isinstance(window, TimeWindow) and (window.start, window.end) == (time(9, 30), time(17, 0, 30))
    assert isinstance(traffic, TrafficLimit) and traffic.min_stable_time == timedelta(hours=10)


def test_root_shapes() -> None:
    assert load_config("governance:\n") == GovernanceConfig()
    assert load_config("experimentFramework:\n  trials: [1, 2]\n  governance:\n    initialState: Paused\n"
                       "other: ignored\n").initial_state is S.PAUSED
    assert config_error("").startswith("the configuration is empty")
    assert config_error("- 1\n") == "the configuration root must be a mapping, got [1]"
    assert config_error("ExperimentFramework:\n  governance: {}\n").endswith(
        "; found 'ExperimentFramework': did you mean 'experimentFramework'?")
    assert config_error("experimentFramework:\n  Governance: {}\n") == (
        "experimentFramework: no governance key; found 'Governance': did you mean 'governance'?")
    assert config_error("settings: {}\n") == (
        "no governance section: expected experimentFramework.governance or a governance root")
    assert "keep one" in config_error("governance: {}\nexperimentFramework: {governance: {}}\n")
    assert config_error("governance: [1]") == "governance: expected a mapping, got [1]"


# -- environment ----------------------------------------------------------------------

def test_environment_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOV_HOST", "cache.local")
    monkeypatch.setenv("GOV_RATE", "0.2")
    monkeypatch.setenv("GOV_EMPTY", "")
    monkeypatch.delenv("GOV_UNSET", raising=False)
    config = load_config("governance:\n  persistence:\n    type: redis\n    connectionString: ${GOV_HOST}:6380\n"
                         "    keyPrefix: ${GOV_UNSET:-app}-${GOV_EMPTY:-x}\n  policies:\n"
                         "    - type: errorRate\n      maxErrorRate: ${GOV_RATE}\n"
                         "      name: cost-$${literal}\n")
    assert config.url() == "redis://cache.local:6380/0"
    assert config.prefix == "app-x"
    (policy,) = config.policies()
    assert isinstance(policy, ErrorRate) and policy.max_error_rate == 0.2
    assert policy.name == "cost-${literal}"


def test_environment_mapping_can_be_given() -> None:
    config = load_config("governance: {persistence: {type: redis, connectionString: '${H}'}}", env={"H": "h:1"})
    assert config.url() == "redis://h:1/0"


def test_environment_only_inside_governance(monkeypatch: pytest.MonkeyPatch) -> None:
    """``${...}`` outside the governance section belongs to someone else: it is never looked up (so it
    stays literal, set or unset, well-formed or not), while the same reference inside is expanded."""
    from collections.abc import Mapping

    class Recorded(Mapping[str, str]):
        def __init__(self, values: dict[str, str]) -> None:
            self.values, self.asked = values, []

        def __getitem__(self, name: str) -> str:
            self.asked.append(name)
            return self.values[name]

        def __iter__(self) -> Iterator[str]:
            return iter(self.values)

        def __len__(self) -> int:
            return len(self.values)

    env = Recorded({"NOT_OURS": "expanded", "OURS": "sre"})
    document = {"experimentFramework": {"trials": ["${NOT_OURS}", "${not-a-name}", "x${OPEN"], "governance": {
        "approvalGates": [{"type": "roleBased", "toState": "Running", "allowedRoles": ["${OURS}"]}]}}}
    config = load_config(document, env=env)
    assert env.asked == ["OURS"]  # NOT_OURS was never read: outside governance nothing is substituted
    assert [getattr(gate, "allowed_roles", None) for gate in config.approval_gates] == [("sre",)]
    assert document["experimentFramework"]["trials"] == ["${NOT_OURS}", "${not-a-name}", "x${OPEN"]
    monkeypatch.delenv("NOT_OURS", raising=False)
    config = load_config("experimentFramework:\n  trials: ['${NOT_OURS}', '${not-a-name}']\n  governance: {}\n")
    assert config.approval_gates == () and config.persistence is None  # unset or malformed there: no error


def test_missing_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_CONNECTION", raising=False)
    message = config_error("experimentFramework:\n  governance:\n    persistence:\n      type: redis\n"
                           "      connectionString: ${REDIS_CONNECTION}\n")
    assert message == ("experimentFramework.governance.persistence.connectionString: environment variable "
                       "REDIS_CONNECTION is not set (set it, or write ${REDIS_CONNECTION:-default})")


@pytest.mark.parametrize(("value", "expected"), [
    ("${bad-name}", "'${bad-name}' is not a valid ${NAME} or ${NAME:-default} reference"),
    ("x${OPEN", "unterminated ${...} in 'x${OPEN'"),
])
def test_malformed_references(value: str, expected: str) -> None:
    message = config_error(f"governance: {{approvalGates: [{{type: roleBased, toState: Running, "
                           f"allowedRoles: ['{value}']}}]}}")
    assert message == f"governance.approvalGates[0].allowedRoles[0]: {expected}"


# -- refusals -------------------------------------------------------------------------

ALL_STATES = "Draft, PendingApproval, Approved, Running, Ramping, Paused, RolledBack, Archived, Rejected"

BAD = [
    # unknown keys, with a suggestion or the valid keys
    ("governance:\n  approvalGates:\n    - type: automatic\n      fromStat: Draft\n      toState: Running\n",
     "governance.approvalGates[0].fromStat: unknown key; did you mean 'fromState'?"),
    ("governance:\n  initalState: Draft\n", "governance.initalState: unknown key; did you mean 'initialState'?"),
    ("governance:\n  policies:\n    - type: errorRate\n      maxErrorRat: 0.1\n",
     "governance.policies[0].maxErrorRat: unknown key; did you mean 'maxErrorRate'?"),
    ("governance:\n  persistence: {type: inMemory, path: x.db}\n",
     "governance.persistence.path: unknown key; valid keys: type, keyPrefix, optimisticConcurrency, "
     "retainHistory, provider, export"),
    ("governance:\n  persistence: {type: redis, connectionString: h, export: {url: x, follow: true}}\n",
     "governance.persistence.export.follow: unknown key; valid keys: url"),
    # enums
    ("governance:\n  approvalGates:\n    - type: manul\n      toState: Running\n",
     "governance.approvalGates[0].type: 'manul' is not one of automatic, manual, roleBased; did you mean 'manual'?"),
    ("governance:\n  approvalGates:\n    - type: 5\n      toState: Running\n",
     "governance.approvalGates[0].type: expected one of automatic, manual, roleBased, got 5"),
    ("governance:\n  approvalGates:\n    - toState: Running\n",
     "governance.approvalGates[0].type: missing required key (expected one of automatic, manual, roleBased)"),
    ("governance:\n  policies:\n    - type: errorLimit\n",
     "governance.policies[0].type: 'errorLimit' is not one of trafficLimit, errorRate, timeWindow, "
     "conflictPrevention; did you mean 'errorRate'?"),
    ("governance:\n  persistence: {type: mongo}\n",
     "governance.persistence.type: 'mongo' is not one of redis, inMemory, embedded"),
    ("governance:\n  initialState: Drafts\n",
     f"governance.initialState: 'Drafts' is not one of {ALL_STATES}; did you mean 'Draft'?"),
    ("governance:\n  approvalGates:\n    - type: automatic\n      toState: Live\n",
     f"governance.approvalGates[0].toState: 'Live' is not one of {ALL_STATES}"),
    ("governance:\n  policies:\n    - type: errorRate\n      maxErrorRate: 0.1\n      severity: critical\n",
     "governance.policies[0].severity: 'critical' is not one of Info, Warning, Error, Critical; "
     "did you mean 'Critical'?"),
    # numbers, booleans, strings, lists
    ("governance:\n  policies:\n    - type: errorRate\n      maxErrorRate: 0.1\n      name: a\n"
     "    - type: errorRate\n      maxErrorRate: 1.5\n",
     "governance.policies[1].maxErrorRate: expected a number from 0 to 1, got 1.5"),
    ("governance:\n  policies:\n    - type: trafficLimit\n      maxTrafficPercentage: 101\n",
     "governance.policies[0].maxTrafficPercentage: expected a number from 0 to 100, got 101"),
    ("governance:\n  policies:\n    - type: errorRate\n      maxErrorRate: lots\n",
     "governance.policies[0].maxErrorRate: expected a number from 0 to 1, got 'lots'"),
    ("governance:\n  policies:\n    - type: trafficLimit\n",
     "governance.policies[0].maxTrafficPercentage: missing required key (expected a number from 0 to 100)"),
    ("governance:\n  enableAutoVersioning: maybe\n",
     "governance.enableAutoVersioning: expected true or false, got 'maybe'"),
    ("governance:\n  approvalGates: {type: automatic}\n",
     "governance.approvalGates: expected a list, got {'type': 'automatic'}"),
    ("governance:\n  approvalGates:\n    - type: roleBased\n      toState: Running\n      allowedRoles: sre\n",
     "governance.approvalGates[0].allowedRoles: expected a list of at least one role name, got 'sre'"),
    ("governance:\n  approvalGates:\n    - type: roleBased\n      toState: Running\n      allowedRoles: []\n",
     "governance.approvalGates[0].allowedRoles: expected a list of at least one role name, got []"),
    ("governance:\n  approvalGates:\n    - type: roleBased\n      toState: Running\n",
     "governance.approvalGates[0].allowedRoles: missing required key (expected a list of at least one role name)"),
    ("governance:\n  policies:\n    - type: conflictPrevention\n      conflictingExperiments: [solo]\n",
     "governance.policies[0].conflictingExperiments: expected a list of at least two experiment names, "
     "got ['solo']"),
    ("governance:\n  persistence: {type: inMemory, keyPrefix: ''}\n",
     "governance.persistence.keyPrefix: expected a non-empty string, got ''"),
    # time strings
    ("governance:\n  policies:\n    - type: timeWindow\n      allowedStartTime: '25:00'\n"
     "      allowedEndTime: '17:00'\n",
     "governance.policies[0].allowedStartTime: expected a time of day HH:MM or HH:MM:SS, got '25:00'"),
    ("governance:\n  policies:\n    - type: timeWindow\n      allowedStartTime: 9am\n      allowedEndTime: 5pm\n",
     "governance.policies[0].allowedStartTime: expected a time of day HH:MM or HH:MM:SS, got '9am'"),
    ("governance:\n  policies:\n    - type: trafficLimit\n      maxTrafficPercentage: 10\n"
     "      minStableTime: 30 minutes\n",
     "governance.policies[0].minStableTime: expected a duration hh:mm:ss (d.hh:mm:ss for days), got '30 minutes'"),
    ("governance:\n  policies:\n    - type: trafficLimit\n      maxTrafficPercentage: 10\n"
     "      minStableTime: '00:75:00'\n",
     "governance.policies[0].minStableTime: expected a duration hh:mm:ss (d.hh:mm:ss for days), got '00:75:00'"),
    # whole-config checks
    ("governance:\n  policies:\n    - type: errorRate\n      maxErrorRate: 0.1\n"
     "    - type: errorRate\n      maxErrorRate: 0.2\n",
     "governance.policies[1]: policy name 'errorRate' is already used by policies[0]; "
     "give each policy a distinct name"),
    ("governance:\n  initialState: Draft\n  initialState: Running\n",
     "governance.initialState: duplicate key (line 3, column 3)"),
    ("governance:\n  persistence: {type: redis, connectionString: 'a:1,b:2'}\n",
     "governance.persistence.connectionString: expected one host:port (or a redis:// URL; "
     "redis+cluster:// for a cluster), got 'a:1,b:2'"),
    ("governance:\n  persistence: {type: redis, connectionString: 'memory://'}\n",
     "governance.persistence.connectionString: the URL scheme must be one of redis, rediss, unix, "
     "redis+cluster, rediss+cluster, got 'memory://'"),
    ("governance:\n  persistence: {type: redis}\n",
     "governance.persistence.connectionString: missing required key (expected a non-empty string)"),
    ("governance:\n  persistence: {type: SqlServer, connectionString: x}\n",
     "governance.persistence.type: 'SqlServer' is not supported: redgov keeps live state in Redis"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_refusals_name_path_and_value(text: str, expected: str) -> None:
    error = config_exception(text)
    assert error.errors[0].startswith(expected), str(error)  # the first problem found; others may follow
    assert expected.split(":")[0] in str(error)
    nested = config_exception("experimentFramework:\n" + "".join(f"  {line}\n" for line in text.splitlines()))
    assert nested.errors[0].startswith(
        "experimentFramework." + expected.replace("(line 3, column 3)", "(line 4, column 5)")), str(nested)


def test_refusals_in_json_text() -> None:
    message = config_error('{"governance": {"policies": [{"type": "errorRate", "maxErrorRate": -1}]}}')
    assert message == "governance.policies[0].maxErrorRate: expected a number from 0 to 1, got -1"
    message = config_error('{"governance": {"initialState": "Draft", "initialState": "Running"}}')
    assert message == "governance.initialState: duplicate key (JSON object)"


def test_refusal_in_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "gov.yaml"
    path.write_text("governance:\n  approvalGates:\n    - type: automatic\n"
                    "      fromStat: Draft\n      toState: Running\n")
    assert config_error(path) == (f"{path}: governance.approvalGates[0].fromStat: unknown key; "
                                  f"did you mean 'fromState'?")
    path.write_text("governance:\n  approvalGates:\n    - type: automatic\n      fromStat: Draft\n")
    error = config_exception(path)
    assert str(error) == (f"{path}: 2 configuration errors:\n"
                          f"  governance.approvalGates[0].fromStat: unknown key; did you mean 'fromState'?\n"
                          f"  governance.approvalGates[0].toState: missing required key (expected one of {ALL_STATES})")
    assert error.errors == tuple(line.strip() for line in str(error).splitlines()[1:])


def test_bad_source_type() -> None:
    assert "must be a path" in config_error(42)


# -- helpers --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "url"), [
    ("127.0.0.1:6379", "redis://127.0.0.1:6379/0"),
    ("cache", "redis://cache:6379/0"),
    ("cache:6380,abortConnect=false,allowAdmin=true", "redis://cache:6380/0"),
    ("cache:6380,password=p@ss:w,ssl=True,defaultDatabase=3", "rediss://:p%40ss%3Aw@cache:6380/3"),
    ("cache:6380,user=app,password=pw", "redis://app:pw@cache:6380/0"),
    ("cache,name=svc,connectTimeout=5000,syncTimeout=250",
     "redis://cache:6379/0?client_name=svc&socket_connect_timeout=5&socket_timeout=0.25"),
    ("[::1]:6379", "redis://[::1]:6379/0"),
    ("redis://u:p@h:1/2", "redis://u:p@h:1/2"),
    ("rediss://h", "rediss://h"),
    ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
    ("redis+cluster://h:7000", "redis+cluster://h:7000"),
])
def test_redis_url(text: str, url: str) -> None:
    assert redis_url(text) == url


@pytest.mark.parametrize("text", ["", "a:1,b:2", "h:99999", "h:x", "http://h", "h,defaultDatabase=x"])
def test_redis_url_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        redis_url(text)


@pytest.mark.parametrize(("text", "delta"), [
    ("00:30:00", timedelta(minutes=30)),
    ("1:02:03", timedelta(hours=1, minutes=2, seconds=3)),
    ("2.00:00:00", timedelta(days=2)),
    ("00:00:01.5", timedelta(seconds=1.5)),
    ("00:00:00.1234567", timedelta(microseconds=123456)),
])
def test_parse_duration(text: str, delta: timedelta) -> None:
    assert parse_duration(text) == delta


# -- JSON Schema ----------------------------------------------------------------------

def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_config_schema() -> None:
    schema = config_schema()
    json.dumps(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = schema["$defs"]
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in defs, ref
    json_types = {"object", "array", "string", "number", "integer", "boolean", "null"}
    for name, definition in defs.items():
        if definition.get("type") == "object":
            assert set(definition.get("required", ())) <= set(definition["properties"]), name
        for prop in definition.get("properties", {}).values():
            assert prop.get("type", "object") in json_types
    root = defs[schema["$ref"].removeprefix("#/$defs/")]
    assert set(root["properties"]) == {"experimentFramework", "governance"}
    governance = defs["GovernanceConfig"]
    assert governance["additionalProperties"] is False
    assert set(governance["properties"]) == {"initialState", "enableAutoVersioning", "requireTelemetry",
                                             "approvalGates", "policies", "persistence", "rules"}
    assert set(defs["LifecycleState"]["enum"]) == {s.value for s in LifecycleState}
    assert set(defs["RoleGateConfig"]["properties"]) == {"type", "fromState", "toState", "properties",
                                                         "allowedRoles"}
    assert defs["ErrorRateConfig"]["properties"]["maxErrorRate"]["maximum"] == 1
    assert "pattern" in defs["TimeWindowConfig"]["properties"]["allowedStartTime"]
    assert set(defs["RedisPersistenceConfig"]["properties"]) >= {"type", "connectionString", "keyPrefix",
                                                                 "optimisticConcurrency", "retainHistory",
                                                                 "provider", "export"}
    assert defs["ExportConfig"]["required"] == ["url"]
    gates = governance["properties"]["approvalGates"]["items"]
    assert gates["discriminator"]["mapping"].keys() == {"automatic", "manual", "roleBased"}
    persistence_tags = set()
    for option in governance["properties"]["persistence"]["anyOf"]:
        persistence_tags |= set(option.get("discriminator", {}).get("mapping", {}))
    assert persistence_tags == {"redis", "inMemory", "embedded"}


def test_config_schema_accepts_the_samples(samples: dict[str, Path]) -> None:
    """With jsonschema installed (not a dev dependency), a full meta-schema check."""
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        return  # test_config_schema's structural checks still ran
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for key in ("memory", "example"):
        jsonschema.validate(yaml.safe_load(samples[key].read_text()), schema)


def test_retain_history_is_true_false_or_a_number_per_experiment() -> None:
    def retained(value: str) -> int | None:
        return load_config(f"governance: {{persistence: {{type: inMemory, retainHistory: {value}}}}}").retain_history

    assert retained("true") is None and retained("false") == 10_000 and retained("250") == 250
    for bad in ("0", "-3", "1.5", "maybe"):
        with pytest.raises(ConfigError, match=r"retainHistory: expected true, false or a number of entries >= 1"):
            retained(bad)
    with from_config("governance: {persistence: {type: inMemory, retainHistory: 25}}") as gov:
        assert gov.backplane.core.retain_history == 25
