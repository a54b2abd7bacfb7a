"""Who is asking, and may they: sessions, CSRF tokens, HTTP Basic for the API, role checks.

Pages use a session cookie signed with the server's secret (Starlette's SessionMiddleware,
itsdangerous): a cookie signed with another secret, or tampered with, is an empty session.
The session holds the user's name (checked against the users file on every request, so a
removed user is logged out) and a CSRF token that every state-changing form and htmx request
must send back (form field ``csrf`` or header ``X-CSRF-Token``). The JSON API under ``/api/``
takes HTTP Basic credentials instead (no cookie, so no CSRF). Every route checks the role on
the server, whatever a page shows.

An open event stream keeps its login (``Login``) and the live hub judges it every few seconds
(``logins_ended``: one MGET for every stream): a login ended by a logout (here or on another
server process), its expiry, a changed password or a removed user ends the stream with an
``event: logout`` naming why (``ENDED``), and the page goes to ``/login?ended=<why>``, which says it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio.to_thread
from redis.exceptions import ResponseError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..errors import raise_for_reply
from ..keys import web_session
from .users import Role, User

if TYPE_CHECKING:
    from .app import WebContext

__all__ = ["ENDED", "VERIFY_AT_ONCE", "Login", "LoginRequired", "Throttle", "TooManyAttempts", "authenticate",
           "basic_credentials", "check_csrf", "client_address", "csrf_token", "login_of", "logins_ended",
           "page_user", "require", "require_api", "routes"]

#: argon2 verifications running at once, at most, per app (each takes about 100 ms of one core)
VERIFY_AT_ONCE = 2
#: failed logins from one address, whatever the names, before its attempts wait
ADDRESS_FREE = 20

CSRF_HEADER = "x-csrf-token"

#: why a login ended (``logins_ended``, the ``reason`` of a stream's ``event: logout``, ``/login?ended=``)
#: -> what the login form says
ENDED = {
    "logout": "You were logged out (in another tab or window, or on another server of this installation). "
              "Log in again.",
    "expired": "Your login expired. Log in again.",
    "password": "Your password was changed. Log in with the new one.",
    "removed": "Your user was removed from this server.",
    "unchecked": "Your login could not be checked (the server cannot read its users file). Log in again.",
}


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
    """Refuse (403) a state-changing request whose CSRF token is missing or not the session's (a
    request whose session has no token is refused before its body is read)."""
    expected = request.session.get("csrf")
    if not isinstance(expected, str):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again; nothing was changed")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if not isinstance(expected, str) or not isinstance(sent, str) or not secrets.compare_digest(expected, sent):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again; nothing was changed")


def page_user(ctx: WebContext, request: Request) -> User | None:
    """The logged-in user of a page request, with the roles the users file gives it now; None when
    not logged in, logged out, the login expired, the user left the users file or changed password.

    The signed cookie names the user and a login id; the login itself is a Redis key
    (``keys.web_session``) holding the user and the fingerprint of the password's hash, with
    the login's lifetime as TTL: logging out deletes it, so a copied cookie is worth nothing
    afterwards. One GET per request (kept on the request for the rest of it).
    """
    if "redgov_user" in request.scope:
        found: User | None = request.scope["redgov_user"]
        return found
    user = None
    name, sid = request.session.get("user"), request.session.get("sid")
    if isinstance(name, str) and isinstance(sid, str):
        current = ctx.users.current(name)  # None: removed from the users file since (its logins end with it)
        if current is not None:
            user, fingerprint = current
            key = web_session(ctx.governance.backplane.prefix, sid)
            try:
                stored = ctx.governance.backplane.client.get(key)
            except ResponseError as exc:  # the key holds something else: corrupt data, named
                raise_for_reply(exc, (key,))
            if stored is None or (stored.decode("utf-8", "replace") if isinstance(stored, bytes) else stored) \
                    != f"{name} {fingerprint}":
                user = None
    request.scope["redgov_user"] = user
    return user


@dataclass(frozen=True, slots=True)
class Login:
    """One page login as an open event stream keeps it: the user, the login's Redis key and the
    password fingerprint it was made with, and when it ends (epoch seconds)."""

    name: str
    key: str
    fingerprint: str
    ends: float


def login_of(ctx: WebContext, request: Request, user: User) -> Login | None:
    """The login of a page request ``page_user`` accepted (None: its session names none)."""
    sid, fingerprint, at = request.session.get("sid"), request.session.get("fp"), request.session.get("at")
    if not isinstance(sid, str) or not isinstance(fingerprint, str):
        return None
    started = at if isinstance(at, int | float) and not isinstance(at, bool) else 0
    return Login(user.name, web_session(ctx.governance.backplane.prefix, sid), fingerprint,
                 started + ctx.session_max_age)


def logins_ended(ctx: WebContext, logins: Sequence[Login]) -> list[str | None]:
    """Why each of ``logins`` is over (a key of ``ENDED``), or None while it lasts: its lifetime
    passed (``expired``), the user left the users file (``removed``) or changed password
    (``password``), its Redis key is gone (``logout``: a logout here or on another server process).
    One MGET for them all (run it in a worker thread); Redis errors propagate."""
    if not logins:
        return []
    keys = list(dict.fromkeys(login.key for login in logins))
    stored = dict(zip(keys, ctx.governance.backplane.client.mget(keys), strict=True))
    now = time.time()
    out: list[str | None] = []
    for login in logins:
        try:
            current = ctx.users.current(login.name)
        except Exception:  # noqa: BLE001 - a users file that cannot be read allows nobody
            out.append("unchecked")
            continue
        value = stored[login.key]
        value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if now >= login.ends:
            out.append("expired")
        elif current is None:
            out.append("removed")
        elif current[1] != login.fingerprint:
            out.append("password")
        elif value != f"{login.name} {login.fingerprint}":
            out.append("logout")
        else:
            out.append(None)
    return out


def _login(ctx: WebContext, user: User) -> tuple[str, str | None]:
    """Record a new login of ``user``: its id and the password's fingerprint (Redis SET with the login's TTL)."""
    sid = secrets.token_urlsafe(32)
    fingerprint = ctx.users.fingerprint(user.name)
    ctx.governance.backplane.client.set(web_session(ctx.governance.backplane.prefix, sid),
                                        f"{user.name} {fingerprint}", px=ctx.session_max_age * 1000)
    return sid, fingerprint


def _logout(ctx: WebContext, sid: object) -> None:
    if isinstance(sid, str):
        ctx.governance.backplane.client.delete(web_session(ctx.governance.backplane.prefix, sid))


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """The (name, password) of the request's HTTP Basic ``Authorization`` header (None: none, or malformed)."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, colon, password = decoded.partition(":")
    return (name, password) if colon else None


