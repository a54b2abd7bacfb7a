"""The users file of ``redgov serve``: names, roles and argon2 password hashes.

A JSON file ``{"users": {"<name>": {"roles": ["operator", "sre"], "hash": "$argon2id$..."}}}``
written atomically (a temporary file renamed over it) with mode 0600; a file of before custom
roles, ``{"role": "operator", ...}``, is read as that one role (and rewritten as ``roles`` by the
next ``users add`` or ``users remove``). Each user has exactly one permission role, and they
are ordered: a viewer reads; an approver also approves and rejects; an operator also
transitions, creates versions and rolls back. Any other role names (``sre``,
``release-manager``) give no permission here; they are what a RoleGate reads: every write the
web makes for a user carries ``actorRole`` (the permission role) and ``actorRoles`` (all of
them) as metadata. Passwords are hashed with argon2id (argon2-cffi's defaults); a login for an
unknown name still spends one verification, so timing does not tell which names exist.

An argon2 verification costs tens of milliseconds of CPU by design, and the JSON API takes
HTTP Basic credentials with every request, so a right (name, password) pair is remembered for
``VERIFIED_TTL_S`` seconds: as an HMAC of the password under a key made at random for the
process (never the password), tied to the stored hash it matched, so changing or removing the
user in the file ends it at once. A wrong password is never remembered: each one costs a
verification, whatever was tried before.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat as statmod
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import ConfigError, ValidationError
from ..validate import check_name

__all__ = ["MAX_ROLE_NAME", "PERMISSION_ROLES", "Role", "User", "Users", "add_user", "check_role_name", "parse_roles",
           "read_users", "remove_user"]

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("redgov: a password nobody has")
#: the longest password accepted (argon2 takes any length; this bounds the work one request can cause)
MAX_PASSWORD = 1024
#: seconds a verified (name, password) pair is remembered, and how many pairs at most
VERIFIED_TTL_S = 300.0
VERIFIED_MAX = 1024
#: the longest role name accepted (characters)
MAX_ROLE_NAME = 128
#: Unicode categories a role name may not hold: control, format (bidirectional controls, zero-width
#: characters), surrogates, private use, unassigned, and every kind of separator (spaces, line breaks)
_HIDDEN = {"Cc": "a control character", "Cf": "an invisible format character", "Cs": "a lone surrogate",
           "Co": "a private-use character", "Cn": "an unassigned code point", "Zs": "whitespace",
           "Zl": "a line separator", "Zp": "a paragraph separator"}


class Role(enum.IntEnum):
    """What a user may do; each role may do what the ones below it may."""

    VIEWER = 1
    APPROVER = 2
    OPERATOR = 3

    @classmethod
    def named(cls, name: str) -> Role:
        """The role called ``name`` (viewer, approver, operator); ValidationError otherwise."""
        try:
            return cls[str(name).upper()]
        except KeyError:
            raise ValidationError(f"role {name!r} is not one of viewer, approver, operator") from None

    @property
    def label(self) -> str:
        """The role's name as the users file and the pages write it."""
        return self.name.lower()


#: the roles that say what a user may do in ``redgov serve`` (every user has exactly one)
PERMISSION_ROLES = tuple(r.label for r in Role)


def check_role_name(value: object) -> str:
    """A role name as given: non-empty, at most ``MAX_ROLE_NAME`` characters, no whitespace,
    control or invisible characters (ValidationError names the character and where it is)."""
    if not isinstance(value, str):
        raise ValidationError(f"a role name must be a string, got {type(value).__name__} {value!r}")
    if not value:
        raise ValidationError("a role name must not be empty")
    if len(value) > MAX_ROLE_NAME:
        raise ValidationError(f"role name {value[:40]!r}... is {len(value)} characters long; the limit is "
                              f"{MAX_ROLE_NAME}")
    for position, char in enumerate(value, 1):
        category = unicodedata.category(char)
        kind = "whitespace" if char.isspace() and category not in ("Zl", "Zp") else _HIDDEN.get(category)
        if kind is not None:
            described = " ".join((f"U+{ord(char):04X}", unicodedata.name(char, ""))).rstrip()
            raise ValidationError(f"role name {value!r} contains {kind} at character {position} ({described}); "
                                  "role names may not contain whitespace, control or invisible characters")
    return value


def parse_roles(roles: str | Iterable[str]) -> tuple[Role, tuple[str, ...]]:
    """The permission role and all role names (the permission role first, then the others as given,
    each once) of ``roles``: exactly one of viewer, approver, operator (in any case), plus any custom
    role names (``check_role_name``). ValidationError otherwise, saying what is wrong."""
    given = [roles] if isinstance(roles, str) else list(roles)
    custom: list[str] = []
    permission: list[str] = []
    for value in given:
        name = check_role_name(value)
        if name.lower() in PERMISSION_ROLES:
            if name.lower() not in permission:
                permission.append(name.lower())
        elif name not in custom:
            custom.append(name)
    needs = ("a user needs exactly one of viewer, approver, operator (what it may do in redgov serve), beside "
             "any custom roles (what RoleGates read)")
    if not permission:
        shown = f"roles {', '.join(custom)}: none of them is one of viewer, approver, operator" if custom \
            else "no role given"
        raise ValidationError(f"{shown}; {needs}")
    if len(permission) > 1:
        raise ValidationError(f"roles {' and '.join(permission)} given together: a user has exactly one of viewer, "
                              "approver, operator (each may do what the ones below it may)")
    return Role.named(permission[0]), (permission[0], *custom)


