"""The Starlette application of ``redgov serve``: context, middleware, error pages, routes.

``create_app(governance, users_file, secret)`` builds it around one Governance (its gates,
policies and rules are the installation's) and serves every tenant/environment scope of the
backplane's prefix. Handlers that call Redis are plain functions (Starlette runs them in its
thread pool); the live feed (``live``) is asynchronous. Every response carries a strict
Content-Security-Policy: scripts and styles only from this server (htmx is vendored in
``static/``), nothing inline, no frames. Odd input a handler did not expect is still the
client's fault, never a 500: a ValidationError (a name with a NUL, 1,025 characters long...)
is a 400, and so is input nested too deeply for Python to walk (RecursionError), with the
usual error page or JSON body and nothing in the log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import anyio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as ASGIScope

from ..errors import ValidationError
from ..governance import Governance
from ..keys import Scope, parse_log_key, scope_logs, scope_pattern
from ..records import ExperimentState
from ..validate import MAX_DEPTH, check_scope_part
from . import auth
from .users import Users

__all__ = ["WebContext", "create_app", "scope_of"]

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
#: how long the list of scopes (a SCAN of the prefix's logs) is reused
SCOPES_TTL = 5.0
#: the longest the experiment list of a scope is kept while the live feed runs (it is dropped at once
#: when the feed reads a write to that scope), seconds
LIST_TTL = 10.0
#: the largest request body a page or form route reads (the JSON API has its own bound); bytes
MAX_FORM_BODY = 256 * 1024

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


@dataclass
class WebContext:
    """What every route needs: the Governance, the users, the templates, the live hub, the metrics."""

    governance: Governance
    users: Users
    templates: Environment
    hub: Any = None  # live.LiveHub, started by the app's lifespan
    metrics: Any = None  # metrics.Metrics
    #: the worker threads argon2 may take at once (auth.authenticate)
    verifying: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(auth.VERIFY_AT_ONCE))
    #: seconds a login lasts (its Redis key's TTL)
    session_max_age: int = 12 * 3600
    #: failed logins per (name, address): auth.authenticate makes them wait
    throttle: auth.Throttle = field(default_factory=auth.Throttle)
    _scopes: tuple[float, list[Scope]] = field(default=(0.0, []))
    # (tenant, environment) -> (the hub's generation of the scope when read, monotonic time, the states)
    _lists: dict[tuple[str | None, str | None], tuple[Any, float, list[ExperimentState]]] = field(default_factory=dict)

    def scopes(self) -> list[Scope]:
        """Every tenant/environment scope of the prefix that has a log, by name (SCAN, cached 5 s)."""
        at, found = self._scopes
        if time.monotonic() - at < SCOPES_TTL:
            return found
        prefix = self.governance.backplane.prefix
        found_keys = self.governance.backplane.client.scan_iter(match=scope_pattern(prefix), count=1000,
                                                                _type="STREAM")
        keys = {parse_log_key(key) for key in scope_logs(found_keys, prefix)}
        found = sorted((Scope(*k) for k in keys), key=lambda s: (s.tenant or "", s.environment or ""))
        self._scopes = (time.monotonic(), found)
        return found

    def experiments(self, tenant: str | None, environment: str | None) -> list[ExperimentState]:
        """Every experiment of a scope (``Governance.experiments``) for the pages.

        While the live feed runs, the list is kept until the feed reads a write to the scope
        (so a page refreshed by that event reads it again) or ``LIST_TTL`` passes: a busy feed
        refreshing many list pages reads each scope once per write, not once per page. Without
        the feed every call reads. The JSON API always reads.
        """
        hub = self.hub
        running = hub is not None and hub.running
        key = (tenant, environment)
        generation = hub.generation(tenant, environment) if running else None
        if running:
            kept = self._lists.get(key)
            if kept is not None and kept[0] == generation and time.monotonic() - kept[1] < LIST_TTL:
                return kept[2]
        started = time.monotonic()
        found = self.governance.experiments(tenant=tenant, environment=environment)
        if running:  # the generation from before the read: a write during it makes the entry stale
            self._lists[key] = (generation, started, found)
        return found

    def act(self, operation: str, call: Callable[[], T]) -> T:
        """Run one Governance call made for a request, timed and counted by outcome in the metrics
        (``operation``: transition, approve, reject, create_version, rollback, ...). Raises what it raises."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return call()
        except Exception as failure:  # a refusal (RedgovError), or a connection failure: never counted as ok
            outcome = type(failure).__name__
            raise
        finally:
            observe = getattr(self.metrics, "observe", None)
            if observe is not None:
                observe(operation, outcome, time.perf_counter() - started)

    def render(self, request: Request, template: str, context: dict[str, Any], status_code: int = 200,
               headers: Mapping[str, str] | None = None) -> HTMLResponse:
        """A page: ``template`` with ``context``, the user, the CSRF token and the request (autoescaped)."""
        values = {"request": request, "csrf": auth.csrf_token(request), **context}
        values.setdefault("user", auth.page_user(self, request))
        return HTMLResponse(self.templates.get_template(template).render(values), status_code=status_code,
                            headers=headers)


def scope_of(request: Request) -> tuple[str | None, str | None]:
    """The scope a request names in ``?tenant=&environment=`` (empty or absent: None); ValidationError
    for a bad part."""
    parts = []
    for name in ("tenant", "environment"):
        value = request.query_params.get(name) or None
        parts.append(check_scope_part(value, name))
    return parts[0], parts[1]


