"""The HTML pages of ``redgov serve``: the experiments, one experiment, the approval inbox, the audit log.

Every page needs a login (viewer and up); every POST the CSRF token and, for its action, the role:
approver to approve or reject, operator to transition, request a gated move, create a version or roll
back. The actor, requester or approver recorded is the logged-in user; a transition carries the
user's roles from the users file as metadata (``actorRole``, ``actorRoles``: what RoleGates read),
never a field of the form. A refusal of the library (any RedgovError) is shown on the page in
``[data-testid=error]`` with its message (status 409) and nothing is changed; a success redirects
(303) back to the page with a notice, so a reload never posts twice.

Four eyes: the library refuses an approval by the move's requester and a move by one of its
approvers (SeparationOfDutiesError); the inbox and the experiment page say so first (the Approve
button disabled with the reason), and a forced POST shows the library's refusal. The rules, gates
and policies shown are those governing the experiment's scope (its published rules, when the server
follows them), read with the scope's ``awaiting_approval``.

Names and scopes come from the path and the query string only: an experiment is
``/experiments/<percent-encoded name>?tenant=&environment=`` (``/experiments/?name=`` for the
names ``.`` and ``..``, which a browser would fold away), and the name is only ever a lookup key
(autoescaped in every page; it never reaches the filesystem or the routing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..errors import NotFoundError, RedgovError, RulesMismatchError, ValidationError
from ..gates import ManualGate
from ..keys import Scope
from ..records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    PendingMove,
    PolicyEvaluation,
    RulesVersion,
    StateTransition,
)
from ..validate import check_scope_part
from . import auth
from .app import WebContext, scope_of
from .auditlog import KINDS, AuditEntry, parse_scope_token, read_audit, scope_token
from .users import Role, User

__all__ = ["experiment_url", "routes"]

#: history entries per page of the experiment page
HISTORY_PAGE = 20
#: the deepest history page shown (the newest 5,000 moves; older ones: the audit page or the API)
HISTORY_PAGES = 250
#: experiments per page of the list (the counts by state cover every page)
LIST_ROWS = 100
#: audit entries per page
AUDIT_PAGE = 50
#: approvals, policy evaluations and versions shown on the experiment page (newest)
RECENT = 20
VERSIONS_SHOWN = 100
STATES = [s.value for s in LifecycleState]
#: what each POST action of the experiment page needs
ACTION_ROLES = {"transition": Role.OPERATOR, "request": Role.OPERATOR, "version": Role.OPERATOR,
                "rollback": Role.OPERATOR, "approve": Role.APPROVER, "reject": Role.APPROVER}

_log = logging.getLogger(__name__)


# -- URLs and small formatting helpers (also Jinja globals and filters) ------------------------

def experiment_url(name: str, tenant: str | None = None, environment: str | None = None, **params: Any) -> str:
    """The page of experiment ``name`` in a scope; ``params`` are added to the query (None left out)."""
    query: dict[str, Any] = {}
    if name in (".", ".."):  # a dot segment: browsers and clients fold it, so it goes in the query
        path = "/experiments/"
        query["name"] = name
    else:
        path = "/experiments/" + quote(name, safe="")
    if tenant:
        query["tenant"] = tenant
    if environment:
        query["environment"] = environment
    query.update({k: v for k, v in params.items() if v is not None})
    return path + ("?" + urlencode(query) if query else "")


def url_with(path: str, **params: Any) -> str:
    """``path`` with the query ``params`` (None and "" left out)."""
    query = {k: v for k, v in params.items() if v is not None and v != ""}
    return path + ("?" + urlencode(query) if query else "")


def events_url(scope: tuple[str | None, str | None] | None = None, experiment: str | None = None,
               **parts: str | None) -> str:
    """The live feed (``GET /events``) of one scope (both parts given; an empty value is the default
    scope's None), optionally one experiment; ``parts`` narrows by ``tenant`` or ``environment`` alone."""
    query: dict[str, str] = {}
    if scope is not None:
        query = {"tenant": scope[0] or "", "environment": scope[1] or ""}
    query.update({k: v for k, v in parts.items() if v is not None})
    if experiment is not None:
        query["experiment"] = experiment
    return "/events" + ("?" + urlencode(query) if query else "")


def dom_id(*parts: Any) -> str:
    """A stable element id for a row of a page (so a live refresh puts what was typed back in the same row)."""
    return "r" + hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def when(value: datetime | None) -> str:
    """A time as ``2024-05-01 12:34:56 UTC`` (None: an em dash)."""
    if value is None:
        return "\u2014"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def waited(since: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``since`` was, in words: ``under a minute``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``
    (None: an em dash)."""
    if since is None:
        return "\u2014"
    minutes = max(0, int(((now or datetime.now(UTC)) - since).total_seconds() // 60))
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def scope_label(tenant: str | None, environment: str | None) -> str:
    """How a scope is written on the pages: ``tenant / environment``, ``default`` for a None part."""
    return f"{tenant if tenant is not None else 'default'} / {environment if environment is not None else 'default'}"


def pretty(value: Any) -> str:
    """A JSON value as indented text (for configurations and metadata)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def compact(value: Any) -> str:
    """A JSON value on one line."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """The leaves of a configuration by path (``rollout.steps[2].percent``, as ``Governance.diff`` names them)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{path}[{i}]"))
        return out
    return {path or "(root)": value}


# -- request helpers -------------------------------------------------------------------------

def _scope(request: Request) -> tuple[str | None, str | None]:
    try:
        return scope_of(request)
    except ValidationError as exc:
        raise HTTPException(400, str(exc)) from None


def _name(request: Request) -> str:
    name = request.path_params.get("name") or request.query_params.get("name") or ""
    if not name or name.isspace():
        raise HTTPException(404, "no experiment named in the address")
    return str(name)


def _page_number(request: Request, field: str = "page") -> int:
    raw = request.query_params.get(field, "1")
    try:
        page = int(raw)
    except ValueError:
        raise HTTPException(400, f"{field} must be a whole number, got {raw!r}") from None
    if not 1 <= page <= 100_000:
        raise HTTPException(400, f"{field} must be from 1 to 100000, got {page}")
    return page


def _here(request: Request) -> str:
    """The path and query of the request (what a page refreshes itself from)."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _flash(request: Request, text: str) -> None:
    request.session["flash"] = text[:500]


def _take_flash(request: Request) -> str | None:
    """The notice a POST left for the page it redirected to (taken once). A live refresh (an htmx GET
    of the ``#live`` region, ``HX-Target: live``) leaves it: the notice is outside that region, and the
    refresh may come between the POST and the redirected page's GET."""
    if request.headers.get("hx-target") == "live":
        return None
    value = request.session.pop("flash", None)
    return value if isinstance(value, str) else None


def _form_text(form: Any, field: str, most: int = 4000) -> str | None:
    value = form.get(field)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:most]


def _all_scopes(ctx: WebContext) -> list[Scope]:
    """Every scope with a log, and the default scope (first) even when it has none yet. A scope whose
    tenant or environment the library refuses now (a name stored before invisible characters were refused)
    is left out with a warning in the log: it cannot be read by name, and one such scope must not take
    the pages of every other down."""
    default = Scope(ctx.governance.backplane.prefix, None, None)
    out = [default]
    for scope in ctx.scopes():
        if scope == default:
            continue
        try:
            check_scope_part(scope.tenant, "tenant")
            check_scope_part(scope.environment, "environment")
        except ValidationError as refused:
            _log.warning("scope %r left out of the pages: %s", scope.tag, refused)
            continue
        out.append(scope)
    return out


def _chosen_scope(request: Request) -> tuple[str | None, tuple[str | None, str | None] | None]:
    """The ``scope`` filter of a list page: its token and its (tenant, environment), both None for
    every scope; 400 for a token that names no scope."""
    chosen = request.query_params.get("scope") or None
    chosen_scope = parse_scope_token(chosen) if chosen else None
    if chosen and chosen_scope is None:
        raise HTTPException(400, f"scope {chosen!r} is not a scope of this installation")
    return chosen, chosen_scope


def _safe_back(value: Any) -> str | None:
    """A local page to return to after a POST (the inbox or an experiment page), else None."""
    if isinstance(value, str) and value.startswith(("/approvals", "/experiments/")) and "\\" not in value \
            and "//" not in value and "\n" not in value and "\r" not in value:
        return value
    return None


# -- page data -------------------------------------------------------------------------------

def experiments_context(ctx: WebContext, request: Request) -> dict[str, Any]:
    """The list page: every scope's experiments, filtered by scope, state and name."""
    q = request.query_params
    scopes = _all_scopes(ctx)
    chosen, chosen_scope = _chosen_scope(request)
    tenant, environment = _scope(request)
    state = q.get("state") or None
    if state is not None and state not in STATES:
        raise HTTPException(400, f"state {state!r} is not one of {', '.join(STATES)}")
    text = (q.get("q") or "").strip()
    rows: list[ExperimentState] = []
    for scope in scopes:
        if chosen_scope is not None and (scope.tenant, scope.environment) != chosen_scope:
            continue
        if (tenant is not None and scope.tenant != tenant
                or environment is not None and scope.environment != environment):
            continue
        rows.extend(ctx.experiments(scope.tenant, scope.environment))
    if text:
        rows = [r for r in rows if text.casefold() in r.experiment.casefold()]
    counts = {s: 0 for s in STATES}
    for row in rows:
        counts[row.state.value] += 1
    if state is not None:
        rows = [r for r in rows if r.state.value == state]
    rows.sort(key=lambda r: (r.experiment, r.tenant or "", r.environment or ""))
    page = _page_number(request)
    shown = rows[(page - 1) * LIST_ROWS: page * LIST_ROWS]
    kept = {k: v for k, v in q.items() if k != "page"}
    return {"rows": shown, "total": len(rows), "first": (page - 1) * LIST_ROWS + 1, "page": page,
            "newer": url_with("/", **kept, page=page - 1 if page > 2 else None) if page > 1 else None,
            "older": url_with("/", **kept, page=page + 1) if len(rows) > page * LIST_ROWS else None,
            "counts": counts, "scopes": scopes, "chosen": chosen, "state": state, "q": text,
            "events": events_url(chosen_scope, tenant=tenant, environment=environment)}


def experiment_context(ctx: WebContext, request: Request, user: User, name: str, tenant: str | None,
                       environment: str | None) -> dict[str, Any]:
    """The experiment page: its state, the moves it may make now, history, versions, approvals, policies."""
    gov = ctx.governance
    bp = gov.backplane
    state = gov.state(name, tenant=tenant, environment=environment)
    if state is None:
        raise HTTPException(404, f"there is no experiment {name!r} in scope {scope_label(tenant, environment)}")
    page = _page_number(request)
    if page > HISTORY_PAGES:
        raise HTTPException(400, f"page {page}: the history pages go to {HISTORY_PAGES} (the newest "
                                 f"{HISTORY_PAGES * HISTORY_PAGE} moves); older ones are on the audit page and at "
                                 "GET /api/experiments/<name>/history?order=oldest")
    newest = bp.transitions(name, tenant=tenant, environment=environment, limit=page * HISTORY_PAGE + 1,
                            newest_first=True)
    history = newest[(page - 1) * HISTORY_PAGE: page * HISTORY_PAGE]
    approvals = bp.approvals(name, tenant=tenant, environment=environment, limit=RECENT, newest_first=True)
    published = gov.published_rules(tenant=tenant, environment=environment)
    mismatch = None
    try:
        awaiting = {m.to_state: m for m in gov.awaiting_approval(tenant=tenant, environment=environment,
                                                                 experiment=name)}
    except RulesMismatchError as exc:  # the server's own definition is not the scope's published one
        awaiting, mismatch = {}, str(exc)
    view = _view(ctx, tenant, environment)
    approval_rows = _approval_rows(approvals, state)
    # approvals this user gave that still wait for their move (four eyes: they may not make it)
    mine = {r["record"].to_state for r in approval_rows
            if r["record"].approver == user.name and r["status"] == "waiting"}
    moves = []
    # gov.allowed_transitions(name) reads the state again; the rules applied to the state shown are the same
    for target in view.rules.allowed(state.state):
        gates = [g for g in view.gates if g.applies(state.state, target)]
        manual = next((g for g in gates if isinstance(g, ManualGate)), None)
        pending = awaiting.get(target)
        moves.append({"to": target.value, "gates": [g.name for g in gates], "manual": manual is not None,
                      "awaiting": pending is not None, "pending": pending,
                      "not_yours": None if pending is None else _may_not_approve(view, pending, user),
                      "approved_by_you": manual is not None and not manual.self_approval and target in mine})
    versions = bp.versions(name, tenant=tenant, environment=environment, limit=VERSIONS_SHOWN, newest_first=True)
    evaluations = bp.policy_evaluations(name, tenant=tenant, environment=environment, limit=RECENT,
                                        newest_first=True)
    url = experiment_url(name, tenant, environment)
    return {
        "name": name, "tenant": tenant, "environment": environment, "state": state, "moves": moves,
        "history": history, "page": page, "has_older": len(newest) > page * HISTORY_PAGE,
        "versions": versions, "approvals": approval_rows,
        "evaluations": evaluations, "diff": _diff(ctx, request, name, tenant, environment),
        "lease": gov.current_lease(name, tenant=tenant, environment=environment),
        "telemetry_keys": list(view.telemetry_keys),
        "gates": [g.name for g in view.gates], "policies": view.policies,
        "published": published, "mismatch": mismatch, "now": datetime.now(UTC),
        "url": url, "events": events_url((tenant, environment), name),
        "can_operate": user.may(Role.OPERATOR), "can_approve": user.may(Role.APPROVER),
    }


def _view(ctx: WebContext, tenant: str | None, environment: str | None) -> Any:
    """The rules, gates and policies that govern a scope: its published rules when this server follows
    them (as the last read of the scope found them), else the server's own definition."""
    core = ctx.governance.core
    return core.cached_view(tenant, environment) or core


def _may_not_approve(view: Any, move: PendingMove, user: User) -> str | None:
    """Why ``user`` may not approve ``move`` (four eyes: they asked for it), None when they may.

    The library refuses such an approval anyway (SeparationOfDutiesError); this only says so first."""
    gate = next((g for g in view.gates if isinstance(g, ManualGate) and g.name == move.gate), None)
    if gate is not None and gate.self_approval:
        return None
    if move.requested_by is not None and move.requested_by == user.name:
        return ("You asked for this move, so another person must approve it (four eyes). "
                "You may reject it to withdraw the request.")
    return None


def _approval_rows(approvals: list[ApprovalRecord], state: ExperimentState) -> list[dict[str, Any]]:
    """Approvals (newest first) and what became of each: consumed, waiting, expired, lapsed (the
    experiment left the state, or its configuration changed since), withdrawn (a later rejection of
    the move closed its request), or a rejection."""
    rows = []
    rejected: set[tuple[Any, Any]] = set()  # moves a newer rejection closed
    now = datetime.now(UTC)
    for a in approvals:
        move = (a.from_state, a.to_state)
        if not a.approved:
            status = "rejection"
            rejected.add(move)
        elif a.transition_id:
            status = "consumed"
        elif a.from_state is not None and a.from_state != state.state or \
                a.config_version and a.config_version != state.config_version:
            status = "lapsed"
        elif move in rejected:
            status = "withdrawn"
        elif a.valid_until is not None and a.valid_until < now:
            status = "expired"
        else:
            status = "waiting"
        rows.append({"record": a, "status": status})
    return rows


def _diff(ctx: WebContext, request: Request, name: str, tenant: str | None,
          environment: str | None) -> dict[str, Any] | None:
    """The comparison of versions ``?from=`` and ``?to=``, when both are asked for."""
    q = request.query_params
    if not q.get("from") or not q.get("to"):
        return None
    try:
        a, b = int(q["from"]), int(q["to"])
    except ValueError:
        return {"error": "pick two version numbers to compare"}
    bp = ctx.governance.backplane
    try:
        changes = ctx.governance.diff(name, a, b, tenant=tenant, environment=environment)
        old = bp.version(name, a, tenant=tenant, environment=environment)
        new = bp.version(name, b, tenant=tenant, environment=environment)
    except RedgovError as exc:
        return {"error": str(exc), "from": a, "to": b}
    if old is None or new is None:
        return {"error": f"version {a if old is None else b} does not exist", "from": a, "to": b}
    left, right = flatten(old.configuration), flatten(new.configuration)
    kinds = {c.path: c.kind for c in changes}
    paths = sorted({*left, *right}, key=_path_key)  # the order of the configurations shown beside it
    rows = []
    for path in paths:
        kind = kinds.get(path)
        if kind is None and (path in left) != (path in right):
            kind = "added" if path in right else "removed"
        if kind is None and left.get(path) != right.get(path):
            kind = "modified"
        rows.append({"path": path, "old": compact(left[path]) if path in left else "",
                     "new": compact(right[path]) if path in right else "", "kind": kind or "same"})
    return {"from": a, "to": b, "old": old, "new": new, "changes": changes, "rows": rows}


def _path_key(path: str) -> tuple[tuple[int, int, str], ...]:
    """Sorts configuration paths like the JSON beside them: keys by name, list items by index."""
    parts = re.findall(r"\[(\d+)\]|([^.\[\]]+)", path)
    return tuple((0, int(index), "") if index else (1, 0, key) for index, key in parts)


def inbox_context(ctx: WebContext, request: Request, user: User) -> dict[str, Any]:
    """The approval inbox: the moves a ManualGate blocks now, in every scope (or the one chosen)."""
    q = request.query_params
    scopes = _all_scopes(ctx)
    chosen, chosen_scope = _chosen_scope(request)
    text = (q.get("q") or "").strip()
    pending: list[PendingMove] = []
    views: dict[tuple[str | None, str | None], Any] = {}
    problems: list[str] = []
    for scope in scopes:
        if chosen_scope is not None and (scope.tenant, scope.environment) != chosen_scope:
            continue
        try:
            pending.extend(ctx.governance.awaiting_approval(tenant=scope.tenant, environment=scope.environment))
        except RulesMismatchError as exc:  # one scope's published rules are not the server's: say so, show the rest
            problems.append(f"{scope_label(scope.tenant, scope.environment)}: {exc}")
        views[(scope.tenant, scope.environment)] = _view(ctx, scope.tenant, scope.environment)
    if text:
        pending = [m for m in pending if text.casefold() in m.experiment.casefold()]
    # the latest rejection of each move waiting: it closed an earlier request, shown beside the new one
    rejections: dict[tuple[str, str | None, str | None, str], ApprovalRecord] = {}
    for key in list(dict.fromkeys((m.experiment, m.tenant, m.environment) for m in pending))[:100]:
        for record in ctx.governance.backplane.approvals(key[0], tenant=key[1], environment=key[2], limit=10,
                                                         newest_first=True):
            move = (*key, record.to_state.value)
            if not record.approved and move not in rejections:
                rejections[move] = record
    rows = []
    for m in pending:
        rejection = rejections.get((m.experiment, m.tenant, m.environment, m.to_state.value))
        if rejection is not None and rejection.from_state != m.from_state:
            rejection = None
        rows.append({"move": m, "rejection": rejection, "url": experiment_url(m.experiment, m.tenant, m.environment),
                     "not_yours": _may_not_approve(views[(m.tenant, m.environment)], m, user)})
    return {"rows": rows, "scopes": scopes, "chosen": chosen, "q": text, "can_approve": user.may(Role.APPROVER),
            "back": url_with("/approvals", scope=chosen, q=text), "events": events_url(chosen_scope),
            "now": datetime.now(UTC), "problems": problems}


def audit_context(ctx: WebContext, request: Request) -> dict[str, Any]:
    """The audit log: every scope's stream (or the one chosen), newest first, filtered and paged."""
    q = request.query_params
    scopes = _all_scopes(ctx)
    chosen, chosen_scope = _chosen_scope(request)
    kind = q.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise HTTPException(400, f"kind {kind!r} is not one of {', '.join(KINDS)}")
    experiment = (q.get("experiment") or "").strip() or None
    read = [s for s in scopes if chosen_scope is None or (s.tenant, s.environment) == chosen_scope]
    try:
        page = read_audit(ctx.governance.backplane.client, read, cursor=q.get("before") or None,
                          experiment=experiment, kind=kind, limit=AUDIT_PAGE)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    rows = [_audit_row(e) for e in page.entries]
    older = url_with("/audit", scope=chosen, experiment=experiment, kind=kind, before=page.next_cursor) \
        if page.next_cursor else None
    newest = url_with("/audit", scope=chosen, experiment=experiment, kind=kind)
    events = events_url(chosen_scope, experiment)
    return {"rows": rows, "scopes": scopes, "chosen": chosen, "kind": kind, "kinds": KINDS,
            "experiment": experiment or "", "older": older, "newest": newest, "scanned": page.scanned,
            "paged": bool(q.get("before")), "events": events}


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    """One audit entry as the page shows it: when, who, the move (from, to) it concerns, a summary, a detail."""
    r = entry.record
    row: dict[str, Any] = {"entry": entry,
                           "url": experiment_url(entry.experiment, entry.tenant, entry.environment)
                           if entry.experiment else None,  # a scope's entry (published rules) has no experiment
                           "at": None, "who": None, "from": None, "to": None, "summary": entry.problem or "",
                           "detail": None, "tone": None}
    if isinstance(r, StateTransition):
        row.update(at=r.timestamp, who=r.actor, to=r.to_state.value, detail=r.reason,
                   **{"from": r.from_state.value if r.from_state else None})
    elif isinstance(r, ApprovalRecord):
        row.update(at=r.timestamp, who=r.approver, to=r.to_state.value,
                   verdict="approved" if r.approved else "rejected",
                   tone="ok" if r.approved else "bad", gate=r.gate, detail=r.reason,
                   **{"from": r.from_state.value if r.from_state else None})
    elif isinstance(r, ConfigurationVersion):
        rollback = f" (rollback to v{r.rolled_back_from})" if r.is_rollback else ""
        row.update(at=r.created_at, who=r.created_by, summary=f"version {r.version}{rollback}", detail=r.description)
    elif isinstance(r, PolicyEvaluation):
        row.update(at=r.timestamp, summary=f"{r.policy} ({r.severity.value})", detail=r.reason,
                   verdict="compliant" if r.compliant else "not compliant", tone="ok" if r.compliant else "bad")
    elif isinstance(r, ExperimentState):
        row.update(at=r.last_modified, who=r.last_modified_by, summary="state saved", to=r.state.value)
    elif isinstance(r, RulesVersion):
        row.update(at=r.created_at, who=r.created_by, detail=r.reason,
                   summary=f"rules version {r.version} published by {r.created_by or 'someone unnamed'}"
                           f" ({r.rules_hash.removeprefix('sha256:')[:10]})")
    return row


# -- actions ---------------------------------------------------------------------------------

def _telemetry(form: Any, keys: list[str]) -> dict[str, Any]:
    """The telemetry fields of the transition form (``telemetry.<key>``): numbers when they parse, else text."""
    out: dict[str, Any] = {}
    for key in keys:
        raw = _form_text(form, f"telemetry.{key}", 1000)
        if raw is None:
            continue
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def perform(ctx: WebContext, user: User, form: Any, name: str, tenant: str | None,
            environment: str | None) -> str:
    """Run the action a form asks for as ``user``; returns the notice shown after it. Raises RedgovError."""
    gov = ctx.governance
    action = form.get("op")
    reason = _form_text(form, "reason")
    if action == "transition":
        target = form.get("to")
        telemetry = _telemetry(form, list(_view(ctx, tenant, environment).telemetry_keys))
        etag = _form_text(form, "etag", 200)
        done = ctx.act("transition", lambda: gov.transition(
            name, str(target), actor=user.name, reason=reason, metadata=user.metadata,
            telemetry=telemetry or None, expected_etag=etag, tenant=tenant, environment=environment))
        return f"{name} moved from {done.from_state.value if done.from_state else '?'} to {done.to_state.value}"
    if action == "request":
        target = form.get("to")
        move = ctx.act("request", lambda: gov.request(name, str(target), actor=user.name, reason=reason,
                                                      tenant=tenant, environment=environment))
        if not move.approvals_needed:
            return f"requested: {name} to {move.to_state.value} (no manual gate guards it: an operator may move it now)"
        return f"requested: {name} to {move.to_state.value} awaits approval ({move.approvals_needed} needed)"
    if action in ("approve", "reject"):
        target = form.get("to")
        approved = action == "approve"
        record = ctx.act(action, lambda: gov.approve(name, str(target), approver=user.name, approved=approved,
                                                     reason=reason, tenant=tenant, environment=environment))
        return f"{'approved' if approved else 'rejected'}: {name} to {record.to_state.value}"
    if action == "version":
        raw = form.get("configuration")
        try:
            configuration = json.loads(raw) if isinstance(raw, str) else None
        except ValueError as exc:
            raise ValidationError(f"the configuration is not valid JSON: {exc}") from None
        if not isinstance(configuration, dict):
            raise ValidationError("the configuration must be a JSON object ({...})")
        version = ctx.act("create_version", lambda: gov.create_version(
            name, configuration, actor=user.name, description=_form_text(form, "description", 1000),
            tenant=tenant, environment=environment))
        return f"version {version.version} of {name} created"
    if action == "rollback":
        raw_version = form.get("version")
        try:
            number = int(str(raw_version))
        except ValueError:
            raise ValidationError(f"version must be a whole number, got {raw_version!r}") from None
        version = ctx.act("rollback", lambda: gov.rollback(name, number, actor=user.name,
                                                           tenant=tenant, environment=environment))
        return f"rolled back: version {version.version} of {name} restores version {number}"
    raise HTTPException(400, f"unknown action {action!r}")


# -- routes ----------------------------------------------------------------------------------

def routes(ctx: WebContext) -> list[Route]:
    """``/`` (experiments), ``/experiments/<name>`` (GET, POST actions), ``/approvals``, ``/audit``."""
    env = ctx.templates
    env.globals.update(experiment_url=experiment_url, url_with=url_with, scope_label=scope_label,
                       scope_token=scope_token, states=STATES, dom_id=dom_id)
    env.filters.update(when=when, iso=iso, pretty=pretty, compact=compact, waited=waited)

    def render_experiment(request: Request, user: User, name: str, tenant: str | None, environment: str | None,
                          *, error: str | None = None, status: int = 200) -> Response:
        context = experiment_context(ctx, request, user, name, tenant, environment)
        kept = {k: request.query_params.get(k) for k in ("page", "from", "to")}
        context.update(error=error, notice=None if error else _take_flash(request), active="experiments",
                       refresh=experiment_url(name, tenant, environment, **kept))
        return ctx.render(request, "experiment.html", context, status_code=status)

    def render_inbox(request: Request, user: User, *, error: str | None = None, status: int = 200,
                     back: str | None = None) -> Response:
        context = inbox_context(ctx, request, user)
        context.update(error=error, notice=None if error else _take_flash(request), active="approvals",
                       refresh=back or context["back"])
        return ctx.render(request, "approvals.html", context, status_code=status)

    def list_page(request: Request) -> Response:
        auth.require(ctx, request, Role.VIEWER)
        context = experiments_context(ctx, request)
        context.update(active="experiments", refresh=_here(request))
        return ctx.render(request, "experiments.html", context)

    def experiment_page(request: Request) -> Response:
        user = auth.require(ctx, request, Role.VIEWER)
        tenant, environment = _scope(request)
        return render_experiment(request, user, _name(request), tenant, environment)

    async def experiment_action(request: Request) -> Response:
        auth.require(ctx, request, Role.VIEWER)  # logged in (else: to the login page)
        await auth.check_csrf(request)
        form = await request.form()
        action = form.get("op")
        needed = ACTION_ROLES.get(action) if isinstance(action, str) else None
        if needed is None:
            raise HTTPException(400, f"unknown action {action!r}")
        user = auth.require(ctx, request, needed)
        name = _name(request)
        tenant, environment = _scope(request)
        back = _safe_back(form.get("back"))
        try:
            notice = await run_in_threadpool(perform, ctx, user, form, name, tenant, environment)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        except RedgovError as refusal:
            if back is not None and back.startswith("/approvals"):
                return await run_in_threadpool(render_inbox, request, user, error=str(refusal), status=409, back=back)
            return await run_in_threadpool(render_experiment, request, user, name, tenant, environment,
                                           error=str(refusal), status=409)
        _flash(request, notice)
        return RedirectResponse(back or experiment_url(name, tenant, environment), status_code=303)

    def inbox_page(request: Request) -> Response:
        user = auth.require(ctx, request, Role.VIEWER)
        return render_inbox(request, user)

    def audit_page(request: Request) -> Response:
        auth.require(ctx, request, Role.VIEWER)
        context = audit_context(ctx, request)
        context.update(active="audit", refresh=context["newest"] if not context["paged"] else _here(request))
        return ctx.render(request, "audit.html", context)

    return [
        Route("/", list_page, methods=["GET"]),
        Route("/experiments/{name:path}", experiment_page, methods=["GET"]),
        Route("/experiments/{name:path}", experiment_action, methods=["POST"]),
        Route("/approvals", inbox_page, methods=["GET"]),
        Route("/audit", audit_page, methods=["GET"]),
    ]
