"""The JSON API of ``redgov serve`` (Starlette's TestClient, real Redis) and its Prometheus metrics.

Every route for each role (401, 403, 200, 400, 404, 409), the records written carry the
authenticated user, refusals change nothing, and the OpenAPI document lists exactly the routes.
Users are hashed with cheap argon2 parameters here (verification reads them from the hash), so
each request does not spend the production cost.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

import redgov
from redgov import ErrorRate, Governance, ManualGate
from redgov import LifecycleState as S
from redgov.web import create_app
from redgov.web.api import ENDPOINTS
from redgov.web.metrics import CountingRetry, Metrics, live_clients

from .conftest import delete_prefix
from .faults import FaultProxy, is_command
from .webusers import ROLES, basic, write_users

SECRET = "s" * 48



@pytest.fixture
def users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return write_users(tmp_path / "users.json", monkeypatch)


@pytest.fixture
def gov(redis_url: str, prefix: str) -> Iterator[Governance]:
    governance = Governance(redgov.connect(redis_url, prefix=prefix), gates=[ManualGate(to_state=S.APPROVED)],
                            policies=[ErrorRate(0.05)])
    yield governance
    delete_prefix(governance.backplane.client, prefix)
    governance.close()


@pytest.fixture
def client(gov: Governance, users_file: Path) -> TestClient:
    return TestClient(create_app(gov, users_file, SECRET, live=False))


def snapshot(gov: Governance, name: str, **scope: Any) -> tuple[Any, ...]:
    """What a refused call must leave unchanged: the state and every record list."""
    b = gov.backplane
    return (gov.state(name, **scope), len(gov.history(name, **scope)), len(b.approvals(name, **scope)),
            len(b.versions(name, **scope)))


# -- reads ------------------------------------------------------------------------------------


def test_reads_need_credentials_and_answer_every_role(client: TestClient, gov: Governance) -> None:
    gov.create("checkout", actor="seed", configuration={"rollout": {"percent": 5}})
    gov.create("search", tenant="acme", environment="prod", actor="seed")
    gov.transition("search", S.PENDING_APPROVAL, tenant="acme", environment="prod")

    missing = client.get("/api/experiments")
    assert missing.status_code == 401 and missing.json()["error"] == "Unauthorized"
    assert missing.headers["www-authenticate"].startswith("Basic")
    assert client.get("/api/experiments", headers=basic("vic", "wrong")).status_code == 401
    assert client.get("/api/experiments", headers=basic("nobody", "x")).status_code == 401
    assert client.get("/api/experiments", headers={"Authorization": "Basic !!!"}).status_code == 401
    unknown = client.get("/api/no-such-route", headers=basic("vic"))
    assert unknown.status_code == 404 and unknown.json()["error"] == "NotFound", unknown.text
    wrong_method = client.delete("/api/experiments", headers=basic("olga"))
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "MethodNotAllowed", wrong_method.text

    for name, role in ROLES.items():
        listed = client.get("/api/experiments", headers=basic(name))
        assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
        assert listed.json() == [
            {"experiment": "checkout", "tenant": None, "environment": None, "state": "Draft"},
            {"experiment": "search", "tenant": "acme", "environment": "prod", "state": "PendingApproval"}]
        assert client.get("/api/whoami", headers=basic(name)).json() == {"user": name, "role": role}
    v = basic("vic")
    assert [r["experiment"] for r in client.get("/api/experiments?tenant=acme", headers=v).json()] == ["search"]
    assert [r["experiment"] for r in client.get("/api/experiments?state=Draft", headers=v).json()] == ["checkout"]
    assert client.get("/api/experiments?environment=dev", headers=v).json() == []
    bad = client.get("/api/experiments?state=Nope", headers=v)
    assert bad.status_code == 400 and bad.json()["error"] == "ValidationError" and "Nope" in bad.json()["message"]

    one = client.get("/api/experiments/search?tenant=acme&environment=prod", headers=v).json()
    assert (one["experiment"], one["state"], one["tenant"], one["revision"]) == ("search", "PendingApproval", "acme", 2)
    unknown = client.get("/api/experiments/search", headers=v)  # another scope
    assert unknown.status_code == 404 and unknown.json()["error"] == "NotFoundError"
    assert "search" in unknown.json()["message"]
    for suffix in ("", "/history", "/versions", "/approvals", "/evaluations", "/allowed-transitions",
                   "/diff?from=1&to=1", "/lease"):
        assert client.get(f"/api/experiments/nope{suffix}", headers=v).status_code == 404, suffix
        assert client.get(f"/api/experiments/checkout{suffix}").status_code == 401, suffix

    allowed = client.get("/api/experiments/checkout/allowed-transitions", headers=v).json()
    assert allowed["state"] == "Draft" and allowed["allowed_transitions"] == ["PendingApproval", "Archived"]
    history = client.get("/api/experiments/search/history?tenant=acme&environment=prod", headers=v).json()
    assert [t["to_state"] for t in history["transitions"]] == ["PendingApproval", "Draft"]  # newest first
    oldest = client.get("/api/experiments/search/history?tenant=acme&environment=prod&order=oldest&limit=1",
                        headers=v).json()
    assert [t["to_state"] for t in oldest["transitions"]] == ["Draft"]
    for query in ("limit=0", "limit=1001", "limit=x", "order=sideways"):
        assert client.get(f"/api/experiments/checkout/history?{query}", headers=v).status_code == 400, query
    versions = client.get("/api/experiments/checkout/versions", headers=v).json()
    assert versions["config_version"] == 1 and versions["versions"][0]["configuration"] == {"rollout": {"percent": 5}}
    assert client.get("/api/experiments/checkout/approvals", headers=v).json()["approvals"] == []
    assert client.get("/api/experiments/checkout/evaluations", headers=v).json()["evaluations"] == []
    assert client.get("/api/experiments/checkout/diff?from=1&to=1", headers=v).json()["changes"] == []
    assert client.get("/api/experiments/checkout/diff?from=1", headers=v).status_code == 400
    assert client.get("/api/experiments/checkout/diff?from=1&to=9", headers=v).status_code == 404

    assert client.get("/api/experiments/checkout/lease", headers=v).json()["lease"] is None
    held = gov.acquire_lease("search", owner="controller-7", ttl=timedelta(seconds=30), tenant="acme",
                             environment="prod")
    lease = client.get("/api/experiments/search/lease?tenant=acme&environment=prod", headers=v).json()["lease"]
    assert (lease["owner"], lease["token"], lease["tenant"]) == ("controller-7", held.token, "acme")

    inbox = client.get("/api/awaiting-approval", headers=v).json()
    assert [(m["experiment"], m["tenant"], m["to_state"]) for m in inbox] == [("search", "acme", "Approved")]
    assert client.get("/api/awaiting-approval?tenant=other", headers=v).json() == []
    assert client.get("/api/nothing-here", headers=v).status_code == 404
    assert client.get("/api/experiments/checkout/transition", headers=v).status_code in (404, 405)


# -- writes -----------------------------------------------------------------------------------


def test_transition_needs_an_operator_and_records_the_user(client: TestClient, gov: Governance) -> None:
    gov.create("checkout", actor="seed")
    before = snapshot(gov, "checkout")
    body = {"to": "PendingApproval", "reason": "ready", "actor": "mallory", "metadata": {"actorRole": "admin"}}
    assert client.post("/api/experiments/checkout/transition", json=body).status_code == 401
    assert client.post("/api/experiments/checkout/transition", json=body,
                       headers=basic("olga", "wrong")).status_code == 401
    for name in ("vic", "amy"):
        refused = client.post("/api/experiments/checkout/transition", json=body, headers=basic(name))
        assert refused.status_code == 403 and "operator" in refused.json()["message"], name
        # again: the pair is now answered from the verified-pairs memory, the role still checked
        again = client.post("/api/experiments/checkout/transition", json=body, headers=basic(name))
        assert again.status_code == 403 and again.json() == refused.json(), name
    assert snapshot(gov, "checkout") == before

    done = client.post("/api/experiments/checkout/transition", json=body, headers=basic("olga"))
    assert done.status_code == 200, done.text
    record = done.json()
    assert (record["actor"], record["from_state"], record["to_state"], record["reason"]) == (
        "olga", "Draft", "PendingApproval", "ready")
    # the users file's roles, never the body's
    assert record["metadata"] == {"actorRole": "operator", "actorRoles": ["operator"]}
    stored = gov.state("checkout")
    assert stored is not None and stored.last_modified_by == "olga" and stored.revision == record["revision"] == 2
    assert gov.history("checkout", newest_first=True, limit=1)[0].transition_id == record["transition_id"]

    scoped = client.post("/api/experiments/other/transition?tenant=acme", json={"to": "Archived"},
                         headers=basic("olga"))
    assert scoped.status_code == 404 and scoped.json()["error"] == "NotFoundError"
    gov.create("other", tenant="acme", environment="prod")
    in_body = client.post("/api/experiments/other/transition", headers=basic("olga"),
                          json={"to": "Archived", "tenant": "acme", "environment": "prod"})
    assert in_body.status_code == 200 and in_body.json()["tenant"] == "acme"
    assert gov.state("other", tenant="acme", environment="prod").state == S.ARCHIVED  # type: ignore[union-attr]


def test_approve_and_reject_need_an_approver_and_record_the_user(client: TestClient, gov: Governance) -> None:
    gov.create("checkout")
    gov.transition("checkout", S.PENDING_APPROVAL)
    before = snapshot(gov, "checkout")
    body = {"to": "Approved", "reason": "reviewed", "approver": "mallory"}
    assert client.post("/api/experiments/checkout/approve", json=body).status_code == 401
    refused = client.post("/api/experiments/checkout/approve", json=body, headers=basic("vic"))
    assert refused.status_code == 403 and refused.json()["error"] == "Forbidden"
    assert client.post("/api/experiments/checkout/reject", json=body, headers=basic("vic")).status_code == 403
    assert snapshot(gov, "checkout") == before
    inbox = client.get("/api/awaiting-approval", headers=basic("vic")).json()
    assert [(m["experiment"], m["to_state"]) for m in inbox] == [("checkout", "Approved")]

    approved = client.post("/api/experiments/checkout/approve", json=body, headers=basic("amy"))
    assert approved.status_code == 200, approved.text
    record = approved.json()
    assert (record["approver"], record["approved"], record["to_state"], record["reason"]) == (
        "amy", True, "Approved", "reviewed")
    assert client.get("/api/awaiting-approval", headers=basic("vic")).json() == []  # the move left the inbox
    rejected = client.post("/api/experiments/checkout/reject", json={"to": "Approved"}, headers=basic("olga"))
    assert rejected.status_code == 200 and rejected.json()["approved"] is False
    assert rejected.json()["approver"] == "olga"  # an operator may approve and reject too
    approvals = client.get("/api/experiments/checkout/approvals?order=oldest", headers=basic("vic")).json()
    assert [(a["approver"], a["approved"]) for a in approvals["approvals"]] == [("amy", True), ("olga", False)]

    again = client.post("/api/experiments/checkout/approve", json={"to": "Approved", "valid_for": 60},
                        headers=basic("amy"))
    assert again.status_code == 200 and again.json()["valid_until"]
    moved = client.post("/api/experiments/checkout/transition", json={"to": "Approved"}, headers=basic("olga"))
    assert moved.status_code == 200 and moved.json()["to_state"] == "Approved"


def test_request_needs_an_operator_and_four_eyes_hold(client: TestClient, gov: Governance) -> None:
    gov.create("checkout", actor="seed")
    gov.transition("checkout", S.PENDING_APPROVAL, actor="ana", reason="ready")  # itself the request
    v = basic("vic")
    inbox = client.get("/api/awaiting-approval", headers=v).json()
    assert [(m["experiment"], m["requested_by"], m["reason"], m["approvals_given"], m["approvals_needed"])
            for m in inbox] == [("checkout", "ana", "ready", 0, 1)] and inbox[0]["requested_at"]
    closed = client.post("/api/experiments/checkout/reject", json={"to": "Approved", "reason": "not yet"},
                         headers=basic("amy"))
    assert closed.status_code == 200 and client.get("/api/awaiting-approval", headers=v).json() == []

    before = snapshot(gov, "checkout")
    body = {"to": "Approved", "reason": "fixed", "actor": "mallory", "requested_by": "mallory"}
    assert client.post("/api/experiments/checkout/request", json=body).status_code == 401
    for name in ("vic", "amy"):
        refused = client.post("/api/experiments/checkout/request", json=body, headers=basic(name))
        assert refused.status_code == 403 and "operator" in refused.json()["message"], name
    assert client.get("/api/awaiting-approval", headers=v).json() == [] and snapshot(gov, "checkout") == before
    asked = client.post("/api/experiments/checkout/request", json=body, headers=basic("olga"))
    assert asked.status_code == 200, asked.text
    move = asked.json()
    assert (move["experiment"], move["from_state"], move["to_state"], move["requested_by"], move["reason"],
            move["approvals_given"], move["approvals_needed"]) == (
        "checkout", "PendingApproval", "Approved", "olga", "fixed", 0, 1)
    assert move["requested_at"] and move["gate"] == "manual:*->Approved"
    inbox = client.get("/api/awaiting-approval", headers=v).json()
    assert [(m["requested_by"], m["reason"]) for m in inbox] == [("olga", "fixed")]

    # four eyes: the requester may not approve (SeparationOfDutiesError, an ApprovalRequiredError): 409, nothing written
    before = snapshot(gov, "checkout")
    own = client.post("/api/experiments/checkout/approve", json={"to": "Approved"}, headers=basic("olga"))
    assert own.status_code == 409 and own.json()["error"] == "SeparationOfDutiesError", own.text
    assert "olga" in own.json()["message"]
    with pytest.raises(redgov.SeparationOfDutiesError) as raised:
        gov.approve("checkout", S.APPROVED, approver="olga")
    assert own.json()["message"] == " ".join(str(raised.value).split())
    assert snapshot(gov, "checkout") == before
    # another approver may; then the approver may not make the move, the requester may
    assert client.post("/api/experiments/checkout/approve", json={"to": "Approved"},
                       headers=basic("amy")).status_code == 200
    assert client.get("/api/awaiting-approval", headers=v).json() == []

    # bad input and refusals, nothing written
    before = snapshot(gov, "checkout")
    cases: list[tuple[Any, int, str]] = [
        ({}, 400, "ValidationError"), ({"to": "Nope"}, 400, "ValidationError"),
        ({"to": "Approved", "reason": 5}, 400, "ValidationError"),
        ({"to": "Running"}, 409, "InvalidTransitionError")]
    for bad, status, error in cases:
        answer = client.post("/api/experiments/checkout/request", json=bad, headers=basic("olga"))
        assert (answer.status_code, answer.json()["error"]) == (status, error), (bad, answer.text)
    missing = client.post("/api/experiments/nope/request", json={"to": "Approved"}, headers=basic("olga"))
    assert missing.status_code == 404 and missing.json()["error"] == "NotFoundError"
    assert snapshot(gov, "checkout") == before
    moved = client.post("/api/experiments/checkout/transition", json={"to": "Approved"}, headers=basic("olga"))
    assert moved.status_code == 200 and moved.json()["actor"] == "olga"


def test_refusals_are_409_and_bad_input_400_and_change_nothing(client: TestClient, gov: Governance) -> None:
    gov.create("checkout")
    gov.transition("checkout", S.PENDING_APPROVAL)
    op = basic("olga")
    post = client.post
    cases: list[tuple[str, Any, int, str]] = [
        ("transition", {"to": "Running"}, 409, "InvalidTransitionError"),
        ("transition", {"to": "Approved"}, 409, "ApprovalRequiredError"),
        ("transition", {"to": "Draft", "expected_etag": "stale"}, 409, "ConflictError"),
        ("approve", {"to": "Running"}, 409, "InvalidTransitionError"),
        ("transition", {"to": "Nope"}, 400, "ValidationError"),
        ("transition", {}, 400, "ValidationError"),
        ("transition", {"to": "Draft", "reason": 5}, 400, "ValidationError"),
        ("transition", {"to": "Draft", "telemetry": {"errorRat": 0.1}}, 400, "ValidationError"),
        ("transition", ["Draft"], 400, "ValidationError"),
        ("transition", {"to": "Draft", "tenant": 7}, 400, "ValidationError"),
        ("approve", {"to": "Approved", "valid_for": -1}, 400, "ValidationError"),
        ("versions", {"configuration": [1]}, 400, "ValidationError"),
        ("versions", {}, 400, "ValidationError"),
        ("rollback", {"to_version": "x"}, 400, "ValidationError"),
        ("rollback", {"to_version": 9}, 404, "NotFoundError"),
    ]
    before = snapshot(gov, "checkout")
    for action, body, status, error in cases:
        answer = post(f"/api/experiments/checkout/{action}", json=body, headers=op)
        assert answer.status_code == status, (action, body, answer.text)
        assert answer.json()["error"] == error and answer.json()["message"], (action, body)
        assert set(answer.json()) >= {"error", "message"}
    for raw in (b"", b"{not json", b"null"):
        answer = post("/api/experiments/checkout/transition", content=raw, headers=op)
        assert answer.status_code == 400 and answer.json()["error"] == "ValidationError", raw
    stale = post("/api/experiments/checkout/transition", json={"to": "Draft", "expected_etag": "stale"}, headers=op)
    assert stale.json()["current_state"] == "PendingApproval" and stale.json()["current_etag"]
    assert post("/api/experiments/nope/transition", json={"to": "Draft"}, headers=op).status_code == 404
    assert snapshot(gov, "checkout") == before

    # a Critical policy: the evaluations are recorded (that is the refusal's audit), nothing else
    gov.approve("checkout", S.APPROVED, approver="lead")
    gov.transition("checkout", S.APPROVED)
    before = snapshot(gov, "checkout")
    violation = post("/api/experiments/checkout/transition", json={"to": "Running", "telemetry": {"errorRate": 0.5}},
                     headers=op)
    assert violation.status_code == 409 and violation.json()["error"] == "PolicyViolationError"
    assert [e["compliant"] for e in violation.json()["evaluations"]] == [False]
    assert snapshot(gov, "checkout") == before
    assert post("/api/experiments/checkout/transition", json={"to": "Running", "telemetry": {"errorRate": 0.01}},
                headers=op).status_code == 200


def test_versions_and_rollback(client: TestClient, gov: Governance) -> None:
    gov.create("checkout", configuration={"rollout": {"percent": 5}})
    body = {"configuration": {"rollout": {"percent": 20}}, "description": "ramp", "actor": "mallory"}
    before = snapshot(gov, "checkout")
    for name in ("vic", "amy"):
        assert client.post("/api/experiments/checkout/versions", json=body, headers=basic(name)).status_code == 403
        assert client.post("/api/experiments/checkout/rollback", json={"to_version": 1},
                           headers=basic(name)).status_code == 403
    assert snapshot(gov, "checkout") == before
    made = client.post("/api/experiments/checkout/versions", json=body, headers=basic("olga"))
    assert made.status_code == 200, made.text
    assert (made.json()["version"], made.json()["created_by"], made.json()["description"]) == (2, "olga", "ramp")
    diff = client.get("/api/experiments/checkout/diff?from=1&to=2", headers=basic("vic")).json()
    assert diff["changes"] == [{"kind": "modified", "path": "rollout.percent", "old": 5, "new": 20}]
    back = client.post("/api/experiments/checkout/rollback", json={"to_version": 1}, headers=basic("olga"))
    assert back.status_code == 200
    assert (back.json()["version"], back.json()["is_rollback"], back.json()["rolled_back_from"]) == (3, True, 1)
    assert back.json()["created_by"] == "olga"
    listed = client.get("/api/experiments/checkout/versions?limit=2", headers=basic("vic")).json()
    assert [v["version"] for v in listed["versions"]] == [3, 2] and listed["config_version"] == 3


def test_the_openapi_document_lists_exactly_the_routes(client: TestClient) -> None:
    answer = client.get("/api/openapi.json")  # no login
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"] == "3.1.0" and document["components"]["securitySchemes"]["basic"]["scheme"] == "basic"
    registered = set()
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.path.startswith("/api/"):
            for method in route.methods or ():
                if method != "HEAD":
                    registered.add((route.path.replace("{name:path}", "{name}"), method.lower()))
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert registered == documented
    assert len(registered) == len(ENDPOINTS) + 1
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["summary"] and "200" in operation["responses"], (path, method)
            if path != "/api/openapi.json":
                assert operation["security"] == [{"basic": []}] and {"401", "403"} <= set(operation["responses"])
                assert operation["x-redgov-role"] in ("viewer", "approver", "operator")
            if method == "post":
                assert "409" in operation["responses"] and operation["requestBody"]["required"]
                assert operation["x-redgov-role"] in ("approver", "operator")
    roles = {(p, m): o["x-redgov-role"] for p, i in document["paths"].items() for m, o in i.items()}
    assert roles[("/api/experiments/{name}/transition", "post")] == "operator"
    assert roles[("/api/experiments/{name}/approve", "post")] == "approver"
    assert roles[("/api/experiments/{name}/reject", "post")] == "approver"
    assert roles[("/api/experiments/{name}/request", "post")] == "operator"
    request = document["paths"]["/api/experiments/{name}/request"]["post"]
    assert request["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PendingMove"}
    pending = document["components"]["schemas"]["PendingMove"]["properties"]
    assert {"requested_by", "requested_at", "reason", "approvals_given", "approvals_needed"} <= set(pending)
    # every reference resolves
    text = answer.text
    for target in set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', text)):
        assert target in document["components"]["schemas"], target


# -- metrics ----------------------------------------------------------------------------------


def _value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_operations_refusals_and_latency(client: TestClient, gov: Governance) -> None:
    gov.create("checkout")
    op = basic("olga")
    client.post("/api/experiments/checkout/transition", json={"to": "PendingApproval"}, headers=op)
    client.post("/api/experiments/checkout/transition", json={"to": "Running"}, headers=op)
    # four eyes: olga requested the move (entering PendingApproval), so another user approves it
    client.post("/api/experiments/checkout/approve", json={"to": "Approved"}, headers=basic("amy"))
    client.post("/api/experiments/checkout/reject", json={"to": "Approved"}, headers=op)
    client.post("/api/experiments/checkout/versions", json={"configuration": {"a": 1}}, headers=op)
    client.post("/api/experiments/checkout/rollback", json={"to_version": 9}, headers=op)
    scraped = client.get("/metrics")  # no login
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert "content-security-policy" in scraped.headers
    text = scraped.text
    assert _value(text, 'redgov_operations_total{operation="transition",outcome="ok"}') == 1
    assert _value(text, 'redgov_operations_total{operation="transition",outcome="InvalidTransitionError"}') == 1
    assert _value(text, 'redgov_operations_total{operation="approve",outcome="ok"}') == 1
    assert _value(text, 'redgov_operations_total{operation="reject",outcome="ok"}') == 1
    assert _value(text, 'redgov_operations_total{operation="create_version",outcome="ok"}') == 1
    assert _value(text, 'redgov_operations_total{operation="rollback",outcome="NotFoundError"}') == 1  # no v9
    assert _value(text, 'redgov_refusals_total{kind="InvalidTransitionError"}') == 1
    assert _value(text, 'redgov_operation_seconds_count{operation="transition"}') == 2
    assert _value(text, 'redgov_operation_seconds_bucket{le="+Inf",operation="transition"}') == 2
    assert _value(text, "redgov_cache_enabled") == 0 and "redgov_cache_hits_total" not in text
    assert _value(text, "redgov_redis_retries_total") == 0
    assert "redgov_live_clients" not in text  # no live hub in this app


def test_metrics_read_the_cache_and_count_redis_retries(redis_url: str, prefix: str, users_file: Path) -> None:
    with Governance(redgov.connect(redis_url, prefix=prefix, cache=True)) as cached:
        try:
            cached.create("checkout")
            client = TestClient(create_app(cached, users_file, SECRET, live=False))
            for _ in range(3):
                assert client.get("/api/experiments/checkout", headers=basic("vic")).status_code == 200
            text = client.get("/metrics").text
            assert _value(text, "redgov_cache_enabled") == 1
            hits, misses = _value(text, "redgov_cache_hits_total"), _value(text, "redgov_cache_misses_total")
            assert hits is not None and misses is not None and hits + misses >= 3
            for name in ("invalidations", "resets"):
                assert _value(text, f"redgov_cache_{name}_total") is not None
            assert _value(text, "redgov_cache_entries") is not None
        finally:
            delete_prefix(cached.backplane.client, prefix)

    # a re-send after a lost reply is counted: a proxy cuts the connection instead of one reply
    with FaultProxy(_address(redis_url)) as proxy, Governance(redgov.connect(proxy.url, prefix=prefix)) as gov:
        try:
            metrics = Metrics(gov)
            second = Metrics(gov)  # another app on the same Governance: the same counter, its own registry
            assert isinstance(gov.backplane.client.get_retry(), CountingRetry)
            assert metrics.retries is second.retries and metrics.registry is not second.registry
            gov.create("checkout")
            assert _value(metrics.exposition().decode(), "redgov_redis_retries_total") == 0
            proxy.drop_next(1, is_command("HMGET"))
            assert gov.state("checkout") is not None  # answered after one re-send
            assert proxy.cuts == 1
            assert _value(metrics.exposition().decode(), "redgov_redis_retries_total") == 1
            assert _value(second.exposition().decode(), "redgov_redis_retries_total") == 1
        finally:
            delete_prefix(gov.backplane.client, prefix)


def _address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def test_metrics_show_the_live_clients_the_hub_reports(gov: Governance, users_file: Path) -> None:
    live = TestClient(create_app(gov, users_file, SECRET))  # the live feed's hub, not started: no clients
    assert _value(live.get("/metrics").text, "redgov_live_clients") == 0

    class Hub:
        clients = 2

    metrics = Metrics(gov)
    metrics.hub = Hub()
    assert _value(metrics.exposition().decode(), "redgov_live_clients") == 2
    assert live_clients(None) is None and live_clients(object()) is None
    assert live_clients(type("H", (), {"subscribers": [1, 2, 3]})()) == 3