def _status_name(status: int) -> str:
    """The ``error`` of an API answer the HTTP layer refused: ``Unauthorized``, ``Forbidden``, ``NotFound``..."""
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return f"HTTP{status}"


def _error_response(ctx: WebContext, request: Request, status: int, message: str,
                    headers: Mapping[str, str] | None = None) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": _status_name(status), "message": message}, status_code=status, headers=headers)
    return ctx.render(request, "error.html", {"status": status, "message": message}, status_code=status)


def create_app(governance: Governance, users_file: str | Path, secret: str, *, live: bool = True,
               session_max_age: int = 12 * 3600, https_only: bool = False,
               allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The web UI and JSON API of one installation (the Governance's prefix, every scope).

    Args:
        governance: the Governance whose rules, gates and policies apply (its backplane's
            prefix is the installation; it is not closed by the app).
        users_file: the users file (``redgov users add`` writes it); re-read when it changes.
        secret: signs session cookies (at least 32 characters; keep it stable across restarts
            so sessions survive them).
        live: run the live feed (Server-Sent Events from the scope streams).
        session_max_age: seconds a login lasts.
        https_only: mark the session cookie Secure (serve behind TLS).
        allowed_hosts: the host names requests may name in ``Host`` (any port; 400 otherwise),
            e.g. the loopback names and the names clients use (``redgov serve --allowed-host``),
            against DNS rebinding; None: any.

    Raises:
        ValidationError: a short secret. ConfigError: an unreadable users file.
    """
    if not isinstance(secret, str) or len(secret) < 32:
        raise ValidationError("the session secret must be at least 32 characters (see `redgov serve --help`)")
    from . import api, metrics, pages, visible
    from . import live as live_feed

    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                            trim_blocks=True, lstrip_blocks=True)
    visible.register(templates)  # the filters visible, visible_name, visible_text
    ctx = WebContext(governance=governance, users=Users(users_file), templates=templates,
                     session_max_age=session_max_age)
    ctx.metrics = metrics.Metrics(governance)
    ctx.hub = live_feed.LiveHub(governance) if live else None
    routes: list[BaseRoute] = [
        *auth.routes(ctx), *pages.routes(ctx), *api.routes(ctx), *live_feed.routes(ctx), *metrics.routes(ctx),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, auth.LoginRequired)
        return auth.login_redirect(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error_response(ctx, request, exc.status_code, str(exc.detail), exc.headers)

    async def bad_input(request: Request, exc: Exception) -> Response:
        # a ValidationError no handler caught (e.g. a page's experiment name the library refuses), or
        # input nested deeper than Python recurses (a form's JSON text): the client's, not a failure
        if isinstance(exc, RecursionError):
            message = f"the input is nested too deeply (values may nest {MAX_DEPTH} levels)"
            error = "ValidationError"
        else:
            message, error = " ".join(str(exc).split()), type(exc).__name__
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": error, "message": message}, status_code=400)
        return _error_response(ctx, request, 400, message)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if ctx.hub is not None:
            await ctx.hub.start()
        try:
            yield
        finally:
            if ctx.hub is not None:
                await ctx.hub.stop()

    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(SecurityHeaders, allowed_hosts=allowed_hosts),
                                Middleware(SessionMiddleware, secret_key=secret, session_cookie="redgov_session",
                                           max_age=session_max_age, same_site="strict", https_only=https_only)],
                    exception_handlers={auth.LoginRequired: login_required, HTTPException: http_error,
                                        ValidationError: bad_input, RecursionError: bad_input,
                                        Exception: server_error})
    app.state.ctx = ctx
    return app


class SecurityHeaders:
    """ASGI middleware: ``SECURITY_HEADERS`` on every HTTP response (streams included), and
    ``Cache-Control: no-store`` on all but the static files (pages and answers are per user);
    request bodies of the pages' routes bounded by ``MAX_FORM_BODY`` (413 past it, before more
    is read; a declared Content-Length past it is refused unread)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] | None = None) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if self.allowed_hosts is not None and _host_name(scope) not in self.allowed_hosts:
            await PlainTextResponse("this server does not answer that host name", status_code=400)(
                scope, receive, send)
            return
        static = path.startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if not static and "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        if path.startswith("/api/"):
            await self.app(scope, receive, with_headers)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BODY):
            await PlainTextResponse(f"the request body is over {MAX_FORM_BODY} bytes", status_code=413)(
                scope, receive, with_headers)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_FORM_BODY:
                    raise HTTPException(413, f"the request body is over {MAX_FORM_BODY} bytes")
            return message

        await self.app(scope, bounded, with_headers)


def _host_name(scope: ASGIScope) -> str:
    """The host name of the request's ``Host`` header, without port or brackets, lower case."""
    raw: bytes = dict(scope.get("headers") or ()).get(b"host", b"")
    host = raw.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def server_error(request: Request, exc: Exception) -> Response:
    """A failure no handler expected: a short answer with the security headers (the traceback goes
    to the server's log, never to the client)."""
    headers = {**SECURITY_HEADERS, "cache-control": "no-store"}
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "InternalServerError", "message": "the server failed; see its log"},
                            status_code=500, headers=headers)
    return PlainTextResponse("500: the server failed; see its log", status_code=500, headers=headers)
