"""Backplane: runs the core's Calls on a redis.Redis or RedisCluster client.

Each method is three steps: build the Call, run it, parse the reply. All
decisions live in ``core``; this shell only does the I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.commands.core import Script
from redis.exceptions import ResponseError

from .core import Archive, Call, Core, settle
from .errors import RedgovError
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    PolicyEvaluation,
    SaveResult,
    StateTransition,
)

if TYPE_CHECKING:
    from .cache import StateCache

__all__ = ["Backplane"]

T = TypeVar("T")


class Backplane:
    """The persistence interface over one Redis (or Cluster) client.

    ``client`` must not decode responses (the default for redis-py). Every
    write is one Lua script call; every read is one round trip. With a
    ``cache`` (``connect(..., cache=True)``), ``get_state`` is served from it;
    writes made here evict the written scope from it. The Backplane closes it.
    """

    def __init__(self, client: Any, *, prefix: str = "gov", optimistic_concurrency: bool = True,
                 archive: Archive | None = None, retain_history: int | None = None,
                 on_close: Callable[[], None] | None = None, cache: StateCache | None = None) -> None:
        self.core = Core(prefix, optimistic_concurrency=optimistic_concurrency, archive=archive,
                         retain_history=retain_history)
        self.client = client
        self._scripts: dict[str, Script] = {
            name: client.register_script(spec.text) for name, spec in self.core.specs.items()
        }
        self._on_close = on_close
        #: the local get_state cache (None: every read goes to Redis)
        self.cache = cache

    @property
    def prefix(self) -> str:
        return self.core.prefix

    def run(self, call: Call[T]) -> T:
        """Run one Call: a script through EVALSHA (reloaded after NOSCRIPT) or a command."""
        try:
            if call.script is None:
                reply = self.client.execute_command(*call.args)
            else:
                reply = self._scripts[call.script](keys=call.keys, args=call.args)
        except ResponseError as exc:
            return call.failed(exc)
        finally:
            if call.log is not None and self.cache is not None:
                self.cache.wrote(call.log)
        trim = self.core.after_write(call)
        if trim is not None:
            self.client.execute_command(*trim.args)
        return call.parse(reply)

    def run_many(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """Run Calls in one pipelined round trip (one by one on a Cluster).

        Each result is the parsed reply or the RedgovError that refused the call.
        """
        if not calls:
            return []
        if not hasattr(self.client, "pipeline") or self.client.__class__.__name__ == "RedisCluster":
            return [self._settle(call) for call in calls]
        with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                if call.script is None:
                    pipe.execute_command(*call.args)
                else:
                    self._scripts[call.script](keys=call.keys, args=call.args, client=pipe)
            try:
                replies = pipe.execute(raise_on_error=False)
            finally:
                if self.cache is not None:
                    self.cache.wrote(*(call.log for call in calls))
        return [settle(call, reply) for call, reply in zip(calls, replies)]

    def _settle(self, call: Call[Any]) -> Any:
        try:
            return self.run(call)
        except RedgovError as error:
            return error

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.client.close()
        archive_close = getattr(self.core.archive, "close", None)
        if archive_close is not None:
            archive_close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> Backplane:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Backplane prefix={self.prefix!r} client={self.client!r}>"

    # -- state --------------------------------------------------------------

    def get_state(self, experiment: str, *, tenant: str | None = None,
                  environment: str | None = None) -> ExperimentState | None:
        if self.cache is not None:
            return self.cache.get_state(self.core, experiment, tenant, environment)
        return self.run(self.core.get_state(experiment, tenant, environment))

    def save_state(self, state: ExperimentState, *, expected_etag: str | None = None) -> SaveResult:
        return self.run(self.core.save_state(state, expected_etag))

    def state_writes(self, experiment: str, *, tenant: str | None = None,
                     environment: str | None = None) -> list[ExperimentState]:
        return self.run(self.core.state_writes(experiment, tenant, environment))

    # -- history ------------------------------------------------------------

    def append_transition(self, t: StateTransition) -> StateTransition:
        return self.run(self.core.append_transition(t))

    def transitions(self, experiment: str, *, tenant: str | None = None,
                    environment: str | None = None) -> list[StateTransition]:
        return self.run(self.core.transitions(experiment, tenant, environment))

    def append_approval(self, a: ApprovalRecord) -> ApprovalRecord:
        return self.run(self.core.append_approval(a))

    def approvals(self, experiment: str, *, tenant: str | None = None,
                  environment: str | None = None) -> list[ApprovalRecord]:
        return self.run(self.core.approvals(experiment, tenant, environment))

    def approvals_for_transition(self, transition_id: str, *, tenant: str | None = None,
                                 environment: str | None = None) -> list[ApprovalRecord]:
        return self.run(self.core.approvals_for_transition(transition_id, tenant, environment))

    def append_version(self, v: ConfigurationVersion) -> ConfigurationVersion:
        return self.run(self.core.append_version(v))

    def version(self, experiment: str, number: int, *, tenant: str | None = None,
                environment: str | None = None) -> ConfigurationVersion | None:
        return self.run(self.core.version(experiment, number, tenant, environment))

    def latest_version(self, experiment: str, *, tenant: str | None = None,
                       environment: str | None = None) -> ConfigurationVersion | None:
        return self.run(self.core.latest_version(experiment, tenant, environment))

    def versions(self, experiment: str, *, tenant: str | None = None,
                 environment: str | None = None) -> list[ConfigurationVersion]:
        return self.run(self.core.versions(experiment, tenant, environment))

    def append_policy_evaluation(self, e: PolicyEvaluation) -> PolicyEvaluation:
        return self.run(self.core.append_policy_evaluation(e))

    def policy_evaluations(self, experiment: str, *, tenant: str | None = None,
                           environment: str | None = None) -> list[PolicyEvaluation]:
        return self.run(self.core.policy_evaluations(experiment, tenant, environment))

    def latest_policy_evaluation(self, experiment: str, policy: str, *, tenant: str | None = None,
                                 environment: str | None = None) -> PolicyEvaluation | None:
        return self.run(self.core.latest_policy_evaluation(experiment, policy, tenant, environment))