class Throttle:
    """Failed logins per (user name, client address), in this process.

    The first ``free`` failures in a row cost nothing more; after them each attempt must wait
    ``2 ** (failures - free)`` seconds (at most ``max_wait``) from the last failure, and an
    attempt during the wait is refused without checking the password, even a right one (else
    guessing would go on at memory speed against the pairs remembered). A success forgets the
    pair; a pair quiet for twice ``max_wait`` is forgotten. ``authenticate`` also counts every
    name of an address together (``ADDRESS_FREE`` failures before waits), against a guesser going
    through names. Keyed by name *and* address, so a guesser elsewhere cannot lock a user out; at most
    ``max_pairs`` pairs are kept (the oldest forgotten first). Attempts of one pair take turns
    (``turn``), and an attempt counts against its address *before* its password is checked (taken
    back after a success: ``undo``), so sending many at once, with one name or many, does not get
    past either count. Used on the event loop only (so a check and its count are one step).
    """

    def __init__(self, free: int = 5, max_wait: float = 300.0, max_pairs: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self.max_wait = max_wait
        self.max_pairs = max_pairs
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._turns: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: tuple[str, str]) -> AsyncIterator[None]:
        """Wait for the attempts of ``key`` before this one (one at a time per pair)."""
        lock, users = self._turns.get(key) or (asyncio.Lock(), 0)
        self._turns[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._turns[key]
            if users == 1:
                del self._turns[key]
            else:
                self._turns[key] = (lock, users - 1)

    def _count(self, key: tuple[str, str]) -> tuple[int, float]:
        failures, last = self._failures.get(key, (0, 0.0))
        if failures and self.clock() - last > 2 * self.max_wait:  # quiet that long: forgotten
            return 0, 0.0
        return failures, last

    def wait(self, key: tuple[str, str], free: int | None = None) -> float:
        """Seconds before ``key`` may try again (0: now); ``free``: failures allowed before waits
        (default ``self.free``)."""
        failures, last = self._count(key)
        allowed = self.free if free is None else free
        if failures < allowed:
            return 0.0
        return max(0.0, last + min(self.max_wait, 2.0 ** (failures - allowed)) - self.clock())

    def failed(self, key: tuple[str, str]) -> None:
        """Count a failure of ``key``."""
        failures, _ = self._count(key)
        self._failures.pop(key, None)
        self._failures[key] = (failures + 1, self.clock())
        while len(self._failures) > self.max_pairs:
            self._failures.popitem(last=False)

    def succeeded(self, key: tuple[str, str]) -> None:
        """Forget ``key``'s failures."""
        self._failures.pop(key, None)

    def touch(self, key: tuple[str, str]) -> None:
        """Make now the time of ``key``'s last failure (counted already): its wait starts again."""
        failures, _ = self._count(key)
        if failures:
            self._failures.pop(key, None)
            self._failures[key] = (failures, self.clock())

    def undo(self, key: tuple[str, str]) -> None:
        """Take back one failure of ``key`` (counted before a check that then succeeded)."""
        failures, last = self._count(key)
        if failures <= 1:
            self._failures.pop(key, None)
        else:
            self._failures[key] = (failures - 1, last)


class TooManyAttempts(Exception):
    """Too many failed logins of this name from this address: try again in ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"too many failed logins: try again in {self.retry_after} s")


def client_address(request: Request) -> str:
    """The address the request came from (the proxy's, behind one that does not forward it)."""
    return request.client.host if request.client is not None else "?"


async def authenticate(ctx: WebContext, name: str, password: str, client: str, via: str = "api") -> User | None:
    """``ctx.users.authenticate`` without blocking the event loop, throttled per (name, ``client``).

    A pair verified lately is answered at once (``Users.remembered``); otherwise argon2 runs
    in a worker thread, at most ``VERIFY_AT_ONCE`` at a time (a flood of logins or wrong
    passwords waits for those, and never takes the worker threads that reads and writes run
    in). None: wrong name or password. Raises TooManyAttempts while ``ctx.throttle`` makes
    this name at this address wait (nothing is checked then). The address's count is read and
    raised in one step, before the check (no await between them): a burst of guesses, whatever
    the names, is throttled as the same guesses one after another. Failures and refusals are
    counted in the metrics (``via``: ``form`` or ``api``).
    """
    key, anyone = (name, client), ("", client)
    throttle, metrics = ctx.throttle, ctx.metrics
    async with throttle.turn(key):
        # this name from this address, and any name from it (a guesser going through names)
        wait = max(throttle.wait(key), throttle.wait(anyone, ADDRESS_FREE))
        if wait > 0:
            if metrics is not None:
                metrics.count_throttled("login")
            raise TooManyAttempts(wait)
        user = ctx.users.remembered(name, password)  # no await: nothing to count against the address
        if user is not None:
            throttle.succeeded(key)
            return user
        throttle.failed(anyone)  # counted now, before the check; taken back if it succeeds
        try:
            user = await anyio.to_thread.run_sync(ctx.users.authenticate, name, password, limiter=ctx.verifying)
        except BaseException:  # not checked (a users file that cannot be read, a cancelled request)
            throttle.undo(anyone)
            raise
        if user is None:
            throttle.failed(key)
            throttle.touch(anyone)  # its wait counts from this failure
            if metrics is not None:
                metrics.count_login_failure(via)
        else:
            throttle.succeeded(key)  # the address's count of failures stays (it is forgotten when quiet)
            throttle.undo(anyone)
        return user


async def require_api(ctx: WebContext, request: Request, role: Role) -> User:
    """The user of an API request (HTTP Basic) with at least ``role``.

    Raises HTTPException 401 (no or wrong credentials) or 403 (a role too low).
    """
    credentials = basic_credentials(request)
    try:
        user = await authenticate(ctx, *credentials, client_address(request)) if credentials is not None else None
    except TooManyAttempts as refused:
        raise HTTPException(429, str(refused), headers={"Retry-After": str(refused.retry_after)}) from None
    if user is None:
        raise HTTPException(401, "credentials required (HTTP Basic)",
                            headers={"WWW-Authenticate": 'Basic realm="redgov"'})
    if not user.may(role):
        raise _too_low(user, role)
    return user


def require(ctx: WebContext, request: Request, role: Role) -> User:
    """The logged-in user of a page request (its session) with at least ``role``.

    Raises LoginRequired (redirect to /login) or HTTPException 403 (a role too low).
    """
    user = page_user(ctx, request)
    if user is None:
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    if not user.may(role):
        raise _too_low(user, role)
    return user


def _too_low(user: User, role: Role) -> HTTPException:
    return HTTPException(403, f"{user.name} is a {user.role.label}; this needs the {role.label} role")


def _safe_next(target: Any) -> str:
    """Where to go after logging in: a local path only (never another site)."""
    if isinstance(target, str) and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def routes(ctx: WebContext) -> list[Route]:
    """``/login`` (GET the form, POST ``username`` + ``password``) and ``/logout`` (POST, CSRF-checked)."""

    async def login_form(request: Request) -> Response:
        # ?ended=<why>: a live page whose login ended was sent here; only ENDED's texts are shown
        ended = ENDED.get(request.query_params.get("ended") or "")
        return ctx.render(request, "login.html", {"next": _safe_next(request.query_params.get("next")),
                                                  "error": ended, "user": None})

    async def login(request: Request) -> Response:
        await check_csrf(request)
        form = await request.form()
        name, password = form.get("username"), form.get("password")
        target = _safe_next(form.get("next"))
        user = None
        if isinstance(name, str) and isinstance(password, str):
            try:
                user = await authenticate(ctx, name, password, client_address(request), "form")
            except TooManyAttempts as refused:
                return ctx.render(request, "login.html", {"next": target, "error": str(refused), "user": None},
                                  status_code=429, headers={"Retry-After": str(refused.retry_after)})
        if user is None:
            return ctx.render(request, "login.html", {"next": target, "error": "wrong user name or password",
                                                      "user": None}, status_code=401)
        sid, fingerprint = await run_in_threadpool(_login, ctx, user)
        request.session.clear()  # a new session (and CSRF token) at login: no fixation
        request.session.update(user=user.name, sid=sid, fp=fingerprint, at=int(time.time()))
        csrf_token(request)
        return RedirectResponse(target, status_code=303)

    async def logout(request: Request) -> Response:
        await check_csrf(request)
        sid = request.session.get("sid")
        await run_in_threadpool(_logout, ctx, sid)  # the cookie is worth nothing now
        if isinstance(sid, str) and ctx.hub is not None:  # its streams in this process end now (others: judged)
            key = web_session(ctx.governance.backplane.prefix, sid)
            ctx.hub.end_logins(lambda login: isinstance(login, Login) and login.key == key, "logout")
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    return [Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]


def login_redirect(error: LoginRequired) -> RedirectResponse:
    """The response to LoginRequired: /login, coming back to the page asked for afterwards."""
    return RedirectResponse(f"/login?next={quote(error.path, safe='/')}", status_code=303)
