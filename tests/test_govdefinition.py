"""A Governance's definition as data: round trips, the config loader, hashes, differences, custom kinds,
ManualGate's approvals and RoleGate's actorRoles."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
import yaml

from redgov import (
    DEFAULT_RULES,
    AutomaticGate,
    ConfigError,
    ConflictPrevention,
    ErrorRate,
    Gate,
    LifecycleState,
    ManualGate,
    Policy,
    RoleGate,
    Severity,
    TimeWindow,
    TrafficLimit,
    ValidationError,
    connect,
)
from redgov.config import config_schema, from_config, load_config
from redgov.govdefinition import Parts, definition_of, differences, is_empty, parts_of, rules_hash
from redgov.governance import Governance
from redgov.policies import PolicyContext, policy_kind, register_policy, registered_policy

S = LifecycleState
BERLIN = ZoneInfo("Europe/Berlin")


# -- custom policies ----------------------------------------------------------------------

@register_policy
class LatencyBudget(Policy):
    """A custom policy described by default: its __init__ parameters and same-named attributes."""

    kind = "test.latencyBudget"
    telemetry_keys = ("p99Latency",)

    def __init__(self, max_ms: float, *services: str, buckets: tuple[int, ...] = (50, 99),
                 note: str | None = None, name: str | None = None, severity: Severity | str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        self.max_ms = max_ms
        self.services = services
        self.buckets = tuple(buckets)
        self.note = note

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        return True, "fine"


class Kindless(Policy):
    """No kind of its own: written under its class name; takes no name or severity."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        return True, "fine"


@register_policy
class Quota(Policy):
    """Overrides definition and from_definition (a value the default cannot write)."""

    kind = "test.quota"

    def __init__(self, window: timedelta, *, name: str | None = None, severity: str | None = None) -> None:
        super().__init__(name=name, severity=severity)
        self.window = window

    def definition(self) -> dict[str, Any]:
        return {"type": self.kind, "name": self.name, "severity": self.severity.value,
                "windowSeconds": self.window.total_seconds()}

    @classmethod
    def from_definition(cls, data: Any) -> Policy:
        return cls(timedelta(seconds=data["windowSeconds"]), name=data["name"], severity=data["severity"])

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        return True, "fine"


class Unregistered(Policy):
    kind = "test.neverRegistered"

    def evaluate(self, ctx: PolicyContext) -> tuple[bool, str]:
        return True, "fine"


# -- fixtures -----------------------------------------------------------------------------

GATES: list[Gate] = [
    AutomaticGate(to_state=S.PENDING_APPROVAL, from_state=S.DRAFT),
    AutomaticGate(to_state=S.APPROVED, from_state=S.PENDING_APPROVAL, after=timedelta(days=1, minutes=15)),
    ManualGate(to_state=S.APPROVED),
    ManualGate(to_state=S.RUNNING, from_state=S.APPROVED, approvals=2, self_approval=True),
    RoleGate("operator", "sre", to_state=S.RAMPING, from_state=S.RUNNING),
]


