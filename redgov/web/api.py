"""The JSON API of ``redgov serve`` under ``/api/``: HTTP Basic, JSON in and out, an OpenAPI schema.

Every route is declared once in ``ENDPOINTS`` (method, path, role, parameters, body and
answer); the Starlette routes and the OpenAPI 3.1 document at ``GET /api/openapi.json``
(``openapi``) are both made from it. Credentials are HTTP Basic only: a session cookie
does not authenticate an API call, so no CSRF token is needed, and a POST a browser
sends from another site (``Origin`` or ``Sec-Fetch-Site`` says so) is refused (403), so
credentials a browser remembers cannot be used by another site.

Answers: 200 with the record(s) (msgspec ``to_builtins``; ``<``, ``>`` and ``&`` escaped
as ``\\u003c`` ...); 401 without (right) credentials; 403 for a role too low; and
``{"error": "<ExceptionClass>", "message": ...}`` with 400 for bad input (ValidationError),
404 for an unknown experiment or version (NotFoundError), 409 for a governance refusal
(ConflictError, LeaseError, InvalidTransitionError, ApprovalRequiredError,
PolicyViolationError, with its ``evaluations``), 503 when Redis cannot serve the call.
The actor, requester or approver recorded is the authenticated user, never a field of the body; a
transition records the user's roles from the users file as metadata, as the pages do:
``actorRole`` (viewer, approver or operator) and ``actorRoles`` (all its roles, custom ones such
as ``sre`` included), what RoleGates read. A body's ``actorRole``, ``actorRoles`` or
``metadata`` is ignored.

An experiment's name is one path segment: encode ``/`` in it as ``%2F``. The name is taken
from the raw (still encoded) path, so ``..%2F..`` is just a name that does not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    CorruptDataError,
    DurabilityError,
    NotFoundError,
    PolicyViolationError,
    RedgovError,
    UnavailableError,
    ValidationError,
)
from ..validate import check_scope_part
from . import auth
from .handlers import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Asked,
    allowed_transitions,
    approve,
    awaiting_approval,
    create_version,
    get_approvals,
    get_diff,
    get_evaluations,
    get_experiment,
    get_history,
    get_lease,
    get_versions,
    list_experiments,
    reject,
    request_move,
    rollback,
    transition,
    whoami,
)
from .openapi import Param, build_schema
from .users import Role

if TYPE_CHECKING:
    from .app import WebContext

__all__ = ["ENDPOINTS", "Endpoint", "openapi", "routes", "status_for"]

log = logging.getLogger("redgov.web.api")

#: the largest request body read (a configuration is at most 1 MiB encoded)
MAX_BODY = 2 * 1024 * 1024
#: the deepest nesting of a request body (values the library keeps nest at most 64 levels)
MAX_BODY_DEPTH = 128


@dataclass(frozen=True)
class Endpoint:
    """One API route: what it answers, who may call it, and how it is documented."""

    method: str
    path: str  # as OpenAPI writes it; ``{name}`` is the experiment
    summary: str
    role: Role | None  # None: no login
    run: Callable[[Asked], Any]  # runs in the thread pool; returns what is sent as JSON
    answer: dict[str, Any]  # the JSON Schema of the 200 answer
    query: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None  # the JSON Schema of the request body (POST)
    refusals: bool = False  # may answer 409
    errors: tuple[int, ...] = field(default=(400,))

    @property
    def operation_id(self) -> str:
        return self.run.__name__.strip("_")


# -- declarations ------------------------------------------------------------------------------

_SCOPE_Q = (Param("tenant", "the experiment's tenant (absent or empty: none)"),
            Param("environment", "the experiment's environment (absent or empty: none)"))
_FILTER_Q = (Param("tenant", "only this tenant's scopes"), Param("environment", "only this environment's scopes"))
_PAGE_Q = (Param("limit", f"at most this many (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})", "integer"),
           Param("order", "newest (default: the newest first) or oldest (the oldest first)", enum=("newest", "oldest")))


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def _listing(key: str, item: str, **extra: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["experiment", key],
            "properties": {"experiment": {"type": "string"}, "tenant": {"type": ["string", "null"]},
                           "environment": {"type": ["string", "null"]}, "state": _ref("LifecycleState"),
                           **extra, key: _array(_ref(item))}}


def _body(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    common = {"tenant": {"type": ["string", "null"], "description": "the scope's tenant (default: ?tenant=)"},
              "environment": {"type": ["string", "null"],
                              "description": "the scope's environment (default: ?environment=)"},
              "idempotency_key": {"type": "string",
                                  "description": "a repeat with this key returns the first result"}}
    return {"type": "object", "required": required, "properties": {**properties, **common},
            "description": "Other fields are ignored: the actor, requester or approver recorded is the "
                           "authenticated user, and a transition's actorRole and actorRoles are the user's roles."}


_TO = {"$ref": "#/components/schemas/LifecycleState", "description": "the target state of the move"}
_REASON = {"type": "string", "description": "why (recorded)"}
_ROW = {"type": "object", "required": ["experiment", "tenant", "environment", "state"],
        "properties": {"experiment": {"type": "string"}, "tenant": {"type": ["string", "null"]},
                       "environment": {"type": ["string", "null"]}, "state": _ref("LifecycleState")}}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/api/whoami", "the authenticated user and role", Role.VIEWER, whoami,
             {"type": "object", "properties": {"user": {"type": "string"}, "role": {"type": "string"}}}, errors=()),
    Endpoint("GET", "/api/experiments", "every experiment of every scope (filtered by scope and state)",
             Role.VIEWER, list_experiments, _array(_ROW),
             (*_FILTER_Q, Param("state", "only experiments in this state", enum=None, ref="LifecycleState"))),
    Endpoint("GET", "/api/awaiting-approval",
             "the requested moves a manual gate still blocks, in every scope (the inbox): who asked, when, why, "
             "approvals given of needed",
             Role.VIEWER, awaiting_approval, _array(_ref("PendingMove")), _FILTER_Q, errors=()),
    Endpoint("GET", "/api/experiments/{name}/allowed-transitions",
             "the states the rules allow the experiment to move to now (gates and policies not judged)",
             Role.VIEWER, allowed_transitions,
             {"type": "object", "properties": {"experiment": {"type": "string"}, "state": _ref("LifecycleState"),
                                               "allowed_transitions": _array(_ref("LifecycleState"))}}, _SCOPE_Q),
    Endpoint("GET", "/api/experiments/{name}/history", "the experiment's transitions (a page)", Role.VIEWER,
             get_history, _listing("transitions", "StateTransition"), (*_SCOPE_Q, *_PAGE_Q)),
    Endpoint("GET", "/api/experiments/{name}/versions", "the experiment's configuration versions (a page)",
             Role.VIEWER, get_versions,
             _listing("versions", "ConfigurationVersion", config_version={"type": "integer"}), (*_SCOPE_Q, *_PAGE_Q)),
    Endpoint("GET", "/api/experiments/{name}/diff", "path-level changes between two configuration versions",
             Role.VIEWER, get_diff, _listing("changes", "Change"),
             (*_SCOPE_Q, Param("from", "the version compared from", "integer", required=True),
              Param("to", "the version compared to", "integer", required=True))),
    Endpoint("GET", "/api/experiments/{name}/approvals", "the experiment's approvals and rejections (a page)",
             Role.VIEWER, get_approvals, _listing("approvals", "ApprovalRecord"), (*_SCOPE_Q, *_PAGE_Q)),
    Endpoint("GET", "/api/experiments/{name}/evaluations", "the experiment's policy evaluations (a page)",
             Role.VIEWER, get_evaluations, _listing("evaluations", "PolicyEvaluation"), (*_SCOPE_Q, *_PAGE_Q)),
    Endpoint("GET", "/api/experiments/{name}/lease", "who holds the experiment's lease now (null: nobody)",
             Role.VIEWER, get_lease,
             {"type": "object", "required": ["experiment", "lease"],
              "properties": {"experiment": {"type": "string"}, "tenant": {"type": ["string", "null"]},
                             "environment": {"type": ["string", "null"]}, "state": _ref("LifecycleState"),
                             "lease": {"anyOf": [_ref("Lease"), {"type": "null"}]}}}, _SCOPE_Q),
    Endpoint("POST", "/api/experiments/{name}/transition", "move the experiment (the actor: the user)",
             Role.OPERATOR, transition, _ref("StateTransition"), _SCOPE_Q,
             _body(["to"], to=_TO, reason=_REASON,
                   telemetry={"type": "object", "description": "numbers the policies read (errorRate, ...)"},
                   expected_etag={"type": "string", "description": "refuse (409) unless the state has this etag"}),
             refusals=True),
    Endpoint("POST", "/api/experiments/{name}/request",
             "ask for the gated move into `to` (the requester: the user, who may then not approve it)",
             Role.OPERATOR, request_move, _ref("PendingMove"), _SCOPE_Q, _body(["to"], to=_TO, reason=_REASON),
             refusals=True),
    Endpoint("POST", "/api/experiments/{name}/approve", "approve the move into `to` (the approver: the user)",
             Role.APPROVER, approve, _ref("ApprovalRecord"), _SCOPE_Q,
             _body(["to"], to=_TO, reason=_REASON,
                   valid_for={"type": "number", "description": "seconds the approval satisfies its gate"}),
             refusals=True),
    Endpoint("POST", "/api/experiments/{name}/reject", "reject the move into `to` (the approver: the user)",
             Role.APPROVER, reject, _ref("ApprovalRecord"), _SCOPE_Q, _body(["to"], to=_TO, reason=_REASON),
             refusals=True),
    Endpoint("POST", "/api/experiments/{name}/versions", "add a configuration version (the actor: the user)",
             Role.OPERATOR, create_version, _ref("ConfigurationVersion"), _SCOPE_Q,
             _body(["configuration"], configuration={"type": "object"}, description={"type": "string"}),
             refusals=True),
    Endpoint("POST", "/api/experiments/{name}/rollback", "restore version `to_version` as a new version",
             Role.OPERATOR, rollback, _ref("ConfigurationVersion"), _SCOPE_Q,
             _body(["to_version"], to_version={"type": "integer", "minimum": 1}), refusals=True),
    # last: it would match every longer path (names may hold an encoded /)
    Endpoint("GET", "/api/experiments/{name}", "the experiment's current state", Role.VIEWER, get_experiment,
             _ref("ExperimentState"), _SCOPE_Q),
)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ENDPOINTS`` (and of ``/api/openapi.json`` itself)."""
    return build_schema(ENDPOINTS)


