"""Who is asking, and may they: sessions, CSRF tokens, HTTP Basic for the API, role checks.

Pages use a session cookie signed with the server's secret (Starlette's SessionMiddleware,
itsdangerous): a cookie signed with another secret, or tampered with, is an empty session.
The session holds the user's name (checked against the users file on every request, so a
removed user is logged out) and a CSRF token that every state-changing form and htmx request
must send back (form field ``csrf`` or header ``X-CSRF-Token``). The JSON API under ``/api/``
takes HTTP Basic credentials instead (no cookie, so no CSRF). Every route checks the role on
the server, whatever a page shows.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .users import Role, User

if TYPE_CHECKING:
    from .app import WebContext

__all__ = ["LoginRequired", "api_user", "check_csrf", "csrf_token", "page_user", "remembered_api_user", "require", "routes"]

CSRF_HEADER = "x-csrf-token"


class LoginRequired(Exception):
    """A page asked for by someone not logged in: the app answers with a redirect to /login."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use); forms carry it in field ``csrf``."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request) -> None:
    """Refuse (403) a state-changing request whose CSRF token is missing or not the session's."""
    expected = request.session.get("csrf")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if not isinstance(expected, str) or not isinstance(sent, str) or not secrets.compare_digest(expected, sent):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again; nothing was changed")


def page_user(ctx: WebContext, request: Request) -> User | None:
    """The logged-in user of a page request (None: not logged in, or no longer in the users file)."""
    name = request.session.get("user")
    return ctx.users.get(name) if isinstance(name, str) else None


def api_user(ctx: WebContext, request: Request, *, verify: bool = True) -> User | None:
    """The user of an API request from its HTTP Basic credentials (None: missing or wrong; with
    ``verify=False``, also None when the pair was not verified lately: see ``Users.remembered``)."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, colon, password = decoded.partition(":")
    if not colon:
        return None
    return ctx.users.authenticate(name, password) if verify else ctx.users.remembered(name, password)


def remembered_api_user(ctx: WebContext, request: Request, role: Role) -> User | None:
    """The API user when the request's Basic pair was verified lately (no argon2: call it on the
    event loop), with at least ``role`` (else HTTPException 403); None when the pair is not
    remembered: then ``require(..., api=True)``, off the event loop, decides."""
    user = api_user(ctx, request, verify=False)
    if user is not None and not user.may(role):
        raise _too_low(user, role)
    return user


def _too_low(user: User, role: Role) -> HTTPException:
    return HTTPException(403, f"{user.name} is a {user.role.label}; this needs the {role.label} role")


def require(ctx: WebContext, request: Request, role: Role, *, api: bool = False) -> User:
    """The user, when logged in (session, or Basic for ``api``) with at least ``role``.

    Raises LoginRequired (pages: redirect to /login), HTTPException 401 (API, no or wrong
    credentials) or 403 (a role too low for the request).
    """
    user = api_user(ctx, request) if api else page_user(ctx, request)
    if user is None:
        if api:
            raise HTTPException(401, "credentials required (HTTP Basic)", headers={"WWW-Authenticate": 'Basic realm="redgov"'})
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    if not user.may(role):
        raise _too_low(user, role)
    return user


def _safe_next(target: Any) -> str:
    """Where to go after logging in: a local path only (never another site)."""
    if isinstance(target, str) and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def routes(ctx: WebContext) -> list[Route]:
    """``/login`` (GET the form, POST ``username`` + ``password``) and ``/logout`` (POST, CSRF-checked)."""

    async def login_form(request: Request) -> Response:
        return ctx.render(request, "login.html", {"next": _safe_next(request.query_params.get("next")),
                                                  "error": None, "user": None})

    async def login(request: Request) -> Response:
        await check_csrf(request)
        form = await request.form()
        name, password = form.get("username"), form.get("password")
        target = _safe_next(form.get("next"))
        user = None
        if isinstance(name, str) and isinstance(password, str):
            from starlette.concurrency import run_in_threadpool

            user = await run_in_threadpool(ctx.users.authenticate, name, password)  # argon2 takes ~50 ms
        if user is None:
            return ctx.render(request, "login.html", {"next": target, "error": "wrong user name or password",
                                                      "user": None}, status_code=401)
        request.session.clear()  # a new session (and CSRF token) at login: no fixation
        request.session["user"] = user.name
        csrf_token(request)
        return RedirectResponse(target, status_code=303)

    async def logout(request: Request) -> Response:
        await check_csrf(request)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    return [Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]


def login_redirect(error: LoginRequired) -> RedirectResponse:
    """The response to LoginRequired: /login, coming back to the page asked for afterwards."""
    return RedirectResponse(f"/login?next={quote(error.path, safe='/')}", status_code=303)
