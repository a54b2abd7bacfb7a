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
from .calls import Call, Plan
from .changes import Change
from .core import Core
from .errors import RedgovError, RulesChangedError, ValidationError
from .events import GovernanceEvent, WatchCursor
from .gates import Gate
from .govcore import DEFAULT_IDEMPOTENCY_WINDOW, GovernanceCore, TransitionRequest
from .policies import Policy
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    Lease,
    LifecycleState,
    PendingMove,
    PolicyEvaluation,
    RulesVersion,
    StateTransition,
)
from .rules import Rules
from .telemetry import attach as _attach_telemetry

__all__ = ["Governance"]

class _Backplane(Protocol):
    core: Core


B = TypeVar("B", bound=_Backplane)
T = TypeVar("T")


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
        require_telemetry: bool = False,
    ) -> None:
        if not isinstance(backplane, self._backplane_type):
            raise ValidationError(f"{type(self).__name__} needs a {self._backplane_type.__module__}."
                                  f"{self._backplane_type.__name__}, got {type(backplane).__name__}")
        self.backplane: B = backplane
        self.core = GovernanceCore(
            backplane.core, rules=rules, gates=gates, policies=policies,
            initial_state=initial_state, auto_versioning=auto_versioning, clock=clock,
            idempotency_window=idempotency_window, auto_create=auto_create,
            require_telemetry=require_telemetry)
        # OpenTelemetry spans and metrics when a provider is set now (redgov.telemetry); else nothing per call
        _attach_telemetry(self)

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

    Every write is one atomic Lua script call (see each method); reads are single round
    trips or pipelined pages. ``Governance(connect(url, prefix=...), ...)``; closing it
    (``close()`` or ``with``) closes the backplane.

    Args:
        backplane: a ``redgov.Backplane`` (``redgov.connect(...)``).
        rules: which state may move to which (``Rules`` or a mapping of state names to
            the states they may move to); default: the default lifecycle (``redgov.DEFAULT_RULES``).
        gates: AutomaticGate, ManualGate and RoleGate objects: whose approval a move needs.
        policies: TrafficLimit, ErrorRate, TimeWindow, ConflictPrevention or your own
            ``Policy`` subclasses, evaluated on every transition (names must be unique).
        initial_state: where ``create`` puts an experiment (default Draft).
        auto_versioning: the state's ``config_version`` follows each new version.
        clock: a callable returning a timezone-aware datetime: stamps records and drives
            time-based policies (default: the system clock, UTC).
        idempotency_window: how long an ``idempotency_key`` is remembered (default 24 h).
        auto_create: a write to an experiment never created starts it from
            ``initial_state`` (lenient, as the C# proposal redgov grew from) instead of raising NotFoundError.
        require_telemetry: a policy whose telemetry is missing is non-compliant (default:
            missing telemetry is compliant).

    Raises:
        ValidationError: a bad argument (e.g. duplicate policy names, a naive clock).
    """

    _backplane_type = Backplane

    def close(self) -> None:
        """Close the backplane: its client, cache and archive (an embedded server is released)."""
        self.backplane.close()

    def __enter__(self) -> Governance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the rules that govern a scope ---------------------------------------------------

    def _governed(self, tenant: str | None, environment: str | None,
                  make: Callable[[GovernanceCore], Call[T] | Plan[T]]) -> T:
        """Run ``make(view)`` under the rules governing the scope (govrules.RulesPlans.governed: the
        remembered view, read again and decided again when the script says the rules changed)."""
        return self.backplane.drive(self.core.governed(tenant, environment, make))

    def _read_governed(self, tenant: str | None, environment: str | None,
                       make: Callable[[GovernanceCore], Call[T] | Plan[T]]) -> T:
        """A read that depends on the rules (allowed moves, the inbox), under the scope's current rules."""
        return self.backplane.drive(self.core.governed(tenant, environment, make, fresh=True))

    def publish(self, *, actor: str, reason: str | None = None, tenant: str | None = None,
                environment: str | None = None) -> RulesVersion:
        """Publish this Governance's definition as the scope's rules: a new immutable, numbered version.

        Once a scope has published rules they govern every write to it from any client: the write
        scripts judge allowed moves and gates from the stored version, a Governance built with no
        definition of its own follows them, and one whose definition differs is refused
        (RulesMismatchError) before it writes. One script call (publish_rules.lua), which also
        writes an event of kind ``"rules"`` to the scope's log. A definition equal to the current
        version writes nothing and returns the current version (one equal to an older version is a
        new version: history only grows).

        Args:
            actor: who publishes (required: it is audited).
            reason: why, kept on the version.
            tenant, environment: the scope (None: the default).

        Returns:
            The RulesVersion now current.

        Raises:
            ValidationError: a bad actor or reason, or a definition the scripts cannot hold; nothing
                is written.
        """
        return self.backplane.drive(self.core.publish_plan(actor=actor, reason=reason, tenant=tenant,
                                                           environment=environment))

    def published_rules(self, *, tenant: str | None = None, environment: str | None = None,
                        version: int | None = None) -> RulesVersion | None:
        """The scope's published rules: the current version (or ``version``), None when none was published.

        One script call (read_rules.lua). ``definition`` loads with
        ``redgov.load_config({"governance": rules.definition})``.

        Args:
            tenant, environment: the scope (None: the default).
            version: that version (None: the current one).

        Raises:
            ValidationError: ``version`` is not a number >= 1.
            CorruptDataError: the stored version cannot be decoded.
        """
        return self.backplane.run(self.core.published_rules(tenant=tenant, environment=environment,
                                                            version=version))

    def rules_history(self, *, tenant: str | None = None, environment: str | None = None) -> list[RulesVersion]:
        """Every published version of the scope's rules, oldest first (read in pages of 100).

        Args:
            tenant, environment: the scope (None: the default).

        Raises:
            CorruptDataError: a stored version cannot be decoded.
        """
        return self.backplane.drive(self.core.rules_history(tenant=tenant, environment=environment))

    def request(self, experiment: str, to: LifecycleState | str, *, actor: str, reason: str | None = None,
                tenant: str | None = None, environment: str | None = None,
                idempotency_key: str | None = None) -> PendingMove:
        """Ask for the move from the experiment's current state to ``to``, for approvers to decide.

        The request shows in ``awaiting_approval`` (who asked, when, why, approvals given of
        needed) until the move is made, the experiment leaves its state, its configuration
        changes, or a rejection closes it. Moving an experiment into PendingApproval is itself the
        request for the moves out of it. Unless its ManualGate allows self-approval, the requester
        may not approve the move. One script call (approve.lua, judged under the published rules),
        then a read of the move as the inbox shows it.

        Args:
            experiment: its name.
            to: the target state.
            actor: who asks (required).
            reason: why.
            tenant, environment: the scope.
            idempotency_key: a repeat within ``idempotency_window`` writes nothing.

        Returns:
            The PendingMove (``approvals_needed`` 0 and ``gate`` "" when no ManualGate guards the move).

        Raises:
            NotFoundError: the experiment was never created.
            InvalidTransitionError: the rules do not allow the move from the current state.
            ValidationError: bad input; nothing is written.
        """
        return self._governed(tenant, environment, lambda g: g.request(
            experiment, to, actor=actor, reason=reason, tenant=tenant, environment=environment,
            idempotency_key=idempotency_key))

    # -- lifecycle -------------------------------------------------------------------

    def create(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
               actor: str | None = None, configuration: Mapping[str, Any] | None = None,
               metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ExperimentState:
        """Create an experiment in ``initial_state`` (revision 1), with a transition from None into it.

        One script call (create.lua), all or nothing, applied once however often it is re-sent.

        Args:
            experiment: its name (non-blank, no control, format or invisible characters, at most 1024
                characters).
            tenant, environment: the scope (None: the default); scopes never share experiments.
            actor: who created it (``last_modified_by``, the transition's actor).
            configuration: a JSON-like mapping stored as version 1 (followed by the state with
                auto_versioning); None: no version yet.
            metadata: a JSON-like mapping kept on the state.
            idempotency_key: makes the whole call safe to repeat: a repeat within ``idempotency_window``
                returns the first call's result and writes nothing.

        Returns:
            The new ExperimentState (revision 1, its etag).

        Raises:
            ConflictError: the experiment exists (or the idempotency key was used for another operation).
            ValidationError: bad input (named field and value); nothing is written.
        """
        return self._governed(tenant, environment,
                              lambda g: g.create(experiment, tenant=tenant, environment=environment, actor=actor,
                                                 configuration=configuration, metadata=metadata,
                                                 idempotency_key=idempotency_key))

    def state(self, experiment: str, *, tenant: str | None = None,
              environment: str | None = None) -> ExperimentState | None:
        """The experiment's current state, or None when it was never created.

        One HMGET round trip, or a local cache hit with ``connect(cache=True)`` (never older
        than its ``cache_max_age``).

        Args:
            experiment: its name.
            tenant, environment: the scope (None: the default).

        Raises:
            CorruptDataError: the stored state cannot be decoded (names the key).
        """
        return self.backplane.get_state(experiment, tenant=tenant, environment=environment)

    def transition(self, experiment: str, to: LifecycleState | str, *, actor: str | None = None,
                   reason: str | None = None, metadata: Mapping[str, Any] | None = None,
                   telemetry: Mapping[str, Any] | None = None, tenant: str | None = None,
                   environment: str | None = None, expected_etag: str | None = None,
                   idempotency_key: str | None = None, lease: Lease | None = None) -> StateTransition:
        """Move the experiment to state ``to``; returns the transition written.

        One atomic script call (transition.lua): the etag check, the rule check and the
        gates judged from the scope's published rules when it has them (a ManualGate consumes
        its approvals from distinct people other than the requester and this actor; a RoleGate
        reads ``metadata["actorRole"]``/``["actorRoles"]``), the ConflictPrevention groups and the stable time of a
        TrafficLimit (judged against the stored state), the state write (revision + 1 and a
        new etag, both on the returned transition), the history entry and the approval and
        policy records: all or nothing. A re-send after a lost reply is applied once.

        Args:
            experiment: its name (it must have been created, unless ``auto_create``).
            to: the target LifecycleState (or its name).
            actor: who moves it (``last_modified_by``).
            reason: free text kept on the transition.
            metadata: a JSON-like mapping kept on the transition (``actorRole`` for RoleGates).
            telemetry: measurements for the policies: ``trafficPercentage``, ``errorRate``,
                ``runningDuration`` (seconds) and custom policies' ``telemetry_keys``; an unknown
                key is a ValidationError with a did-you-mean.
            tenant, environment: the scope (None: the default).
            expected_etag: refuse unless the stored etag is this one (optimistic concurrency).
            idempotency_key: a repeat within ``idempotency_window`` returns the first call's
                result (or raises its refusal again) and writes nothing.
            lease: a Lease from ``acquire_lease``: the write is refused (LeaseError) unless that
                lease is still the experiment's current, unexpired lease, checked in the same
                script call (a holder paused past its ttl cannot write). None: not fenced.

        Returns:
            The StateTransition, with ``from_state``, ``revision`` and ``etag`` of the write.

        Raises:
            NotFoundError: the experiment was never created.
            LeaseError: ``lease`` expired or was taken over (a ConflictError).
            ConflictError: the etag changed (``current_etag``/``current_state`` name what is stored),
                or the idempotency key was used for another operation.
            InvalidTransitionError: the rules do not allow the move from the current state.
            ApprovalRequiredError: a gate did not approve (SeparationOfDutiesError: this actor approved
                the move, or only its requester did).
            RulesMismatchError: this Governance's definition differs from the scope's published rules.
            PolicyViolationError: a Critical policy is not compliant; its ``evaluations`` are recorded,
                nothing else is written.
            ValidationError: bad input; nothing is sent.
        """
        return self._governed(tenant, environment, lambda g: g.transition(
            experiment, to, actor=actor, reason=reason, metadata=metadata, telemetry=telemetry, tenant=tenant,
            environment=environment, expected_etag=expected_etag, idempotency_key=idempotency_key, lease=lease))

    def transition_many(self, requests: Iterable[TransitionRequest]) -> list[StateTransition | RedgovError]:
        """Many transitions in one pipelined round trip; each succeeds or fails on its own.

        Each request is its own atomic script call (see ``transition``); the batch is not a
        transaction. Invalid input raises ValidationError before anything is sent.

        Args:
            requests: TransitionRequest structs (the arguments of ``transition``).

        Returns:
            In request order, each StateTransition or the RedgovError that refused it.
        """
        requests = self.core.check_requests(requests)
        views = {}
        for scope in dict.fromkeys((r.tenant, r.environment) for r in requests):
            views[scope] = self.backplane.drive(self.core.governing(*scope))
        results = self.backplane.run_many(self.core.transition_many(requests, views))
        for index, result in enumerate(results):
            if isinstance(result, RulesChangedError):  # decided again under the new rules, on its own
                r = requests[index]

                def again(g: GovernanceCore, r: TransitionRequest = r) -> Call[StateTransition]:
                    return g.transition_many([r])[0]

                try:
                    results[index] = self._governed(r.tenant, r.environment, again)
                except RedgovError as exc:
                    results[index] = exc
        return results

    def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None = None,
                approved: bool = True, tenant: str | None = None, environment: str | None = None,
                idempotency_key: str | None = None,
                valid_for: timedelta | None = None) -> ApprovalRecord:
        """Record an approval (``approved=False``: a rejection) of the move from the current state to ``to``.

        A ManualGate on that move counts it (one per approver: a later approval by the same
        person replaces theirs); the transition that passes the gate consumes the approvals and
        links them by ``transition_id``. Four eyes, judged in the script from the scope's rules:
        unless the gate allows self-approval, the person who requested the move may not approve
        it (SeparationOfDutiesError). A rejection closes the move's request and withdraws its
        approvals. Approvals lapse when the experiment leaves the state they were given in, when
        its state is written by any other means, and when a new configuration version or a
        rollback is written (``ApprovalRecord.config_version`` says which version one was given
        for). One script call (approve.lua), all or nothing, applied once however often re-sent.

        Args:
            experiment: its name (it must exist, unless ``auto_create``).
            to: the state the approved move goes to.
            approver: who approves (required, non-blank).
            reason: free text kept on the record.
            approved: False records a rejection.
            tenant, environment: the scope (None: the default).
            idempotency_key: a repeat within ``idempotency_window`` returns the first record.
            valid_for: the approval stops satisfying its gate that long after it is recorded
                (judged by the Redis server's clock when the transition runs; the refusal says
                it expired and when); None: until it is consumed or lapses.

        Returns:
            The ApprovalRecord written (``valid_until`` set when ``valid_for`` was given).

        Raises:
            NotFoundError: the experiment was never created.
            InvalidTransitionError: no rule allows the move from the current state.
            SeparationOfDutiesError: the approver requested the move (an ApprovalRequiredError).
            RulesMismatchError: this Governance's definition differs from the scope's published rules.
            ValidationError: bad input; nothing is written.
        """
        return self._governed(tenant, environment, lambda g: g.approve(experiment, to, approver=approver, reason=reason,
                                                    approved=approved, tenant=tenant, environment=environment,
                                                    idempotency_key=idempotency_key, valid_for=valid_for))

    def allowed_transitions(self, experiment: str, *, tenant: str | None = None,
                            environment: str | None = None) -> list[LifecycleState]:
        """The states the rules allow the experiment to move to now (gates and policies not judged).

        Args:
            experiment: its name.
            tenant, environment: the scope (None: the default).

        Raises:
            NotFoundError: the experiment was never created (unless ``auto_create``).
        """
        return self._read_governed(tenant, environment, lambda g: g.allowed_transitions(experiment, tenant=tenant,
                                                                  environment=environment))

    def history(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                limit: int | None = None, newest_first: bool = False) -> list[StateTransition]:
        """The experiment's transitions, oldest first.

        Read in pages (no server call is O(history)); entries removed by retention are read
        from the archive when one is attached.

        Args:
            experiment: its name.
            tenant, environment: the scope (None: the default).
            limit: at most this many (None: all).
            newest_first: newest first (with ``limit``: the newest ones).

        Raises:
            HistoryTrimmedError: entries were removed by retention and no archive is attached.
            CorruptDataError: a stored entry cannot be decoded.
        """
        return self.backplane.transitions(experiment, tenant=tenant, environment=environment, limit=limit,
                                          newest_first=newest_first)

    def experiments(self, *, tenant: str | None = None, environment: str | None = None,
                    state: LifecycleState | str | None = None) -> list[ExperimentState]:
        """The experiments of a scope, sorted by name.

        Reads the scope's index in pages of names (ZRANGEBYLEX), never a keyspace scan;
        each page's states are one pipelined round trip.

        Args:
            tenant, environment: the scope (None: the default).
            state: only the experiments in this state (a LifecycleState or its name).

        Raises:
            ValidationError: an unknown state name.
        """
        return self.backplane.drive(self.core.experiments(tenant=tenant, environment=environment, state=state))

    def awaiting_approval(self, *, tenant: str | None = None, environment: str | None = None,
                          experiment: str | None = None) -> list[PendingMove]:
        """The moves a ManualGate blocks right now in a scope, by experiment name (the approval inbox).

        A move is listed when the rules allow it from the experiment's current state, a
        ManualGate guards it, somebody requested it (``request``, or entering PendingApproval:
        the request for the moves out of it) and it still lacks approvals from enough distinct
        people other than the requester (expired ones do not count, by the server's clock); each
        PendingMove says who asked, when and why, and how many approvals it has of how many. Reads the
        scope's index in pages, each page's state hashes pipelined (not one atomic snapshot); with
        ``experiment``, only that experiment's state (one round trip, whatever the scope holds).

        Args:
            tenant, environment: the scope (None: the default).
            experiment: only this experiment's moves (None: every experiment of the scope).

        Returns:
            PendingMove(experiment, from_state, to_state, gate, state, tenant, environment) each.
        """
        return self._read_governed(
            tenant, environment,
            lambda g: g.awaiting_approval(tenant=tenant, environment=environment, experiment=experiment))

    # -- versions --------------------------------------------------------------------

    def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None = None,
                       description: str | None = None, tenant: str | None = None, environment: str | None = None,
                       idempotency_key: str | None = None, lease: Lease | None = None) -> ConfigurationVersion:
        """Add the next configuration version; its number is assigned inside the script, never reused.

        With auto_versioning the state follows it (``config_version``, a state write).
        One script call (create_version.lua), all or nothing, applied once however often
        re-sent. Versions are immutable.

        Args:
            experiment: its name (it must exist, unless ``auto_create``).
            configuration: a JSON-like mapping (finite numbers, strings, lists, mappings).
            actor: who made it.
            description: free text.
            tenant, environment: the scope (None: the default).
            idempotency_key: a repeat within ``idempotency_window`` returns the first version.
            lease: refuse (LeaseError) unless this Lease is still the experiment's current one,
                checked in the same script call; None: not fenced.

        Returns:
            The ConfigurationVersion written (number, hash, time).

        Raises:
            NotFoundError: the experiment was never created.
            LeaseError: ``lease`` expired or was taken over.
            ValidationError: bad input; nothing is written.
        """
        return self._governed(tenant, environment, lambda g: g.create_version(
            experiment, configuration, actor=actor, description=description, tenant=tenant,
            environment=environment, idempotency_key=idempotency_key, lease=lease))

    def rollback(self, experiment: str, to_version: int, *, actor: str | None = None, tenant: str | None = None,
                 environment: str | None = None, idempotency_key: str | None = None,
                 lease: Lease | None = None) -> ConfigurationVersion:
        """Add a new version restoring version ``to_version``'s configuration.

        Reads that (immutable) version, then writes like ``create_version``: two round trips;
        the write is atomic. The new version's ``rolled_back_from`` is ``to_version``.

        Args:
            experiment: its name.
            to_version: the version whose configuration comes back (1 to 2**53 - 1).
            actor: who rolls back.
            tenant, environment: the scope (None: the default).
            idempotency_key: a repeat within ``idempotency_window`` returns the first version.
            lease: as for ``create_version``: the write is fenced by this Lease.

        Raises:
            NotFoundError: the experiment or the version does not exist.
            LeaseError: ``lease`` expired or was taken over.
            ValidationError: bad input; nothing is written.
        """
        return self._governed(tenant, environment,
                              lambda g: g.rollback(experiment, to_version, actor=actor, tenant=tenant,
                                                   environment=environment, idempotency_key=idempotency_key,
                                                   lease=lease))

    def diff(self, experiment: str, from_version: int, to_version: int, *, tenant: str | None = None,
             environment: str | None = None) -> list[Change]:
        """The path-level changes from version ``from_version``'s configuration to ``to_version``'s.

        Paths are dotted with list indexes in brackets (``rollout.steps[2].percent``).

        Args:
            experiment: its name.
            from_version, to_version: the two version numbers.
            tenant, environment: the scope (None: the default).

        Returns:
            A list of Change(kind "added" | "modified" | "removed", path, old, new).

        Raises:
            NotFoundError: either version does not exist.
        """
        return self.backplane.drive(self.core.diff(experiment, from_version, to_version, tenant=tenant,
                                                   environment=environment))

    def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None = None,
                          target: LifecycleState | str | None = None, tenant: str | None = None,
                          environment: str | None = None) -> list[PolicyEvaluation]:
        """Evaluate every policy now and persist the evaluations; returns them.

        Reads the states of the experiment and its conflict-group members (one round trip;
        plus when it entered Running or Ramping, for a TrafficLimit that needs it), judges
        each policy (each ConflictPrevention group on its own) and records the evaluations
        in one script call, which records nothing when a state they were decided from changed
        since it was read (its revision): then it reads and decides again, up to 5 times.
        Advisory: nothing is refused; a later move may change what the verdict would be.

        Args:
            experiment: its name (it must exist, unless ``auto_create``).
            telemetry: the measurements (see ``transition``).
            target: the move being considered (conflict groups are judged for moves into
                Running or Ramping); None: no move.
            tenant, environment: the scope (None: the default).

        Raises:
            NotFoundError: the experiment was never created.
            ConflictError: the states changed before each of 5 records; nothing is written.
            ValidationError: bad input (e.g. an unknown telemetry key); nothing is written.
        """
        return self._governed(tenant, environment,
                              lambda g: g.evaluate_policies(experiment, telemetry=telemetry, target=target,
                                                            tenant=tenant, environment=environment))

    # -- coordination ----------------------------------------------------------------

    def acquire_lease(self, experiment: str, *, owner: str, ttl: timedelta, tenant: str | None = None,
                      environment: str | None = None) -> Lease:
        """Acquire the experiment's lease for ``ttl``; returns it with its fencing token.

        One script call (lease.lua) judging expiry by the Redis server's clock (``TIME``),
        never a client's. A new acquisition gets a token greater than every token given
        before for this experiment (kept in its state, so it survives the lease's expiry);
        the same owner acquiring again while it holds the lease renews it (same token), so a
        re-sent acquire is harmless. Pass the lease to ``transition``/``create_version``
        (``lease=``) to fence writes: they are refused once it expired or was taken over.

        Args:
            experiment: its name (it must have been created).
            owner: who holds it (a non-blank name; a host, process or controller id).
            ttl: how long it lasts unless renewed (a timedelta from 1 ms to 7 days).
            tenant, environment: the scope (None: the default).

        Returns:
            The Lease (experiment, owner, token, expires_at by the server clock, scope).

        Raises:
            LeaseError: another owner holds it unexpired (the message names it and until when).
            NotFoundError: the experiment was never created.
            ValidationError: bad input; nothing is written.
        """
        return self.backplane.run(self.core.acquire_lease(experiment, owner=owner, ttl=ttl, tenant=tenant,
                                                          environment=environment))

    def renew_lease(self, lease: Lease, *, ttl: timedelta) -> Lease:
        """Extend ``lease`` to ``ttl`` from now (server clock), keeping its token; returns the new Lease.

        One script call. Renew well before ``expires_at``: a lease that expired, even if no
        one took it since, is not renewed (acquire it again: a new token).

        Args:
            lease: the Lease from ``acquire_lease`` or an earlier ``renew_lease``.
            ttl: the new duration from now (a timedelta from 1 ms to 7 days).

        Raises:
            LeaseError: the lease expired or was taken over.
            ValidationError: not a Lease, or a bad ttl.
        """
        return self.backplane.run(self.core.renew_lease(lease, ttl=ttl))

    def current_lease(self, experiment: str, *, tenant: str | None = None,
                      environment: str | None = None) -> Lease | None:
        """The experiment's lease now: who holds it, its fencing token and when it ends; None when
        nobody holds one (never acquired, released, or expired by the server's clock).

        One script call that writes nothing. What an operator sees before pausing an
        experiment a controller drives (writes without ``lease=`` are not fenced).

        Args:
            experiment: its name.
            tenant, environment: the scope (None: the default).

        Raises:
            CorruptDataError: the lease key holds something else.
            ValidationError: bad input.
        """
        return self.backplane.run(self.core.current_lease(experiment, tenant=tenant, environment=environment))

    def release_lease(self, lease: Lease) -> None:
        """End ``lease`` now, if it is still the experiment's current lease.

        One script call. Releasing a lease that expired or was taken over releases nothing
        (the new holder keeps its lease) and is not an error.

        Args:
            lease: the Lease to end.

        Raises:
            ValidationError: not a Lease.
        """
        self.backplane.run(self.core.release_lease(lease))

    def wait_for(self, experiment: str, states: Iterable[LifecycleState | str] | LifecycleState | str, *,
                 timeout: float, tenant: str | None = None, environment: str | None = None) -> ExperimentState:
        """Return the experiment's state as soon as it is in one of ``states``; TimeoutError after ``timeout`` s.

        Built on the scope's log, not polling: one script call reads the state and the log's
        newest entry id together; if the state is not yet wanted, ``XREAD BLOCK`` waits on the
        log from that id (so no change after the read is missed) and wakes on the first entry
        that puts the experiment in a wanted state. It returns the state read then; if the
        experiment already moved on, the state it was in at that moment (replayed from the
        log). A standby controller uses it to wake when an experiment is paused.

        Args:
            experiment: its name (it must have been created, unless ``auto_create``).
            states: a LifecycleState (or name) or several.
            timeout: seconds to wait at most (0: only look).
            tenant, environment: the scope (None: the default).

        Returns:
            The ExperimentState, in one of ``states``.

        Raises:
            TimeoutError: ``timeout`` passed first (the message names the states).
            NotFoundError: the experiment was never created.
            ValidationError: an unknown state, a bad timeout.
        """
        waiter = self.core.waiter(experiment, states, timeout=timeout, tenant=tenant, environment=environment)
        point = self.backplane.run(waiter.start())
        found = waiter.begin(point)
        if found is not None:
            return found
        cursor = waiter.cursor
        assert cursor is not None
        self.backplane.drive(cursor.start())
        while cursor.active():
            event = waiter.hit(cursor.accept(self.backplane.run(cursor.next_read(self.backplane.socket_timeout))))
            if event is None:
                continue
            if isinstance(event.record, ExperimentState):
                return event.record
            current = self.state(experiment, tenant=tenant, environment=environment)
            if current is not None and current.state in waiter.wanted:
                return current
            moment = self.replay(experiment, until=event.record.timestamp,  # type: ignore[union-attr]
                                    tenant=tenant, environment=environment)
            if moment is not None:
                return moment
        raise waiter.timed_out(point[0])

    # -- event log -------------------------------------------------------------------

    def replay(self, experiment: str, *, until: datetime | None = None, tenant: str | None = None,
               environment: str | None = None) -> ExperimentState | None:
        """The state folded from the event log alone; equals ``state()`` when consistent.

        Starts from the retention snapshot when history was trimmed; reads in pages.

        Args:
            experiment: its name.
            until: fold only the events up to this time (aware datetime); None: all.
            tenant, environment: the scope (None: the default).

        Returns:
            The folded ExperimentState, or None when there is nothing to fold.

        Raises:
            HistoryTrimmedError: ``until`` is before the retention cut and no archive is attached.
        """
        return self.backplane.drive(self.core.replay(experiment, until=until, tenant=tenant,
                                                     environment=environment))

    def verify(self, experiment: str, *, tenant: str | None = None, environment: str | None = None) -> list[str]:
        """The differences between the replayed and the stored state; [] when they agree.

        Args:
            experiment: its name.
            tenant, environment: the scope (None: the default).

        Returns:
            One readable line per differing field (``state: the log says Paused, the stored state says
            Running``).
        """
        return self.backplane.drive(self.core.verify(experiment, tenant=tenant, environment=environment))

    def watch(self, *, tenant: str | None = None, environment: str | None = None,
              experiments: Iterable[str] | None = None, from_id: str = "$", block_ms: int = 1000,
              timeout: float | None = None) -> Iterator[GovernanceEvent]:
        """Yield the scope's events as they are written (XREAD BLOCK), resumable from any event id.

        Args:
            tenant, environment: the scope (None: the default).
            experiments: only events of these experiments (None: all).
            from_id: ``"0"`` replays the scope from its first event, ``"$"`` starts at new ones,
                an event id resumes after that event.
            block_ms: how long each read blocks (any value: it is cut to fit the socket timeout).
            timeout: stop after this many seconds (None: when the caller stops iterating).

        Yields:
            GovernanceEvent(id, kind, experiment, tenant, environment, record).
        """
        cursor = WatchCursor(self.backplane.core, tenant=tenant, environment=environment, experiments=experiments,
                             from_id=from_id, block_ms=block_ms, timeout=timeout)
        self.backplane.drive(cursor.start())
        while cursor.active():
            for event in cursor.accept(self.backplane.run(cursor.next_read(self.backplane.socket_timeout))):
                yield event