# -- answering -------------------------------------------------------------------------------


def status_for(error: BaseException) -> int:
    """The HTTP status of an error a Governance call raised (500: not one the API knows)."""
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, ValidationError):
        return 400
    if isinstance(error, UnavailableError | DurabilityError | RedisError | ConnectionError | TimeoutError):
        return 503
    if isinstance(error, CorruptDataError | AccessDeniedError | ConfigError):
        return 500
    if isinstance(error, RedgovError):  # conflict, lease, invalid transition, approval, policy
        return 409
    return 500


def encode(value: Any) -> bytes:
    """JSON of records (``to_builtins``) with ``<``, ``>`` and ``&`` escaped, safe to show anywhere."""
    raw = msgspec.json.encode(msgspec.to_builtins(value))
    return raw.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


def answer(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(value), status_code=status, media_type="application/json", headers=headers)


#: what the API says when it cannot reach its data or read its configuration (details: the server's log)
UNAVAILABLE = "Redis cannot serve the call now; try again (details are in the server's log)"
MISCONFIGURED = "the server cannot read its configuration (details are in the server's log)"


def error_answer(error: BaseException) -> Response:
    status = status_for(error)
    message = " ".join(str(error).split())
    if isinstance(error, ConfigError | RedisError | OSError) or (
            status == 503 and not isinstance(error, DurabilityError)):
        # hosts, ports and file paths are for the operator's log, not for whoever called
        log.warning("redgov api: %s: %s", type(error).__name__, message)
        message = MISCONFIGURED if isinstance(error, ConfigError) else UNAVAILABLE
    body: dict[str, Any] = {"error": type(error).__name__, "message": message}
    if isinstance(error, PolicyViolationError):
        body["evaluations"] = error.evaluations
    if isinstance(error, ConflictError) and error.current_etag is not None:
        body["current_etag"], body["current_state"] = error.current_etag, error.current_state
    if isinstance(error, DurabilityError):
        body["applied"], body["result"] = True, error.result
    return answer(body, status)


