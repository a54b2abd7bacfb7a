"""``redgov serve`` (the operator web UI and JSON API) and ``redgov users add|list|remove`` (its users file).

``serve`` runs uvicorn with ``redgov.web.create_app`` around the Governance this command line
builds (url, prefix and ``--config`` gates and policies, as for every command). It listens on
loopback only unless ``--allow-remote``: the server has no TLS, so on any other address
passwords (HTTP Basic, the login form) and session cookies would cross the network in clear.
Requests must name in ``Host`` a loopback name or one given with ``--allowed-host`` (400
otherwise, against DNS rebinding); ``--allow-remote`` without ``--allowed-host`` refuses to
start (exit 2) rather than answer any Host.
The session secret is ``--secret-file``, else ``$REDGOV_WEB_SECRET``, else ``<users file>.secret``
(made with 64 random characters, mode 0600, on first serve); a secret file readable by group
or others is refused. Ctrl-C (or SIGTERM) stops it cleanly: exit 0.

``users add`` reads the password from standard input (one line; on a terminal it asks twice
without echo) and never prints it; its ``--role`` is repeatable: exactly one of viewer, approver,
operator, plus any custom roles (``sre``) that RoleGates read from the logged-in user's metadata.
``users list`` prints names and roles, never hashes; ``users remove`` ends the user's logins.
The web extra (``pip install 'redgov[web]'``) is imported only by these commands.
"""

from __future__ import annotations

import argparse
import copy
import errno
import getpass
import ipaddress
import os
import re
import secrets
import signal
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import ConfigError
from .context import Context
from .parser import UsageError

__all__ = ["COMMANDS", "allowed_hosts", "declare", "read_secret"]

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
SECRET_ENV = "REDGOV_WEB_SECRET"
#: the Host names a loopback server answers (any port)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: a DNS name as a Host header carries it (ASCII labels; IDNs in their xn-- form)
_HOST_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")

SERVE_DETAILS = f"""\
Serves every tenant/environment scope of the prefix: pages for people (log in at /login), a JSON
API under /api/ (HTTP Basic; the schema at /api/openapi.json) and Prometheus metrics at /metrics
(no login). Users and roles come from --users (`redgov users add`): viewer reads; approver also
approves and rejects; operator also transitions, creates versions and rolls back. A user's custom
roles (`--role sre`) are what RoleGates judge: every transition made in serve carries the user's
roles as metadata actorRole/actorRoles, never a role the request names.

The session secret is --secret-file, else ${SECRET_ENV}, else USERS.secret next to the users file
(created with mode 0600 on first serve). Only loopback addresses unless --allow-remote: there is
no TLS here; to serve others, put a TLS proxy in front, pass --allow-remote and --secure-cookies
(and --trusted-proxy ADDR, so that failed logins are counted per client, not per proxy), and
--allowed-host NAME for each host name clients use (the proxy's public name). Requests must name
in Host a loopback name (localhost, 127.0.0.1, [::1]) or an --allowed-host: any other Host gets
400, so a site using DNS rebinding cannot reach the server from its visitors' browsers.
--allow-remote refuses to start without --allowed-host (it would answer any Host).

  redgov users add ana --role operator --role sre --users users.json   # asks for the password
  redgov --url redis://localhost:6379/0 serve --users users.json
  redgov serve --users users.json --host 0.0.0.0 --allow-remote --secure-cookies \\
      --trusted-proxy 10.0.0.2 --allowed-host ops.example.com   # behind a TLS proxy at 10.0.0.2
"""

USERS_DETAILS = """\
The users file is JSON (names, roles, argon2 password hashes), written with mode 0600. `add` reads
the password from standard input, one line (on a terminal it asks twice, without echo). Each user
has exactly one of the roles viewer, approver, operator (what it may do in `redgov serve`) and any
custom roles (`--role sre`, repeatable): RoleGates judge them, as the logged-in user's roles.
`remove` ends the user's logins at their next request.

  printf '%s\\n' "$PASSWORD" | redgov users add ana --role operator --role sre --users users.json
  redgov users remove ana --users users.json
"""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {value}")
    return value