@dataclass(frozen=True, slots=True)
class User:
    """A logged-in user: the name recorded as actor or approver, its permission role, and all its
    role names (``roles``: the permission role's label first, then custom roles such as ``sre``).

    ``User(name, role)`` has just the permission role; ValidationError when ``roles`` holds a
    permission role other than ``role``.
    """

    name: str
    role: Role
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", parse_roles((self.role.label, *self.roles))[1])

    def may(self, role: Role) -> bool:
        """Whether this user's role includes ``role``."""
        return self.role >= role

    @property
    def metadata(self) -> dict[str, Any]:
        """What every write made for this user carries as metadata: its permission role
        (``actorRole``) and all its roles (``actorRoles``), what RoleGates read. Never from a request."""
        return {"actorRole": self.role.label, "actorRoles": list(self.roles)}


class _Entry(NamedTuple):
    """One user of the file: who it is (its roles) and its password hash."""

    user: User
    hash: str


class Users:
    """The users of one users file, re-read when the file changes (``redgov users add`` or
    ``redgov users remove`` while serving: a removed user's logins end at its next request).

    Args:
        path: the users file (it must exist; ``redgov users add`` creates it).

    Raises:
        ConfigError: the file is missing, unreadable or malformed (the message names it).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._entries: dict[str, _Entry] = {}
        self._key = secrets.token_bytes(32)
        # (name, HMAC of the password) -> (the stored hash it matched, monotonic expiry)
        self._verified: OrderedDict[tuple[str, bytes], tuple[str, float]] = OrderedDict()
        self._reload()

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise ConfigError(f"users file {self.path}: {exc.strerror or exc}; create it with "
                              "`redgov users add NAME --role ROLE --users FILE`") from None
        if stat.st_mode & (statmod.S_IWGRP | statmod.S_IWOTH):
            raise ConfigError(f"users file {self.path} is writable by group or others (mode "
                              f"{statmod.S_IMODE(stat.st_mode):04o}): whoever can write it can make themselves an "
                              f"operator; chmod 600 {self.path}")
        # every rewrite is a new file renamed over the old one: its inode tells two rewrites of the
        # same size apart even within one tick of the file system's clock
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._entries = _read(self.path)
        self._stamp = stamp

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _entry(self, name: object) -> _Entry | None:
        with self._lock:
            self._reload()
            return self._entries.get(name) if isinstance(name, str) else None

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``password`` is right for ``name``, else None.

        A wrong password and an unknown name cost the same (one argon2 verification); a right
        pair verified in the last ``VERIFIED_TTL_S`` seconds against the same stored hash is
        answered from memory. Thread-safe.
        """
        entry = self._entry(name)
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return None
        if entry is None:
            with contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
                _HASHER.verify(_DUMMY, password)
            return None
        key = self._pair(name, password)
        now = time.monotonic()
        with self._lock:
            known = self._verified.get(key)
            if known is not None and known[0] == entry.hash and known[1] > now:
                return entry.user
        try:
            _HASHER.verify(entry.hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        with self._lock:
            self._verified[key] = (entry.hash, now + VERIFIED_TTL_S)
            self._verified.move_to_end(key)
            while len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)
        return entry.user

    def remembered(self, name: str, password: str) -> User | None:
        """The user when this pair was verified in the last ``VERIFIED_TTL_S`` seconds against the
        hash the file holds now; None otherwise, which says nothing about the password (ask
        ``authenticate``). Never runs argon2: microseconds, safe on an event loop."""
        if not isinstance(name, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return None
        key = self._pair(name, password)
        with self._lock:
            self._reload()
            entry = self._entries.get(name)
            known = self._verified.get(key)
            if entry is None or known is None or known[0] != entry.hash or known[1] <= time.monotonic():
                return None
        return entry.user

    def fingerprint(self, name: str) -> str | None:
        """A digest of ``name``'s stored hash (None: no such user): it changes with the password
        (and with every ``users add``, which hashes again), so a login that recorded it ends then,
        and when the user is removed."""
        found = self.current(name)
        return None if found is None else found[1]

    def current(self, name: str) -> tuple[User, str] | None:
        """The user called ``name`` now and the fingerprint of its password hash, read together
        (None: no such user, e.g. removed since a login)."""
        entry = self._entry(name)
        return None if entry is None else (entry.user, _fingerprint(entry.hash))

    def _pair(self, name: str, password: str) -> tuple[str, bytes]:
        return name, hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def get(self, name: str) -> User | None:
        """The user called ``name`` now (a session of a user removed since is no longer valid)."""
        entry = self._entry(name)
        return None if entry is None else entry.user


def _fingerprint(stored: str) -> str:
    return hashlib.sha256(stored.encode()).hexdigest()[:32]


def _entry_roles(path: Path, name: str, entry: dict[str, Any]) -> tuple[Role, tuple[str, ...]]:
    """The roles of one entry: ``roles`` (a list), or the single ``role`` of a file written before
    custom roles. ValidationError for a bad role; ConfigError for an entry that says two things."""
    if "roles" not in entry:
        return parse_roles(entry.get("role", ""))
    roles = entry["roles"]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ConfigError(f"users file {path}: user {name!r} has roles {roles!r}; expected a list of role names")
    role, all_roles = parse_roles(roles)
    old = entry.get("role")
    if old is not None and (not isinstance(old, str) or old.lower() != role.label):
        raise ConfigError(f"users file {path}: user {name!r} has role {old!r} but roles {roles!r}; "
                          "keep one of them (roles)")
    return role, all_roles


def _read(path: Path) -> dict[str, _Entry]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"users file {path} cannot be read: {exc}") from None
    users = raw.get("users") if isinstance(raw, dict) else None
    if not isinstance(users, dict):
        raise ConfigError(f'users file {path}: expected {{"users": {{...}}}}')
    out: dict[str, _Entry] = {}
    for name, entry in users.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise ConfigError(f"users file {path}: user {name!r} has no password hash")
        try:
            checked = check_name(name, "user name")
            role, roles = _entry_roles(path, name, entry)
            out[checked] = _Entry(User(checked, role, roles), entry["hash"])
        except ValidationError as exc:
            raise ConfigError(f"users file {path}: user {name!r}: {exc}") from None
    return out


