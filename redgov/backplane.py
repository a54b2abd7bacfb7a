"""Backplane: runs the core's Calls and plans on a redis.Redis or RedisCluster client.

Each method builds a Call (or a plan of several) in ``core``, runs it and
returns the parsed result. All decisions live in ``core``; this shell only does
the I/O: EVALSHA through redis-py's ``Script`` (reloaded after NOSCRIPT), the
client's own retries, the ACL preflight once per scope, on a Cluster the wait
for a migrating slot to settle, and with ``wait_replicas``/``wait_aof`` the
``WAIT``/``WAITAOF`` sent after each write on the write's own connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.exceptions import ClusterError, NoScriptError, ResponseError, TryAgainError
from redis.retry import Retry

from .cache import MISS
from .core import Archive, Call, Core, Plan, settle
from .durability import (
    aof_refusal,
    confirm,
    describe_write,
    durable_results,
    evalsha,
    hello_failed,
    init_durability,
    weakest,
)
from .errors import AccessDeniedError, DurabilityError, RedgovError, UnavailableError
from .keys import Scope
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

#: How long a call waits for a Cluster slot that is being migrated (TRYAGAIN) before giving up:
#: about this many seconds, in SLOT_RETRIES re-sends backing off up to half a second.
SLOT_SETTLE_SECONDS = 10.0
SLOT_RETRIES = 24
_PROBE = "~acl-probe"


def slot_retry() -> Retry:
    """The retry of calls refused while a Cluster slot moves (about SLOT_SETTLE_SECONDS in all)."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.02), SLOT_RETRIES, supported_errors=(TryAgainError, ClusterError))


def slot_moving(error: Exception) -> bool:
    """Whether ``error`` says a Cluster slot is being migrated (TRYAGAIN), so the call may be sent again."""
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
    keys = exp.write_keys(scope.ops()) + (exp.idempotency("probe"), exp.lease())

    def parse(reply: Any) -> None:
        refused = reply.decode() if isinstance(reply, bytes) else str(reply)
        if refused:
            raise AccessDeniedError(
                f"the ACL of this user does not allow {refused} (prefix {core.prefix!r}); grant the commands of "
                f"redgov's ACL line on ~{core.prefix}* (see README, Least privilege); nothing was written")

    return Call(keys, (), parse, "check_access")


def init_shell(shell: Any, client: Any, *, prefix: str, optimistic_concurrency: bool, archive: Archive | None,
               retain_history: int | None, cache: StateCache | None, wait_replicas: int = 0,
               wait_timeout: float = 1.0, wait_aof: bool = False) -> None:
    """What Backplane and AsyncBackplane set up alike: the core, the client, the socket timeout, the cache,
    the durability settings (``init_durability``)."""
    shell.core = Core(prefix, optimistic_concurrency=optimistic_concurrency, archive=archive,
                      retain_history=retain_history)
    shell.client = client
    shell._cluster = type(client).__name__ == "RedisCluster"
    #: the socket timeout: blocking reads (watch) are cut to fit in it
    shell.socket_timeout = socket_timeout(client)
    init_durability(shell, client, wait_replicas, wait_timeout, wait_aof)
    #: the local get_state cache (None: every read goes to Redis)
    shell.cache = cache


