"""Sans-IO read plans of GovernanceCore: what may happen next, listing, replay and verify."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .calls import Call, Plan, settled
from .codec import decode_state_hash, from_micros, pairs, state_fields, text
from .core import Core
from .errors import (
    CorruptDataError,
    NotFoundError,
    ValidationError,
)
from .events import GovernanceEvent, WatchCursor
from .gates import Gate, ManualGate
from .policies import Policy
from .records import (
    ExperimentState,
    LifecycleState,
    PendingMove,
    StateTransition,
)
from .rules import Rules
from .validate import check_name, check_state

__all__ = ["LIST_PAGE", "GovernanceSettings", "ReadPlans", "StateWaiter", "compare"]

#: experiments listed per round trip
LIST_PAGE = 200
#: the longest XREAD BLOCK of wait_for (cut further to fit the socket timeout and the time left)
WAIT_BLOCK_MS = 60_000


class GovernanceSettings:
    """What the plan mixins of ``GovernanceCore`` read from it (declared once, for type checkers)."""

    if TYPE_CHECKING:  # provided by GovernanceCore
        core: Core
        rules: Rules
        gates: tuple[Gate, ...]
        policies: tuple[Policy, ...]
        initial_state: LifecycleState
        auto_create: bool
        require_telemetry: bool
        telemetry_keys: tuple[str, ...]
        _window_ms: int

        def now(self) -> datetime: ...

        def _names(self, experiment: object, tenant: object,
                   environment: object) -> tuple[str, str | None, str | None]: ...


class ReadPlans(GovernanceSettings):
    """The reading half of ``GovernanceCore`` (a mixin)."""

    def allowed_transitions(self, experiment: str, *, tenant: str | None,
                            environment: str | None) -> Plan[list[LifecycleState]]:
        state = yield self.core.get_state(experiment, tenant, environment)
        if state is None:
            if not self.auto_create:
                raise NotFoundError(f"experiment {experiment} does not exist (create it first)")
            return self.rules.allowed(self.initial_state)
        return self.rules.allowed(state.state)

    def experiments(self, *, tenant: str | None, environment: str | None,
                    state: LifecycleState | str | None = None) -> Plan[list[ExperimentState]]:
        """The experiments of a scope (only those in ``state``), by name: the index read in pages."""
        wanted = None if state is None else check_state(state, "state")
        scope = self.core.scope(tenant, environment)
        out: list[ExperimentState] = []
        after = "-"
        while True:
            names = yield Call((scope.index,), ("ZRANGEBYLEX", scope.index, after, "+", "LIMIT", 0, LIST_PAGE),
                               _names_reply(scope.index))
            if not names:
                break
            keys = tuple(scope.experiment(name).state for name in names)

            def parse(reply: Any, names: list[str] = names, keys: tuple[str, ...] = keys) -> list[ExperimentState]:
                found = []
                for name, key, values in zip(names, keys, settled(keys)(reply), strict=True):
                    decoded = decode_state_hash(values, key, name, tenant, environment)
                    if decoded is not None:
                        found.append(decoded)
                return found

            page = yield Call(keys, tuple(("HMGET", key, *state_fields()) for key in keys), parse, batch=True)
            out.extend(s for s in page if wanted is None or s.state is wanted)
            if len(names) < LIST_PAGE:
                break
            after = "(" + names[-1]
        return out

    def replay(self, experiment: str, *, until: datetime | None, tenant: str | None,
               environment: str | None) -> Plan[ExperimentState | None]:
        if until is not None and (not isinstance(until, datetime) or until.tzinfo is None):
            raise ValidationError(f"until must be a timezone-aware datetime, got {until!r}")
        states = yield from self.core.state_writes(experiment, tenant, environment, until)
        return states[-1] if states else None

    def verify(self, experiment: str, *, tenant: str | None, environment: str | None) -> Plan[list[str]]:
        replayed = yield from self.replay(experiment, until=None, tenant=tenant, environment=environment)
        stored_state = yield self.core.get_state(experiment, tenant, environment)
        return compare(replayed, stored_state)


    def awaiting_approval(self, *, tenant: str | None, environment: str | None,
                          experiment: str | None = None) -> Plan[list[PendingMove]]:
        """The requested moves a ManualGate still blocks in a scope: the index read in pages, each page's
        state hashes (HGETALL: the state, its requests and approvals) pipelined with the server's TIME;
        with ``experiment``, that one's state hash alone (no index read)."""
        return (yield from self.pending(experiment, tenant=tenant, environment=environment))

    def pending(self, experiment: str | None, *, tenant: str | None, environment: str | None,
                requested_only: bool = True, satisfied: bool = False) -> Plan[list[PendingMove]]:
        """``awaiting_approval``; with ``requested_only=False`` also the gated moves nobody requested, with
        ``satisfied`` also those approved enough already (waiting to be made)."""
        if experiment is not None:
            experiment = check_name(experiment, "experiment")
        scope = self.core.scope(tenant, environment)
        manual = [g for g in self.gates if isinstance(g, ManualGate)]
        out: list[PendingMove] = []
        if not manual:
            return out
        after = "-"
        fields = [f.decode() for f in state_fields()]
        while True:
            if experiment is not None:
                names = [experiment]
            else:
                names = yield Call((scope.index,), ("ZRANGEBYLEX", scope.index, after, "+", "LIMIT", 0, LIST_PAGE),
                                   _names_reply(scope.index))
            if not names:
                break
            keys = tuple(scope.experiment(name).state for name in names)
            replies = yield Call(keys, (("TIME",), *(("HGETALL", key) for key in keys)), settled(keys), batch=True)
            now_ms = int(replies[0][0]) * 1000 + int(replies[0][1]) // 1000
            for name, key, raw in zip(names, keys, replies[1:], strict=True):
                try:
                    found = pairs(raw)
                    stored = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in found.items()
                              if k[:2] in ("p:", "q:")}
                except (ValueError, IndexError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
                    raise CorruptDataError(f"key {key} has a field that cannot be read: {exc!r}") from None
                state = decode_state_hash([found.get(f) for f in fields], key, name, tenant, environment)
                if state is None:
                    continue
                for target in sorted(self.rules.allowed(state.state), key=lambda s: s.value):
                    gate = next((g for g in manual if g.applies(state.state, target)), None)
                    if gate is None:
                        continue
                    move = f"{state.state.value}>{target.value}"
                    request = _request(stored.get(f"q:{move}", stored.get(f"q:{state.state.value}>*")), key, move)
                    if request is None and requested_only:
                        continue
                    by = request[0] if request else None
                    given = {approver for approver, until in _approvals(stored.get(f"p:{move}"), key, move)
                             if (until is None or until >= now_ms) and (gate.self_approval or approver != by)}
                    if len(given) >= gate.approvals and not satisfied:
                        continue  # approved, waiting to be consumed
                    out.append(PendingMove(experiment=name, from_state=state.state, to_state=target, gate=gate.name,
                                           state=state, tenant=tenant, environment=environment,
                                           requested_by=by or None, requested_at=request[1] if request else None,
                                           reason=request[2] if request else None, approvals_given=len(given),
                                           approvals_needed=gate.approvals))
            if experiment is not None or len(names) < LIST_PAGE:
                break
            after = "(" + names[-1]
        return out

    def waiter(self, experiment: str, states: Iterable[LifecycleState | str] | LifecycleState | str, *,
               timeout: float, tenant: str | None, environment: str | None) -> StateWaiter:
        """A StateWaiter for ``wait_for`` (validates its arguments)."""
        return StateWaiter(self, experiment, states, timeout, tenant, environment)

class StateWaiter:
    """What ``wait_for`` needs from both shells: the atomic starting point, then the watch's events.

    ``start()`` reads the state and the scope log's newest id in one script call; ``begin``
    gives the state when it is already wanted (else sets ``cursor`` to read the log from that
    id, so nothing written after the state read is missed); ``hit`` picks from a batch of
    events the first that moves the experiment into a wanted state.
    """

    def __init__(self, plans: ReadPlans, experiment: str, states: Iterable[LifecycleState | str] | LifecycleState | str,
                 timeout: float, tenant: str | None, environment: str | None) -> None:
        experiment, tenant, environment = plans._names(experiment, tenant, environment)
        if isinstance(states, (str, LifecycleState)):
            states = [states]
        wanted = frozenset(check_state(s, "states") for s in states)
        if not wanted:
            raise ValidationError("states must name at least one lifecycle state")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout < float("inf"):
            raise ValidationError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.plans, self.experiment, self.tenant, self.environment = plans, experiment, tenant, environment
        self.wanted, self.timeout = wanted, float(timeout)
        self.cursor: WatchCursor | None = None

    def start(self) -> Call[tuple[ExperimentState | None, str]]:
        """The state and the log's newest entry id, read atomically (read_wait_point.lua)."""
        scope, exp = self.plans.core.keys(self.experiment, self.tenant, self.environment)

        def parse(reply: Any) -> tuple[ExperimentState | None, str]:
            try:
                values, newest = reply[0], text(reply[1])
            except (IndexError, TypeError, UnicodeDecodeError) as exc:
                raise CorruptDataError(f"wait point of {exp.state}: unexpected reply {reply!r} ({exc!r})") from None
            return decode_state_hash(values, exp.state, self.experiment, self.tenant, self.environment), newest

        return Call((exp.state, scope.log), state_fields(), parse, "read_wait_point")

    def begin(self, point: tuple[ExperimentState | None, str], block_ms: int = WAIT_BLOCK_MS) -> ExperimentState | None:
        """The state when it is already wanted; else None, and ``cursor`` reads the log after the point."""
        state, newest = point
        if state is None and not self.plans.auto_create:
            raise NotFoundError(f"experiment {self.experiment} does not exist (create it first)")
        current = state.state if state is not None else self.plans.initial_state
        if state is not None and current in self.wanted:
            return state
        self.cursor = WatchCursor(self.plans.core, tenant=self.tenant, environment=self.environment,
                                  experiments=[self.experiment], from_id=newest, block_ms=block_ms,
                                  timeout=self.timeout)
        return None

    def hit(self, events: Iterable[GovernanceEvent]) -> GovernanceEvent | None:
        """The first event that puts the experiment in a wanted state (a transition into one, a saved state)."""
        for event in events:
            record = event.record
            if isinstance(record, StateTransition) and record.to_state in self.wanted:
                return event
            if isinstance(record, ExperimentState) and record.state in self.wanted:
                return event
        return None

    def timed_out(self, state: ExperimentState | None) -> TimeoutError:
        """The error when ``timeout`` passes first."""
        names = ", ".join(sorted(s.value for s in self.wanted))
        now = state.state.value if state is not None else "not created"
        return TimeoutError(f"experiment {self.experiment} did not reach {names} within {self.timeout:g} s "
                            f"(it was {now} when the wait began)")


def _request(raw: str | None, key: str, move: str) -> tuple[str, datetime | None, str | None] | None:
    """(requested by, at, reason) of a request field (lua/lib/history.lua); None: none, or closed."""
    if not raw:
        return None
    parts = raw.split("\t", 2)
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
        raise CorruptDataError(f"key {key} field q:{move} holds {raw[:60]!r}, expected a request")
    return parts[0], from_micros(int(parts[1])), parts[2] or None


def _approvals(raw: str | None, key: str, move: str) -> list[tuple[str, int | None]]:
    """(approver, valid until ms or None) of each open approval in a ``p:<from>><to>`` field."""
    out: list[tuple[str, int | None]] = []
    for line in (raw or "").split("\n"):
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) not in (4, 5) or (parts[2] and not (parts[2].isascii() and parts[2].isdigit())):
            raise CorruptDataError(f"key {key} field p:{move} holds {line[:60]!r}, expected an approval")
        out.append((parts[1], int(parts[2]) if parts[2] else None))
    return out


def _names_reply(key: str) -> Callable[[Any], list[str]]:
    def parse(reply: Any) -> list[str]:
        try:
            return [text(name) for name in reply]
        except (TypeError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"scope index {key} cannot be decoded: {exc!r}") from None

    return parse


def compare(replayed: ExperimentState | None, stored_state: ExperimentState | None) -> list[str]:
    """Differences between the state folded from the log and the stored state (readable lines)."""
    if replayed is None and stored_state is None:
        return []
    if replayed is None:
        return [f"the log holds no state write, but a state is stored ({stored_state.state.value}, "  # type: ignore[union-attr]
                f"revision {stored_state.revision})"]  # type: ignore[union-attr]
    if stored_state is None:
        return [f"the log ends in {replayed.state.value} (revision {replayed.revision}), but no state is stored"]
    out = []
    for name in ExperimentState.__struct_fields__:
        a, b = getattr(replayed, name), getattr(stored_state, name)
        if a != b:
            out.append(f"{name}: the log says {_show(a)}, the stored state says {_show(b)}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, LifecycleState):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)
