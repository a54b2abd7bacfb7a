"""Lifecycle rules: which state may move to which. Pure data, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import ValidationError
from .records import LifecycleState

__all__ = ["DEFAULT_RULES", "Rules"]

S = LifecycleState

#: The default lifecycle: each state -> the states it may move to; Archived is terminal. README's
#: command-line section lists it, and ``redgov transition --help`` prints it.
DEFAULT_RULES: Mapping[LifecycleState, frozenset[LifecycleState]] = {
    S.DRAFT: frozenset({S.PENDING_APPROVAL, S.ARCHIVED}),
    S.PENDING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.DRAFT}),
    S.APPROVED: frozenset({S.RUNNING, S.RAMPING, S.ARCHIVED}),
    S.RUNNING: frozenset({S.RAMPING, S.PAUSED, S.ROLLED_BACK, S.ARCHIVED}),
    S.RAMPING: frozenset({S.RUNNING, S.PAUSED, S.ROLLED_BACK, S.ARCHIVED}),
    S.PAUSED: frozenset({S.RUNNING, S.RAMPING, S.ROLLED_BACK, S.ARCHIVED}),
    S.ROLLED_BACK: frozenset({S.DRAFT, S.ARCHIVED}),
    S.REJECTED: frozenset({S.DRAFT, S.ARCHIVED}),
    S.ARCHIVED: frozenset(),
}


class Rules:
    """A transition table: from-state -> the states it may move to. Pure data, no I/O.

    ``Rules(table)``: ``table`` maps a state (a LifecycleState or its name) to the
    states it may move to; states missing from it are terminal. None gives
    ``DEFAULT_RULES`` (the default lifecycle). Raises ValidationError for an unknown
    state name. Pass it (or the mapping) as ``Governance(rules=...)``.
    """

    __slots__ = ("_allowed", "_sources")

    def __init__(self, table: Mapping[str, Iterable[str]] | None = None) -> None:
        raw = DEFAULT_RULES if table is None else table
        allowed: dict[LifecycleState, frozenset[LifecycleState]] = {s: frozenset() for s in LifecycleState}
        for source, targets in raw.items():
            allowed[_state(source, "rules")] = frozenset(_state(t, f"rules[{source}]") for t in targets)
        self._allowed = allowed
        sources: dict[LifecycleState, tuple[LifecycleState, ...]] = {}
        for target in LifecycleState:
            sources[target] = tuple(s for s in LifecycleState if target in allowed[s])
        self._sources = sources

    def allowed(self, source: LifecycleState) -> list[LifecycleState]:
        """States ``source`` may move to, in declaration order."""
        return [s for s in LifecycleState if s in self._allowed[source]]

    def sources(self, target: LifecycleState) -> tuple[LifecycleState, ...]:
        """States that may move to ``target``."""
        return self._sources[target]

    def permits(self, source: LifecycleState, target: LifecycleState) -> bool:
        """Whether the rules allow a move from ``source`` to ``target``."""
        return target in self._allowed[source]

    def reachable(self, start: LifecycleState) -> frozenset[LifecycleState]:
        """Every state reachable from ``start`` in any number of moves, ``start`` included."""
        seen = {start}
        todo = [start]
        while todo:
            for nxt in self._allowed[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return frozenset(seen)

    def as_dict(self) -> dict[str, list[str]]:
        """The table as plain data: each state's name -> the names of the states it may move to."""
        return {s.value: [t.value for t in self.allowed(s)] for s in LifecycleState}


def _state(value: object, where: str) -> LifecycleState:
    try:
        return LifecycleState(value if isinstance(value, str) else repr(value))
    except ValueError:
        names = ", ".join(s.value for s in LifecycleState)
        raise ValidationError(f"{where}: {value!r} is not one of {names}") from None
