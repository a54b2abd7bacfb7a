"""Bad input gets a clear error naming the field and value, and writes nothing."""

from __future__ import annotations

from datetime import datetime

import pytest

from redgov import (
    ApprovalRecord,
    Backplane,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    Severity,
    StateTransition,
    ValidationError,
)
from redgov.codec import MAX_RECORD_BYTES


def nothing_written(bp: Backplane) -> bool:
    return not list(bp.client.scan_iter(match="{" + bp.prefix + ":*"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ExperimentState(experiment="", state=LifecycleState.DRAFT), "experiment must not be empty"),
        (lambda: ExperimentState(experiment=5, state=LifecycleState.DRAFT), "experiment"),  # type: ignore[arg-type]
        (lambda: ExperimentState(experiment="e", state="Bogus"), "Bogus"),  # type: ignore[arg-type]
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, metadata={"x": object()}), "cannot be stored"),
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, last_modified=datetime(2026, 1, 1)), "timezone"),
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, tenant=7), "tenant"),  # type: ignore[arg-type]
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, last_modified_by=""), "last_modified_by"),
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, config_version=-1), "config_version"),
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, metadata={"blob": "x" * MAX_RECORD_BYTES}), "limit"),
        (lambda: ExperimentState(experiment="x" * 2000, state=LifecycleState.DRAFT), "limit is 1024"),
        (lambda: ExperimentState(experiment="\ud800", state=LifecycleState.DRAFT), "experiment"),
    ],
)
def test_bad_state_is_refused_before_any_write(backplane: Backplane, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=message):
        backplane.save_state(make())
    assert nothing_written(backplane)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda bp: bp.append_transition(StateTransition(experiment="e", to_state="Nope")), "Nope"),
        (lambda bp: bp.append_transition(StateTransition(experiment="e", to_state=LifecycleState.DRAFT, transition_id="")), "transition_id"),
        (lambda bp: bp.append_approval(ApprovalRecord(experiment="e", to_state=LifecycleState.DRAFT, approved="yes")), "approved"),
        (lambda bp: bp.append_version(ConfigurationVersion(experiment="e", version=0, configuration={})), "version number"),
        (lambda bp: bp.append_version(ConfigurationVersion(experiment="e", version=True, configuration={})), "version number"),
        (lambda bp: bp.append_version(ConfigurationVersion(experiment="e", version=1, configuration=[1])), "configuration"),
        (lambda bp: bp.append_policy_evaluation(PolicyEvaluation(experiment="e", policy="", compliant=True, severity=Severity.INFO)), "policy"),
        (lambda bp: bp.append_policy_evaluation(PolicyEvaluation(experiment="e", policy="p", compliant=True, severity="Loud")), "Loud"),
        (lambda bp: bp.append_transition({"experiment": "e"}), "takes a StateTransition"),
        (lambda bp: bp.save_state(ExperimentState(experiment="e", state=LifecycleState.DRAFT), expected_etag=""), "expected_etag"),
        (lambda bp: bp.get_state(None), "experiment must be a string"),
        (lambda bp: bp.get_state("e", tenant=3), "tenant"),
        (lambda bp: bp.version("e", "2"), "version number"),
        (lambda bp: bp.append_version(ConfigurationVersion(experiment="e", version=2**53, configuration={})),
         r"version number must be an integer from 1 to 2\*\*53 - 1, got 9007199254740992"),
        (lambda bp: bp.version("e", 2**53 + 1), "2\\*\\*53 - 1"),
    ],
)
def test_bad_input_everywhere(backplane: Backplane, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=message):
        call(backplane)
    assert nothing_written(backplane)


def test_validation_errors_are_value_errors_too() -> None:
    assert issubclass(ValidationError, ValueError)
