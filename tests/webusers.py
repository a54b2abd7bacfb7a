"""The web tests' users: one per role, their passwords, a cheap hasher, HTTP Basic headers."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from redgov.web import add_user
from redgov.web import users as users_module

PASSWORDS = {"vic": "viewer-pw", "amy": "approver-pw", "olga": "operator-pw", "sam": "sre-pw", "ada": "ada-pw"}
ROLES = {"vic": "viewer", "amy": "approver", "olga": "operator"}
#: users with custom roles beside their permission role (``write_users(..., custom=True)``)
CUSTOM_ROLES = {"sam": ("operator", "sre"), "ada": ("approver", "sre")}


def basic(name: str, password: str | None = None) -> dict[str, str]:
    """The Authorization header of ``name`` (with its own password unless ``password`` is given)."""
    return basic_pair(name, PASSWORDS[name] if password is None else password)


def basic_pair(name: str, password: str) -> dict[str, str]:
    """The Authorization header of any ``name`` and ``password``."""
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_users(path: Path, monkeypatch: pytest.MonkeyPatch, *, custom: bool = False) -> Path:
    """A users file at ``path`` with vic (viewer), amy (approver) and olga (operator), and with
    ``custom`` also sam (operator, sre) and ada (approver, sre); argon2 made cheap for the test
    (the parameters are stored in each hash, so checking still works)."""
    monkeypatch.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    for name, role in ROLES.items():
        add_user(path, name, role, PASSWORDS[name])
    for name, roles in CUSTOM_ROLES.items() if custom else ():
        add_user(path, name, roles, PASSWORDS[name])
    return path