def declare(command: Callable[..., argparse.ArgumentParser], actions: Callable[..., Any]) -> None:
    """Add ``serve`` and ``users add|list|remove`` to the parser (``command`` and ``actions`` from ``build_parser``)."""
    p = command("serve", "serve the operator web UI, the JSON API and /metrics (Ctrl-C stops)", SERVE_DETAILS)
    p.add_argument("--users", required=True, metavar="FILE", help="the users file (`redgov users add`; required)")
    p.add_argument("--host", default=DEFAULT_HOST, metavar="H",
                   help=f"address to listen on (default {DEFAULT_HOST}; not loopback: needs --allow-remote)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, metavar="N",
                   help=f"port to listen on (default {DEFAULT_PORT}; 0: any free port, printed)")
    p.add_argument("--secret-file", dest="secret_file", metavar="F",
                   help=f"file holding the secret that signs session cookies, 32+ characters, mode 0600 (default: "
                        f"${SECRET_ENV}, else USERS.secret, created on first serve)")
    p.add_argument("--allow-remote", dest="allow_remote", action="store_true",
                   help="listen on an address other than loopback (there is no TLS: put a TLS proxy in front); "
                        "needs --allowed-host")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                   help="a host name (or IP address) requests may name in Host besides the loopback ones; "
                        "repeatable; any other Host gets 400 (DNS rebinding)")
    p.add_argument("--secure-cookies", dest="secure_cookies", action="store_true",
                   help="mark the session cookie Secure (the browser reaches the server over https, via a proxy)")
    p.add_argument("--trusted-proxy", dest="trusted_proxy", action="append", default=[], metavar="ADDR",
                   help="a proxy whose X-Forwarded-For/-Proto are believed (repeatable; default: none, so no "
                        "client can choose the address the login throttle counts)")
    p.add_argument("--cache", action="store_true",
                   help="serve state reads from a local cache that Redis invalidates (connect(cache=True))")

    p = command("users", "add, list or remove the users of `redgov serve` (the users file)", USERS_DETAILS)
    action = actions(p, "users_command", USERS_DETAILS)
    q = action("add", "add a user, or replace its roles and password (the password from standard input)")
    q.add_argument("name", metavar="NAME", help="the user's name (recorded as actor or approver)")
    q.add_argument("--role", required=True, action="append", dest="roles", metavar="ROLE",
                   help="repeatable; exactly one of viewer (reads), approver (also approves and rejects), operator "
                        "(also transitions, creates versions and rolls back), plus any custom roles such as sre "
                        "(no permission of their own; RoleGates read them) (required)")
    q.add_argument("--users", required=True, metavar="FILE", help="the users file (created, mode 0600; required)")
    q = action("list", "list the users and their roles (never the password hashes)")
    q.add_argument("--users", required=True, metavar="FILE", help="the users file (required)")
    q = action("remove", "remove a user; its logins end at their next request")
    q.add_argument("name", metavar="NAME", help="the user's name")
    q.add_argument("--users", required=True, metavar="FILE", help="the users file (required)")


# -- users ------------------------------------------------------------------------------------


def _password(name: str) -> str:
    """The new password: one line of standard input, or asked twice without echo on a terminal."""
    stdin = sys.stdin
    if stdin is None:
        raise UsageError("give the password on standard input (one line)")
    if stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("the same again: ") != first:
            raise UsageError("the two passwords differ; nothing was changed")
        return first
    line = stdin.readline()
    return line[:-1].rstrip("\r") if line.endswith("\n") else line


def cmd_users(ctx: Context) -> int:
    from ..web.users import add_user, parse_roles, read_users, remove_user

    a, out = ctx.args, ctx.out
    path = Path(a.users)
    if a.users_command == "list":
        users = read_users(path)
        rows = [(user.name, ", ".join(user.roles)) for user in users]
        text = out.table(rows, ["user", "roles"]) if rows else f"no users in {path}"
        out.emit({"users": [{"name": u.name, "role": u.role.label, "roles": list(u.roles)} for u in users],
                  "count": len(users), "file": str(path)}, text)
        return 0
    if a.users_command == "remove":
        if not remove_user(path, a.name):
            raise UsageError(f"there is no user {a.name!r} in {path}; nothing was changed "
                             f"(`redgov users list --users {path}` shows who there is)")
        out.emit({"user": a.name, "removed": True, "file": str(path)},
                 f"removed user {a.name} from {path}; its logins end at their next request")
        return 0
    parse_roles(a.roles)  # refused before the password is asked for
    replaced = path.exists() and any(u.name == a.name for u in read_users(path))
    password = _password(a.name)
    user = add_user(path, a.name, a.roles, password)
    verb = "replaced" if replaced else "added"
    out.emit({"user": user.name, "role": user.role.label, "roles": list(user.roles), "replaced": replaced,
              "file": str(path)}, f"{verb} user {user.name} ({', '.join(user.roles)}) in {path}")
    return 0


# -- serve ------------------------------------------------------------------------------------


