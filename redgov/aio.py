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

from .backplane import SLOT_SETTLE_SECONDS, access_probe, slot_moving, socket_timeout
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

    Does no I/O itself: an embedded server is started (in a thread) by the first call.
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
    """The persistence interface over a ``redis.asyncio`` client: every Backplane method, awaited.

    See ``redgov.Backplane`` for what each method does, its atomicity and errors.
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
        """Run one Call (see ``Backplane.run``)."""
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
        """Run a plan (see ``Backplane.drive``); archive reads run in a worker thread."""
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
        """Run Calls in one pipelined round trip (one by one on a Cluster)."""
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
        """Close the client, cache and archive; release an embedded server (in a thread)."""
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
        return f"<AsyncBackplane prefix={self.prefix!r}{' cache=on' if self.cache else ''}>"

    # -- state --------------------------------------------------------------------------

    async def get_state(self, experiment: str, *, tenant: str | None = None,
                        environment: str | None = None) -> ExperimentState | None:
        """See ``Backplane.get_state``."""
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
        """See ``Backplane.save_state``."""
        return await self.run(self.core.save_state(state, expected_etag))

    async def state_writes(self, experiment: str, *, tenant: str | None = None,
                           environment: str | None = None) -> list[ExperimentState]:
        """See ``Backplane.state_writes``."""
        return await self.drive(self.core.state_writes(experiment, tenant, environment))

    # -- history --------------------------------------------------------------------------

    async def append_transition(self, t: StateTransition) -> StateTransition:
        """See ``Backplane.append_transition``."""
        return await self.run(self.core.append_transition(t))

    async def transitions(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                          limit: int | None = None, newest_first: bool = False) -> list[StateTransition]:
        """See ``Backplane.transitions``."""
        return await self.drive(self.core.transitions(experiment, tenant, environment, limit=limit,
                                                      newest_first=newest_first))

    async def append_approval(self, a: ApprovalRecord) -> ApprovalRecord:
        """See ``Backplane.append_approval``."""
        return await self.run(self.core.append_approval(a))

    async def approvals(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                        limit: int | None = None, newest_first: bool = False) -> list[ApprovalRecord]:
        """See ``Backplane.approvals``."""
        return await self.drive(self.core.approvals(experiment, tenant, environment, limit=limit,
                                                    newest_first=newest_first))

    async def approvals_for_transition(self, transition_id: str, *, tenant: str | None = None,
                                       environment: str | None = None) -> list[ApprovalRecord]:
        """See ``Backplane.approvals_for_transition``."""
        return await self.drive(self.core.approvals_for_transition(transition_id, tenant, environment))

    async def append_version(self, v: ConfigurationVersion) -> ConfigurationVersion:
        """See ``Backplane.append_version``."""
        return await self.run(self.core.append_version(v))

    async def version(self, experiment: str, number: int, *, tenant: str | None = None,
                      environment: str | None = None) -> ConfigurationVersion | None:
        """See ``Backplane.version``."""
        return await self.drive(self.core.version(experiment, number, tenant, environment))

    async def latest_version(self, experiment: str, *, tenant: str | None = None,
                             environment: str | None = None) -> ConfigurationVersion | None:
        """See ``Backplane.latest_version``."""
        return await self.drive(self.core.latest_version(experiment, tenant, environment))

    async def versions(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                       limit: int | None = None, newest_first: bool = False) -> list[ConfigurationVersion]:
        """See ``Backplane.versions``."""
        return await self.drive(self.core.versions(experiment, tenant, environment, limit=limit,
                                                   newest_first=newest_first))

    async def append_policy_evaluation(self, e: PolicyEvaluation) -> PolicyEvaluation:
        """See ``Backplane.append_policy_evaluation``."""
        return await self.run(self.core.append_policy_evaluation(e))

    async def policy_evaluations(self, experiment: str, *, tenant: str | None = None,
                                 environment: str | None = None, limit: int | None = None,
                                 newest_first: bool = False) -> list[PolicyEvaluation]:
        """See ``Backplane.policy_evaluations``."""
        return await self.drive(self.core.policy_evaluations(experiment, tenant, environment, limit=limit,
                                                             newest_first=newest_first))

    async def latest_policy_evaluation(self, experiment: str, policy: str, *, tenant: str | None = None,
                                       environment: str | None = None) -> PolicyEvaluation | None:
        """See ``Backplane.latest_policy_evaluation``."""
        return await self.drive(self.core.latest_policy_evaluation(experiment, policy, tenant, environment))


class AsyncGovernance(GovernanceBase[AsyncBackplane]):
    """The asyncio twin of ``redgov.Governance``: every method a coroutine (``watch`` an async iterator).

    See ``redgov.Governance`` for the arguments, what each method does, its
    atomicity and its errors.
    """

    _backplane_type = AsyncBackplane

    async def close(self) -> None:
        """Close the backplane."""
        await self.backplane.close()

    async def __aenter__(self) -> AsyncGovernance:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def create(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                     actor: str | None = None, configuration: Mapping[str, Any] | None = None,
                     metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ExperimentState:
        """See ``Governance.create``."""
        return await self.backplane.run(self.core.create(
            experiment, tenant=tenant, environment=environment, actor=actor, configuration=configuration,
            metadata=metadata, idempotency_key=idempotency_key))

    async def state(self, experiment: str, *, tenant: str | None = None,
                    environment: str | None = None) -> ExperimentState | None:
        """See ``Governance.state``."""
        return await self.backplane.get_state(experiment, tenant=tenant, environment=environment)

    async def transition(self, experiment: str, to: LifecycleState | str, *, actor: str | None = None,
                         reason: str | None = None, metadata: Mapping[str, Any] | None = None,
                         telemetry: Mapping[str, Any] | None = None, tenant: str | None = None,
                         environment: str | None = None, expected_etag: str | None = None,
                         idempotency_key: str | None = None) -> StateTransition:
        """See ``Governance.transition``."""
        return await self.backplane.run(self.core.transition(
            experiment, to, actor=actor, reason=reason, metadata=metadata, telemetry=telemetry, tenant=tenant,
            environment=environment, expected_etag=expected_etag, idempotency_key=idempotency_key))

    async def transition_many(self, requests: Iterable[TransitionRequest]) -> list[StateTransition | RedgovError]:
        """See ``Governance.transition_many``."""
        calls = [self.core.transition(r.experiment, r.to, actor=r.actor, reason=r.reason, metadata=r.metadata,
                                      telemetry=r.telemetry, tenant=r.tenant, environment=r.environment,
                                      expected_etag=r.expected_etag, idempotency_key=r.idempotency_key)
                 for r in requests]
        return await self.backplane.run_many(calls)

    async def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None = None,
                      approved: bool = True, tenant: str | None = None, environment: str | None = None,
                      idempotency_key: str | None = None) -> ApprovalRecord:
        """See ``Governance.approve``."""
        return await self.backplane.run(self.core.approve(
            experiment, to, approver=approver, reason=reason, approved=approved, tenant=tenant,
            environment=environment, idempotency_key=idempotency_key))

    async def allowed_transitions(self, experiment: str, *, tenant: str | None = None,
                                  environment: str | None = None) -> list[LifecycleState]:
        """See ``Governance.allowed_transitions``."""
        return await self.backplane.drive(self.core.allowed_transitions(experiment, tenant=tenant,
                                                                        environment=environment))

    async def history(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                      limit: int | None = None, newest_first: bool = False) -> list[StateTransition]:
        """See ``Governance.history``."""
        return await self.backplane.transitions(experiment, tenant=tenant, environment=environment, limit=limit,
                                                newest_first=newest_first)

    async def experiments(self, *, tenant: str | None = None, environment: str | None = None,
                          state: LifecycleState | str | None = None) -> list[ExperimentState]:
        """See ``Governance.experiments``."""
        return await self.backplane.drive(self.core.experiments(tenant=tenant, environment=environment,
                                                                state=state))

    async def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None = None,
                             description: str | None = None, tenant: str | None = None,
                             environment: str | None = None, idempotency_key: str | None = None) -> ConfigurationVersion:
        """See ``Governance.create_version``."""
        return await self.backplane.run(self.core.create_version(
            experiment, configuration, actor=actor, description=description, tenant=tenant,
            environment=environment, idempotency_key=idempotency_key))

    async def rollback(self, experiment: str, to_version: int, *, actor: str | None = None,
                       tenant: str | None = None, environment: str | None = None,
                       idempotency_key: str | None = None) -> ConfigurationVersion:
        """See ``Governance.rollback``."""
        return await self.backplane.drive(self.core.rollback(
            experiment, to_version, actor=actor, tenant=tenant, environment=environment,
            idempotency_key=idempotency_key))

    async def diff(self, experiment: str, from_version: int, to_version: int, *, tenant: str | None = None,
                   environment: str | None = None) -> list[Change]:
        """See ``Governance.diff``."""
        return await self.backplane.drive(self.core.diff(experiment, from_version, to_version, tenant=tenant,
                                                         environment=environment))

    async def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None = None,
                                target: LifecycleState | str | None = None, tenant: str | None = None,
                                environment: str | None = None) -> list[PolicyEvaluation]:
        """See ``Governance.evaluate_policies``."""
        return await self.backplane.drive(self.core.evaluate_policies(
            experiment, telemetry=telemetry, target=target, tenant=tenant, environment=environment))

    async def replay(self, experiment: str, *, until: datetime | None = None, tenant: str | None = None,
                     environment: str | None = None) -> ExperimentState | None:
        """See ``Governance.replay``."""
        return await self.backplane.drive(self.core.replay(experiment, until=until, tenant=tenant,
                                                           environment=environment))

    async def verify(self, experiment: str, *, tenant: str | None = None,
                     environment: str | None = None) -> list[str]:
        """See ``Governance.verify``."""
        return await self.backplane.drive(self.core.verify(experiment, tenant=tenant, environment=environment))

    async def watch(self, *, tenant: str | None = None, environment: str | None = None,
                    experiments: Iterable[str] | None = None, from_id: str = "$", block_ms: int = 1000,
                    timeout: float | None = None) -> AsyncIterator[GovernanceEvent]:
        """See ``Governance.watch``."""
        cursor = WatchCursor(self.backplane.core, tenant=tenant, environment=environment, experiments=experiments,
                             from_id=from_id, block_ms=block_ms, timeout=timeout)
        await self.backplane.drive(cursor.start())
        while cursor.active():
            for event in cursor.accept(await self.backplane.run(cursor.next_read(self.backplane.socket_timeout))):
                yield event

