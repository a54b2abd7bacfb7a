"""asyncio twins: ``AsyncBackplane`` and ``connect``.

The same core Calls as the sync Backplane, awaited; every method is a coroutine
with the sync method's signature.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from .connect import open_async_client
from .core import Archive, Call, Core, settle
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
    SaveResult,
    StateTransition,
)
from .rules import Rules

__all__ = ["AsyncBackplane", "AsyncGovernance", "connect"]

T = TypeVar("T")


def connect(url: str = "memory://", *, prefix: str = "gov", cache: bool = False,
            **redis_kwargs: Any) -> AsyncBackplane:
    """An AsyncBackplane for ``url``; the schemes of ``redgov.connect``."""
    optimistic = redis_kwargs.pop("optimistic_concurrency", True)
    retain = redis_kwargs.pop("retain_history", None)
    archive = redis_kwargs.pop("archive", None)
    client, on_close = open_async_client(url, cache=cache, **redis_kwargs)
    return AsyncBackplane(client, prefix=prefix, optimistic_concurrency=optimistic, retain_history=retain,
                          archive=archive, on_close=on_close)


class AsyncBackplane:
    """The persistence interface over a redis.asyncio client."""

    def __init__(self, client: Any, *, prefix: str = "gov", optimistic_concurrency: bool = True,
                 archive: Archive | None = None, retain_history: int | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.core = Core(prefix, optimistic_concurrency=optimistic_concurrency, archive=archive,
                         retain_history=retain_history)
        self.client = client
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(spec.text) for name, spec in self.core.specs.items()
        }
        self._on_close = on_close

    @property
    def prefix(self) -> str:
        return self.core.prefix

    async def run(self, call: Call[T]) -> T:
        try:
            if call.script is None:
                reply = await self.client.execute_command(*call.args)
            else:
                reply = await self._scripts[call.script](keys=call.keys, args=call.args)
        except ResponseError as exc:
            return call.failed(exc)
        trim = self.core.after_write(call)
        if trim is not None:
            await self.client.execute_command(*trim.args)
        return call.parse(reply)

    async def run_many(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """Run Calls in one pipelined round trip (one by one on a Cluster)."""
        if not calls:
            return []
        if self.client.__class__.__name__ == "RedisCluster":
            return [await self._settle(call) for call in calls]
        async with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                if call.script is None:
                    pipe.execute_command(*call.args)
                else:
                    await self._scripts[call.script](keys=call.keys, args=call.args, client=pipe)
            replies = await pipe.execute(raise_on_error=False)
        return [settle(call, reply) for call, reply in zip(calls, replies)]

    async def _settle(self, call: Call[Any]) -> Any:
        try:
            return await self.run(call)
        except RedgovError as error:
            return error

    async def close(self) -> None:
        await self.client.aclose()
        archive_close = getattr(self.core.archive, "close", None)
        if archive_close is not None:
            archive_close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    async def __aenter__(self) -> AsyncBackplane:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncBackplane prefix={self.prefix!r} client={self.client!r}>"

    # -- state --------------------------------------------------------------

    async def get_state(self, experiment: str, *, tenant: str | None = None,
                        environment: str | None = None) -> ExperimentState | None:
        return await self.run(self.core.get_state(experiment, tenant, environment))

    async def save_state(self, state: ExperimentState, *, expected_etag: str | None = None) -> SaveResult:
        return await self.run(self.core.save_state(state, expected_etag))

    async def state_writes(self, experiment: str, *, tenant: str | None = None,
                           environment: str | None = None) -> list[ExperimentState]:
        return await self.run(self.core.state_writes(experiment, tenant, environment))

    # -- history ------------------------------------------------------------

    async def append_transition(self, t: StateTransition) -> StateTransition:
        return await self.run(self.core.append_transition(t))

    async def transitions(self, experiment: str, *, tenant: str | None = None,
                          environment: str | None = None) -> list[StateTransition]:
        return await self.run(self.core.transitions(experiment, tenant, environment))

    async def append_approval(self, a: ApprovalRecord) -> ApprovalRecord:
        return await self.run(self.core.append_approval(a))

    async def approvals(self, experiment: str, *, tenant: str | None = None,
                        environment: str | None = None) -> list[ApprovalRecord]:
        return await self.run(self.core.approvals(experiment, tenant, environment))

    async def approvals_for_transition(self, transition_id: str, *, tenant: str | None = None,
                                       environment: str | None = None) -> list[ApprovalRecord]:
        return await self.run(self.core.approvals_for_transition(transition_id, tenant, environment))

    async def append_version(self, v: ConfigurationVersion) -> ConfigurationVersion:
        return await self.run(self.core.append_version(v))

    async def version(self, experiment: str, number: int, *, tenant: str | None = None,
                      environment: str | None = None) -> ConfigurationVersion | None:
        return await self.run(self.core.version(experiment, number, tenant, environment))

    async def latest_version(self, experiment: str, *, tenant: str | None = None,
                             environment: str | None = None) -> ConfigurationVersion | None:
        return await self.run(self.core.latest_version(experiment, tenant, environment))

    async def versions(self, experiment: str, *, tenant: str | None = None,
                       environment: str | None = None) -> list[ConfigurationVersion]:
        return await self.run(self.core.versions(experiment, tenant, environment))

    async def append_policy_evaluation(self, e: PolicyEvaluation) -> PolicyEvaluation:
        return await self.run(self.core.append_policy_evaluation(e))

    async def policy_evaluations(self, experiment: str, *, tenant: str | None = None,
                                 environment: str | None = None) -> list[PolicyEvaluation]:
        return await self.run(self.core.policy_evaluations(experiment, tenant, environment))

    async def latest_policy_evaluation(self, experiment: str, policy: str, *, tenant: str | None = None,
                                       environment: str | None = None) -> PolicyEvaluation | None:
        return await self.run(self.core.latest_policy_evaluation(experiment, policy, tenant, environment))


class AsyncGovernance:
    """The asyncio twin of ``redgov.Governance``: every method a coroutine."""

    def __init__(
        self,
        backplane: AsyncBackplane,
        *,
        rules: Rules | Mapping[str, Iterable[str]] | None = None,
        gates: Sequence[Gate] = (),
        policies: Sequence[Policy] = (),
        initial_state: LifecycleState | str = LifecycleState.DRAFT,
        auto_versioning: bool = True,
        clock: Callable[[], datetime] | None = None,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> None:
        if not isinstance(backplane, AsyncBackplane):
            raise ValidationError(f"AsyncGovernance needs a redgov.aio.AsyncBackplane, got {type(backplane).__name__}")
        self.backplane = backplane
        self.core = GovernanceCore(backplane.core, rules=rules, gates=gates, policies=policies,
                                   initial_state=initial_state, auto_versioning=auto_versioning, clock=clock,
                                   idempotency_window=idempotency_window)

    @property
    def rules(self) -> Rules:
        return self.core.rules

    async def close(self) -> None:
        await self.backplane.close()

    async def __aenter__(self) -> AsyncGovernance:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def create(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                     actor: str | None = None, configuration: Mapping[str, Any] | None = None,
                     metadata: Mapping[str, Any] | None = None) -> ExperimentState:
        return await self.backplane.run(self.core.create(
            experiment, tenant=tenant, environment=environment, actor=actor, configuration=configuration,
            metadata=metadata))

    async def state(self, experiment: str, *, tenant: str | None = None,
                    environment: str | None = None) -> ExperimentState | None:
        return await self.backplane.get_state(experiment, tenant=tenant, environment=environment)

    async def transition(self, experiment: str, to: LifecycleState | str, *, actor: str | None = None,
                         reason: str | None = None, metadata: Mapping[str, Any] | None = None,
                         telemetry: Mapping[str, Any] | None = None, tenant: str | None = None,
                         environment: str | None = None, expected_etag: str | None = None,
                         idempotency_key: str | None = None) -> StateTransition:
        return await self.backplane.run(self.core.transition(
            experiment, to, actor=actor, reason=reason, metadata=metadata, telemetry=telemetry, tenant=tenant,
            environment=environment, expected_etag=expected_etag, idempotency_key=idempotency_key))

    async def transition_many(self, requests: Iterable[TransitionRequest]) -> list[StateTransition | RedgovError]:
        calls = [self.core.transition(r.experiment, r.to, actor=r.actor, reason=r.reason, metadata=r.metadata,
                                      telemetry=r.telemetry, tenant=r.tenant, environment=r.environment,
                                      expected_etag=r.expected_etag, idempotency_key=r.idempotency_key)
                 for r in requests]
        return await self.backplane.run_many(calls)

    async def approve(self, experiment: str, to: LifecycleState | str, *, approver: str, reason: str | None = None,
                      approved: bool = True, tenant: str | None = None,
                      environment: str | None = None) -> ApprovalRecord:
        return await self.backplane.run(self.core.approve(
            experiment, to, approver=approver, reason=reason, approved=approved, tenant=tenant,
            environment=environment))

    async def allowed_transitions(self, experiment: str, *, tenant: str | None = None,
                                  environment: str | None = None) -> list[LifecycleState]:
        current = await self.state(experiment, tenant=tenant, environment=environment)
        return self.rules.allowed(current.state if current else self.core.initial_state)

    async def history(self, experiment: str, *, tenant: str | None = None,
                      environment: str | None = None) -> list[StateTransition]:
        return await self.backplane.transitions(experiment, tenant=tenant, environment=environment)

    async def create_version(self, experiment: str, configuration: Mapping[str, Any], *, actor: str | None = None,
                             description: str | None = None, tenant: str | None = None,
                             environment: str | None = None) -> ConfigurationVersion:
        return await self.backplane.run(self.core.create_version(
            experiment, configuration, actor=actor, description=description, tenant=tenant,
            environment=environment))

    async def rollback(self, experiment: str, to_version: int, *, actor: str | None = None,
                       tenant: str | None = None, environment: str | None = None) -> ConfigurationVersion:
        number = check_version_number(to_version, "to_version")
        found = await self.backplane.version(experiment, number, tenant=tenant, environment=environment)
        old = require_version(found, experiment, number)
        return await self.backplane.run(self.core.create_version(
            experiment, old.configuration, actor=actor, description=f"rollback to version {number}",
            tenant=tenant, environment=environment, is_rollback=True, rolled_back_from=number))

    async def diff(self, experiment: str, from_version: int, to_version: int, *, tenant: str | None = None,
                   environment: str | None = None) -> list[Change]:
        versions = []
        for number in (check_version_number(from_version, "from_version"),
                       check_version_number(to_version, "to_version")):
            found = await self.backplane.version(experiment, number, tenant=tenant, environment=environment)
            versions.append(require_version(found, experiment, number))
        return diff(versions[0].configuration, versions[1].configuration)

    async def evaluate_policies(self, experiment: str, *, telemetry: Mapping[str, Any] | None = None,
                                target: LifecycleState | str | None = None, tenant: str | None = None,
                                environment: str | None = None) -> list[PolicyEvaluation]:
        members = self.core.conflict_group_members(experiment)
        states = await self.backplane.run(self.core.states_of(members, tenant, environment))
        return await self.backplane.run(self.core.evaluate_policies(
            experiment, telemetry=telemetry, target=target, tenant=tenant, environment=environment,
            current=states.get(experiment), others=states))

    async def replay(self, experiment: str, *, until: datetime | None = None, tenant: str | None = None,
                     environment: str | None = None) -> ExperimentState | None:
        return await self.backplane.run(self.core.replay(experiment, until=until, tenant=tenant,
                                                         environment=environment))

    async def verify(self, experiment: str, *, tenant: str | None = None,
                     environment: str | None = None) -> list[str]:
        replayed = await self.replay(experiment, tenant=tenant, environment=environment)
        return compare(replayed, await self.state(experiment, tenant=tenant, environment=environment))

    async def watch(self, *, tenant: str | None = None, environment: str | None = None,
                    experiments: Iterable[str] | None = None, from_id: str = "$", block_ms: int = 1000,
                    timeout: float | None = None) -> AsyncIterator[GovernanceEvent]:
        """Async iterator over the scope's events; see ``Governance.watch``."""
        cursor = WatchCursor(self.core, tenant=tenant, environment=environment, experiments=experiments,
                             from_id=from_id, block_ms=block_ms, timeout=timeout)
        start = cursor.start()
        if start is not None:
            cursor.last = await self.backplane.run(start)
        while cursor.active():
            for event in cursor.accept(await self.backplane.run(cursor.next_read())):
                yield event
