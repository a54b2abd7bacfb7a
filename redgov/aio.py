"""asyncio twins: ``connect``, ``AsyncBackplane`` and ``AsyncGovernance``.

The same core Calls and plans as the sync classes, awaited; every method is a
coroutine with the sync method's signature (``watch`` an async iterator). No
blocking I/O runs on the event loop: reads of the SQL archive and the embedded
server's start and stop run in a worker thread (``asyncio.to_thread``); the
cache's invalidation stream has its own thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import ClusterError, ResponseError, TryAgainError

from .backplane import SLOT_SETTLE_SECONDS, access_probe, backplane_repr, slot_moving, socket_timeout
from .cache import MAX_AGE, MISS, StateCache
from .changes import Change
from .connect import _check_cache, open_async_client, scheme_of, stream_connector
from .core import Archive, Call, Core, Plan, settle
from .embedded import EmbeddedServer
from .errors import RedgovError, UnavailableError
from .events import GovernanceEvent, WatchCursor
from .governance import GovernanceBase
from .govcore import TransitionRequest
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    SaveResult,
    StateTransition,
)

__all__ = ["AsyncBackplane", "AsyncGovernance", "connect"]

T = TypeVar("T")


def connect(url: str = "memory://", *, prefix: str = "gov", cache: bool = False, timeout: float = 5.0,
            retries: int = 3, retain_history: int | None = None, archive: Any = None,
            cache_max_age: float = MAX_AGE, **redis_kwargs: Any) -> AsyncBackplane:
    """An AsyncBackplane for ``url``: the schemes and arguments of ``redgov.connect``.

    ``url`` (redis://, rediss://, unix://, redis+cluster://, memory://, embedded://),
    ``prefix``, ``cache``, ``timeout``, ``retries``, ``retain_history``, ``archive``,
    ``cache_max_age`` and ``redis_kwargs`` (``optimistic_concurrency`` and redis-py
    client keywords) mean what they mean there; the client is a ``redis.asyncio`` one.
    Differences: it is a plain function (not a coroutine) and does no I/O itself, not
    even for a Cluster: an embedded server is started (in a worker thread) by the
    first call. Raises ValidationError for an unknown scheme or a bad argument.
    """
    optimistic = redis_kwargs.pop("optimistic_concurrency", True)
    scheme = scheme_of(url)
    _check_cache(cache, scheme)
    client, server = open_async_client(url, timeout=timeout, retries=retries, **redis_kwargs)
    state_cache = None
    if cache and scheme != "memory":
        state_cache = StateCache(stream_connector(url, timeout, redis_kwargs, server.socket if server else None),
                                 max_age=cache_max_age)
    return AsyncBackplane(client, prefix=prefix, optimistic_concurrency=optimistic, retain_history=retain_history,
                          archive=archive, cache=state_cache, server=server)


class AsyncBackplane:
    """The persistence interface over a ``redis.asyncio`` client: every Backplane method, as a coroutine.

    Arguments as ``redgov.Backplane``: ``client`` (a ``redis.asyncio.Redis`` or
    ``redis.asyncio.cluster.RedisCluster``, ``decode_responses=False``), ``prefix``,
    ``optimistic_concurrency``, ``archive``, ``retain_history``, ``cache``; and
    ``server``, the EmbeddedServer behind an embedded:// client (started in a thread
    by the first call, released by ``close``). Made by ``redgov.aio.connect``.

    The same scripts as the sync Backplane, so the same atomicity: each write one Lua
    script call, all or nothing, applied once however often re-sent; history reads
    in pages, not one atomic snapshot. The same errors. Blocking work (SQL archive
    reads, the embedded server's start and stop) runs in a worker thread, never on
    the event loop. ``async with`` closes it.
    """

    def __init__(self, client: Any, *, prefix: str = "gov", optimistic_concurrency: bool = True,
                 archive: Archive | None = None, retain_history: int | None = None,
                 cache: StateCache | None = None, server: EmbeddedServer | None = None) -> None:
        self.core = Core(prefix, optimistic_concurrency=optimistic_concurrency, archive=archive,
                         retain_history=retain_history)
        self.client = client
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(spec.text) for name, spec in self.core.specs.items()
        }
        self._cluster = type(client).__name__ == "RedisCluster"
        self._server = server
        self._server_open = False
        self.socket_timeout = socket_timeout(client)
        self.cache = cache

    @property
    def prefix(self) -> str:
        """The key prefix: every key this backplane writes starts with it."""
        return self.core.prefix

    # -- running calls ----------------------------------------------------------------

    async def _ready(self) -> None:
        if self._server is not None and not self._server_open:
            await asyncio.to_thread(self._server.open)
            self._server_open = True

    async def _send(self, call: Call[Any]) -> Any:
        if call.batch:
            if not call.args:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for command in call.args:
                    pipe.execute_command(*command)
                return await pipe.execute(raise_on_error=False)
        if call.script is None:
            return await self.client.execute_command(*call.args)
        return await self._scripts[call.script](keys=call.keys, args=call.args)

    async def _execute(self, call: Call[Any]) -> Any:
        await self._ready()
        if not self._cluster:
            return await self._send(call)
        deadline = asyncio.get_running_loop().time() + SLOT_SETTLE_SECONDS
        delay = 0.02
        while True:  # redis-py's async Retry has no is_retryable hook: the same policy as slot_retry()
            try:
                return await self._send(call)
            except (TryAgainError, ClusterError) as exc:
                if not slot_moving(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def run(self, call: Call[T]) -> T:
        """Run one ``call`` (a core Call) and return its parsed result, as ``Backplane.run`` does, awaited.

        Refusals are raised as RedgovErrors; on a Cluster a call refused while its slot
        migrates is sent again (``asyncio.sleep`` between) until the slot settles
        (``UnavailableError`` after about 10 s).
        """
        if call.scope is not None:
            await self._check_access(call)
        try:
            reply = await self._execute(call)
        except ResponseError as exc:
            return call.failed(exc)
        except (TryAgainError, ClusterError) as exc:
            if slot_moving(exc):
                raise UnavailableError(f"the Cluster slot of {call.keys[0]} kept moving for {SLOT_SETTLE_SECONDS:g} s "
                                       f"(resharding); nothing was written: {exc}") from exc
            raise
        finally:
            if call.state_key is not None and self.cache is not None:
                self.cache.wrote(call.state_key)
        return call.parse(reply)

    async def _check_access(self, call: Call[Any]) -> None:
        scope = call.scope
        if scope is None or scope.tag in self.core.checked_scopes:
            return
        probe = access_probe(self.core, scope)
        try:
            reply = await self._execute(probe)
        except ResponseError as exc:
            probe.failed(exc)
        else:
            probe.parse(reply)
        self.core.checked_scopes.add(scope.tag)

    async def drive(self, plan: Plan[T]) -> T:
        """Run a ``plan`` (a generator of core steps) to its end and return its result.

        Each Call runs on Redis (``run``), each archive read in a worker thread; a failure
        is thrown into the plan where it yielded. Not atomic as a whole.
        """
        try:
            step = next(plan)
            while True:
                try:
                    if isinstance(step, Call):
                        result = await self.run(step)
                    else:
                        result = await asyncio.to_thread(step.run)
                except BaseException as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def run_many(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """Run ``calls`` in one pipelined round trip (one by one on a Cluster); results in their order.

        Each call is atomic on its own, the batch is not; each result is the parsed reply or
        the RedgovError that refused it (returned, not raised).
        """
        if not calls:
            return []
        if self._cluster:
            return [await self._settle(call) for call in calls]
        for call in calls:
            await self._check_access(call)
        async with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                if call.script is None:
                    pipe.execute_command(*call.args)
                else:
                    await self._scripts[call.script](keys=call.keys, args=call.args, client=pipe)
            try:
                replies = await pipe.execute(raise_on_error=False)
            finally:
                if self.cache is not None:
                    self.cache.wrote(*(call.state_key for call in calls))
        return [settle(call, reply) for call, reply in zip(calls, replies)]

    async def _settle(self, call: Call[Any]) -> Any:
        try:
            return await self.run(call)
        except RedgovError as error:
            return error

    async def close(self) -> None:
        """Close the client, the cache and the archive, and release an embedded server (in a worker thread).

        The AsyncBackplane cannot be used afterwards; ``async with`` closes it on exit.
        """
        if self.cache is not None:
            await asyncio.to_thread(self.cache.close)
        await self.client.aclose()
        archive_close = getattr(self.core.archive, "close", None)
        if archive_close is not None:
            await asyncio.to_thread(archive_close)
        if self._server is not None and self._server_open:
            self._server_open = False
            await asyncio.to_thread(self._server.close)

    async def __aenter__(self) -> AsyncBackplane:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return backplane_repr(self)

    # -- state --------------------------------------------------------------------------

    async def get_state(self, experiment: str, *, tenant: str | None = None,
                        environment: str | None = None) -> ExperimentState | None:
        """The current state of ``experiment`` in the scope ``tenant`` + ``environment``, or None when it has none.

        As ``Backplane.get_state``: one HMGET round trip, or a hit of the cache (never
        older than ``cache_max_age``). Raises ValidationError, CorruptDataError,
        AccessDeniedError.
        """
        cache = self.cache
        if cache is None:
            return await self.run(self.core.get_state(experiment, tenant, environment))
        scope, exp = self.core.keys(experiment, tenant, environment)
        found = cache.lookup(exp.state)
        if found is not MISS:
            return found  # type: ignore[no-any-return]
        await self._ready()  # an embedded server starts before the cache's stream tries to reach it
        fetch = cache.begin(exp.state, scope.state_prefix)
        try:
            state = await self.run(self.core.get_state(experiment, tenant, environment))
        except BaseException:
            cache.abandon(fetch)
            raise
        cache.finish(fetch, state)
        return state

    async def save_state(self, state: ExperimentState, *, expected_etag: str | None = None) -> SaveResult:
        """Write ``state`` as its experiment's current state: create only (``expected_etag=None``) or compare-and-set.

        As ``Backplane.save_state``: one Lua script call (save_state.lua), all or nothing,
        applied once; ``state``'s ``revision`` and ``etag`` are ignored (revision + 1, a new
        etag). Returns a SaveResult (a conflict is ``ok=False, conflict=True``, not an
        exception). Raises ValidationError, CorruptDataError, AccessDeniedError.
        """
        return await self.run(self.core.save_state(state, expected_etag))

    async def state_writes(self, experiment: str, *, tenant: str | None = None,
                           environment: str | None = None) -> list[ExperimentState]:
        """Every state ``experiment`` (in ``tenant`` + ``environment``) has had, oldest first.

        As ``Backplane.state_writes``: folded from its state-writing log entries, read in
        pages (not one atomic snapshot); archived ones from the SQL copy in a worker
        thread. Raises ValidationError, CorruptDataError.
        """
        return await self.drive(self.core.state_writes(experiment, tenant, environment))

    # -- history --------------------------------------------------------------------------

    async def append_transition(self, t: StateTransition) -> StateTransition:
        """Append transition ``t`` to its experiment's history without writing the state; returns ``t``.

        As ``Backplane.append_transition``: one Lua script call, all or nothing, applied
        once; no rule or gate check. Raises ConflictError (``t.transition_id`` already
        recorded in the scope), ValidationError, CorruptDataError, AccessDeniedError.
        """
        return await self.run(self.core.append_transition(t))

    async def transitions(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                          limit: int | None = None, newest_first: bool = False) -> list[StateTransition]:
        """The transitions of ``experiment`` (in ``tenant`` + ``environment``) in the order written.

        ``newest_first=True`` reverses it; ``limit`` returns at most that many (None: all).
        Read in pages of bounded server time, not one atomic snapshot; archived entries
        from the SQL copy (in a worker thread). Raises ValidationError, CorruptDataError.
        """
        return await self.drive(self.core.transitions(experiment, tenant, environment, limit=limit,
                                                      newest_first=newest_first))

    async def append_approval(self, a: ApprovalRecord) -> ApprovalRecord:
        """Append approval ``a`` to its experiment's history; returns ``a``.

        As ``Backplane.append_approval``: one Lua script call, all or nothing, applied
        once; with ``a.transition_id`` it is linked to that transition. It does not
        satisfy a ManualGate (``AsyncGovernance.approve`` does). Raises ValidationError,
        CorruptDataError, AccessDeniedError.
        """
        return await self.run(self.core.append_approval(a))

    async def approvals(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                        limit: int | None = None, newest_first: bool = False) -> list[ApprovalRecord]:
        """The approvals of ``experiment`` (in ``tenant`` + ``environment``) in the order written.

        Each with the ``transition_id`` of the transition that consumed it, when one did.
        ``newest_first`` and ``limit`` as in ``transitions``; read in pages, not one atomic
        snapshot. Raises ValidationError, CorruptDataError.
        """
        return await self.drive(self.core.approvals(experiment, tenant, environment, limit=limit,
                                                    newest_first=newest_first))

    async def approvals_for_transition(self, transition_id: str, *, tenant: str | None = None,
                                       environment: str | None = None) -> list[ApprovalRecord]:
        """The approvals linked to the transition ``transition_id`` in the scope ``tenant`` + ``environment``.

        As ``Backplane.approvals_for_transition``: one script call (an atomic read), the
        SQL copy asked when Redis no longer holds them. Raises ValidationError,
        CorruptDataError.
        """
        return await self.drive(self.core.approvals_for_transition(transition_id, tenant, environment))

    async def append_version(self, v: ConfigurationVersion) -> ConfigurationVersion:
        """Append the immutable configuration version ``v`` under its own number; returns ``v``.

        As ``Backplane.append_version``: one Lua script call, all or nothing, applied once;
        the state is not changed. Raises ConflictError (the number exists or is not above
        the highest one retention removed), ValidationError, CorruptDataError,
        AccessDeniedError.
        """
        return await self.run(self.core.append_version(v))

    async def version(self, experiment: str, number: int, *, tenant: str | None = None,
                      environment: str | None = None) -> ConfigurationVersion | None:
        """Version ``number`` of ``experiment`` (in ``tenant`` + ``environment``), or None.

        One script call, O(log N); the SQL copy asked when Redis no longer holds it.
        Raises ValidationError (``number`` not an integer), CorruptDataError.
        """
        return await self.drive(self.core.version(experiment, number, tenant, environment))

    async def latest_version(self, experiment: str, *, tenant: str | None = None,
                             environment: str | None = None) -> ConfigurationVersion | None:
        """The highest-numbered version of ``experiment`` (in ``tenant`` + ``environment``), or None.

        One script call, O(log N), never a scan (the SQL copy's highest compared too).
        Raises ValidationError, CorruptDataError.
        """
        return await self.drive(self.core.latest_version(experiment, tenant, environment))

    async def versions(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                       limit: int | None = None, newest_first: bool = False) -> list[ConfigurationVersion]:
        """The versions of ``experiment`` (in ``tenant`` + ``environment``) by number, ascending.

        ``newest_first=True`` gives them descending; ``limit`` at most that many (None:
        all). Read in pages, not one atomic snapshot; archived ones merged in from the SQL
        copy. Raises ValidationError, CorruptDataError.
        """
        return await self.drive(self.core.versions(experiment, tenant, environment, limit=limit,
                                                   newest_first=newest_first))

    async def append_policy_evaluation(self, e: PolicyEvaluation) -> PolicyEvaluation:
        """Append the policy evaluation ``e``; it becomes its policy's latest. Returns ``e``.

        As ``Backplane.append_policy_evaluation``: one Lua script call, all or nothing,
        applied once. Raises ValidationError, CorruptDataError, AccessDeniedError.
        """
        return await self.run(self.core.append_policy_evaluation(e))

    async def policy_evaluations(self, experiment: str, *, tenant: str | None = None,
                                 environment: str | None = None, limit: int | None = None,
                                 newest_first: bool = False) -> list[PolicyEvaluation]:
        """The policy evaluations of ``experiment`` (in ``tenant`` + ``environment``) in the order written.

        ``newest_first`` and ``limit`` as in ``transitions``; read in pages, not one atomic
        snapshot. Raises ValidationError, CorruptDataError.
        """
        return await self.drive(self.core.policy_evaluations(experiment, tenant, environment, limit=limit,
                                                             newest_first=newest_first))

    async def latest_policy_evaluation(self, experiment: str, policy: str, *, tenant: str | None = None,
                                       environment: str | None = None) -> PolicyEvaluation | None:
        """The latest evaluation of ``policy`` for ``experiment`` (in ``tenant`` + ``environment``), or None.

        One script call: O(1), a hash lookup; the SQL copy asked when Redis holds none.
        Raises ValidationError, CorruptDataError.
        """
        return await self.drive(self.core.latest_policy_evaluation(experiment, policy, tenant, environment))


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
        return await self.backplane.run(self.core.create(
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
                         idempotency_key: str | None = None) -> StateTransition:
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
        writes nothing.

        Raises NotFoundError (never created), ConflictError (etag changed: its
        ``current_etag``/``current_state`` say what was found; the key was used for another
        operation), InvalidTransitionError (the rules forbid it), ApprovalRequiredError (a
        gate did not approve), PolicyViolationError (a Critical policy failed: its
        ``evaluations`` are recorded, nothing else is written), ValidationError (bad input).
        Otherwise nothing is written when it raises.
        """
        return await self.backplane.run(self.core.transition(
            experiment, to, actor=actor, reason=reason, metadata=metadata, telemetry=telemetry, tenant=tenant,
            environment=environment, expected_etag=expected_etag, idempotency_key=idempotency_key))

    async def transition_many(self, requests: Iterable[TransitionRequest]) -> list[StateTransition | RedgovError]:
        """Many transitions in one pipelined round trip (one by one on a Cluster); each succeeds or fails on its own.

        ``requests`` is an iterable of ``TransitionRequest`` (the arguments of one
        ``transition`` each). Each transition is atomic as in ``transition``; the batch is
        not. Invalid input raises ValidationError before anything is sent. Returns, in
        request order, each StateTransition or the RedgovError that refused it.
        """
        calls = [self.core.transition(r.experiment, r.to, actor=r.actor, reason=r.reason, metadata=r.metadata,
                                      telemetry=r.telemetry, tenant=r.tenant, environment=r.environment,
                                      expected_etag=r.expected_etag, idempotency_key=r.idempotency_key)
                 for r in requests]
        return await self.backplane.run_many(calls)

    async def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None = None,
                      approved: bool = True, tenant: str | None = None, environment: str | None = None,
                      idempotency_key: str | None = None) -> ApprovalRecord:
        """Record ``approver``'s approval of moving ``experiment`` from its current state to ``to``; returns it.

        ``approved=False`` records a rejection instead, which withdraws a pending approval
        of that move; ``reason`` says why; ``tenant`` + ``environment`` is the scope. A
        ManualGate on the move is satisfied by the approval; the transition consumes it and
        is linked to it. Approvals lapse when the experiment leaves the state they were
        given in. One Lua script call (approve.lua), all or nothing, applied once;
        ``idempotency_key`` as in ``create``. Raises NotFoundError (never created),
        InvalidTransitionError (no rule allows the move from the current state),
        ConflictError (the key was used for another operation), ValidationError.
        """
        return await self.backplane.run(self.core.approve(
            experiment, to, approver=approver, reason=reason, approved=approved, tenant=tenant,
            environment=environment, idempotency_key=idempotency_key))

    async def allowed_transitions(self, experiment: str, *, tenant: str | None = None,
                                  environment: str | None = None) -> list[LifecycleState]:
        """The states the rules allow ``experiment`` (in ``tenant`` + ``environment``) to move to now.

        Gates and policies are not judged. One read. Raises NotFoundError (never created,
        unless ``auto_create``: then the moves from ``initial_state``), ValidationError.
        """
        return await self.backplane.drive(self.core.allowed_transitions(experiment, tenant=tenant,
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

    async def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None = None,
                             description: str | None = None, tenant: str | None = None,
                             environment: str | None = None, idempotency_key: str | None = None) -> ConfigurationVersion:
        """Add the next version of ``experiment``'s ``configuration`` (a JSON-like mapping); returns it.

        By ``actor``, with ``description``, in the scope ``tenant`` + ``environment``. Its
        number is assigned inside the script (the highest + 1, never reused); with
        auto-versioning the state's ``config_version`` follows it (a state write: the
        revision grows by 1, a new etag). One Lua script call (create_version.lua), all or
        nothing, applied once; ``idempotency_key`` as in ``create``. Raises NotFoundError
        (never created, unless ``auto_create``), ConflictError (the key was used for
        another operation), ValidationError.
        """
        return await self.backplane.run(self.core.create_version(
            experiment, configuration, actor=actor, description=description, tenant=tenant,
            environment=environment, idempotency_key=idempotency_key))

    async def rollback(self, experiment: str, to_version: int, *, actor: str | None = None,
                       tenant: str | None = None, environment: str | None = None,
                       idempotency_key: str | None = None) -> ConfigurationVersion:
        """A new version of ``experiment`` restoring version ``to_version``'s configuration; returns it.

        The new version has ``is_rollback=True`` and ``rolled_back_from=to_version``; by
        ``actor``, in the scope ``tenant`` + ``environment``. Reads that (immutable)
        version, then writes like ``create_version`` (one script call; ``idempotency_key``
        as there). Raises NotFoundError (no such version or experiment), ConflictError,
        ValidationError.
        """
        return await self.backplane.drive(self.core.rollback(
            experiment, to_version, actor=actor, tenant=tenant, environment=environment,
            idempotency_key=idempotency_key))

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
        (record_evaluations.lua, all or nothing): the two are not one atomic step. Nothing
        is refused: non-compliant evaluations are returned, not raised. Raises
        NotFoundError (never created), ValidationError (an unknown telemetry key or state).
        """
        return await self.backplane.drive(self.core.evaluate_policies(
            experiment, telemetry=telemetry, target=target, tenant=tenant, environment=environment))

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

