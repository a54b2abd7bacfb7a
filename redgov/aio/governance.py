"""``AsyncGovernance``: the Governance API awaited over an AsyncBackplane."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ..calls import Call, Plan
from ..changes import Change
from ..errors import RedgovError, RulesChangedError
from ..events import GovernanceEvent, WatchCursor
from ..govcore import GovernanceCore, TransitionRequest
from ..governance import GovernanceBase
from ..records import (
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
from .backplane import AsyncBackplane

__all__ = ["AsyncGovernance"]


T = TypeVar("T")


class AsyncGovernance(GovernanceBase[AsyncBackplane]):
    """The asyncio twin of ``redgov.Governance``: the same lifecycle API over an AsyncBackplane, as coroutines.

    ``AsyncGovernance(backplane, *, rules=None, gates=(), policies=(), initial_state=Draft,
    auto_versioning=True, clock=None, idempotency_window=24 h, auto_create=False,
    require_telemetry=False)``:

    - ``backplane``: an ``AsyncBackplane`` (``redgov.aio.connect(url)``); anything else
      is a ValidationError.
    - ``rules``: a ``Rules`` or a mapping state -> allowed states (default ``DEFAULT_RULES``).
    - ``gates``: AutomaticGate, ManualGate and RoleGate objects.
    - ``policies``: TrafficLimit, ErrorRate, TimeWindow, ConflictPrevention or custom
      ``Policy`` objects, with unique names.
    - ``initial_state``: where ``create`` puts an experiment.
    - ``auto_versioning``: the state's ``config_version`` follows each new version.
    - ``clock``: a callable returning an aware datetime; stamps records and drives
      time-based policies (default: UTC now).
    - ``idempotency_window``: how long an ``idempotency_key`` is remembered (a timedelta).
    - ``auto_create``: True lets a write to an experiment never created start it from
      ``initial_state`` instead of raising NotFoundError.
    - ``require_telemetry``: True makes a policy whose telemetry is missing non-compliant.

    The same scripts as Governance, so the same atomicity and errors. Differences:
    methods are awaited, ``watch`` is an async iterator, ``close`` a coroutine and
    ``async with`` closes the backplane.
    """

    _backplane_type = AsyncBackplane

    async def close(self) -> None:
        """Close the backplane (its client, cache and archive); awaited. ``async with`` does it on exit."""
        await self.backplane.close()

    async def __aenter__(self) -> AsyncGovernance:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the rules that govern a scope (as Governance: see its methods) -----------------

    async def _governed(self, tenant: str | None, environment: str | None,
                        make: Callable[[GovernanceCore], Call[T] | Plan[T]]) -> T:
        return await self.backplane.drive(self.core.governed(tenant, environment, make))

    async def _read_governed(self, tenant: str | None, environment: str | None,
                             make: Callable[[GovernanceCore], Call[T] | Plan[T]]) -> T:
        return await self.backplane.drive(self.core.governed(tenant, environment, make, fresh=True))

    async def publish(self, *, actor: str, reason: str | None = None, tenant: str | None = None,
                      environment: str | None = None) -> RulesVersion:
        """Publish this Governance's definition as the scope's rules (as ``Governance.publish``).

        Args:
            actor: who publishes (required). reason: why, kept on the version.
            tenant, environment: the scope (None: the default).
        """
        return await self.backplane.drive(self.core.publish_plan(actor=actor, reason=reason, tenant=tenant,
                                                                 environment=environment))

    async def published_rules(self, *, tenant: str | None = None, environment: str | None = None,
                              version: int | None = None) -> RulesVersion | None:
        """The scope's published rules, or ``version`` of them; None when none (as ``Governance.published_rules``).

        Args:
            tenant, environment: the scope (None: the default). version: that version (None: the current one).
        """
        return await self.backplane.run(self.core.published_rules(tenant=tenant, environment=environment,
                                                                  version=version))

    async def rules_history(self, *, tenant: str | None = None,
                            environment: str | None = None) -> list[RulesVersion]:
        """Every published version of the scope's rules, oldest first (as ``Governance.rules_history``).

        Args:
            tenant, environment: the scope (None: the default).
        """
        return await self.backplane.drive(self.core.rules_history(tenant=tenant, environment=environment))

    async def request(self, experiment: str, to: LifecycleState | str, *, actor: str, reason: str | None = None,
                      tenant: str | None = None, environment: str | None = None,
                      idempotency_key: str | None = None) -> PendingMove:
        """Ask for a gated move, for approvers to decide (as ``Governance.request``).

        Args:
            experiment: its name. to: the target state. actor: who asks (required). reason: why.
            tenant, environment: the scope. idempotency_key: a repeat within the window writes nothing.
        """
        return await self._governed(tenant, environment, lambda g: g.request(
            experiment, to, actor=actor, reason=reason, tenant=tenant, environment=environment,
            idempotency_key=idempotency_key))

    async def create(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                     actor: str | None = None, configuration: Mapping[str, Any] | None = None,
                     metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ExperimentState:
        """Create ``experiment`` in the scope ``tenant`` + ``environment``, in the initial state (revision 1).

        Writes the state (by ``actor``, with ``metadata``) and a transition from None into
        it; with ``configuration`` also version 1 (followed by the state when
        auto-versioning). One Lua script call (create.lua): all or nothing, applied once
        however often re-sent; a repeat with the same ``idempotency_key`` within the
        window returns the first call's result and writes nothing. Returns the new
        ExperimentState. Raises ConflictError (it exists; the key was used for another
        operation), ValidationError.
        """
        return await self._governed(tenant, environment, lambda g: g.create(
            experiment, tenant=tenant, environment=environment, actor=actor, configuration=configuration,
            metadata=metadata, idempotency_key=idempotency_key))

    async def state(self, experiment: str, *, tenant: str | None = None,
                    environment: str | None = None) -> ExperimentState | None:
        """The current state of ``experiment`` in the scope ``tenant`` + ``environment`` (None: never created).

        One round trip, or a cache hit. Raises ValidationError, CorruptDataError.
        """
        return await self.backplane.get_state(experiment, tenant=tenant, environment=environment)

    async def transition(self, experiment: str, to: LifecycleState | str, *, actor: str | None = None,
                         reason: str | None = None, metadata: Mapping[str, Any] | None = None,
                         telemetry: Mapping[str, Any] | None = None, tenant: str | None = None,
                         environment: str | None = None, expected_etag: str | None = None,
                         idempotency_key: str | None = None, lease: Lease | None = None) -> StateTransition:
        """Move ``experiment`` (in ``tenant`` + ``environment``) to state ``to``; returns the StateTransition written.

        One atomic Lua script call (transition.lua), all or nothing: the etag check
        (``expected_etag``: write only if the state's etag is still that one), the rule
        check, the gates (a ManualGate consumes its recorded approval; a RoleGate reads
        ``metadata["actorRole"]``), the ConflictPrevention groups, the state write
        (revision + 1, a new etag: both on the returned transition), the history entry
        (``actor``, ``reason``, ``metadata``) and the approval and policy records.
        ``telemetry`` feeds the policies (unknown keys: ValidationError). A re-send after a
        lost reply is applied once; a repeat with the same ``idempotency_key`` within the
        window returns the first call's result (or raises its policy refusal again) and
        writes nothing. With ``lease`` (from ``acquire_lease``) the write is refused unless
        that lease is still the experiment's current, unexpired one (checked in the script).

        Raises NotFoundError (never created), LeaseError (the lease expired or was taken
        over), ConflictError (etag changed: its
        ``current_etag``/``current_state`` say what was found; the key was used for another
        operation), InvalidTransitionError (the rules forbid it), ApprovalRequiredError (a
        gate did not approve), PolicyViolationError (a Critical policy failed: its
        ``evaluations`` are recorded, nothing else is written), ValidationError (bad input).
        Otherwise nothing is written when it raises.
        """
        return await self._governed(tenant, environment, lambda g: g.transition(
            experiment, to, actor=actor, reason=reason, metadata=metadata, telemetry=telemetry, tenant=tenant,
            environment=environment, expected_etag=expected_etag, idempotency_key=idempotency_key, lease=lease))

    async def transition_many(self, requests: Iterable[TransitionRequest]) -> list[StateTransition | RedgovError]:
        """Many transitions in one pipelined round trip (one by one on a Cluster); each succeeds or fails on its own.

        ``requests`` is an iterable of ``TransitionRequest`` (the arguments of one
        ``transition`` each). Each transition is atomic as in ``transition``; the batch is
        not. Invalid input raises ValidationError before anything is sent. Returns, in
        request order, each StateTransition or the RedgovError that refused it.
        """
        requests = self.core.check_requests(requests)
        views = {}
        for scope in dict.fromkeys((r.tenant, r.environment) for r in requests):
            views[scope] = await self.backplane.drive(self.core.governing(*scope))
        results = await self.backplane.run_many(self.core.transition_many(requests, views))
        for index, result in enumerate(results):
            if isinstance(result, RulesChangedError):  # decided again under the new rules, on its own
                r = requests[index]

                def again(g: GovernanceCore, r: TransitionRequest = r) -> Call[StateTransition]:
                    return g.transition_many([r])[0]

                try:
                    results[index] = await self._governed(r.tenant, r.environment, again)
                except RedgovError as exc:
                    results[index] = exc
        return results

    async def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None = None,
                      approved: bool = True, tenant: str | None = None, environment: str | None = None,
                      idempotency_key: str | None = None,
                      valid_for: timedelta | None = None) -> ApprovalRecord:
        """Record ``approver``'s approval of moving ``experiment`` from its current state to ``to``; returns it.

        ``approved=False`` records a rejection instead, which withdraws a pending approval
        of that move; ``reason`` says why; ``tenant`` + ``environment`` is the scope. A
        ManualGate on the move is satisfied by the approval; the transition consumes it and
        is linked to it. Approvals lapse when the experiment leaves the state they were
        given in. One Lua script call (approve.lua), all or nothing, applied once;
        ``idempotency_key`` as in ``create``. ``valid_for``: the approval stops satisfying its
        gate that long after it is recorded (server clock; ``valid_until`` on the record).
        Raises NotFoundError (never created), InvalidTransitionError (no rule allows the move
        from the current state),
        ConflictError (the key was used for another operation), ValidationError.
        """
        return await self._governed(tenant, environment, lambda g: g.approve(
            experiment, to, approver=approver, reason=reason, approved=approved, tenant=tenant,
            environment=environment, idempotency_key=idempotency_key, valid_for=valid_for))

    async def allowed_transitions(self, experiment: str, *, tenant: str | None = None,
                                  environment: str | None = None) -> list[LifecycleState]:
        """The states the rules allow ``experiment`` (in ``tenant`` + ``environment``) to move to now.

        Gates and policies are not judged. One read. Raises NotFoundError (never created,
        unless ``auto_create``: then the moves from ``initial_state``), ValidationError.
        """
        return await self._read_governed(tenant, environment, lambda g: g.allowed_transitions(experiment, tenant=tenant,
                                                                        environment=environment))

    async def history(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                      limit: int | None = None, newest_first: bool = False) -> list[StateTransition]:
        """The transitions of ``experiment`` (in ``tenant`` + ``environment``) in order; ``AsyncBackplane.transitions``.

        ``newest_first=True`` reverses it; ``limit`` returns at most that many. Read in
        pages, not one atomic snapshot. Raises ValidationError, CorruptDataError.
        """
        return await self.backplane.transitions(experiment, tenant=tenant, environment=environment, limit=limit,
                                                newest_first=newest_first)

    async def experiments(self, *, tenant: str | None = None, environment: str | None = None,
                          state: LifecycleState | str | None = None) -> list[ExperimentState]:
        """The experiments of the scope ``tenant`` + ``environment`` by name; only those in ``state`` when given.

        The scope's index and the states are read in pages (two round trips per 200
        names), not one atomic snapshot. Raises ValidationError (an unknown state name),
        CorruptDataError.
        """
        return await self.backplane.drive(self.core.experiments(tenant=tenant, environment=environment,
                                                                state=state))

    async def awaiting_approval(self, *, tenant: str | None = None, environment: str | None = None,
                                experiment: str | None = None) -> list[PendingMove]:
        """The requested moves a ManualGate still blocks in ``tenant`` + ``environment`` (the approval inbox),
        or only ``experiment``'s.

        As ``Governance.awaiting_approval``: the scope's index in pages, each page's state
        hashes pipelined (with ``experiment``: its state alone). Returns a list of PendingMove.
        """
        return await self._read_governed(
            tenant, environment,
            lambda g: g.awaiting_approval(tenant=tenant, environment=environment, experiment=experiment))

    async def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None = None,
                             description: str | None = None, tenant: str | None = None,
                             environment: str | None = None, idempotency_key: str | None = None,
                             lease: Lease | None = None) -> ConfigurationVersion:
        """Add the next version of ``experiment``'s ``configuration`` (a JSON-like mapping); returns it.

        By ``actor``, with ``description``, in the scope ``tenant`` + ``environment``. Its
        number is assigned inside the script (the highest + 1, never reused); with
        auto-versioning the state's ``config_version`` follows it (a state write: the
        revision grows by 1, a new etag). One Lua script call (create_version.lua), all or
        nothing, applied once; ``idempotency_key`` as in ``create``; ``lease`` fences it as in
        ``transition``. Raises NotFoundError (never created, unless ``auto_create``),
        LeaseError, ConflictError (the key was used for another operation), ValidationError.
        """
        return await self._governed(tenant, environment, lambda g: g.create_version(
            experiment, configuration, actor=actor, description=description, tenant=tenant,
            environment=environment, idempotency_key=idempotency_key, lease=lease))

    async def rollback(self, experiment: str, to_version: int, *, actor: str | None = None,
                       tenant: str | None = None, environment: str | None = None,
                       idempotency_key: str | None = None, lease: Lease | None = None) -> ConfigurationVersion:
        """A new version of ``experiment`` restoring version ``to_version``'s configuration; returns it.

        The new version has ``is_rollback=True`` and ``rolled_back_from=to_version``; by
        ``actor``, in the scope ``tenant`` + ``environment``. Reads that (immutable)
        version, then writes like ``create_version`` (one script call; ``idempotency_key``
        and ``lease`` as there). Raises NotFoundError (no such version or experiment),
        LeaseError, ConflictError, ValidationError.
        """
        return await self._governed(tenant, environment, lambda g: g.rollback(
            experiment, to_version, actor=actor, tenant=tenant, environment=environment,
            idempotency_key=idempotency_key, lease=lease))

    async def diff(self, experiment: str, from_version: int, to_version: int, *, tenant: str | None = None,
                   environment: str | None = None) -> list[Change]:
        """The path-level ``Change``s from version ``from_version`` of ``experiment`` to version ``to_version``.

        Scope ``tenant`` + ``environment``. Two reads of immutable versions. Raises
        NotFoundError (either version is missing), ValidationError.
        """
        return await self.backplane.drive(self.core.diff(experiment, from_version, to_version, tenant=tenant,
                                                         environment=environment))

    async def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None = None,
                                target: LifecycleState | str | None = None, tenant: str | None = None,
                                environment: str | None = None) -> list[PolicyEvaluation]:
        """Evaluate every policy on ``experiment`` now and persist the evaluations; returns them.

        ``telemetry`` feeds the policies; ``target`` is the state of the move asked about
        (None: none; ConflictPrevention judges only moves into Running or Ramping);
        ``tenant`` + ``environment`` is the scope. The states the policies need are read
        first, then the evaluations are written by one Lua script call
        (record_evaluations.lua, all or nothing), which writes nothing when a state they were
        decided from changed since (its revision); then they are read and decided again, up
        to 5 times (ConflictError after that). Nothing
        is refused: non-compliant evaluations are returned, not raised. Raises
        NotFoundError (never created), ValidationError (an unknown telemetry key or state).
        """
        return await self._governed(tenant, environment, lambda g: g.evaluate_policies(
            experiment, telemetry=telemetry, target=target, tenant=tenant, environment=environment))

    async def acquire_lease(self, experiment: str, *, owner: str, ttl: timedelta, tenant: str | None = None,
                            environment: str | None = None) -> Lease:
        """Acquire ``experiment``'s lease (in ``tenant`` + ``environment``) for ``owner`` for ``ttl``.

        As ``Governance.acquire_lease``: one script call, expiry judged by the server's clock,
        a fencing token greater than every earlier one (the holder acquiring again renews,
        same token). Raises LeaseError (another owner holds it), NotFoundError,
        ValidationError (a blank owner, a ttl outside 1 ms..7 days).
        """
        return await self.backplane.run(self.core.acquire_lease(experiment, owner=owner, ttl=ttl, tenant=tenant,
                                                                environment=environment))

    async def current_lease(self, experiment: str, *, tenant: str | None = None,
                            environment: str | None = None) -> Lease | None:
        """The live lease of ``experiment`` (in ``tenant`` + ``environment``), None when nobody holds
        one (as ``Governance.current_lease``: one script call that writes nothing). Raises
        CorruptDataError, ValidationError."""
        return await self.backplane.run(self.core.current_lease(experiment, tenant=tenant, environment=environment))

    async def renew_lease(self, lease: Lease, *, ttl: timedelta) -> Lease:
        """Extend ``lease`` to ``ttl`` from now (server clock), same token; returns the new Lease.

        One script call. Raises LeaseError (it expired or was taken over), ValidationError.
        """
        return await self.backplane.run(self.core.renew_lease(lease, ttl=ttl))

    async def release_lease(self, lease: Lease) -> None:
        """End ``lease`` now if it is still current; one that expired or was taken over releases nothing.

        One script call. Raises ValidationError (not a Lease).
        """
        await self.backplane.run(self.core.release_lease(lease))

    async def wait_for(self, experiment: str, states: Iterable[LifecycleState | str] | LifecycleState | str, *,
                       timeout: float, tenant: str | None = None, environment: str | None = None) -> ExperimentState:
        """Return ``experiment``'s state as soon as it is in one of ``states``; TimeoutError after ``timeout`` s.

        As ``Governance.wait_for``, awaited: the state and the log's newest id read in one
        script call, then ``XREAD BLOCK`` on the scope's log (in ``tenant`` + ``environment``)
        from there, never polling. Raises TimeoutError, NotFoundError, ValidationError.
        """
        waiter = self.core.waiter(experiment, states, timeout=timeout, tenant=tenant, environment=environment)
        point = await self.backplane.run(waiter.start())
        found = waiter.begin(point)
        if found is not None:
            return found
        cursor = waiter.cursor
        assert cursor is not None
        await self.backplane.drive(cursor.start())
        while cursor.active():
            event = waiter.hit(cursor.accept(await self.backplane.run(cursor.next_read(self.backplane.socket_timeout))))
            if event is None:
                continue
            if isinstance(event.record, ExperimentState):
                return event.record
            current = await self.state(experiment, tenant=tenant, environment=environment)
            if current is not None and current.state in waiter.wanted:
                return current
            moment = await self.replay(experiment, until=event.record.timestamp,  # type: ignore[union-attr]
                                    tenant=tenant, environment=environment)
            if moment is not None:
                return moment
        raise waiter.timed_out(point[0])

    async def replay(self, experiment: str, *, until: datetime | None = None, tenant: str | None = None,
                     environment: str | None = None) -> ExperimentState | None:
        """The state of ``experiment`` folded from its log alone, as of ``until`` (None: now), or None.

        ``until`` is an aware datetime; ``tenant`` + ``environment`` the scope. Equals
        ``state()`` when consistent. Read in pages. Raises HistoryTrimmedError (``until`` is
        before the retention cut and no archive is attached), ValidationError.
        """
        return await self.backplane.drive(self.core.replay(experiment, until=until, tenant=tenant,
                                                           environment=environment))

    async def verify(self, experiment: str, *, tenant: str | None = None,
                     environment: str | None = None) -> list[str]:
        """The differences between the replayed and the stored state of ``experiment``, one line each; [] when equal.

        Scope ``tenant`` + ``environment``. The log is read in pages, then the state: not
        one atomic snapshot, so a write in between can show as a difference.
        """
        return await self.backplane.drive(self.core.verify(experiment, tenant=tenant, environment=environment))

    async def watch(self, *, tenant: str | None = None, environment: str | None = None,
                    experiments: Iterable[str] | None = None, from_id: str = "$", block_ms: int = 1000,
                    timeout: float | None = None) -> AsyncIterator[GovernanceEvent]:
        """An async iterator of the scope's GovernanceEvents as they are written (XREAD BLOCK on its log).

        ``tenant`` + ``environment`` is the scope; ``experiments`` keeps only their events
        (None: all). ``from_id="$"`` starts at new events, ``"0"`` replays the scope from
        its first event, an event id resumes after it. Each read blocks up to ``block_ms``
        (cut to fit the socket timeout); it runs until the caller stops iterating, or for
        ``timeout`` seconds. Raises ValidationError (a bad ``from_id``, ``block_ms`` or
        ``timeout``), CorruptDataError (the log key is not a stream).
        """
        cursor = WatchCursor(self.backplane.core, tenant=tenant, environment=environment, experiments=experiments,
                             from_id=from_id, block_ms=block_ms, timeout=timeout)
        await self.backplane.drive(cursor.start())
        while cursor.active():
            for event in cursor.accept(await self.backplane.run(cursor.next_read(self.backplane.socket_timeout))):
                yield event