def _experiment_name(request: Request, suffixed: bool) -> str:
    """The experiment named in the raw path: one segment, percent-decoded (``%2F`` is a ``/`` of the name)."""
    raw = request.scope.get("raw_path")
    if not isinstance(raw, bytes):
        return str(request.path_params.get("name", ""))
    path = raw.decode("latin-1")
    root = str(request.scope.get("root_path") or "")
    if root and path.startswith(root):
        path = path[len(root):]
    parts = path.split("/")
    if len(parts) != (5 if suffixed else 4) or parts[1:3] != ["api", "experiments"] or not parts[3]:
        raise HTTPException(404, "no such API route (encode a / in an experiment's name as %2F)")
    try:
        return unquote(parts[3], errors="strict")
    except UnicodeDecodeError:
        raise ValidationError("the experiment's name in the path is not UTF-8") from None


def _cross_site(request: Request) -> bool:
    """A browser sent this from another site (Origin or Sec-Fetch-Site), e.g. a form with remembered credentials."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    return origin is not None and origin not in (f"http://{host}", f"https://{host}")


async def _json_body(request: Request) -> dict[str, Any]:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(413, f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ValidationError("the body must be a JSON object (Content-Type: application/json)")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"the body is not JSON: {exc}") from None
    except RecursionError:  # deeper than the decoder may recurse (about 1,000 levels)
        raise ValidationError(f"the body is nested deeper than {MAX_BODY_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise ValidationError(f"the body must be a JSON object, got {type(body).__name__}")
    _bound_depth(body)
    return body


def _bound_depth(body: dict[str, Any]) -> None:
    """ValidationError when ``body`` nests deeper than MAX_BODY_DEPTH (walked without recursion, so
    nothing after it recurses that deep)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_BODY_DEPTH:
            raise ValidationError(f"the body is nested deeper than {MAX_BODY_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values() if isinstance(item, dict | list))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))


def _endpoint(ctx: WebContext, spec: Endpoint) -> Callable[[Request], Any]:
    suffixed = spec.path.count("/") > 3 and "{name}" in spec.path
    named = "{name}" in spec.path

    async def endpoint(request: Request) -> Response:
        try:
            if spec.method == "POST" and _cross_site(request):
                raise HTTPException(403, "cross-site request refused: call the API from a script or a tool")
            user = None
            if spec.role is not None:
                user = await auth.require_api(ctx, request, spec.role)
            name = _experiment_name(request, suffixed) if named else ""
            body = await _json_body(request) if spec.body is not None else {}
            tenant, environment = (check_scope_part(body.get(part) or request.query_params.get(part) or None, part)
                                   for part in ("tenant", "environment"))
            asked = Asked(ctx, request, user, name, tenant, environment, body)
            result = await run_in_threadpool(spec.run, asked)
        except HTTPException:
            raise  # the app's handler answers {"error": "Forbidden", ...} (the status's name) for /api/
        except (RedgovError, RedisError, OSError) as error:
            return error_answer(error)
        return answer(result)

    endpoint.__name__ = spec.operation_id
    return endpoint


def routes(ctx: WebContext) -> list[Route]:
    """The API's routes, from ``ENDPOINTS``, and ``GET /api/openapi.json``."""
    document = encode(openapi())

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type="application/json")

    found = [Route(s.path.replace("{name}", "{name:path}"), _endpoint(ctx, s), methods=[s.method])
             for s in ENDPOINTS]
    return [Route("/api/openapi.json", openapi_json, methods=["GET"]), *found]
