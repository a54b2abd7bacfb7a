"""Sans-IO read plans of GovernanceCore: what may happen next, listing, replay and verify."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .calls import Call, Plan, settled
from .codec import decode_state_hash, state_fields, text
from .core import Core
from .errors import (
    CorruptDataError,
    NotFoundError,
    ValidationError,
)
from .policies import Policy
from .records import (
    ExperimentState,
    LifecycleState,
)
from .rules import Rules
from .validate import check_state

__all__ = ["LIST_PAGE", "GovernanceSettings", "ReadPlans", "compare"]

#: experiments listed per round trip
LIST_PAGE = 200


class GovernanceSettings:
    """What the plan mixins of ``GovernanceCore`` read from it (declared once, for type checkers)."""

    if TYPE_CHECKING:  # provided by GovernanceCore
        core: Core
        rules: Rules
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
                for name, key, values in zip(names, keys, settled(keys)(reply)):
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
