"""asyncio twins: ``AsyncBackplane`` and ``connect``.

The same core Calls as the sync Backplane, awaited; every method is a coroutine
with the sync method's signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from .connect import open_async_client
from .core import Call, Core
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    PolicyEvaluation,
    SaveResult,
    StateTransition,
)

__all__ = ["AsyncBackplane", "connect"]

T = TypeVar("T")


def connect(url: str = "memory://", *, prefix: str = "gov", cache: bool = False,
            **redis_kwargs: Any) -> AsyncBackplane:
    """An AsyncBackplane for ``url``; the schemes of ``redgov.connect``."""
    client, on_close = open_async_client(url, cache=cache, **redis_kwargs)
    return AsyncBackplane(client, prefix=prefix, on_close=on_close)


class AsyncBackplane:
    """The persistence interface over a redis.asyncio client."""

    def __init__(self, client: Any, *, prefix: str = "gov", optimistic_concurrency: bool = True,
                 on_close: Callable[[], None] | None = None) -> None:
        self.core = Core(prefix, optimistic_concurrency=optimistic_concurrency)
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
        return call.parse(reply)

    async def close(self) -> None:
        await self.client.aclose()
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
