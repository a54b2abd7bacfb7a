"""Backplane: runs the core's Calls and plans on a redis.Redis or RedisCluster client.

Each method builds a Call (or a plan of several) in ``core``, runs it and
returns the parsed result. All decisions live in ``core``; this shell only does
the I/O: EVALSHA through redis-py's ``Script`` (reloaded after NOSCRIPT), the
client's own retries, the ACL preflight once per scope, and on a Cluster the
wait for a migrating slot to settle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.exceptions import ClusterError, ResponseError, TryAgainError
from redis.retry import Retry

from .core import Archive, Call, Core, Plan, settle
from .errors import AccessDeniedError, RedgovError, UnavailableError
from .keys import Scope
from .records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    PolicyEvaluation,
    SaveResult,
    StateTransition,
)

from .cache import MISS

if TYPE_CHECKING:
    from .cache import StateCache

__all__ = ["Backplane"]

T = TypeVar("T")

#: How long a call waits for a Cluster slot that is being migrated (TRYAGAIN) before giving up:
#: about this many seconds, in SLOT_RETRIES re-sends backing off up to half a second.
SLOT_SETTLE_SECONDS = 10.0
SLOT_RETRIES = 24
_PROBE = "~acl-probe"


def slot_retry() -> Retry:
    """The retry of calls refused while a Cluster slot moves (about SLOT_SETTLE_SECONDS in all)."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.02), SLOT_RETRIES, supported_errors=(TryAgainError, ClusterError))


def slot_moving(error: Exception) -> bool:
    return isinstance(error, TryAgainError) or "TTL exhausted" in str(error) or "TRYAGAIN" in str(error)