def read_users(path: str | os.PathLike[str]) -> list[User]:
    """The users of the file at ``path``, by name (never their hashes); ConfigError when it is
    missing, unreadable or malformed."""
    target = Path(path)
    if not target.exists():
        raise ConfigError(f"users file {target} does not exist; create it with "
                          "`redgov users add NAME --role ROLE --users FILE`")
    return [entry.user for _, entry in sorted(_read(target).items())]


def _rewrite(target: Path, change: Callable[[dict[str, _Entry]], bool]) -> None:
    """Apply ``change`` to the users of ``target`` (an empty file when there is none) and write the
    result, atomically (a temporary file, fsynced, renamed over it, mode 0600), one writer at a
    time (a lock on the folder); nothing is written when ``change`` returns False."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(target.parent, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"users file {target}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # two `users add` at once: one after the other, neither lost
        current = _read(target) if target.exists() else {}
        if not change(current):
            return
        document = {"users": {n: {"roles": list(e.user.roles), "hash": e.hash} for n, e in current.items()}}
        try:
            handle, temporary = tempfile.mkstemp(prefix=".users-", dir=target.parent)
        except OSError as exc:
            raise ConfigError(f"users file {target} cannot be written: {exc.strerror or exc}") from None
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, target)
            os.fsync(folder)  # the rename itself survives a crash
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise ConfigError(f"users file {target} cannot be written: {exc.strerror or exc}") from None
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    finally:
        os.close(folder)  # and the lock with it


def add_user(path: str | os.PathLike[str], name: str, role: str | Iterable[str], password: str) -> User:
    """Add ``name`` (or replace its roles and password) in the users file, creating the file (mode 0600).

    ``role``: one role name, or several: exactly one of viewer, approver, operator, plus any custom
    role names (``parse_roles``). The file is rewritten atomically, one writer at a time. Raises
    ValidationError for a name ``check_name`` refuses (blank, or holding a control, bidirectional,
    zero-width or other invisible character: the message names it and its index), a blank
    password, roles ``parse_roles`` refuses or a password over 1024 characters; ConfigError when
    the file exists but cannot be read (a name stored before such names were refused included).
    """
    name = check_name(name, "user name")
    chosen, roles = parse_roles(role)
    if not isinstance(password, str) or not password.strip():
        raise ValidationError("the password must not be empty")
    if len(password) > MAX_PASSWORD:
        raise ValidationError(f"the password is {len(password)} characters long; the limit is {MAX_PASSWORD}")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("the password is not valid text (bytes that are not UTF-8 were read)") from None
    user = User(name, chosen, roles)
    entry = _Entry(user, _HASHER.hash(password))

    def put(current: dict[str, _Entry]) -> bool:
        current[name] = entry
        return True

    _rewrite(Path(path), put)
    return user


def remove_user(path: str | os.PathLike[str], name: str) -> bool:
    """Remove ``name`` from the users file: True when it was there, False when it was not (nothing
    is written then). Its logins end at their next request, as after a password change: a login
    holds the fingerprint of the password hash, and a removed user has none (a user added again
    under the name gets a new hash). ConfigError when the file is missing or cannot be read."""
    target = Path(path)
    if not target.exists():
        raise ConfigError(f"users file {target} does not exist")
    removed: list[bool] = []

    def drop(current: dict[str, _Entry]) -> bool:
        removed.append(current.pop(name, None) is not None)
        return removed[0]

    _rewrite(target, drop)
    return removed[0]