def read_secret(path: Path) -> str:
    """The session secret in ``path``; ConfigError when it is missing, empty, a symbolic link, owned by
    another user, or open to group or others (checked on the file opened, not on its name)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"secret file {path} is a symbolic link; name the file itself") from None
        raise ConfigError(f"secret file {path}: {exc.strerror or exc}") from None
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(file.fileno())
        if info.st_uid != os.geteuid():
            raise ConfigError(f"secret file {path} belongs to another user (uid {info.st_uid}); whoever wrote it "
                              "can forge sessions: use a file of your own")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"secret file {path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                              f"anyone reading it can forge sessions: chmod 600 {path}")
        try:
            secret = file.read().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"secret file {path} cannot be read: {exc}") from None
    if not secret:
        raise ConfigError(f"secret file {path} is empty")
    return secret


def _secret(args: argparse.Namespace) -> str:
    if args.secret_file:
        return read_secret(Path(args.secret_file))
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = Path(str(args.users) + ".secret")
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_secret(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the secret file {path}: {exc.strerror or exc}") from None
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(secrets.token_urlsafe(48) + "\n")
    return read_secret(path)


def allowed_hosts(names: list[str], allow_remote: bool) -> tuple[str, ...]:
    """The Host names the server answers: the loopback ones and ``names`` (``--allowed-host``),
    lower case, an IPv6 address without brackets. UsageError for a name that is no host name or IP
    address (a port, a scheme, a pattern), and for ``allow_remote`` without any name."""
    found: list[str] = []
    for given in names:
        name = given.strip().lower()
        bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        try:
            found.append(str(ipaddress.ip_address(bare)))
            continue
        except ValueError:
            pass
        if _HOST_NAME.fullmatch(name) is None or len(name) > 253:
            raise UsageError(f"--allowed-host {given!r} is not a host name or IP address: give the name alone, "
                             "without scheme, port, path or wildcard (e.g. --allowed-host ops.example.com)")
        found.append(name)
    if allow_remote and not found:
        raise UsageError("--allow-remote needs --allowed-host NAME (repeatable): the host names clients reach this "
                         "server by, e.g. the TLS proxy's public name. Without them any Host header would be "
                         "answered, so a web site using DNS rebinding could reach the server from its visitors' "
                         "browsers; nothing was started")
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, *found)))


def _listen(host: str, port: int, allow_remote: bool) -> socket.socket:
    """A listening socket on ``host``:``port``; UsageError for a non-loopback address without ``allow_remote``."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = found[0]
    remote = [a[4][0] for a in found if not ipaddress.ip_address(str(a[4][0]).split("%")[0]).is_loopback]
    if remote and not allow_remote:
        raise UsageError(f"--host {host} is not a loopback address ({remote[0]}): redgov serve has no TLS, so "
                         "passwords and session cookies would cross the network in clear; serve it behind a TLS "
                         "proxy and pass --allow-remote (and --secure-cookies)")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, every line on stderr (stdout carries the one line or JSON object of the command)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return config


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_serve(ctx: Context) -> int:
    a = ctx.args
    hosts = allowed_hosts(a.allowed_hosts, a.allow_remote)
    sock = _listen(a.host, a.port, a.allow_remote)
    try:
        from ..web import Users, create_app  # ConfigError without the web extra

        try:
            import uvicorn
        except ImportError as missing:
            raise ConfigError(f"redgov serve needs the web extra: pip install 'redgov[web]' ({missing})") from None
        if len(Users(a.users)) == 0:
            raise ConfigError(f"users file {a.users} has no users: add one with `redgov users add`")
        secret = _secret(a)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        url = f"http://{shown}:{port}/"
        with ctx.governance(archive=True, cache=a.cache) as gov:
            if a.allow_remote and not a.secure_cookies:
                ctx.out.warn("--allow-remote without --secure-cookies: the session cookie may cross the network "
                             "in clear unless every client reaches the server over https")
            app = create_app(gov, a.users, secret, https_only=a.secure_cookies, allowed_hosts=hosts)
            server = uvicorn.Server(uvicorn.Config(
                app, log_config=_log_config(), lifespan="on", server_header=False, timeout_graceful_shutdown=5,
                proxy_headers=bool(a.trusted_proxy), forwarded_allow_ips=a.trusted_proxy or None))
            ctx.out.emit({"url": url, "prefix": ctx.prefix, "users": str(a.users)},
                         f"redgov serve: {url} (prefix {ctx.prefix}, users {a.users}); Ctrl-C stops")
            previous = signal.signal(signal.SIGTERM, _interrupt)  # uvicorn re-raises it after its shutdown
            try:
                server.run(sockets=[sock])
            except KeyboardInterrupt:
                pass
            finally:
                signal.signal(signal.SIGTERM, previous)
    finally:
        sock.close()
    return 0


COMMANDS: dict[str, Callable[[Context], int]] = {"serve": cmd_serve, "users": cmd_users}
