"""The users file of ``redgov serve``: names, roles and argon2 password hashes.

A JSON file ``{"users": {"<name>": {"role": "viewer|approver|operator", "hash": "$argon2id$..."}}}``
written atomically (a temporary file renamed over it) with mode 0600. Roles are ordered:
a viewer reads; an approver also approves and rejects; an operator also transitions,
creates versions and rolls back. Passwords are hashed with argon2id (argon2-cffi's
defaults); a login for an unknown name still spends one verification, so timing does not
tell which names exist.

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
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import ConfigError, ValidationError
from ..validate import check_name

__all__ = ["Role", "User", "Users", "add_user"]

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("redgov: a password nobody has")
#: the longest password accepted (argon2 takes any length; this bounds the work one request can cause)
MAX_PASSWORD = 1024
#: seconds a verified (name, password) pair is remembered, and how many pairs at most
VERIFIED_TTL_S = 300.0
VERIFIED_MAX = 1024


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


@dataclass(frozen=True, slots=True)
class User:
    """A logged-in user: the name recorded as actor or approver, and the role."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """Whether this user's role includes ``role``."""
        return self.role >= role


class Users:
    """The users of one users file, re-read when the file changes (``redgov users add`` while serving).

    Args:
        path: the users file (it must exist; ``redgov users add`` creates it).

    Raises:
        ConfigError: the file is missing, unreadable or malformed (the message names it).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, tuple[Role, str]] = {}
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
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._entries = _read(self.path)
        self._stamp = stamp

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``password`` is right for ``name``, else None.

        A wrong password and an unknown name cost the same (one argon2 verification); a right
        pair verified in the last ``VERIFIED_TTL_S`` seconds against the same stored hash is
        answered from memory. Thread-safe.
        """
        with self._lock:
            self._reload()
            entry = self._entries.get(name) if isinstance(name, str) else None
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return None
        if entry is None:
            with contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
                _HASHER.verify(_DUMMY, password)
            return None
        role, stored = entry
        key = self._pair(name, password)
        now = time.monotonic()
        with self._lock:
            known = self._verified.get(key)
            if known is not None and known[0] == stored and known[1] > now:
                return User(name, role)
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        with self._lock:
            self._verified[key] = (stored, now + VERIFIED_TTL_S)
            self._verified.move_to_end(key)
            while len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)
        return User(name, role)

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
            if entry is None or known is None or known[0] != entry[1] or known[1] <= time.monotonic():
                return None
        return User(name, entry[0])

    def fingerprint(self, name: str) -> str | None:
        """A digest of ``name``'s stored hash (None: no such user): it changes with the password,
        so a login that recorded it ends when the password changes."""
        with self._lock:
            self._reload()
            entry = self._entries.get(name)
        return None if entry is None else hashlib.sha256(entry[1].encode()).hexdigest()[:32]

    def _pair(self, name: str, password: str) -> tuple[str, bytes]:
        return name, hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def get(self, name: str) -> User | None:
        """The user called ``name`` now (a session of a user removed since is no longer valid)."""
        with self._lock:
            self._reload()
            entry = self._entries.get(name)
        return None if entry is None else User(name, entry[0])


def _read(path: Path) -> dict[str, tuple[Role, str]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"users file {path} cannot be read: {exc}") from None
    users = raw.get("users") if isinstance(raw, dict) else None
    if not isinstance(users, dict):
        raise ConfigError(f'users file {path}: expected {{"users": {{...}}}}')
    out: dict[str, tuple[Role, str]] = {}
    for name, entry in users.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise ConfigError(f"users file {path}: user {name!r} has no password hash")
        try:
            out[check_name(name, "user name")] = (Role.named(entry.get("role", "")), entry["hash"])
        except ValidationError as exc:
            raise ConfigError(f"users file {path}: {exc}") from None
    return out


def add_user(path: str | os.PathLike[str], name: str, role: str, password: str) -> User:
    """Add ``name`` (or replace its role and password) in the users file, creating the file (mode 0600).

    The file is rewritten atomically (a temporary file, fsynced, renamed over it), one writer at
    a time (a lock on its folder). Raises ValidationError for a blank name or password,
    an unknown role or a password over 1024 characters; ConfigError when the file exists but
    cannot be read.
    """
    name = check_name(name, "user name")
    chosen = Role.named(role)
    if not isinstance(password, str) or not password.strip():
        raise ValidationError("the password must not be empty")
    if len(password) > MAX_PASSWORD:
        raise ValidationError(f"the password is {len(password)} characters long; the limit is {MAX_PASSWORD}")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("the password is not valid text (bytes that are not UTF-8 were read)") from None
    target = Path(path)
    hashed = _HASHER.hash(password)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(target.parent, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"users file {target}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # two `users add` at once: one after the other, neither lost
        current = _read(target) if target.exists() else {}
        document = {"users": {n: {"role": r.label, "hash": h} for n, (r, h) in current.items()}}
        document["users"][name] = {"role": chosen.label, "hash": hashed}
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
    return User(name, chosen)
