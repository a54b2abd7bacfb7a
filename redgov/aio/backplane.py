"""``AsyncBackplane``: the Backplane operations awaited on a redis.asyncio client."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import ClusterError, NoScriptError, ResponseError, TryAgainError

from ..backplane import (
    SLOT_SETTLE_SECONDS,
    access_probe,
    backplane_repr,
    init_shell,
    slot_moving,
)
from ..cache import MISS, StateCache
from ..core import Archive, Call, Core, Plan, settle
from ..durability import (
    aof_refusal,
    confirm,
    describe_write,
    durable_results,
    evalsha,
    hello_failed,
    weakest,
)
from ..embedded import EmbeddedServer
from ..errors import DurabilityError, RedgovError, UnavailableError
from ..records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    PolicyEvaluation,
    SaveResult,
    StateTransition,
)

__all__ = ["AsyncBackplane"]

T = TypeVar("T")


class AsyncBackplane:
    """The persistence interface over a ``redis.asyncio`` client: every Backplane method, as a coroutine.

    Arguments as ``redgov.Backplane``: ``client`` (a ``redis.asyncio.Redis`` or
    ``redis.asyncio.cluster.RedisCluster``, ``decode_responses=False``), ``prefix``,
    ``optimistic_concurrency``, ``archive``, ``retain_history``, ``cache``,
    ``wait_replicas``, ``wait_timeout`` and ``wait_aof`` (after each write, WAIT or
    WAITAOF on the write's connection in its round trip; too few confirmations raise
    ``DurabilityError``, the write being applied; ``wait_aof`` on a server older than
    Redis 7.2 raises ValidationError at the first write, before it is sent); and
    ``server``, the EmbeddedServer behind an embedded:// client (started in a thread
    by the first call, released by ``close``). Made by ``redgov.aio.connect``.

    The same scripts as the sync Backplane, so the same atomicity: each write one Lua
    script call, all or nothing, applied once however often re-sent; history reads
    in pages, not one atomic snapshot. The same errors. Blocking work (SQL archive
    reads, the embedded server's start and stop) runs in a worker thread, never on
    the event loop. ``async with`` closes it.
    """

    # set by init_shell (shared with Backplane):
    core: Core
    client: Any
    cache: StateCache | None
    socket_timeout: float | None
    wait_replicas: int
    wait_timeout: float
    wait_aof: bool
    _cluster: bool
    _wait: tuple[Any, ...] | None
    _aof_checked: bool

    def __init__(self, client: Any, *, prefix: str = "gov", optimistic_concurrency: bool = True,
                 archive: Archive | None = None, retain_history: int | None = None,
                 cache: StateCache | None = None, server: EmbeddedServer | None = None,
                 wait_replicas: int = 0, wait_timeout: float = 1.0, wait_aof: bool = False) -> None:
        init_shell(self, client, prefix=prefix, optimistic_concurrency=optimistic_concurrency, archive=archive,
                   retain_history=retain_history, cache=cache, wait_replicas=wait_replicas,
                   wait_timeout=wait_timeout, wait_aof=wait_aof)
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(spec.text) for name, spec in self.core.specs.items()
        }
        self._server = server
        self._server_open = False
        self._opening = asyncio.Lock()

    @property
    def prefix(self) -> str:
        """The key prefix: every key this backplane writes starts with it."""
        return self.core.prefix

    # -- running calls ----------------------------------------------------------------

    async def _ready(self) -> None:
        """Start the embedded server behind the client, once, however many first calls run at once."""
        if self._server is None or self._server_open:
            return
        async with self._opening:
            if not self._server_open:
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
        (``UnavailableError`` after about 10 s). With ``wait_replicas``/``wait_aof`` a
        write is pipelined with WAIT/WAITAOF and raises ``DurabilityError`` (carrying
        its result; the write is applied) when too few confirmed it.
        """
        if call.scope is not None:
            await self._check_access(call)
            if self._wait is not None:
                return await self._run_durable(call, self._wait)
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

    async def _run_durable(self, call: Call[T], wait: tuple[Any, ...]) -> T:
        """``run`` for a write followed by WAIT/WAITAOF (never on a Cluster: refused when set up)."""
        await self._ready()
        if not self._aof_checked:
            await self._check_aof()
        try:
            reply, ack = await self._send_durable(call, wait)
        except ResponseError as exc:
            return call.failed(exc)
        finally:
            if call.state_key is not None and self.cache is not None:
                self.cache.wrote(call.state_key)
        result = call.parse(reply)
        confirm(self, describe_write(call), ack, result)
        return result

    async def _send_durable(self, call: Call[Any], wait: tuple[Any, ...]) -> tuple[Any, Any]:
        """The write and the WAIT in one non-transactional pipeline (one connection); (reply, WAIT reply)."""
        script = self._scripts[call.script] if call.script is not None else None
        command = evalsha(script, call) if script is not None else call.args
        for _attempt in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command)
                pipe.execute_command(*wait)
                reply, ack = await pipe.execute(raise_on_error=False)
            if script is None or not isinstance(reply, NoScriptError):
                break
            script.sha = await self.client.script_load(script.script)
            command = evalsha(script, call)
        if isinstance(reply, ResponseError):
            raise reply
        return reply, ack

    async def _check_aof(self) -> None:
        """``wait_aof=True``: refuse a server older than Redis 7.2 (one HELLO, before the first write)."""
        try:
            hello = await self.client.execute_command("HELLO")
        except ResponseError as exc:
            raise hello_failed(exc) from exc
        refusal = aof_refusal(hello)
        if refusal is not None:
            raise refusal
        self._aof_checked = True

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
        is thrown into the plan where it yielded. Not atomic as a whole. A write step
        its replicas did not confirm (``wait_replicas``/``wait_aof``) is applied: the
        plan goes on with its result and ``DurabilityError`` is raised at the end with
        the plan's result, as in ``Backplane.drive``.
        """
        unconfirmed: list[DurabilityError] = []
        try:
            step = next(plan)
            while True:
                try:
                    if isinstance(step, Call):
                        result = await self.run(step)
                    else:
                        result = await asyncio.to_thread(step.run)
                except DurabilityError as exc:  # applied on the primary: the plan goes on with its result
                    unconfirmed.append(exc)
                    step = plan.send(exc.result)
                except BaseException as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(result)
        except StopIteration as stop:
            if unconfirmed:
                raise weakest(unconfirmed, stop.value) from unconfirmed[-1]
            return stop.value  # type: ignore[no-any-return]

    async def run_many(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """Run ``calls`` in one pipelined round trip (one by one on a Cluster); results in their order.

        Each call is atomic on its own, the batch is not; each result is the parsed reply or
        the RedgovError that refused it (returned, not raised). With ``wait_replicas`` or
        ``wait_aof`` one WAIT/WAITAOF ends the pipeline; too few confirmations raise
        ``DurabilityError`` with ``result`` = the list of results (the writes are applied).
        """
        if not calls:
            return []
        await self._ready()  # a batch of reads may be the first thing sent to an embedded server
        if self._cluster:
            results = [await self._settle(call) for call in calls]
            return results if self._wait is None else durable_results(results)
        for call in calls:
            await self._check_access(call)
        wait = self._wait if self._wait is not None and any(call.scope is not None for call in calls) else None
        if wait is not None:
            if not self._aof_checked:
                await self._check_aof()
        async with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                if call.script is None:
                    pipe.execute_command(*call.args)
                else:
                    await self._scripts[call.script](keys=call.keys, args=call.args, client=pipe)
            if wait is not None:
                pipe.execute_command(*wait)
            try:
                replies = await pipe.execute(raise_on_error=False)
            finally:
                if self.cache is not None:
                    self.cache.wrote(*(call.state_key for call in calls))
        results = [settle(call, reply) for call, reply in zip(calls, replies, strict=False)]
        if wait is not None and any(call.scope is not None and not isinstance(reply, ResponseError)
                                    for call, reply in zip(calls, replies, strict=False)):
            confirm(self, f"a batch of {len(calls)} calls (run_many)", replies[-1], results)
        return results

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
            return found
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
