"""Approval gates: which moves need whose approval. Pure logic, no I/O.

A gate applies to moves into ``to_state`` from ``from_state`` (None: from
any state). What a gate decides that depends only on the call (an actor's
role) is decided in Python; a ManualGate is settled inside the transition
script, which consumes the recorded approval.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from .errors import ValidationError
from .records import LifecycleState
from .validate import check_state

__all__ = ["AutomaticGate", "Gate", "ManualGate", "RoleGate"]


class Gate:
    """A rule of whose approval a move needs: it applies to moves into ``to_state`` from ``from_state``.

    Args:
        to_state: the state the gated moves go to (a LifecycleState or its name).
        from_state: the state they come from (None: any state).

    Raises:
        ValidationError: an unknown state name.
    """

    kind = "gate"
    __slots__ = ("from_state", "to_state")

    def __init__(self, *, to_state: LifecycleState | str, from_state: LifecycleState | str | None = None) -> None:
        self.to_state = check_state(to_state, f"{type(self).__name__}.to_state")
        self.from_state = None if from_state is None else check_state(from_state, f"{type(self).__name__}.from_state")

    def applies(self, source: LifecycleState, target: LifecycleState) -> bool:
        """Whether the gate applies to the move from ``source`` to ``target``."""
        return target is self.to_state and (self.from_state is None or self.from_state is source)

    @property
    def name(self) -> str:
        """The gate's name in approval records: ``<kind>:<from or *>-><to>``."""
        source = self.from_state.value if self.from_state else "*"
        return f"{self.kind}:{source}->{self.to_state.value}"

    def _key(self) -> tuple[Any, ...]:
        return (type(self), self.from_state, self.to_state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Gate) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        source = f", from_state={self.from_state.value!r}" if self.from_state else ""
        return f"{type(self).__name__}(to_state={self.to_state.value!r}{source})"


class AutomaticGate(Gate):
    """Approves every move it applies to, at once or once the experiment has waited ``after``.

    Without ``after`` nothing is recorded. With ``after`` the move is refused with
    ApprovalRequiredError (saying when it becomes allowed) until the experiment has been in
    its current state for that long, judged inside the transition script from when it
    entered that state (the Governance ``clock``'s time of that transition) — the seed's
    ``autoApproveAfter``.

    Args:
        to_state: the state the gated moves go to.
        from_state: the state they come from (None: any state).
        after: how long the experiment must have been in its current state (a timedelta
            >= 0; None: no wait).

    Raises:
        ValidationError: an unknown state, or ``after`` not a non-negative timedelta.
    """

    kind = "automatic"
    __slots__ = ("after",)

    def __init__(self, *, to_state: LifecycleState | str, from_state: LifecycleState | str | None = None,
                 after: timedelta | None = None) -> None:
        super().__init__(to_state=to_state, from_state=from_state)
        if after is not None and (not isinstance(after, timedelta) or after < timedelta(0)):
            raise ValidationError(f"AutomaticGate after must be a timedelta >= 0 or None, got {after!r}")
        self.after = after if after else None

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.after)

    def __repr__(self) -> str:
        shown = super().__repr__()
        return shown if self.after is None else f"{shown[:-1]}, after={self.after!r})"


class ManualGate(Gate):
    """The move needs an approval recorded with ``Governance.approve`` before it.

    The transition script checks for it atomically, consumes it and links it to the
    transition (``ApprovalRecord.transition_id``); approvals lapse when the experiment
    leaves the state they were given in, and a rejection withdraws one.

    Args:
        to_state: the state the gated moves go to.
        from_state: the state they come from (None: any state).
    """

    kind = "manual"
    __slots__ = ()


class RoleGate(Gate):
    """Approves a move when the transition's ``metadata["actorRole"]`` is one of ``roles``.

    Decided in Python on the call's metadata; an approval record (gate, actor, role) is
    written with the transition, in the same script call.

    Args:
        roles: the allowed roles (one or more non-empty strings).
        to_state: the state the gated moves go to.
        from_state: the state they come from (None: any state).

    Raises:
        ValidationError: no role, or a role that is not a non-empty string.
    """

    kind = "roleBased"
    __slots__ = ("roles",)

    def __init__(self, *roles: str, to_state: LifecycleState | str,
                 from_state: LifecycleState | str | None = None) -> None:
        super().__init__(to_state=to_state, from_state=from_state)
        if not roles:
            raise ValidationError("RoleGate needs at least one role")
        for role in roles:
            if not isinstance(role, str) or not role:
                raise ValidationError(f"RoleGate roles must be non-empty strings, got {role!r}")
        self.roles: tuple[str, ...] = tuple(roles)

    def decide(self, metadata: Mapping[str, Any] | None) -> tuple[bool, str]:
        """(approved, reason) for a transition's ``metadata`` (its ``actorRole``)."""
        role = (metadata or {}).get("actorRole")
        if role in self.roles:
            return True, f"actor role {role!r} is allowed"
        allowed = ", ".join(self.roles)
        if role is None:
            return False, f"no actorRole given; one of {allowed} is required"
        return False, f"actor role {role!r} is not one of {allowed}"

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.roles)

    def __repr__(self) -> str:
        roles = ", ".join(repr(r) for r in self.roles)
        source = f", from_state={self.from_state.value!r}" if self.from_state else ""
        return f"RoleGate({roles}, to_state={self.to_state.value!r}{source})"
