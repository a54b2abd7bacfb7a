"""Governance: the lifecycle API over a Backplane (persistence is transparent under it).

Each method builds its Call or plan in ``govcore`` and runs it on the
backplane. ``transition`` is one script call: the state, rule, gate and
conflict checks, the state write, the history append and the approval and
policy records, all or nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from .backplane import Backplane
from .changes import Change
from .core import Core
from .errors import RedgovError, ValidationError
from .events import GovernanceEvent, WatchCursor
from .gates import Gate
from .govcore import DEFAULT_IDEMPOTENCY_WINDOW, GovernanceCore, TransitionRequest
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

class _Backplane(Protocol):
    core: Core


B = TypeVar("B", bound=_Backplane)


class GovernanceBase(Generic[B]):
    """What Governance and AsyncGovernance share: the configuration (``self.core``) and the backplane."""

    _backplane_type: type[Any]

    def __init__(
        self,
        backplane: B,
        *,
        rules: Rules | Mapping[str, Iterable[str]] | None = None,
        gates: Sequence[Gate] = (),
        policies: Sequence[Policy] = (),
        initial_state: LifecycleState | str = LifecycleState.DRAFT,
        auto_versioning: bool = True,
        clock: Callable[[], datetime] | None = None,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        auto_create: bool = False,
    ) -> None:
        if not isinstance(backplane, self._backplane_type):
            raise ValidationError(f"{type(self).__name__} needs a {self._backplane_type.__module__}."
                                  f"{self._backplane_type.__name__}, got {type(backplane).__name__}")
        self.backplane: B = backplane
        self.core = GovernanceCore(
            backplane.core, rules=rules, gates=gates, policies=policies,
            initial_state=initial_state, auto_versioning=auto_versioning, clock=clock,
            idempotency_window=idempotency_window, auto_create=auto_create)

    @property
    def rules(self) -> Rules:
        """The lifecycle rules: which state may move to which."""
        return self.core.rules

    def __repr__(self) -> str:
        core = self.core
        return (f"<{type(self).__name__} prefix={core.core.prefix!r} gates={list(core.gates)!r} "
                f"policies={list(core.policies)!r}{' auto_create' if core.auto_create else ''}>")


class Governance(GovernanceBase[Backplane]):
    """Experiment lifecycle governance over a Backplane, authoritative across processes.

    ``rules`` (default: the lifecycle of API.md), ``gates`` (AutomaticGate,
    ManualGate, RoleGate) and ``policies`` (TrafficLimit, ErrorRate, TimeWindow,
    ConflictPrevention, or your own Policy) decide which moves are allowed.
    ``initial_state`` is where ``create`` puts an experiment; ``auto_versioning``
    makes the state follow each new configuration version; ``clock`` (a callable
    returning an aware datetime) stamps records and drives time-based policies;
    ``idempotency_window`` is how long an ``idempotency_key`` is remembered;
    ``auto_create=True`` lets a write to an experiment never created start it
    from ``initial_state`` (the seed's behaviour) instead of ``NotFoundError``.
    """

    _backplane_type = Backplane

    def close(self) -> None:
        """Close the backplane (and its client)."""
        self.backplane.close()

    def __enter__(self) -> Governance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lifecycle -------------------------------------------------------------------

    def create(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
               actor: str | None = None, configuration: Mapping[str, Any] | None = None,
               metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ExperimentState:
        """Create an experiment in the initial state (revision 1), with a transition from None into it.

        With ``configuration`` its version 1 is written too (and followed when
        auto_versioning). Atomic (create.lua), applied once however often re-sent.
        Raises ConflictError when it exists, ValidationError for bad input.
        """
        return self.backplane.run(self.core.create(experiment, tenant=tenant, environment=environment, actor=actor,
                                                   configuration=configuration, metadata=metadata,
                                                   idempotency_key=idempotency_key))

    def state(self, experiment: str, *, tenant: str | None = None,
              environment: str | None = None) -> ExperimentState | None:
        """The experiment's current state (None when it was never created). One round trip or a cache hit."""
        return self.backplane.get_state(experiment, tenant=tenant, environment=environment)

    def transition(self, experiment: str, to: LifecycleState | str, *, actor: str | None = None,
                   reason: str | None = None, metadata: Mapping[str, Any] | None = None,
                   telemetry: Mapping[str, Any] | None = None, tenant: str | None = None,
                   environment: str | None = None, expected_etag: str | None = None,
                   idempotency_key: str | None = None) -> StateTransition:
        """Move the experiment to state ``to``; returns the transition written.

        One atomic script call (transition.lua): the etag check (``expected_etag``),
        the rule check, the gates (a ManualGate consumes its recorded approval; a
        RoleGate reads ``metadata["actorRole"]``), the ConflictPrevention groups, the
        state write (revision + 1, a new etag: both on the returned transition), the
        history entry and the approval and policy records. ``telemetry`` feeds the
        policies. A re-send after a lost reply is applied once; a repeat with the
        same ``idempotency_key`` within the window returns the first call's result.

        Raises NotFoundError (never created), ConflictError (etag changed; key used
        for another move), InvalidTransitionError (the rules forbid it),
        ApprovalRequiredError (a gate did not approve), PolicyViolationError (a
        Critical policy failed: its evaluations are recorded, nothing else is
        written), ValidationError (bad input). Nothing is written when it raises.
        """
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
                approved: bool = True, tenant: str | None = None, environment: str | None = None,
                idempotency_key: str | None = None) -> ApprovalRecord:
        """Record an approval (``approved=False``: a rejection) of the move from the current state to ``to``.

        A ManualGate on that move is satisfied by it; the transition consumes it and
        the approval is linked to it. A rejection withdraws a pending approval.
        Approvals lapse when the experiment leaves the state they were given in.
        Atomic (approve.lua). Raises NotFoundError, InvalidTransitionError (no rule
        allows the move from the current state), ValidationError.
        """
        return self.backplane.run(self.core.approve(experiment, to, approver=approver, reason=reason,
                                                    approved=approved, tenant=tenant, environment=environment,
                                                    idempotency_key=idempotency_key))

    def allowed_transitions(self, experiment: str, *, tenant: str | None = None,
                            environment: str | None = None) -> list[LifecycleState]:
        """The states the rules allow the experiment to move to now (gates and policies not judged)."""
        return self.backplane.drive(self.core.allowed_transitions(experiment, tenant=tenant,
                                                                  environment=environment))

    def history(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                limit: int | None = None, newest_first: bool = False) -> list[StateTransition]:
        """The experiment's transitions in order (``newest_first`` reverses), at most ``limit``; read in pages."""
        return self.backplane.transitions(experiment, tenant=tenant, environment=environment, limit=limit,
                                          newest_first=newest_first)

    def experiments(self, *, tenant: str | None = None, environment: str | None = None,
                    state: LifecycleState | str | None = None) -> list[ExperimentState]:
        """The experiments of a scope (only those in ``state``), sorted by name; the index read in pages."""
        return self.backplane.drive(self.core.experiments(tenant=tenant, environment=environment, state=state))

    # -- versions --------------------------------------------------------------------

    def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None = None,
                       description: str | None = None, tenant: str | None = None, environment: str | None = None,
                       idempotency_key: str | None = None) -> ConfigurationVersion:
        """Add the next configuration version (its number assigned inside the script, never reused).

        With auto_versioning the state follows it (config_version, a state write).
        Atomic (create_version.lua). Raises NotFoundError, ValidationError.
        """
        return self.backplane.run(self.core.create_version(
            experiment, configuration, actor=actor, description=description, tenant=tenant,
            environment=environment, idempotency_key=idempotency_key))

    def rollback(self, experiment: str, to_version: int, *, actor: str | None = None, tenant: str | None = None,
                 environment: str | None = None, idempotency_key: str | None = None) -> ConfigurationVersion:
        """A new version restoring version ``to_version``'s configuration (``rolled_back_from`` names it).

        Reads that (immutable) version, then writes like ``create_version``.
        Raises NotFoundError when the version or experiment does not exist.
        """
        return self.backplane.drive(self.core.rollback(experiment, to_version, actor=actor, tenant=tenant,
                                                       environment=environment, idempotency_key=idempotency_key))

    def diff(self, experiment: str, from_version: int, to_version: int, *, tenant: str | None = None,
             environment: str | None = None) -> list[Change]:
        """Path-level changes from one version's configuration to another's. Raises NotFoundError."""
        return self.backplane.drive(self.core.diff(experiment, from_version, to_version, tenant=tenant,
                                                   environment=environment))

    def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None = None,
                          target: LifecycleState | str | None = None, tenant: str | None = None,
                          environment: str | None = None) -> list[PolicyEvaluation]:
        """Evaluate every policy now (for a move to ``target``) and persist the evaluations; returns them."""
        return self.backplane.drive(self.core.evaluate_policies(experiment, telemetry=telemetry, target=target,
                                                                tenant=tenant, environment=environment))

    # -- event log -------------------------------------------------------------------

    def replay(self, experiment: str, *, until: datetime | None = None, tenant: str | None = None,
               environment: str | None = None) -> ExperimentState | None:
        """The state folded from the log alone (as of ``until``); equals ``state()`` when consistent.

        Raises HistoryTrimmedError when ``until`` is before the retention cut and no archive is attached.
        """
        return self.backplane.drive(self.core.replay(experiment, until=until, tenant=tenant,
                                                     environment=environment))

    def verify(self, experiment: str, *, tenant: str | None = None, environment: str | None = None) -> list[str]:
        """The differences between the replayed and the stored state, one readable line each; [] when equal."""
        return self.backplane.drive(self.core.verify(experiment, tenant=tenant, environment=environment))

    def watch(self, *, tenant: str | None = None, environment: str | None = None,
              experiments: Iterable[str] | None = None, from_id: str = "$", block_ms: int = 1000,
              timeout: float | None = None) -> Iterator[GovernanceEvent]:
        """Yield the scope's events as they are written (XREAD BLOCK), resumable from any event id.

        ``from_id="0"`` replays the scope from its first event, ``"$"`` starts at new
        ones. Each read blocks up to ``block_ms`` (any value: it is cut to fit the
        socket timeout). Runs until the caller stops iterating, or for ``timeout`` seconds.
        """
        cursor = WatchCursor(self.backplane.core, tenant=tenant, environment=environment, experiments=experiments,
                             from_id=from_id, block_ms=block_ms, timeout=timeout)
        self.backplane.drive(cursor.start())
        while cursor.active():
            for event in cursor.accept(self.backplane.run(cursor.next_read(self.backplane.socket_timeout))):
                yield event