def socket_timeout(client: Any) -> float | None:
    """The client's socket timeout in seconds (None: unknown or none)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None) or {}
    value = kwargs.get("socket_timeout")
    return float(value) if value else None


def access_probe(core: Core, scope: Scope) -> Call[None]:
    """The ACL preflight of a scope: every command redgov runs on each kind of its keys."""
    exp = scope.experiment(_PROBE)
    keys = exp.standard[:3] + (scope.ops(),) + exp.standard[3:] + (exp.idempotency("probe"), exp.lease())

    def parse(reply: Any) -> None:
        refused = reply.decode() if isinstance(reply, bytes) else str(reply)
        if refused:
            raise AccessDeniedError(
                f"the ACL of this user does not allow {refused} (prefix {core.prefix!r}); grant the commands of "
                f"redgov's ACL line on ~{core.prefix}* (see README, Least privilege); nothing was written")

    return Call(keys, (), parse, "check_access")


class Backplane:
    """The persistence interface (the seed's) over one Redis or Redis Cluster client.

    ``client`` is a ``redis.Redis`` or ``redis.cluster.RedisCluster`` created with
    ``decode_responses=False`` (redis-py's default). Every write is one Lua script
    call that checks, writes and indexes atomically, and is applied at most once
    however often the client re-sends it (its ``Retry`` included). Every read is
    one round trip, or pages of them for a history. ``prefix`` starts every key.

    Other arguments: ``optimistic_concurrency=False`` makes ``save_state``
    last-writer-wins; ``retain_history=N`` keeps about the newest N history
    entries of each experiment; ``archive`` (``redgov.sql.SqlArchive``) reads
    history removed from Redis; ``cache`` (made by ``connect(cache=True)``) serves
    ``get_state``. Closing the Backplane closes the client, cache and archive.
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
        self._cluster = type(client).__name__ == "RedisCluster"
        self._on_close = on_close
        #: the socket timeout: blocking reads (watch) are cut to fit in it
        self.socket_timeout = socket_timeout(client)
        #: the local get_state cache (None: every read goes to Redis)
        self.cache = cache

    @property
    def prefix(self) -> str:
        """The key prefix: every key this Backplane writes starts with it."""
        return self.core.prefix

    # -- running calls --------------------------------------------------------------

    def _send(self, call: Call[Any]) -> Any:
        if call.batch:
            if not call.args:
                return []
            with self.client.pipeline(transaction=False) as pipe:
                for command in call.args:
                    pipe.execute_command(*command)
                return pipe.execute(raise_on_error=False)
        if call.script is None:
            return self.client.execute_command(*call.args)
        return self._scripts[call.script](keys=call.keys, args=call.args)

    def _execute(self, call: Call[Any]) -> Any:
        if not self._cluster:
            return self._send(call)
        return slot_retry().call_with_retry(lambda: self._send(call), lambda _error: None, is_retryable=slot_moving)

    def run(self, call: Call[T]) -> T:
        """Run one Call: a script through EVALSHA or a plain command; returns its parsed result.

        Refusals come back as RedgovErrors (mapped in ``errors``); connection and
        timeout errors propagate after the client's retries. On a Cluster a call
        refused while its slot migrates is sent again until the slot settles
        (``UnavailableError`` after about 10 s).
        """
        if call.scope is not None:
            self._check_access(call)
        try:
            reply = self._execute(call)
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

    def _check_access(self, call: Call[Any]) -> None:
        """Once per scope: the ACL allows every command a write may run there (before its first write)."""
        scope = call.scope
        if scope is None or scope.tag in self.core.checked_scopes:
            return
        probe = access_probe(self.core, scope)
        try:
            reply = self._execute(probe)
        except ResponseError as exc:
            probe.failed(exc)
        else:
            probe.parse(reply)
        self.core.checked_scopes.add(scope.tag)

    def drive(self, plan: Plan[T]) -> T:
        """Run a plan: each Call it yields on Redis, each ArchiveRead on the SQL copy, until it returns."""
        try:
            step = next(plan)
            while True:
                try:
                    result = self.run(step) if isinstance(step, Call) else step.run()
                except BaseException as exc:  # the plan sees the failure where it yielded
                    step = plan.throw(exc)
                else:
                    step = plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def run_many(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """Run Calls in one pipelined round trip (one by one on a Cluster).

        Each result is the parsed reply or the RedgovError that refused the call.
        """
        if not calls:
            return []
        if self._cluster or not hasattr(self.client, "pipeline"):
            return [self._settle(call) for call in calls]
        for call in calls:
            self._check_access(call)
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
                    self.cache.wrote(*(call.state_key for call in calls))
        return [settle(call, reply) for call, reply in zip(calls, replies)]

    def _settle(self, call: Call[Any]) -> Any:
        try:
            return self.run(call)
        except RedgovError as error:
            return error

    def close(self) -> None:
        """Close the client, the cache and the archive (and release an embedded server)."""
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
        extras = ""
        if self.core.retain_history:
            extras += f" retain_history={self.core.retain_history}"
        if self.cache is not None:
            extras += " cache=on"
        if self.core.archive is not None:
            extras += f" archive={self.core.archive!r}"
        return f"<Backplane prefix={self.prefix!r} client={_describe(self.client)}{extras}>"

    # -- state ----------------------------------------------------------------------

    def get_state(self, experiment: str, *, tenant: str | None = None,
                  environment: str | None = None) -> ExperimentState | None:
        """The experiment's current state, or None when it has none. One round trip (or a cache hit).

        Raises ValidationError for a bad name, CorruptDataError when the stored state cannot be decoded.
        """
        cache = self.cache
        if cache is None:
            return self.run(self.core.get_state(experiment, tenant, environment))
        scope, exp = self.core.keys(experiment, tenant, environment)
        found = cache.lookup(exp.state)
        if found is not MISS:
            return found  # type: ignore[no-any-return]
        fetch = cache.begin(exp.state, scope.state_prefix)
        try:
            state = self.run(self.core.get_state(experiment, tenant, environment))
        except BaseException:
            cache.abandon(fetch)
            raise
        cache.finish(fetch, state)
        return state

    def save_state(self, state: ExperimentState, *, expected_etag: str | None = None) -> SaveResult:
        """Write the experiment's state: create only (``expected_etag=None``), or compare-and-set.

        Atomic (save_state.lua): the etag check, the state write (revision + 1, a new
        etag), the snapshot appended to the log. The caller's ``revision`` and ``etag``
        are ignored. A conflict (it exists; the etag changed) is
        ``SaveResult(ok=False, conflict=True, error=...)``, not an exception.
        Raises ValidationError for bad input (nothing written).
        """
        return self.run(self.core.save_state(state, expected_etag))

    def state_writes(self, experiment: str, *, tenant: str | None = None,
                     environment: str | None = None) -> list[ExperimentState]:
        """Every state the experiment has had, folded from its log entries (from the retention cut on,
        unless an archive gives the rest). Read in pages."""
        return self.drive(self.core.state_writes(experiment, tenant, environment))

    # -- history ----------------------------------------------------------------------

    def append_transition(self, t: StateTransition) -> StateTransition:
        """Append a transition to the history (the state is not written). Atomic; exactly once.

        Raises ConflictError when a transition with its ``transition_id`` was appended before.
        """
        return self.run(self.core.append_transition(t))

    def transitions(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                    limit: int | None = None, newest_first: bool = False) -> list[StateTransition]:
        """The experiment's transitions in the order written (``newest_first`` reverses it), at most
        ``limit``. Read in pages of bounded server time."""
        return self.drive(self.core.transitions(experiment, tenant, environment, limit=limit,
                                                newest_first=newest_first))

    def append_approval(self, a: ApprovalRecord) -> ApprovalRecord:
        """Append an approval to the history; with ``transition_id`` it is linked to that transition."""
        return self.run(self.core.append_approval(a))

    def approvals(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                  limit: int | None = None, newest_first: bool = False) -> list[ApprovalRecord]:
        """The experiment's approvals in the order written (each with the transition that used it)."""
        return self.drive(self.core.approvals(experiment, tenant, environment, limit=limit,
                                              newest_first=newest_first))

    def approvals_for_transition(self, transition_id: str, *, tenant: str | None = None,
                                 environment: str | None = None) -> list[ApprovalRecord]:
        """The approvals linked to a transition (the gates it passed, the approval it consumed)."""
        return self.drive(self.core.approvals_for_transition(transition_id, tenant, environment))

    def append_version(self, v: ConfigurationVersion) -> ConfigurationVersion:
        """Append an immutable configuration version. Raises ConflictError when the number exists."""
        return self.run(self.core.append_version(v))

    def version(self, experiment: str, number: int, *, tenant: str | None = None,
                environment: str | None = None) -> ConfigurationVersion | None:
        """Version ``number`` of the experiment, or None. O(log N): a sorted-set lookup."""
        return self.drive(self.core.version(experiment, number, tenant, environment))

    def latest_version(self, experiment: str, *, tenant: str | None = None,
                       environment: str | None = None) -> ConfigurationVersion | None:
        """The highest-numbered version, or None. O(log N), never a scan."""
        return self.drive(self.core.latest_version(experiment, tenant, environment))

    def versions(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                 limit: int | None = None, newest_first: bool = False) -> list[ConfigurationVersion]:
        """The experiment's versions by number, ascending (``newest_first``: descending), at most ``limit``."""
        return self.drive(self.core.versions(experiment, tenant, environment, limit=limit,
                                             newest_first=newest_first))

    def append_policy_evaluation(self, e: PolicyEvaluation) -> PolicyEvaluation:
        """Append a policy evaluation; it becomes its policy's latest."""
        return self.run(self.core.append_policy_evaluation(e))

    def policy_evaluations(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                           limit: int | None = None, newest_first: bool = False) -> list[PolicyEvaluation]:
        """The experiment's policy evaluations in the order written, at most ``limit``."""
        return self.drive(self.core.policy_evaluations(experiment, tenant, environment, limit=limit,
                                                       newest_first=newest_first))

    def latest_policy_evaluation(self, experiment: str, policy: str, *, tenant: str | None = None,
                                 environment: str | None = None) -> PolicyEvaluation | None:
        """The latest evaluation of ``policy``, or None. O(1): a hash lookup, never a scan."""
        return self.drive(self.core.latest_policy_evaluation(experiment, policy, tenant, environment))


def _describe(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    if "host" in kwargs:
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return type(client).__name__

