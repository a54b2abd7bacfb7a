"""RoleGates behind ``redgov serve``: the logged-in user's roles from the users file decide, never a
role the request names.

A Governance with ``RoleGate("sre", to_state=Ramping)`` (the README's quick start) behind the app:
an operator whose users-file roles include ``sre`` ramps through the JSON API and the page; an
operator without it is refused (409, ApprovalRequiredError) and nothing is written; a body or form
that names ``actorRole``/``actorRoles``/``metadata`` changes nothing. Custom roles grant no
permission of their own (an approver with ``sre`` still may not move anything), and removing a
user from the file ends its logins and its API access at once.

The tests that ramp rely on ``RoleGate.decide`` approving when any of ``metadata["actorRoles"]``
is allowed (redgov/gates.py); without it they fail with the refusal the operator without ``sre`` gets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import redgov
from redgov import Governance, RoleGate
from redgov import LifecycleState as S
from redgov.web import add_user, create_app
from redgov.web.users import remove_user

from .conftest import delete_prefix
from .webusers import PASSWORDS, basic, write_users

SECRET = "r" * 48
SAM_METADATA = {"actorRole": "operator", "actorRoles": ["operator", "sre"]}
#: what a request may try to claim; none of it may reach the transition's metadata
FORGED = {"actorRole": "sre", "actorRoles": ["sre"], "actor": "mallory",
          "metadata": {"actorRole": "sre", "actorRoles": ["sre"]}}


@pytest.fixture
def users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return write_users(tmp_path / "users.json", monkeypatch, custom=True)


@pytest.fixture
def gov(redis_url: str, prefix: str) -> Iterator[Governance]:
    governance = Governance(redgov.connect(redis_url, prefix=prefix), gates=[RoleGate("sre", to_state=S.RAMPING)])
    yield governance
    delete_prefix(governance.backplane.client, prefix)
    governance.close()


@pytest.fixture
def app(gov: Governance, users_file: Path) -> Any:
    return create_app(gov, users_file, SECRET, live=False)


@pytest.fixture
def running(gov: Governance) -> str:
    """An experiment in Running: the next move, into Ramping, is the RoleGate's."""
    gov.create("checkout", actor="seed")
    for target in (S.PENDING_APPROVAL, S.APPROVED, S.RUNNING):
        gov.transition("checkout", target, actor="seed")
    return "checkout"


def snapshot(gov: Governance, name: str) -> tuple[Any, ...]:
    return gov.state(name), len(gov.history(name)), len(gov.backplane.approvals(name))


def csrf_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert found, "no csrf meta in the page"
    return found.group(1)


def login(app: Any, name: str) -> TestClient:
    client = TestClient(app)
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"username": name, "password": PASSWORDS[name], "csrf": token, "next": "/"},
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client


def post(client: TestClient, url: str, data: dict[str, Any]) -> Any:
    return client.post(url, data={**data, "csrf": csrf_of(client.get("/").text)}, follow_redirects=False)


def error_text(page: str) -> str:
    found = re.search(r'data-testid="error">([^<]*)<', page)
    assert found, "no [data-testid=error] on the page"
    return found.group(1)


# -- the JSON API -----------------------------------------------------------------------------


def test_api_an_operator_with_the_sre_role_ramps(app: Any, gov: Governance, running: str) -> None:
    client = TestClient(app)
    done = client.post(f"/api/experiments/{running}/transition", json={"to": "Ramping", "reason": "ramp"},
                       headers=basic("sam"))
    assert done.status_code == 200, done.text
    record = done.json()
    assert (record["actor"], record["to_state"], record["metadata"]) == ("sam", "Ramping", SAM_METADATA)
    state = gov.state(running)
    assert state is not None and state.state is S.RAMPING and state.last_modified_by == "sam"
    (approval,) = [a for a in gov.backplane.approvals(running) if a.gate == "roleBased:*->Ramping"]
    assert (approval.approver, approval.approved, approval.transition_id) == ("sam", True, record["transition_id"])


def test_api_an_operator_without_the_sre_role_is_refused(app: Any, gov: Governance, running: str) -> None:
    client = TestClient(app)
    before = snapshot(gov, running)
    refused = client.post(f"/api/experiments/{running}/transition", json={"to": "Ramping"}, headers=basic("olga"))
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "ApprovalRequiredError"
    assert "sre" in refused.json()["message"] and "operator" in refused.json()["message"]
    assert snapshot(gov, running) == before


