"""What each route of the JSON API does (``api.ENDPOINTS`` declares them): plain functions of the
checked request (``Asked``), run in Starlette's thread pool, returning what is sent as JSON.

Writes go through ``WebContext.act`` (timed and counted in the metrics) with the authenticated
user as actor, requester or approver, and a transition with the user's roles as metadata (``User.metadata``:
``actorRole`` and ``actorRoles``, what RoleGates read; a body's ``actorRole``, ``actorRoles`` or
``metadata`` is never read); reads of one experiment answer NotFoundError (404) when it does not
exist in the scope asked for; lists cover every scope of the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from starlette.requests import Request

from ..errors import NotFoundError, ValidationError
from ..validate import check_state
from .users import User

if TYPE_CHECKING:
    from .app import WebContext

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Asked",
    "allowed_transitions",
    "approve",
    "awaiting_approval",
    "create_version",
    "get_approvals",
    "get_diff",
    "get_evaluations",
    "get_experiment",
    "get_history",
    "get_versions",
    "list_experiments",
    "reject",
    "request_move",
    "rollback",
    "transition",
    "whoami",
]

DEFAULT_LIMIT, MAX_LIMIT = 50, 1000


class ScopeArgs(TypedDict):
    tenant: str | None
    environment: str | None


@dataclass
class Asked:
    """One API request, checked: the user, the experiment named in the path, the scope, the body."""

    ctx: WebContext
    request: Request
    user: User | None
    name: str
    tenant: str | None
    environment: str | None
    body: dict[str, Any]

    @property
    def scope(self) -> ScopeArgs:
        return {"tenant": self.tenant, "environment": self.environment}

    def query(self, key: str) -> str | None:
        return self.request.query_params.get(key) or None


# -- helpers ---------------------------------------------------------------------------------


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ValidationError(f"{key} must be a string, got {type(value).__name__} {value!r}")


def _required(body: dict[str, Any], key: str) -> Any:
    if body.get(key) is None:
        raise ValidationError(f"the body needs {key!r}")
    return body[key]


def _mapping(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise ValidationError(f"{key} must be a JSON object, got {type(value).__name__}")


def _integer(value: Any, what: str, least: int = 1, most: int = 2**53 - 1) -> int:
    digits = value.strip().lstrip("-") if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ValidationError(f"{what} must be an integer from {least} to {most}, got {value!r}")
    return value


def _seconds(value: Any, what: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 10**9:
        raise ValidationError(f"{what} must be a number of seconds > 0, got {value!r}")
    return timedelta(seconds=value)


def _page(asked: Asked) -> dict[str, Any]:
    """``limit`` (default 50, at most 1000) and ``order`` (``newest``, the default, or ``oldest``)."""
    limit = _integer(asked.query("limit") or DEFAULT_LIMIT, "limit", 1, MAX_LIMIT)
    order = asked.query("order") or "newest"
    if order not in ("newest", "oldest"):
        raise ValidationError(f"order must be newest or oldest, got {order!r}")
    return {"limit": limit, "newest_first": order == "newest"}


def _where(asked: Asked) -> dict[str, Any]:
    return {"experiment": asked.name, "tenant": asked.tenant, "environment": asked.environment}


def _existing(asked: Asked) -> Any:
    state = asked.ctx.governance.state(asked.name, **asked.scope)
    if state is None:
        where = ", ".join(f"{k} {v}" for k, v in asked.scope.items() if v is not None) or "the default scope"
        raise NotFoundError(f"experiment {asked.name} does not exist ({where})")
    return state


def _scopes(asked: Asked) -> list[tuple[str | None, str | None]]:
    """Every scope with a log (and the default one), filtered by ``?tenant=`` and ``?environment=``."""
    tenant, environment = asked.query("tenant"), asked.query("environment")
    found = {(None, None)} | {(s.tenant, s.environment) for s in asked.ctx.scopes()}
    chosen = [s for s in found if (tenant is None or s[0] == tenant) and (environment is None or s[1] == environment)]
    return sorted(chosen, key=lambda s: (s[0] is not None, s[0] or "", s[1] is not None, s[1] or ""))


# -- the routes' work (each runs in the thread pool) -----------------------------------------


def list_experiments(asked: Asked) -> list[dict[str, Any]]:
    state = asked.query("state")
    wanted = check_state(state) if state else None
    rows = []
    for tenant, environment in _scopes(asked):
        for s in asked.ctx.governance.experiments(tenant=tenant, environment=environment, state=wanted):
            rows.append({"experiment": s.experiment, "tenant": s.tenant, "environment": s.environment,
                         "state": s.state.value})
    return rows


def awaiting_approval(asked: Asked) -> list[Any]:
    moves: list[Any] = []
    for tenant, environment in _scopes(asked):
        moves += asked.ctx.governance.awaiting_approval(tenant=tenant, environment=environment)
    return moves


def get_experiment(asked: Asked) -> Any:
    return _existing(asked)


def allowed_transitions(asked: Asked) -> dict[str, Any]:
    state = _existing(asked)
    allowed = asked.ctx.governance.allowed_transitions(asked.name, **asked.scope)
    return {**_where(asked), "state": state.state, "allowed_transitions": allowed}


def get_lease(asked: Asked) -> dict[str, Any]:
    state = _existing(asked)
    return {**_where(asked), "state": state.state,
            "lease": asked.ctx.governance.current_lease(asked.name, **asked.scope)}


def get_history(asked: Asked) -> dict[str, Any]:
    state = _existing(asked)
    found = asked.ctx.governance.history(asked.name, **asked.scope, **_page(asked))
    return {**_where(asked), "state": state.state, "transitions": found}


def get_versions(asked: Asked) -> dict[str, Any]:
    state = _existing(asked)
    found = asked.ctx.governance.backplane.versions(asked.name, **asked.scope, **_page(asked))
    return {**_where(asked), "state": state.state, "config_version": state.config_version, "versions": found}


def get_diff(asked: Asked) -> dict[str, Any]:
    first = _integer(asked.query("from"), "from")
    second = _integer(asked.query("to"), "to")
    changes = asked.ctx.governance.diff(asked.name, first, second, **asked.scope)
    return {**_where(asked), "from": first, "to": second, "changes": changes}


def get_approvals(asked: Asked) -> dict[str, Any]:
    state = _existing(asked)
    found = asked.ctx.governance.backplane.approvals(asked.name, **asked.scope, **_page(asked))
    return {**_where(asked), "state": state.state, "approvals": found}


def get_evaluations(asked: Asked) -> dict[str, Any]:
    state = _existing(asked)
    found = asked.ctx.governance.backplane.policy_evaluations(asked.name, **asked.scope, **_page(asked))
    return {**_where(asked), "state": state.state, "evaluations": found}


def whoami(asked: Asked) -> dict[str, Any]:
    assert asked.user is not None
    return {"user": asked.user.name, "role": asked.user.role.label}


def transition(asked: Asked) -> Any:
    b, gov, user = asked.body, asked.ctx.governance, asked.user
    assert user is not None
    to = _required(b, "to")
    return asked.ctx.act("transition", lambda: gov.transition(
        asked.name, to, actor=user.name, reason=_text(b, "reason"), telemetry=_mapping(b, "telemetry"),
        metadata=user.metadata,  # the roles from the users file (as the pages record them), never the body's
        expected_etag=_text(b, "expected_etag"), idempotency_key=_text(b, "idempotency_key"), **asked.scope))


def request_move(asked: Asked) -> Any:
    """Ask for a gated move (``Governance.request``): the requester is the user, who then may not
    approve it (four eyes); answers the PendingMove as the inbox shows it."""
    b, gov, user = asked.body, asked.ctx.governance, asked.user
    assert user is not None
    to = _required(b, "to")
    return asked.ctx.act("request", lambda: gov.request(
        asked.name, to, actor=user.name, reason=_text(b, "reason"), idempotency_key=_text(b, "idempotency_key"),
        **asked.scope))


def _decide(asked: Asked, approved: bool) -> Any:
    b, gov, user = asked.body, asked.ctx.governance, asked.user
    assert user is not None
    to = _required(b, "to")
    valid_for = _seconds(b.get("valid_for"), "valid_for") if approved else None
    return asked.ctx.act("approve" if approved else "reject", lambda: gov.approve(
        asked.name, to, approver=user.name, reason=_text(b, "reason"), approved=approved, valid_for=valid_for,
        idempotency_key=_text(b, "idempotency_key"), **asked.scope))


def approve(asked: Asked) -> Any:
    return _decide(asked, True)


def reject(asked: Asked) -> Any:
    return _decide(asked, False)


def create_version(asked: Asked) -> Any:
    b, gov, user = asked.body, asked.ctx.governance, asked.user
    assert user is not None
    configuration = _mapping(b, "configuration")
    if configuration is None:
        raise ValidationError("the body needs 'configuration' (a JSON object)")
    return asked.ctx.act("create_version", lambda: gov.create_version(
        asked.name, configuration, actor=user.name, description=_text(b, "description"),
        idempotency_key=_text(b, "idempotency_key"), **asked.scope))


def rollback(asked: Asked) -> Any:
    b, gov, user = asked.body, asked.ctx.governance, asked.user
    assert user is not None
    number = _integer(_required(b, "to_version"), "to_version")
    return asked.ctx.act("rollback", lambda: gov.rollback(
        asked.name, number, actor=user.name, idempotency_key=_text(b, "idempotency_key"), **asked.scope))
