"""The names and signatures API.md fixes."""

from __future__ import annotations

import inspect

import msgspec
import pytest

import redgov
import redgov.aio

NAMES = """
connect Backplane Governance load_config from_config GovernanceConfig GovernanceEvent Change
AccessDeniedError UnavailableError HistoryTrimmedError CorruptDataError ValidationError
LifecycleState Severity ExperimentState StateTransition ApprovalRecord ConfigurationVersion
PolicyEvaluation SaveResult RedgovError ConflictError InvalidTransitionError ApprovalRequiredError
PolicyViolationError ConfigError NotFoundError AutomaticGate ManualGate RoleGate TrafficLimit ErrorRate
TimeWindow ConflictPrevention
""".split()

BACKPLANE = {
    "get_state": "(experiment, *, tenant=None, environment=None)",
    "save_state": "(state, *, expected_etag=None)",
    "append_transition": "(t)",
    "transitions": "(experiment, *, tenant=None, environment=None, limit=None, newest_first=False)",
    "append_approval": "(a)",
    "approvals": "(experiment, *, tenant=None, environment=None, limit=None, newest_first=False)",
    "approvals_for_transition": "(transition_id, *, tenant=None, environment=None)",
    "append_version": "(v)",
    "version": "(experiment, number, *, tenant=None, environment=None)",
    "latest_version": "(experiment, *, tenant=None, environment=None)",
    "versions": "(experiment, *, tenant=None, environment=None, limit=None, newest_first=False)",
    "append_policy_evaluation": "(e)",
    "policy_evaluations": "(experiment, *, tenant=None, environment=None, limit=None, newest_first=False)",
    "latest_policy_evaluation": "(experiment, policy, *, tenant=None, environment=None)",
}


def plain(fn: object) -> str:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values() if p.name != "self"]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


@pytest.mark.parametrize("name", NAMES)
def test_name_is_exported(name: str) -> None:
    assert hasattr(redgov, name) and name in redgov.__all__


def test_aio_exports() -> None:
    assert callable(redgov.aio.connect) and redgov.aio.AsyncBackplane and redgov.aio.AsyncGovernance


@pytest.mark.parametrize(("method", "signature"), sorted(BACKPLANE.items()))
def test_backplane_signatures(method: str, signature: str) -> None:
    assert plain(getattr(redgov.Backplane, method)) == signature


def test_connect_and_governance_signatures() -> None:
    assert plain(redgov.connect).startswith("(url='memory://', *, prefix='gov', cache=False")
    gov = plain(redgov.Governance)
    for part in ("backplane", "rules=None", "gates=()", "policies=()", "auto_versioning=True", "clock=None"):
        assert part in gov
    assert "initial_state=<LifecycleState.DRAFT: 'Draft'>" in gov
    transition = plain(redgov.Governance.transition)
    assert transition == ("(experiment, to, *, actor=None, reason=None, metadata=None, telemetry=None, tenant=None, "
                          "environment=None, expected_etag=None, idempotency_key=None, lease=None)")


def test_enum_values_are_the_names_of_api_md() -> None:
    assert [s.value for s in redgov.LifecycleState] == [
        "Draft", "PendingApproval", "Approved", "Running", "Ramping", "Paused", "RolledBack", "Archived", "Rejected"]
    assert [s.value for s in redgov.Severity] == ["Info", "Warning", "Error", "Critical"]


@pytest.mark.parametrize("record", [redgov.ExperimentState, redgov.StateTransition, redgov.ApprovalRecord,
                                    redgov.ConfigurationVersion, redgov.PolicyEvaluation])
def test_records_are_frozen_structs_with_scope_and_metadata(record: type[msgspec.Struct]) -> None:
    assert issubclass(record, msgspec.Struct) and record.__struct_config__.frozen
    fields = {f.name: f for f in msgspec.structs.fields(record)}
    assert fields["tenant"].default is None and fields["environment"].default is None
    assert "metadata" in fields


def test_errors_subclass_redgov_error() -> None:
    for name in ("ConflictError", "InvalidTransitionError", "ApprovalRequiredError", "PolicyViolationError",
                 "ConfigError", "NotFoundError"):
        assert issubclass(getattr(redgov, name), redgov.RedgovError)
    assert redgov.PolicyViolationError("x", []).evaluations == ()


def test_additions_of_2026_12_signatures() -> None:
    connect = plain(redgov.connect)
    for part in ("timeout=5.0", "retries=3", "retain_history=None", "archive=None", "cache_max_age=1.0"):
        assert part in connect, part
    assert plain(redgov.aio.connect) == connect
    for method in ("create", "transition", "approve", "create_version", "rollback"):
        assert "idempotency_key=None" in plain(getattr(redgov.Governance, method)), method
    assert "auto_create=False" in plain(redgov.Governance)
    assert plain(redgov.Governance.experiments) == "(*, tenant=None, environment=None, state=None)"
    assert plain(redgov.Governance.history).endswith("limit=None, newest_first=False)")


def test_coordination_signatures() -> None:
    """API.md, Coordination."""
    gov = redgov.Governance
    assert plain(gov.acquire_lease) == "(experiment, *, owner, ttl, tenant=None, environment=None)"
    assert plain(gov.renew_lease) == "(lease, *, ttl)"
    assert plain(gov.release_lease) == "(lease)"
    assert plain(gov.wait_for) == "(experiment, states, *, timeout, tenant=None, environment=None)"
    for method in ("transition", "create_version"):
        assert "lease=None" in plain(getattr(gov, method)), method
    assert "valid_for=None" in plain(gov.approve)
    assert "after=None" in plain(redgov.AutomaticGate)
    assert list(redgov.Lease.__struct_fields__) == ["experiment", "owner", "token", "expires_at", "tenant",
                                                    "environment"]
    assert issubclass(redgov.LeaseError, redgov.ConflictError)
    assert issubclass(redgov.DurabilityError, redgov.RedgovError)
    for part in ("wait_replicas=0", "wait_timeout=1.0"):
        assert part in plain(redgov.connect), part


def test_the_asyncio_twins_have_every_method_with_the_same_signature() -> None:
    for sync_class, async_class in ((redgov.Backplane, redgov.aio.AsyncBackplane),
                                    (redgov.Governance, redgov.aio.AsyncGovernance)):
        for name, member in inspect.getmembers(sync_class, inspect.isfunction):
            if name.startswith("_") or name in ("close", "run", "drive", "run_many"):
                continue
            twin = getattr(async_class, name, None)
            assert twin is not None, f"{async_class.__name__}.{name} is missing"
            assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), name
            assert plain(twin) == plain(member), name


def test_import_redgov_loads_only_what_every_user_needs() -> None:
    """The asyncio side, the YAML DSL, the embedded manager and the SQL copy load on first use
    (benchmarks/imports.py measures the time: import redgov <= 1.3x import redis)."""
    import subprocess
    import sys

    # opentelemetry: none of it beyond what redis-py >= 8 itself imports when it is installed
    probe = ("import sys, redis; pre = set(sys.modules); import redgov; "
             "lazy = ['redgov.aio', 'redgov.config', 'redgov.embedded', 'redgov.sql', 'yaml', 'sqlalchemy'] + "
             "[m for m in sys.modules if m.split('.')[0] == 'opentelemetry' and m not in pre]; "
             "print(','.join(m for m in lazy if m in sys.modules)); "
             "redgov.GovernanceConfig, redgov.aio.AsyncGovernance; print('redgov.aio' in sys.modules, "
             "'yaml' in sys.modules, 'from_config' in dir(redgov))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == ["", "True True True"], done.stdout + done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        redgov.nope  # noqa: B018