def test_api_roles_named_in_the_body_are_ignored(app: Any, gov: Governance, running: str) -> None:
    client = TestClient(app)
    before = snapshot(gov, running)
    refused = client.post(f"/api/experiments/{running}/transition", json={"to": "Ramping", **FORGED},
                          headers=basic("olga"))
    assert refused.status_code == 409 and refused.json()["error"] == "ApprovalRequiredError", refused.text
    assert snapshot(gov, running) == before

    # the other way round: a body cannot take sam's roles away either
    done = client.post(f"/api/experiments/{running}/transition",
                       json={"to": "Ramping", "actorRole": "viewer", "actorRoles": [],
                             "metadata": {"actorRole": "viewer", "actorRoles": []}},
                       headers=basic("sam"))
    assert done.status_code == 200, done.text
    assert (done.json()["actor"], done.json()["metadata"]) == ("sam", SAM_METADATA)


def test_api_custom_roles_grant_no_permission(app: Any, gov: Governance, running: str) -> None:
    client = TestClient(app)
    before = snapshot(gov, running)
    refused = client.post(f"/api/experiments/{running}/transition", json={"to": "Ramping"}, headers=basic("ada"))
    assert refused.status_code == 403 and "ada is a approver" in refused.json()["message"]  # sre or not
    assert snapshot(gov, running) == before


def test_every_transition_records_the_users_roles(app: Any, gov: Governance) -> None:
    client = TestClient(app)
    gov.create("search", actor="seed")
    for name, expected in (("olga", {"actorRole": "operator", "actorRoles": ["operator"]}), ("sam", SAM_METADATA)):
        target = "PendingApproval" if name == "olga" else "Draft"
        done = client.post("/api/experiments/search/transition", json={"to": target, **FORGED}, headers=basic(name))
        assert done.status_code == 200, done.text
        assert done.json()["metadata"] == expected
    assert [t.metadata for t in gov.history("search", newest_first=True, limit=2)] == [
        SAM_METADATA, {"actorRole": "operator", "actorRoles": ["operator"]}]


# -- the pages --------------------------------------------------------------------------------


def test_page_an_operator_with_the_sre_role_ramps(app: Any, gov: Governance, running: str) -> None:
    client = login(app, "sam")
    done = post(client, f"/experiments/{running}", {"op": "transition", "to": "Ramping", "reason": "ramp"})
    assert done.status_code == 303, done.text
    state = gov.state(running)
    assert state is not None and state.state is S.RAMPING
    (moved,) = gov.history(running, newest_first=True, limit=1)
    assert (moved.actor, moved.metadata) == ("sam", SAM_METADATA)
    assert "moved from Running to Ramping" in client.get(done.headers["location"]).text


def test_page_an_operator_without_the_sre_role_is_refused_whatever_the_form_says(
        app: Any, gov: Governance, running: str) -> None:
    client = login(app, "olga")
    before = snapshot(gov, running)
    for extra in ({}, {"actorRole": "sre", "actorRoles": "sre", "metadata": '{"actorRole": "sre"}', "role": "sre"}):
        refused = post(client, f"/experiments/{running}", {"op": "transition", "to": "Ramping", **extra})
        assert refused.status_code == 409, extra
        assert "roleBased:*-&gt;Ramping" in error_text(refused.text) and "sre" in error_text(refused.text)
    assert snapshot(gov, running) == before


# -- removing a user ends its logins ------------------------------------------------------------


def test_removing_a_user_ends_its_logins_and_api_access(app: Any, gov: Governance, users_file: Path,
                                                       running: str) -> None:
    page = login(app, "sam")
    api = TestClient(app)
    assert api.get("/api/whoami", headers=basic("sam")).status_code == 200  # verified: now remembered
    assert page.get("/").status_code == 200

    assert remove_user(users_file, "sam") is True
    assert page.get("/", follow_redirects=False).status_code == 303  # to /login
    assert api.get("/api/whoami", headers=basic("sam")).status_code == 401
    refused = api.post(f"/api/experiments/{running}/transition", json={"to": "Ramping"}, headers=basic("sam"))
    assert refused.status_code == 401

    add_user(users_file, "sam", ["operator", "sre"], PASSWORDS["sam"])  # back, with the same password
    assert page.get("/", follow_redirects=False).status_code == 303  # the old login stays ended
    assert api.get("/api/whoami", headers=basic("sam")).status_code == 200
    assert remove_user(users_file, "sam") is True and remove_user(users_file, "sam") is False
    state = gov.state(running)
    assert state is not None and state.state is S.RUNNING