def policies() -> list[Policy]:
    return [
        TrafficLimit(10, timedelta(minutes=30), name="traffic", severity="Warning"),
        TrafficLimit(50),
        ErrorRate(0.05, name="error-rate", severity=Severity.ERROR),
        TimeWindow(time(9), time(17, 30, 15), name="office"),
        TimeWindow(time(22, tzinfo=BERLIN), time(6, tzinfo=BERLIN), name="berlin-night", severity="Critical"),
        TimeWindow(time(8, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
                   time(18, tzinfo=timezone(timedelta(hours=-5, minutes=-30))), name="offset"),
        ConflictPrevention("checkout", "payment", "shipping", name="checkout-group", severity="Info"),
    ]


RULES = {"Draft": ["Running", "Archived"], "Running": ["Paused", "Archived"], "Paused": ["Running"]}


def full() -> dict[str, Any]:
    return definition_of(rules=RULES, gates=GATES, policies=policies(), initial_state="PendingApproval",
                         require_telemetry=True)


def again(parts: Parts) -> dict[str, Any]:
    return definition_of(**parts._asdict())


# -- round trips --------------------------------------------------------------------------

def test_full_definition_round_trips() -> None:
    data = full()
    assert list(data) == ["initialState", "approvalGates", "policies", "requireTelemetry", "rules"]
    assert data["initialState"] == "PendingApproval" and data["requireTelemetry"] is True
    assert data["rules"] == {"Draft": ["Running", "Archived"], "Running": ["Paused", "Archived"],
                             "Paused": ["Running"]}
    parts = parts_of(data)
    assert parts.gates == tuple(GATES)
    assert [p.name for p in parts.policies] == [p.name for p in policies()]
    assert again(parts) == data
    assert again(parts_of(json.loads(json.dumps(data)))) == data  # as stored and read back
    assert again(parts_of(msgspec.json.decode(msgspec.json.encode(data)))) == data


@pytest.mark.parametrize("gate", GATES, ids=repr)
def test_each_gate_round_trips(gate: Gate) -> None:
    data = definition_of(gates=[gate])
    assert parts_of(data).gates == (gate,)
    assert again(parts_of(data)) == data


@pytest.mark.parametrize("index", range(len(policies())))
def test_each_policy_round_trips(index: int) -> None:
    policy = policies()[index]
    data = definition_of(policies=[policy])
    (rebuilt,) = parts_of(data).policies
    assert type(rebuilt) is type(policy)
    assert (rebuilt.name, rebuilt.severity) == (policy.name, policy.severity)
    assert repr(rebuilt) == repr(policy)
    assert again(parts_of(data)) == data


def test_gates_and_policies_are_written_as_a_config_file_writes_them() -> None:
    data = full()
    assert data["approvalGates"] == [
        {"type": "automatic", "toState": "PendingApproval", "fromState": "Draft"},
        {"type": "automatic", "toState": "Approved", "fromState": "PendingApproval", "autoApproveAfter": "1.00:15:00"},
        {"type": "manual", "toState": "Approved"},
        {"type": "manual", "toState": "Running", "fromState": "Approved", "requiredApprovals": 2,
         "allowSelfApproval": True},
        {"type": "roleBased", "toState": "Ramping", "fromState": "Running", "allowedRoles": ["operator", "sre"]},
    ]
    assert data["policies"] == [
        {"type": "trafficLimit", "name": "traffic", "severity": "Warning", "maxTrafficPercentage": 10.0,
         "minStableTime": "00:30:00"},
        {"type": "trafficLimit", "name": "trafficLimit", "severity": "Critical", "maxTrafficPercentage": 50.0},
        {"type": "errorRate", "name": "error-rate", "severity": "Error", "maxErrorRate": 0.05},
        {"type": "timeWindow", "name": "office", "severity": "Error", "allowedStartTime": "09:00",
         "allowedEndTime": "17:30:15"},
        {"type": "timeWindow", "name": "berlin-night", "severity": "Critical", "allowedStartTime": "22:00",
         "allowedEndTime": "06:00", "timeZone": "Europe/Berlin"},
        {"type": "timeWindow", "name": "offset", "severity": "Error", "allowedStartTime": "08:00",
         "allowedEndTime": "18:00", "timeZone": "-05:30"},
        {"type": "conflictPrevention", "name": "checkout-group", "severity": "Info",
         "conflictingExperiments": ["checkout", "payment", "shipping"]},
    ]


def test_the_default_definition_and_determinism() -> None:
    assert definition_of() == {"initialState": "Draft", "approvalGates": [], "policies": []}
    explicit = {state.value: [t.value for t in targets] for state, targets in DEFAULT_RULES.items()}
    assert definition_of(rules=explicit, require_telemetry=False) == definition_of()
    assert full() == full()
    # states are listed in declaration order whatever order they were given in
    shuffled = {"Paused": ["Running"], "Running": ["Archived", "Paused"], "Draft": ["Archived", "Running"]}
    assert definition_of(rules=shuffled)["rules"] == full()["rules"]
    reordered = definition_of(gates=list(reversed(GATES)))
    assert [g["type"] for g in reordered["approvalGates"]] == [g.kind for g in reversed(GATES)]


def test_a_terminal_state_can_be_given_or_left_out() -> None:
    assert definition_of(rules={"Draft": ["Archived"], "Archived": []}) == definition_of(rules={"Draft": ["Archived"]})


# -- the config loader and from_config -----------------------------------------------------

def test_load_config_reads_a_definition() -> None:
    data = full()
    for source in ({"governance": data}, yaml.safe_dump({"governance": data}), json.dumps({"governance": data})):
        config = load_config(source)
        assert definition_of(rules=config.lifecycle(), gates=config.gates(), policies=config.policies(),
                             initial_state=config.initial_state, require_telemetry=config.require_telemetry) == data
        assert config.lifecycle().as_dict() == parts_of(data).rules.as_dict()


def test_from_config_builds_a_governance_of_the_same_definition() -> None:
    data = {key: value for key, value in full().items() if key != "rules"}
    with from_config({"governance": data}, url="memory://", prefix="govdef-test") as governance:
        core = governance.core
        assert definition_of(rules=core.rules, gates=core.gates, policies=core.policies,
                             initial_state=core.initial_state, require_telemetry=core.require_telemetry) == data


def test_parts_build_a_governance_of_the_same_definition() -> None:
    data = full()
    with Governance(connect("memory://", prefix="govdef-test"), **parts_of(data)._asdict()) as governance:
        core = governance.core
        assert definition_of(rules=core.rules, gates=core.gates, policies=core.policies,
                             initial_state=core.initial_state, require_telemetry=core.require_telemetry) == data


SAMPLES = [Path(__file__).parent / "samples", Path("/work/shared/seed/samples")]


def sample_files() -> Iterator[Path]:
    for folder in SAMPLES:
        if folder.is_dir():
            yield from sorted(p for p in folder.glob("*.yaml") if "-sql-" not in p.name)  # sql is refused by design
            return


@pytest.mark.parametrize("sample", list(sample_files()), ids=lambda p: p.name)
def test_seed_samples_load_and_their_definition_round_trips(sample: Path) -> None:
    config = load_config(sample, env={"REDIS_CONNECTION": "127.0.0.1:6379"})
    data = definition_of(rules=config.lifecycle(), gates=config.gates(), policies=config.policies(),
                         initial_state=config.initial_state, require_telemetry=config.require_telemetry)
    assert again(parts_of(data)) == data
    assert not is_empty(data)
    assert load_config({"governance": data}).gates() == config.gates()


def test_schema_has_the_new_keys() -> None:
    defs = config_schema()["$defs"]
    manual = defs["ManualGateConfig"]["properties"]
    assert manual["requiredApprovals"]["minimum"] == 1 and manual["allowSelfApproval"]["type"] == "boolean"
    assert "timeZone" in defs["TimeWindowConfig"]["properties"]
    assert "rules" in defs["GovernanceConfig"]["properties"]


@pytest.mark.parametrize(("governance", "expected"), [
    ({"approvalGates": [{"type": "manual", "toState": "Running", "requiredApprovals": 0}]},
     "governance.approvalGates[0].requiredApprovals: expected a whole number >= 1, got 0"),
    ({"approvalGates": [{"type": "manual", "toState": "Running", "requiredApprovals": True}]},
     "governance.approvalGates[0].requiredApprovals: expected a whole number >= 1, got true"),
    ({"approvalGates": [{"type": "manual", "toState": "Running", "allowSelfApproval": "yes"}]},
     "governance.approvalGates[0].allowSelfApproval: expected true or false, got 'yes'"),
    ({"policies": [{"type": "timeWindow", "allowedStartTime": "09:00", "allowedEndTime": "17:00",
                    "timeZone": "Mars/Olympus"}]}, "'Mars/Olympus' is not a known time zone"),
    ({"rules": {"Draft": ["Runing"]}}, "governance.rules: expected a mapping of each state"),
    ({"rules": {"Draft": "Running"}}, "governance.rules: expected a mapping of each state"),
])
def test_load_config_refuses_bad_new_keys(governance: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"governance": governance})
    assert expected in str(info.value)


