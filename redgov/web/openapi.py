"""The OpenAPI 3.1 document of the JSON API, made from the route declarations (``api.ENDPOINTS``).

Record schemas come from the msgspec Structs themselves (``msgspec.json.schema_components``),
so the document cannot drift from what the API sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from .. import __version__
from ..changes import Change
from ..records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    Lease,
    PendingMove,
    PolicyEvaluation,
    StateTransition,
)

if TYPE_CHECKING:
    from .api import Endpoint

__all__ = ["Param", "build_schema"]

RECORDS = (ExperimentState, StateTransition, ApprovalRecord, ConfigurationVersion, PolicyEvaluation, PendingMove,
           Change, Lease)
ERROR = {"type": "object", "required": ["error", "message"],
         "properties": {"error": {"type": "string", "description": "the exception's class name, or for a refusal of "
                                                                 "the HTTP layer the status's name: Unauthorized, "
                                                                 "Forbidden, NotFound (a route), MethodNotAllowed, "
                                                                 "RequestEntityTooLarge"},
                        "message": {"type": "string"},
                        "evaluations": {"type": "array", "items": {"$ref": "#/components/schemas/PolicyEvaluation"},
                                        "description": "PolicyViolationError: every evaluation of the refused move"},
                        "current_etag": {"type": "string"}, "current_state": {"type": "string"}}}
STATUSES = {
    400: "bad input (ValidationError): nothing was written",
    401: "no credentials, or wrong ones (HTTP Basic)",
    403: "the user's role may not do this, or a browser sent it from another site",
    404: "no such experiment or version (NotFoundError)",
    409: "a governance refusal (ConflictError, LeaseError, InvalidTransitionError, ApprovalRequiredError "
         "and its SeparationOfDutiesError, PolicyViolationError): nothing was written",
    503: "Redis cannot serve the call now",
}
DESCRIPTION = """\
The JSON API of `redgov serve`: every tenant/environment scope of one installation (key prefix).
Authentication is HTTP Basic with a user of the users file (`redgov users add`); a session cookie of the
pages does not authenticate an API call. Roles: viewer reads; approver also approves and rejects; operator
also transitions, requests gated moves, creates versions and rolls back. The actor, requester or approver
recorded is the authenticated user, never a field of the body; nobody approves a move they requested (four
eyes: SeparationOfDutiesError, 409). Errors are `{"error": "<ExceptionClass>", "message": ...}`. An experiment's name is
one path segment: encode a `/` in it as `%2F`. Prometheus metrics are at `/metrics` (no login)."""


@dataclass(frozen=True)
class Param:
    """A query parameter of a route."""

    name: str
    description: str
    type: str = "string"
    required: bool = False
    enum: tuple[str, ...] | None = None
    ref: str | None = None  # a component schema instead of ``type``

    def schema(self) -> dict[str, Any]:
        if self.ref is not None:
            return {"$ref": f"#/components/schemas/{self.ref}"}
        found: dict[str, Any] = {"type": self.type}
        if self.enum is not None:
            found["enum"] = list(self.enum)
        return found


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(status: int) -> dict[str, Any]:
    return {"description": STATUSES[status], "content": _json({"$ref": "#/components/schemas/Error"})}


def _operation(spec: Endpoint) -> dict[str, Any]:
    role = spec.role.label if spec.role is not None else None
    parameters: list[dict[str, Any]] = []
    if "{name}" in spec.path:
        parameters.append({"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                           "description": "the experiment's name (a / in it encoded as %2F)"})
    parameters += [{"name": p.name, "in": "query", "required": p.required, "description": p.description,
                    "schema": p.schema()} for p in spec.query]
    responses: dict[str, Any] = {"200": {"description": "done", "content": _json(spec.answer)}}
    statuses = [*spec.errors, *((401, 403) if role else ()), *((404,) if "{name}" in spec.path else ()),
                *((409,) if spec.refusals else ()), *((503,) if role else ())]
    for status in sorted(set(statuses)):
        responses[str(status)] = _error(status)
    operation: dict[str, Any] = {
        "operationId": spec.operation_id, "summary": spec.summary,
        "description": f"Needs the {role} role (HTTP Basic)." if role else "No login.",
        "x-redgov-role": role, "security": [{"basic": []}] if role else [],
        "parameters": parameters, "responses": responses,
    }
    if spec.body is not None:
        operation["requestBody"] = {"required": True, "content": _json(spec.body)}
    return operation


def build_schema(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints`` and of ``GET /api/openapi.json``."""
    _, components = msgspec.json.schema_components(RECORDS, ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {
        "/api/openapi.json": {"get": {"operationId": "openapi", "summary": "this document", "description": "No login.",
                                      "x-redgov-role": None, "security": [],
                                      "responses": {"200": {"description": "the OpenAPI 3.1 document",
                                                            "content": _json({"type": "object"})}}}}}
    for spec in endpoints:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec)
    return {
        "openapi": "3.1.0",
        "info": {"title": "redgov serve", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {"schemas": {**components, "Error": ERROR},
                       "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
    }
