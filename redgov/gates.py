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
    """The move needs ``approvals`` approvals recorded with ``Governance.approve`` before it.

    The approvals must come from distinct approvers. Unless ``self_approval`` is True, an
    approver may be neither the actor who requested the move (``Governance.request``, or
    the actor of the move into PendingApproval) nor the actor of the gated transition
    itself (SeparationOfDutiesError). The transition script checks for the approvals
    atomically, consumes them and links them to the transition
    (``ApprovalRecord.transition_id``); approvals lapse when the experiment leaves the
    state they were given in, and a rejection withdraws them.

    Args:
        to_state: the state the gated moves go to.
        from_state: the state they come from (None: any state).
        approvals: how many approvals from distinct approvers the move needs (an int >= 1).
        self_approval: whether the requester or the transition's actor may approve it.

    Raises:
        ValidationError: an unknown state, ``approvals`` not an int >= 1 (a bool is refused)
            or ``self_approval`` not a bool.
    """

    kind = "manual"
    __slots__ = ("approvals", "self_approval")

    def __init__(self, *, to_state: LifecycleState | str, from_state: LifecycleState | str | None = None,
                 approvals: int = 1, self_approval: bool = False) -> None:
        super().__init__(to_state=to_state, from_state=from_state)
        if isinstance(approvals, bool) or not isinstance(approvals, int) or approvals < 1:
            raise ValidationError(f"ManualGate approvals must be an int >= 1, got {approvals!r}")
        if not isinstance(self_approval, bool):
            raise ValidationError(f"ManualGate self_approval must be True or False, got {self_approval!r}")
        self.approvals = approvals
        self.self_approval = self_approval

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.approvals, self.self_approval)

    def __repr__(self) -> str:
        extra = "" if self.approvals == 1 else f", approvals={self.approvals}"
        extra += ", self_approval=True" if self.self_approval else ""
        shown = super().__repr__()
        return f"{shown[:-1]}{extra})"


class RoleGate(Gate):
    """Approves a move when the actor has one of ``roles``.

    The actor's roles are the transition's ``metadata["actorRole"]`` (one role name) and
    ``metadata["actorRoles"]`` (a list of role names, e.g. a logged-in web user's roles);
    when both are given, either may match. Decided in Python on the call's metadata; an
    approval record (gate, actor, role) is written with the transition, in the same
    script call.

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

    def matching_role(self, metadata: Mapping[str, Any] | None) -> str | None:
        """The first of the actor's roles (``actorRole``, then ``actorRoles``) that ``roles`` allows, else None.

        ``metadata`` is the transition's metadata; an ``actorRoles`` that is a single
        string counts as one role, one that is not a list or tuple of strings as none.
        """
        return next((role for role in _actor_roles(metadata) if role in self.roles), None)

    def decide(self, metadata: Mapping[str, Any] | None) -> tuple[bool, str]:
        """(approved, reason) for a transition's ``metadata``: approved when ``actorRole`` or one of
        ``actorRoles`` is allowed; the reason names the role that matched (or those that did not)."""
        role = self.matching_role(metadata)
        if role is not None:
            return True, f"actor role {role!r} is allowed"
        given = _actor_roles(metadata)
        allowed = ", ".join(self.roles)
        if not given:
            return False, f"no actorRole given; one of {allowed} is required"
        if len(given) == 1:
            return False, f"actor role {given[0]!r} is not one of {allowed}"
        return False, f"actor roles {', '.join(repr(r) for r in given)} are not one of {allowed}"

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.roles)

    def __repr__(self) -> str:
        roles = ", ".join(repr(r) for r in self.roles)
        source = f", from_state={self.from_state.value!r}" if self.from_state else ""
        return f"RoleGate({roles}, to_state={self.to_state.value!r}{source})"


def _actor_roles(metadata: Mapping[str, Any] | None) -> list[str]:
    """The role names of ``metadata``: ``actorRole`` first, then each of ``actorRoles``, without repeats."""
    data = metadata or {}
    found: list[Any] = [data.get("actorRole")]
    many = data.get("actorRoles")
    found.extend([many] if isinstance(many, str) else many if isinstance(many, list | tuple) else ())
    roles: list[str] = []
    for role in found:
        if isinstance(role, str) and role and role not in roles:
            roles.append(role)
    return roles