# -- parts_of refusals ---------------------------------------------------------------------

@pytest.mark.parametrize(("definition", "expected"), [
    ({"policies": [{"type": "errorRate", "maxErrorRate": 1.5}]},
     "governance.policies[0].maxErrorRate: expected `float` <= 1.0, got 1.5"),
    ({"policies": [{"type": "errorRate", "maxErrorRate": "0.1"}]}, "governance.policies[0].maxErrorRate: "),
    ({"policies": [{"type": "errorRate"}]}, "governance.policies[0]: object missing required field `maxErrorRate`"),
    ({"policies": [{"type": "errorRate", "maxErrorRate": 0.1, "maxErorRate": 0.1}]},
     "governance.policies[0]: object contains unknown field `maxErorRate`"),
    ({"policies": [{"type": "errorRate", "maxErrorRate": 0.1}, {"type": "errorRate", "maxErrorRate": 0.2}]},
     "governance.policies[1].name: 'errorRate' is already the name of policies[0]"),
    ({"policies": [{"maxErrorRate": 0.1}]}, "governance.policies[0].type: expected a policy kind, got null"),
    ({"policies": ["errorRate"]}, "governance.policies[0]: expected a mapping, got 'errorRate'"),
    ({"policies": {"type": "errorRate"}}, "governance.policies: expected a list"),
    ({"approvalGates": [{"type": "manual", "toState": "Runing"}]},
     "governance.approvalGates[0].toState: invalid enum value 'Runing'"),
    ({"approvalGates": [{"type": "manual", "toState": "Running", "requiredApprovals": 0}]},
     "governance.approvalGates[0].requiredApprovals: "),
    ({"initialState": "Drat"}, "governance.initialState: invalid enum value 'Drat'"),
    ({"rules": {"Draft": ["Runing"]}}, "governance.rules"),
    ({"requireTelemetry": "yes"}, "governance.requireTelemetry: expected `bool`, got 'yes'"),
    ({"persistence": {"type": "inMemory"}}, "governance.persistence: not part of a rules definition"),
    ({"policies": [{"type": "test.latencyBudget", "maxMs": 5, "maxMz": 3}]},
     "governance.policies[0].maxMz: unknown key for policy kind 'test.latencyBudget'; did you mean 'maxMs'?"),
    ({"policies": [{"type": "test.latencyBudget"}]}, "governance.policies[0].maxMs: missing required key"),
    ({"policies": [{"type": "test.latencyBudget", "maxMs": 5, "severity": "Fatal"}]},
     "governance.policies[0]: LatencyBudget refused the definition"),
    (["not", "a", "mapping"], "governance: expected a mapping"),
])
def test_parts_of_names_the_path_of_bad_data(definition: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parts_of(definition)
    assert expected in str(info.value), str(info.value)


def test_an_unregistered_kind_is_named_with_the_way_forward() -> None:
    data = definition_of(policies=[ErrorRate(0.1), Unregistered()])
    assert data["policies"][1] == {"type": "test.neverRegistered", "name": "test.neverRegistered",
                                   "severity": "Critical"}
    with pytest.raises(ConfigError) as info:
        parts_of(data)
    message = str(info.value)
    assert message.startswith("governance.policies[1].type: policy kind 'test.neverRegistered'")
    assert "redgov.register_policy" in message
    with pytest.raises(ConfigError, match="test.neverRegistered"):
        Policy.from_definition(data["policies"][1])


# -- custom policies -----------------------------------------------------------------------

def test_a_registered_custom_policy_round_trips() -> None:
    policy = LatencyBudget(250.5, "api", "web", buckets=(90, 99), name="latency", severity="Warning")
    data = definition_of(policies=[policy, ErrorRate(0.1)])
    assert data["policies"][0] == {"type": "test.latencyBudget", "name": "latency", "severity": "Warning",
                                   "maxMs": 250.5, "services": ["api", "web"], "buckets": [90, 99]}
    (rebuilt, errors) = parts_of(data).policies
    assert isinstance(rebuilt, LatencyBudget) and isinstance(errors, ErrorRate)
    assert (rebuilt.max_ms, rebuilt.services, rebuilt.buckets, rebuilt.note) == (250.5, ("api", "web"), (90, 99), None)
    assert (rebuilt.name, rebuilt.severity) == ("latency", Severity.WARNING)
    assert again(parts_of(data)) == data
    assert isinstance(Policy.from_definition(data["policies"][0]), LatencyBudget)
    assert isinstance(LatencyBudget.from_definition(data["policies"][0]), LatencyBudget)
    with pytest.raises(ConfigError, match="is not LatencyBudget's kind"):
        LatencyBudget.from_definition(data["policies"][1])


def test_a_custom_policy_may_override_definition_and_from_definition() -> None:
    data = definition_of(policies=[Quota(timedelta(minutes=5), name="q", severity="Info")])
    assert data["policies"] == [{"type": "test.quota", "name": "q", "severity": "Info", "windowSeconds": 300.0}]
    (rebuilt,) = parts_of(data).policies
    assert isinstance(rebuilt, Quota) and rebuilt.window == timedelta(minutes=5)
    assert again(parts_of(data)) == data


def test_a_kindless_policy_is_written_under_its_class_name() -> None:
    assert policy_kind(Kindless) == "Kindless"
    data = definition_of(policies=[Kindless(3)])
    assert data["policies"] == [{"type": "Kindless", "name": "policy", "severity": "Critical", "limit": 3}]
    register_policy(Kindless)
    assert registered_policy("Kindless") is Kindless
    renamed = {**data["policies"][0], "name": "limit", "severity": "Info"}
    rebuilt = Policy.from_definition(renamed)  # name and severity set although __init__ takes neither
    assert isinstance(rebuilt, Kindless) and (rebuilt.limit, rebuilt.name, rebuilt.severity) == (
        3, "limit", Severity.INFO)


def test_register_policy_refuses_what_it_cannot_keep() -> None:
    assert register_policy(LatencyBudget) is LatencyBudget  # again: the same class
    for kind in ("trafficLimit", "errorRate", "timeWindow", "conflictPrevention"):
        assert registered_policy(kind) is not None  # built-ins count as registered
    with pytest.raises(ValidationError, match="subclass of redgov.Policy"):
        register_policy(dict)  # type: ignore[type-var]
    with pytest.raises(ValidationError, match="subclass of redgov.Policy"):
        register_policy(Policy)

    class Shadow(Policy):
        kind = "errorRate"

    with pytest.raises(ValidationError, match="'errorRate' is already built in"):
        register_policy(Shadow)

    class Twin(Policy):
        kind = "test.latencyBudget"

    with pytest.raises(ValidationError, match="already registered as .*LatencyBudget"):
        register_policy(Twin)


def test_a_subclass_of_a_built_in_needs_its_own_kind() -> None:
    class Stricter(ErrorRate):
        pass

    with pytest.raises(ValidationError, match="built-in kind 'errorRate'"):
        definition_of(policies=[Stricter(0.1)])

    class Custom(ErrorRate):
        kind = "test.stricterErrorRate"

    data = definition_of(policies=[Custom(0.1)])
    assert data["policies"] == [{"type": "test.stricterErrorRate", "name": "test.stricterErrorRate",
                                 "severity": "Critical", "maxErrorRate": 0.1}]


def test_a_policy_that_cannot_be_written_is_refused() -> None:
    class Lost(Policy):
        kind = "test.lost"

        def __init__(self, limit: int) -> None:
            super().__init__()

    with pytest.raises(ValidationError, match="no attribute 'limit'"):
        definition_of(policies=[Lost(1)])

    class Timed(Policy):
        kind = "test.timed"

        def __init__(self, every: timedelta) -> None:
            super().__init__()
            self.every = every

    with pytest.raises(ValidationError, match="cannot be stored"):
        definition_of(policies=[Timed(timedelta(1))])
    with pytest.raises(ValidationError, match="whole seconds"):
        definition_of(policies=[TimeWindow(time(9, 0, 0, 5), time(17))])


# -- hash, differences, emptiness -----------------------------------------------------------

def test_rules_hash_is_stable_and_sensitive() -> None:
    data = full()
    digest = rules_hash(data)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert rules_hash(full()) == digest
    assert rules_hash(dict(reversed(list(data.items())))) == digest  # key order does not matter
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert digest == "sha256:" + hashlib.sha256(canonical).hexdigest()  # what another language computes
    changed = json.loads(json.dumps(data))
    changed["approvalGates"][3]["requiredApprovals"] = 3
    assert rules_hash(changed) != digest
    assert rules_hash(definition_of()) != digest


def test_differences_name_what_differs() -> None:
    mine = definition_of(gates=[ManualGate(to_state=S.RUNNING, from_state=S.APPROVED), RoleGate(
        "sre", to_state=S.RAMPING)], policies=[ErrorRate(0.05, name="error-rate"), TrafficLimit(10)])
    published = definition_of(
        rules={**{s.value: [t.value for t in DEFAULT_RULES[s]] for s in S}, "Draft": ["PendingApproval"]},
        gates=[ManualGate(to_state=S.RUNNING, from_state=S.APPROVED, approvals=2),
               AutomaticGate(to_state=S.ARCHIVED)],
        policies=[TrafficLimit(20, name="trafficLimit"), ConflictPrevention("a", "b")],
        initial_state=S.PENDING_APPROVAL, require_telemetry=True)
    assert differences(mine, published) == [
        "initialState: Draft here, PendingApproval published",
        "requireTelemetry: false here, true published",
        "rules: Draft -> Archived only here",
        "approvalGates[0]: manual Approved->Running requiredApprovals 1 here, 2 published",
        "approvalGates: roleBased *->Ramping only here",
        "approvalGates: automatic *->Archived only published",
        "policies: errorRate 'error-rate' only here",
        "policies[1]: trafficLimit 'trafficLimit' maxTrafficPercentage 10 here, 20 published",
        "policies: conflictPrevention 'conflictPrevention' only published",
    ]
    assert differences(published, mine)[0] == "initialState: PendingApproval here, Draft published"
    assert differences(mine, mine) == []
    assert differences(full(), json.loads(json.dumps(full()))) == []
    assert differences({}, definition_of()) == []  # missing keys are their defaults
    swapped = definition_of(gates=[RoleGate("sre", to_state=S.RAMPING),
                                   ManualGate(to_state=S.RUNNING, from_state=S.APPROVED)],
                            policies=[ErrorRate(0.05, name="error-rate"), TrafficLimit(10)])
    assert differences(mine, swapped) == [
        "approvalGates: the same gates in another order (here: manual Approved->Running, roleBased *->Ramping; "
        "published: roleBased *->Ramping, manual Approved->Running)"]
    renamed = definition_of(policies=[TrafficLimit(10, name="error-rate")])
    assert differences(definition_of(policies=[ErrorRate(0.05, name="error-rate")]), renamed) == [
        "policies[0]: 'error-rate' is errorRate here, trafficLimit published"]
    assert differences(definition_of(), {"rules": {"Drat": ["Running"]}}) == [
        "rules: none here, {'Drat': ['Running']} published"]
    roles = definition_of(gates=[RoleGate("sre", "ops", to_state=S.RAMPING)])
    assert differences(definition_of(gates=[RoleGate("sre", to_state=S.RAMPING)]), roles) == [
        "approvalGates[0]: roleBased *->Ramping allowedRoles [sre] here, [sre, ops] published"]


def test_is_empty() -> None:
    assert is_empty(definition_of())
    assert is_empty({})
    assert is_empty(definition_of(rules=DEFAULT_RULES))  # type: ignore[arg-type]
    assert not is_empty(full())
    assert not is_empty(definition_of(gates=[ManualGate(to_state=S.RUNNING)]))
    assert not is_empty(definition_of(policies=[ErrorRate(0.1)]))
    assert not is_empty(definition_of(initial_state=S.PENDING_APPROVAL))
    assert not is_empty(definition_of(require_telemetry=True))
    assert not is_empty(definition_of(rules={"Draft": ["Running"]}))
    assert not is_empty({"persistence": {}})


# -- ManualGate and RoleGate ----------------------------------------------------------------

@pytest.mark.parametrize("approvals", [0, -1, True, False, 1.5, "2", None])
def test_manual_gate_approvals_must_be_a_whole_number_from_1(approvals: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ManualGate(to_state=S.RUNNING, approvals=approvals)
    assert "approvals" in str(info.value) and repr(approvals) in str(info.value)


@pytest.mark.parametrize("self_approval", [1, "yes", None])
def test_manual_gate_self_approval_must_be_a_bool(self_approval: Any) -> None:
    with pytest.raises(ValidationError, match="self_approval"):
        ManualGate(to_state=S.RUNNING, self_approval=self_approval)


def test_manual_gate_fields_count_in_equality_and_repr() -> None:
    plain = ManualGate(to_state=S.RUNNING, from_state=S.APPROVED)
    assert (plain.approvals, plain.self_approval) == (1, False)
    assert plain == ManualGate(to_state=S.RUNNING, from_state=S.APPROVED, approvals=1, self_approval=False)
    assert plain != ManualGate(to_state=S.RUNNING, from_state=S.APPROVED, approvals=2)
    assert plain != ManualGate(to_state=S.RUNNING, from_state=S.APPROVED, self_approval=True)
    assert len({plain, ManualGate(to_state=S.RUNNING, from_state=S.APPROVED, approvals=2)}) == 2
    assert repr(plain) == "ManualGate(to_state='Running', from_state='Approved')"
    assert repr(ManualGate(to_state=S.RUNNING, approvals=3, self_approval=True)) == (
        "ManualGate(to_state='Running', approvals=3, self_approval=True)")
    assert plain.name == "manual:Approved->Running"  # the name in approval records is unchanged


def test_manual_gate_config_keys() -> None:
    config = load_config({"governance": {"approvalGates": [
        {"type": "manual", "toState": "Running", "requiredApprovals": 2, "allowSelfApproval": True},
        {"type": "manual", "toState": "Approved"}]}})
    assert config.gates() == [ManualGate(to_state=S.RUNNING, approvals=2, self_approval=True),
                              ManualGate(to_state=S.APPROVED)]


def test_role_gate_accepts_actor_roles() -> None:
    gate = RoleGate("sre", "operator", to_state=S.RAMPING)
    assert gate.decide({"actorRoles": ["viewer", "operator"]}) == (True, "actor role 'operator' is allowed")
    assert gate.decide({"actorRoles": ("sre",)}) == (True, "actor role 'sre' is allowed")
    assert gate.decide({"actorRole": "sre"}) == (True, "actor role 'sre' is allowed")
    # both given: either may match
    assert gate.decide({"actorRole": "viewer", "actorRoles": ["sre"]}) == (True, "actor role 'sre' is allowed")
    assert gate.decide({"actorRole": "operator", "actorRoles": ["viewer"]}) == (
        True, "actor role 'operator' is allowed")
    assert gate.decide({"actorRoles": "sre"})[0]  # one name as text counts as that role
    approved, reason = gate.decide({"actorRole": "viewer", "actorRoles": ["approver"]})
    assert not approved and reason == "actor roles 'viewer', 'approver' are not one of sre, operator"
    assert gate.decide({"actorRoles": ["viewer"]}) == (False, "actor role 'viewer' is not one of sre, operator")
    assert gate.decide({"actorRoles": []}) == (False, "no actorRole given; one of sre, operator is required")
    assert gate.decide({"actorRoles": 5}) == (False, "no actorRole given; one of sre, operator is required")
    assert gate.decide(None) == (False, "no actorRole given; one of sre, operator is required")
    assert gate.matching_role({"actorRole": "viewer", "actorRoles": ["x", "sre"]}) == "sre"
    assert gate.matching_role({"actorRoles": ["viewer"]}) is None
