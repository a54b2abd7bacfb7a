"""The users file's password checks: argon2 once per right (name, password), every time for a wrong one.

``Users.authenticate`` remembers a right pair for a while (the JSON API sends Basic credentials
with every request); these tests count the argon2 verifications it makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from redgov.web import add_user
from redgov.web import users as users_module
from redgov.web.users import Role, User, Users


class CountingHasher(PasswordHasher):
    """A cheap argon2 hasher that counts its verifications."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified = 0

    def verify(self, hash: Any, password: Any) -> bool:  # noqa: A002 - argon2-cffi's parameter name
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    counting = CountingHasher()
    monkeypatch.setattr(users_module, "_HASHER", counting)
    return counting


@pytest.fixture
def users(tmp_path: Path, hasher: CountingHasher) -> Users:
    path = tmp_path / "users.json"
    add_user(path, "amy", "approver", "right")
    return Users(path)


def test_a_right_password_is_verified_once_then_remembered(users: Users, hasher: CountingHasher) -> None:
    for _ in range(5):
        assert users.authenticate("amy", "right") == User("amy", Role.APPROVER)
    assert hasher.verified == 1


def test_wrong_passwords_and_unknown_names_always_cost_a_verification(users: Users, hasher: CountingHasher) -> None:
    assert users.authenticate("amy", "right") is not None
    for attempt in ("wrong", "Right", "right ", ""):
        assert users.authenticate("amy", attempt) is None
    assert users.authenticate("nobody", "right") is None
    assert users.authenticate("nobody", "right") is None
    assert hasher.verified == 1 + 4 + 2
    assert users.authenticate("amy", "x" * (users_module.MAX_PASSWORD + 1)) is None  # refused before argon2
    assert hasher.verified == 7


def test_a_changed_password_or_role_or_a_removed_user_ends_what_was_remembered(tmp_path: Path,
                                                                              hasher: CountingHasher) -> None:
    path = tmp_path / "users.json"
    add_user(path, "amy", "approver", "right")
    add_user(path, "bob", "viewer", "bobs")
    users = Users(path)
    assert users.authenticate("amy", "right") is not None
    add_user(path, "amy", "approver", "new")  # another hash for amy
    assert users.authenticate("amy", "right") is None
    assert users.authenticate("amy", "new") == User("amy", Role.APPROVER)
    add_user(path, "amy", "operator", "new")  # the same password, hashed again, with a new role
    assert users.authenticate("amy", "new") == User("amy", Role.OPERATOR)
    path.write_text('{"users": {}}\n', encoding="utf-8")  # everyone removed
    assert users.authenticate("amy", "new") is None


def test_remembered_pairs_expire_and_are_bounded(users: Users, hasher: CountingHasher,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(users_module.time, "monotonic", lambda: clock[0])
    assert users.authenticate("amy", "right") is not None
    clock[0] += users_module.VERIFIED_TTL_S - 1
    assert users.authenticate("amy", "right") is not None
    assert hasher.verified == 1
    clock[0] += 2
    assert users.authenticate("amy", "right") is not None
    assert hasher.verified == 2

    monkeypatch.setattr(users_module, "VERIFIED_MAX", 3)
    for k in range(5):
        add_user(users.path, f"u{k}", "viewer", f"pw{k}")
        assert users.authenticate(f"u{k}", f"pw{k}") is not None
    assert len(users._verified) == 3
    assert not any(password == b"right" for _, password in users._verified)  # an HMAC, never the password


def test_remembered_answers_only_pairs_verified_lately_and_never_verifies(tmp_path: Path,
                                                                           hasher: CountingHasher) -> None:
    path = tmp_path / "users.json"
    add_user(path, "amy", "approver", "right")
    users = Users(path)
    assert users.remembered("amy", "right") is None  # not verified yet: unknown, not "wrong"
    assert hasher.verified == 0
    assert users.authenticate("amy", "right") is not None
    assert users.remembered("amy", "right") == User("amy", Role.APPROVER)
    assert users.remembered("amy", "wrong") is None
    assert users.remembered("nobody", "right") is None
    assert hasher.verified == 1
    add_user(path, "amy", "approver", "changed")
    assert users.remembered("amy", "right") is None
