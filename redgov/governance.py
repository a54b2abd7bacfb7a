"""Governance: the lifecycle API over a Backplane (persistence is transparent under it).

Each method builds its Call(s) in ``govcore`` and runs them on the backplane;
``transition`` is one script call: the state, rule, gate and conflict checks,
the state write, the history append and the approval and policy records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from .backplane import Backplane
from .errors import RedgovError, ValidationError
from .gates import Gate
from .govcore import (
    DEFAULT_IDEMPOTENCY_WINDOW,
    Change,
    GovernanceCore,
    GovernanceEvent,
    TransitionRequest,
    WatchCursor,
    check_version_number,
    compare,
    diff,
    require_version,
)
from .policies import Policy
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    StateTransition,
)
from .rules import Rules

__all__ = ["Governance"]


class Governance:
    """Experiment lifecycle governance, authoritative across processes."""

    def __init__(
        self,
        backplane: Backplane,
        *,
        rules: Rules | Mapping[str, Iterable[str]] | None = None,
        gates: Sequence[Gate] = (),
        policies: Sequence[Policy] = (),
        initial_state: LifecycleState | str = LifecycleState.DRAFT,
        auto_versioning: bool = True,
        clock: Callable[[], datetime] | None = None,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> None:
        if not isinstance(backplane, Backplane):
            raise ValidationError(f"Governance needs a redgov.Backplane, got {type(backplane).__name__}")
        self.backplane = backplane
        self.core = GovernanceCore(backplane.core, rules=rules, gates=gates, policies=policies,
                                   initial_state=initial_state, auto_versioning=auto_versioning, clock=clock,
                                   idempotency_window=idempotency_window)

    @property
    def rules(self) -> Rules:
        return self.core.rules

    def close(self) -> None:
        self.backplane.close()

    def __enter__(self) -> Governance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lifecycle -------------------------------------------------------------------

    def create(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
               actor: str | None = None, configuration: Mapping[str, Any] | None = None,
               metadata: Mapping[str, Any] | None = None) -> ExperimentState:
        return self.backplane.run(self.core.create(experiment, tenant=tenant, environment=environment, actor=actor,
                                                   configuration=configuration, metadata=metadata))

    def state(self, experiment: str, *, tenant: str | None = None,
              environment: str | None = None) -> ExperimentState | None:
        return self.backplane.get_state(experiment, tenant=tenant, environment=environment)

    def transition(self, experiment: str, to: LifecycleState | str, *, actor: str | None = None,
                   reason: str | None = None, metadata: Mapping[str, Any] | None = None,
                   telemetry: Mapping[str, Any] | None = None, tenant: str | None = None,
                   environment: str | None = None, expected_etag: str | None = None,
                   idempotency_key: str | None = None) -> StateTransition:
        return self.backplane.run(self.core.transition(
            experiment, to, actor=actor, reason=reason, metadata=metadata, telemetry=telemetry, tenant=tenant,
            environment=environment, expected_etag=expected_etag, idempotency_key=idempotency_key))

    def transition_many(self, requests: Iterable[TransitionRequest]) -> list[StateTransition | RedgovError]:
        """Many transitions in one pipelined round trip; each succeeds or fails on its own.

        Invalid input raises before anything is sent. Each result is the
        StateTransition or the RedgovError that refused it, in request order.
        """
        calls = [self.core.transition(r.experiment, r.to, actor=r.actor, reason=r.reason, metadata=r.metadata,
                                      telemetry=r.telemetry, tenant=r.tenant, environment=r.environment,
                                      expected_etag=r.expected_etag, idempotency_key=r.idempotency_key)
                 for r in requests]
        return self.backplane.run_many(calls)

    def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None = None,
                approved: bool = True, tenant: str | None = None,
                environment: str | None = None) -> ApprovalRecord:
        return self.backplane.run(self.core.approve(experiment, to, approver=approver, reason=reason,
                                                    approved=approved, tenant=tenant, environment=environment))

    def allowed_transitions(self, experiment: str, *, tenant: str | None = None,
                            environment: str | None = None) -> list[LifecycleState]:
        current = self.state(experiment, tenant=tenant, environment=environment)
        return self.rules.allowed(current.state if current else self.core.initial_state)

    def history(self, experiment: str, *, tenant: str | None = None,
                environment: str | None = None) -> list[StateTransition]:
        return self.backplane.transitions(experiment, tenant=tenant, environment=environment)

    # -- versions --------------------------------------------------------------------

    def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None = None,
                       description: str | None = None, tenant: str | None = None,
                       environment: str | None = None) -> ConfigurationVersion:
        return self.backplane.run(self.core.create_version(
            experiment, configuration, actor=actor, description=description, tenant=tenant,
            environment=environment))

    def rollback(self, experiment: str, to_version: int, *, actor: str | None = None,
                 tenant: str | None = None, environment: str | None = None) -> ConfigurationVersion:
        number = check_version_number(to_version, "to_version")
        old = require_version(self.backplane.version(experiment, number, tenant=tenant, environment=environment),
                              experiment, number)
        return self.backplane.run(self.core.create_version(
            experiment, old.configuration, actor=actor, description=f"rollback to version {number}",
            tenant=tenant, environment=environment, is_rollback=True, rolled_back_from=number))

    def diff(self, experiment: str, from_version: int, to_version: int, *, tenant: str | None = None,
             environment: str | None = None) -> list[Change]:
        numbers = (check_version_number(from_version, "from_version"),
                   check_version_number(to_version, "to_version"))
        old, new = (require_version(self.backplane.version(experiment, n, tenant=tenant, environment=environment),
                                    experiment, n) for n in numbers)
        return diff(old.configuration, new.configuration)

    # -- policies --------------------------------------------------------------------

    def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None = None,
                          target: LifecycleState | str | None = None, tenant: str | None = None,
                          environment: str | None = None) -> list[PolicyEvaluation]:
        members = self.core.conflict_group_members(experiment)
        states = self.backplane.run(self.core.states_of(members, tenant, environment))
        return self.backplane.run(self.core.evaluate_policies(
            experiment, telemetry=telemetry, target=target, tenant=tenant, environment=environment,
            current=states.get(experiment), others=states))

    # -- event log -------------------------------------------------------------------

    def replay(self, experiment: str, *, until: datetime | None = None, tenant: str | None = None,
               environment: str | None = None) -> ExperimentState | None:
        return self.backplane.run(self.core.replay(experiment, until=until, tenant=tenant, environment=environment))

    def verify(self, experiment: str, *, tenant: str | None = None, environment: str | None = None) -> list[str]:
        replayed = self.replay(experiment, tenant=tenant, environment=environment)
        return compare(replayed, self.state(experiment, tenant=tenant, environment=environment))

    def watch(self, *, tenant: str | None = None, environment: str | None = None,
              experiments: Iterable[str] | None = None, from_id: str = "$", block_ms: int = 1000,
              timeout: float | None = None) -> Iterator[GovernanceEvent]:
        """Yield the scope's events as they are written (XREAD BLOCK), resumable from an id.

        ``from_id="0"`` replays the scope from its first event, ``"$"`` starts at
        new ones. Runs until the caller stops iterating, or for ``timeout`` seconds.
        """
        cursor = WatchCursor(self.core, tenant=tenant, environment=environment, experiments=experiments,
                             from_id=from_id, block_ms=block_ms, timeout=timeout)
        start = cursor.start()
        if start is not None:
            cursor.last = self.backplane.run(start)
        while cursor.active():
            for event in cursor.accept(self.backplane.run(cursor.next_read())):
                yield event