class Backplane:
    """The persistence interface (the seed's) over one Redis or Redis Cluster client.

    ``Backplane(client, prefix="gov")`` wraps an existing client; ``redgov.connect(url)``
    makes one from a URL. Arguments:

    - ``client``: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` created with
      ``decode_responses=False`` (redis-py's default); its ``Retry`` may re-send.
    - ``prefix``: starts every key, literally (no ``{`` or ``}``), so
      ``ACL ... ~<prefix>*`` covers this installation only.
    - ``optimistic_concurrency``: False makes ``save_state`` last-writer-wins.
    - ``archive``: where history removed from Redis is read (``redgov.sql.SqlArchive``).
    - ``retain_history``: keep about the newest N history entries of each experiment
      (None: everything).
    - ``on_close``: called once after ``close`` closed the client (connect uses it
      to release an embedded server).
    - ``cache``: a ``StateCache`` serving ``get_state`` (made by ``connect(cache=True)``).
    - ``wait_replicas``: after each write, wait (Redis ``WAIT``, on the write's own
      connection, in the write's round trip) until that many replicas confirmed it;
      0 (the default) sends nothing more. Fewer within ``wait_timeout`` raises
      ``DurabilityError``: the write IS applied on the primary (not undone).
    - ``wait_timeout``: the most seconds each write waits for them (default 1.0; at
      most half the client's socket timeout).
    - ``wait_aof``: True sends ``WAITAOF 1 <wait_replicas> <ms>`` instead: the primary
      and the replicas must have fsynced the write to their append-only files. Needs
      Redis >= 7.2: on an older server the first write raises ValidationError before
      anything is sent (``connect`` asks the server at once).

    Atomicity: every write is one Lua script call that checks, writes and indexes
    all or nothing, and is applied at most once however often it is re-sent (the
    client's ``Retry`` included): a re-send returns the first application's result.
    Every read of one record is one round trip; a history read is fetched in pages
    of bounded server time, which are not one atomic snapshot. The scope of every
    method is ``tenant`` + ``environment`` (None is a scope part of its own).

    Errors: refusals are ``RedgovError`` subclasses (ConflictError, ValidationError,
    CorruptDataError, AccessDeniedError, UnavailableError, ...); connection and
    timeout errors propagate as redis-py raised them, after the client's retries.
    With ``wait_replicas``/``wait_aof``, a write that too few replicas confirmed raises
    ``DurabilityError`` carrying its result (see ``run``, ``run_many``, ``drive``).
    The constructor sends nothing; it raises ValidationError for a bad ``prefix``,
    ``retain_history``, ``wait_replicas``, ``wait_timeout`` or ``wait_aof``, and for
    durability asked of a fakeredis or Cluster client. Closing the Backplane (``close`` or ``with``) closes the
    client, cache and archive.
    """

    # set by init_shell (shared with AsyncBackplane):
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
                 on_close: Callable[[], None] | None = None, cache: StateCache | None = None,
                 wait_replicas: int = 0, wait_timeout: float = 1.0, wait_aof: bool = False) -> None:
        init_shell(self, client, prefix=prefix, optimistic_concurrency=optimistic_concurrency, archive=archive,
                   retain_history=retain_history, cache=cache, wait_replicas=wait_replicas,
                   wait_timeout=wait_timeout, wait_aof=wait_aof)
        self._scripts: dict[str, Script] = {
            name: client.register_script(spec.text) for name, spec in self.core.specs.items()
        }
        self._on_close = on_close

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
        """Run one ``call`` (a core Call): a script through EVALSHA or a plain command; returns its parsed result.

        Refusals come back as RedgovErrors (mapped in ``errors``); connection and
        timeout errors propagate after the client's retries. On a Cluster a call
        refused while its slot migrates is sent again until the slot settles
        (``UnavailableError`` after about 10 s).

        A write (a call with a ``scope``) on a Backplane with ``wait_replicas`` or
        ``wait_aof`` is pipelined with ``WAIT``/``WAITAOF`` on one connection (one round
        trip); when too few confirmed it, ``DurabilityError`` is raised with the parsed
        result as ``result`` (the write is applied). A refused write raises its refusal
        as usual, whatever the WAIT said.
        """
        if call.scope is not None:
            self._check_access(call)
            if self._wait is not None:
                return self._run_durable(call, self._wait)
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

    def _run_durable(self, call: Call[T], wait: tuple[Any, ...]) -> T:
        """``run`` for a write followed by WAIT/WAITAOF (never on a Cluster: refused when set up)."""
        if not self._aof_checked:
            self._check_aof()
        try:
            reply, ack = self._send_durable(call, wait)
        except ResponseError as exc:
            return call.failed(exc)
        finally:
            if call.state_key is not None and self.cache is not None:
                self.cache.wrote(call.state_key)
        result = call.parse(reply)
        confirm(self, describe_write(call), ack, result)
        return result

    def _send_durable(self, call: Call[Any], wait: tuple[Any, ...]) -> tuple[Any, Any]:
        """The write and the WAIT in one non-transactional pipeline (one connection); (reply, WAIT reply).

        The script goes as a raw EVALSHA (no SCRIPT EXISTS round trip); after NOSCRIPT it is
        loaded and the pair sent once more. A refused write's error is raised.
        """
        script = self._scripts[call.script] if call.script is not None else None
        command = evalsha(script, call) if script is not None else call.args
        for _attempt in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command)
                pipe.execute_command(*wait)
                reply, ack = pipe.execute(raise_on_error=False)
            if script is None or not isinstance(reply, NoScriptError):
                break
            script.sha = self.client.script_load(script.script)
            command = evalsha(script, call)
        if isinstance(reply, ResponseError):
            raise reply
        return reply, ack

    def _check_aof(self) -> None:
        """``wait_aof=True``: refuse a server older than Redis 7.2 (one HELLO, before the first write)."""
        try:
            hello = self.client.execute_command("HELLO")
        except ResponseError as exc:
            raise hello_failed(exc) from exc
        refusal = aof_refusal(hello)
        if refusal is not None:
            raise refusal
        self._aof_checked = True

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
        """Run a ``plan`` (a generator of core steps) to its end and return its result.

        Each Call it yields runs on Redis (``run``), each ArchiveRead on the SQL copy;
        a failure is thrown into the plan where it yielded. Not atomic as a whole:
        each step is its own round trip. With ``wait_replicas``/``wait_aof`` each write
        step waits for its replicas; a write step they did not confirm is applied, so
        the plan goes on with its result, and ``DurabilityError`` is raised at the end
        with the plan's result as ``result``.
        """
        unconfirmed: list[DurabilityError] = []
        try:
            step = next(plan)
            while True:
                try:
                    result = self.run(step) if isinstance(step, Call) else step.run()
                except DurabilityError as exc:  # applied on the primary: the plan goes on with its result
                    unconfirmed.append(exc)
                    step = plan.send(exc.result)
                except BaseException as exc:  # the plan sees the failure where it yielded
                    step = plan.throw(exc)
                else:
                    step = plan.send(result)
        except StopIteration as stop:
            if unconfirmed:
                raise weakest(unconfirmed, stop.value) from unconfirmed[-1]
            return stop.value  # type: ignore[no-any-return]

    def run_many(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """Run ``calls`` in one pipelined round trip (one by one on a Cluster); results in their order.

        Each call is atomic on its own (its script); the batch is not: each succeeds or
        fails by itself. Each result is the parsed reply or the RedgovError that
        refused the call (returned, not raised).

        With ``wait_replicas``/``wait_aof`` one ``WAIT``/``WAITAOF`` ends the pipeline
        (it covers every write before it on that connection); when too few replicas
        confirmed, ``DurabilityError`` is raised with ``result`` = the list this method
        would have returned (the writes in it are applied). No WAIT is sent for a batch
        without writes, nor checked when every write in it was refused.
        """
        if not calls:
            return []
        if self._cluster or not hasattr(self.client, "pipeline"):
            results = [self._settle(call) for call in calls]
            return results if self._wait is None else durable_results(results)
        for call in calls:
            self._check_access(call)
        wait = self._wait if self._wait is not None and any(call.scope is not None for call in calls) else None
        if wait is not None and not self._aof_checked:
            self._check_aof()
        with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                if call.script is None:
                    pipe.execute_command(*call.args)
                else:
                    self._scripts[call.script](keys=call.keys, args=call.args, client=pipe)
            if wait is not None:
                pipe.execute_command(*wait)
            try:
                replies = pipe.execute(raise_on_error=False)
            finally:
                if self.cache is not None:
                    self.cache.wrote(*(call.state_key for call in calls))
        results = [settle(call, reply) for call, reply in zip(calls, replies, strict=False)]
        if wait is not None and any(call.scope is not None and not isinstance(reply, ResponseError)
                                    for call, reply in zip(calls, replies, strict=False)):
            confirm(self, f"a batch of {len(calls)} calls (run_many)", replies[-1], results)
        return results

    def _settle(self, call: Call[Any]) -> Any:
        try:
            return self.run(call)
        except RedgovError as error:  # a DurabilityError too: run_many raises it for the batch
            return error

    def close(self) -> None:
        """Close the client, the cache and the archive, then call ``on_close`` (an embedded server is released).

        The Backplane cannot be used afterwards. ``with backplane:`` closes it on exit.
        """
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
        return backplane_repr(self)

    # -- state ----------------------------------------------------------------------

    def get_state(self, experiment: str, *, tenant: str | None = None,
                  environment: str | None = None) -> ExperimentState | None:
        """The current state of ``experiment`` in the scope ``tenant`` + ``environment``, or None when it has none.

        One HMGET round trip (a consistent read of the state hash), or a hit of the
        ``connect(cache=True)`` cache, never older than its ``cache_max_age``.
        Raises ValidationError for a bad name, CorruptDataError when the stored state
        cannot be decoded, AccessDeniedError when the ACL refuses the read.
        """
        cache = self.cache
        if cache is None:
            return self.run(self.core.get_state(experiment, tenant, environment))
        scope, exp = self.core.keys(experiment, tenant, environment)
        found = cache.lookup(exp.state)
        if found is not MISS:
            return found
        fetch = cache.begin(exp.state, scope.state_prefix)
        try:
            state = self.run(self.core.get_state(experiment, tenant, environment))
        except BaseException:
            cache.abandon(fetch)
            raise
        cache.finish(fetch, state)
        return state

    def save_state(self, state: ExperimentState, *, expected_etag: str | None = None) -> SaveResult:
        """Write ``state`` as its experiment's current state: create only, or compare-and-set.

        ``state`` names the experiment and scope (its ``experiment``, ``tenant``,
        ``environment``); its ``revision`` and ``etag`` are ignored: the write sets
        revision + 1 and a new etag. ``expected_etag=None`` creates only (a conflict
        when the experiment exists); an etag writes only if the stored etag is still
        that one. With ``optimistic_concurrency=False`` neither is checked (last writer
        wins).

        Atomic: one Lua script call (save_state.lua), all or nothing: the etag check,
        the state write, the snapshot appended to the log and the history, the scope
        index, retention. Applied once however often re-sent.

        Returns a ``SaveResult``: ``ok=True`` with the stored state and its etag, or on a
        conflict ``ok=False, conflict=True, error=<message>`` (not an exception).
        Raises ValidationError (not an ExperimentState, an empty ``expected_etag``, a
        bad name, ``config_version`` < 0), CorruptDataError, AccessDeniedError; nothing
        is written when it raises.
        """
        return self.run(self.core.save_state(state, expected_etag))

    def state_writes(self, experiment: str, *, tenant: str | None = None,
                     environment: str | None = None) -> list[ExperimentState]:
        """Every state ``experiment`` (in ``tenant`` + ``environment``) has had, oldest first.

        Folded from its state-writing log entries (state writes, transitions, followed
        versions). Redis holds them from the retention cut on (the state at the cut
        comes first); with an archive the older ones are read from the SQL copy.
        Read in pages of bounded server time, not one atomic snapshot: a write made
        during the read may or may not be included. Raises ValidationError,
        CorruptDataError.
        """
        return self.drive(self.core.state_writes(experiment, tenant, environment))

    # -- history ----------------------------------------------------------------------

    def append_transition(self, t: StateTransition) -> StateTransition:
        """Append transition ``t`` to its experiment's history without writing the state (the seed's interface).

        ``t`` names the experiment and scope. Nothing is checked against the rules or
        gates: ``Governance.transition`` is the checked move that also writes the state.
        Atomic: one Lua script call (append_transition.lua), all or nothing (the log
        entry, the history index, the scope index, retention), applied once however
        often re-sent. Returns ``t`` with ``revision`` 0 and ``etag`` "" (no state was
        written). Raises ConflictError when a transition with ``t.transition_id`` was
        already appended (or written by ``create``) in the scope, ValidationError for a
        bad record, CorruptDataError, AccessDeniedError.
        """
        return self.run(self.core.append_transition(t))

    def transitions(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                    limit: int | None = None, newest_first: bool = False) -> list[StateTransition]:
        """The transitions of ``experiment`` (in ``tenant`` + ``environment``) in the order written.

        ``newest_first=True`` reverses the order; ``limit`` returns at most that many
        (from the chosen end; None: all). Read in pages (each two pipelined round trips
        of plain commands, well under a millisecond of server time), so the result is
        not one atomic snapshot: a transition written during the read may or may not
        be included. With an archive, entries removed from Redis come from the SQL
        copy. Raises ValidationError (a bad name; ``limit`` neither None nor an
        integer from 0), CorruptDataError.
        """
        return self.drive(self.core.transitions(experiment, tenant, environment, limit=limit,
                                                newest_first=newest_first))

    def append_approval(self, a: ApprovalRecord) -> ApprovalRecord:
        """Append approval ``a`` to its experiment's history (the seed's interface); returns ``a``.

        With ``a.transition_id`` it is linked to that transition
        (``approvals_for_transition``). History only: a ManualGate is satisfied by
        ``Governance.approve``, not by this. Atomic: one Lua script call
        (append_approval.lua), all or nothing, applied once however often re-sent.
        Raises ValidationError for a bad record, CorruptDataError, AccessDeniedError.
        """
        return self.run(self.core.append_approval(a))

    def approvals(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                  limit: int | None = None, newest_first: bool = False) -> list[ApprovalRecord]:
        """The approvals of ``experiment`` (in ``tenant`` + ``environment``) in the order written.

        Each carries the ``transition_id`` of the transition that consumed it, when one
        did. ``newest_first`` and ``limit`` as in ``transitions``; read in pages the
        same way (not one atomic snapshot; archived entries from the SQL copy).
        Raises ValidationError, CorruptDataError.
        """
        return self.drive(self.core.approvals(experiment, tenant, environment, limit=limit,
                                              newest_first=newest_first))

    def approvals_for_transition(self, transition_id: str, *, tenant: str | None = None,
                                 environment: str | None = None) -> list[ApprovalRecord]:
        """The approvals linked to the transition ``transition_id`` in the scope ``tenant`` + ``environment``.

        Those are the RoleGate approvals it wrote, the manual approval it consumed and
        approvals appended with its id, in the order linked, each with
        ``transition_id`` set. One script call (read_linked.lua, an atomic read); with
        an archive, from the SQL copy when Redis no longer holds them. Raises
        ValidationError, CorruptDataError.
        """
        return self.drive(self.core.approvals_for_transition(transition_id, tenant, environment))

    def append_version(self, v: ConfigurationVersion) -> ConfigurationVersion:
        """Append the immutable configuration version ``v`` under its own number (the seed's interface).

        ``v`` names the experiment, scope and ``version`` number (1 to 2**53 - 1). The
        state's ``config_version`` is not changed (``Governance.create_version`` numbers
        and follows versions). Atomic: one Lua script call (append_version.lua), all or
        nothing, applied once however often re-sent. Returns ``v``. Raises ConflictError
        when that number exists (or is not above the highest one retention removed),
        ValidationError, CorruptDataError, AccessDeniedError.
        """
        return self.run(self.core.append_version(v))

    def version(self, experiment: str, number: int, *, tenant: str | None = None,
                environment: str | None = None) -> ConfigurationVersion | None:
        """Version ``number`` of ``experiment`` (in ``tenant`` + ``environment``), or None when it has none.

        One script call (read_versions.lua): a sorted-set lookup, O(log N); with an
        archive, the SQL copy is asked when Redis no longer holds it. Raises
        ValidationError (``number`` not an integer, a bad name), CorruptDataError.
        """
        return self.drive(self.core.version(experiment, number, tenant, environment))

    def latest_version(self, experiment: str, *, tenant: str | None = None,
                       environment: str | None = None) -> ConfigurationVersion | None:
        """The highest-numbered version of ``experiment`` (in ``tenant`` + ``environment``), or None.

        One script call (read_versions.lua): O(log N), never a scan; with an archive
        the SQL copy's highest is compared too. Raises ValidationError, CorruptDataError.
        """
        return self.drive(self.core.latest_version(experiment, tenant, environment))

    def versions(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                 limit: int | None = None, newest_first: bool = False) -> list[ConfigurationVersion]:
        """The versions of ``experiment`` (in ``tenant`` + ``environment``) by number, ascending.

        ``newest_first=True`` gives them descending; ``limit`` at most that many (None:
        all). Read in pages of bounded server time, not one atomic snapshot; with an
        archive the versions removed from Redis are merged in from the SQL copy.
        Raises ValidationError, CorruptDataError.
        """
        return self.drive(self.core.versions(experiment, tenant, environment, limit=limit,
                                             newest_first=newest_first))

    def append_policy_evaluation(self, e: PolicyEvaluation) -> PolicyEvaluation:
        """Append the policy evaluation ``e`` to its experiment's history; it becomes its policy's latest.

        Atomic: one Lua script call (append_policy_evaluation.lua), all or nothing,
        applied once however often re-sent. Returns ``e``. Raises ValidationError (a bad
        record or policy name), CorruptDataError, AccessDeniedError.
        """
        return self.run(self.core.append_policy_evaluation(e))

    def policy_evaluations(self, experiment: str, *, tenant: str | None = None, environment: str | None = None,
                           limit: int | None = None, newest_first: bool = False) -> list[PolicyEvaluation]:
        """The policy evaluations of ``experiment`` (in ``tenant`` + ``environment``) in the order written.

        ``newest_first`` and ``limit`` as in ``transitions``; read in pages the same way
        (not one atomic snapshot; archived entries from the SQL copy). Raises
        ValidationError, CorruptDataError.
        """
        return self.drive(self.core.policy_evaluations(experiment, tenant, environment, limit=limit,
                                                       newest_first=newest_first))

    def latest_policy_evaluation(self, experiment: str, policy: str, *, tenant: str | None = None,
                                 environment: str | None = None) -> PolicyEvaluation | None:
        """The latest evaluation of ``policy`` for ``experiment`` (in ``tenant`` + ``environment``), or None.

        One script call (read_entry.lua): O(1), a hash lookup, never a scan; with an
        archive, the SQL copy is asked when Redis holds none. Raises ValidationError,
        CorruptDataError.
        """
        return self.drive(self.core.latest_policy_evaluation(experiment, policy, tenant, environment))


def _shorten(text: str, most: int) -> str:
    return text if len(text) <= most else "\u2026" + text[-(most - 1):]


def describe_client(client: Any) -> str:
    """A short description of a redis-py client for reprs (at most 48 characters, no pool dump).

    ``host:port/db`` (``rediss://`` first for TLS), ``unix:<path>``, ``memory`` for
    fakeredis, ``cluster host:port`` for a Cluster (its first startup node), else the
    client's class name.
    """
    if type(client).__module__.split(".")[0] == "fakeredis":
        return "memory"
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if "path" in kwargs:
        text = f"unix:{kwargs['path']}"
    elif "host" in kwargs:
        tls = "SSL" in getattr(getattr(pool, "connection_class", None), "__name__", "")
        text = f"{'rediss://' if tls else ''}{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    else:
        nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None) or {}
        first = next(iter(nodes), None)
        text = type(client).__name__ if first is None else f"cluster {first}"
    return _shorten(text, 48)


def backplane_repr(backplane: Any) -> str:
    """``<Backplane prefix='gov' client=127.0.0.1:6379/0 ...>``: the prefix, the client, what is on."""
    core = backplane.core
    extras = ""
    if core.retain_history:
        extras += f" retain_history={core.retain_history}"
    if backplane.cache is not None:
        extras += " cache=on"
    if backplane._wait is not None:
        extras += f" wait_replicas={backplane.wait_replicas}" + (" wait_aof" if backplane.wait_aof else "")
    if core.archive is not None:
        extras += f" archive={_shorten(repr(core.archive), 40)}"
    return f"<{type(backplane).__name__} prefix={_shorten(repr(backplane.prefix), 40)} " \
           f"client={describe_client(backplane.client)}{extras}>"

