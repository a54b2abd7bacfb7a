"""What ``redgov serve`` refuses: wrong passwords, missing CSRF tokens, roles too low, forged
sessions, cross-site API posts, names used as paths, files outside static/, bursts of guesses,
odd input (a 400, never a 500); and the security headers every answer carries, and the metrics
of failed and throttled logins. Each refusal is checked to have written nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

import redgov
from redgov import Governance, ManualGate
from redgov import LifecycleState as S
from redgov.web import add_user, create_app

from .conftest import delete_prefix
from .webusers import PASSWORDS, basic, basic_pair, write_users

SECRET, OTHER_SECRET = "a" * 48, "b" * 48


@pytest.fixture
def users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return write_users(tmp_path / "users.json", monkeypatch)


@pytest.fixture
def gov(redis_url: str, prefix: str) -> Iterator[Governance]:
    governance = Governance(redgov.connect(redis_url, prefix=prefix), gates=[ManualGate(to_state=S.APPROVED)])
    governance.create("checkout", actor="seed")
    governance.transition("checkout", S.PENDING_APPROVAL, actor="seed")
    yield governance
    delete_prefix(governance.backplane.client, prefix)
    governance.close()


def new_client(gov: Governance, users_file: Path, secret: str = SECRET) -> TestClient:
    return TestClient(create_app(gov, users_file, secret, live=False), follow_redirects=False)


@pytest.fixture
def client(gov: Governance, users_file: Path) -> TestClient:
    return new_client(gov, users_file)


def csrf_of(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def log_in(client: TestClient, name: str) -> str:
    """Log in through the form; returns the session's CSRF token."""
    answer = client.post("/login", data={"username": name, "password": PASSWORDS[name], "csrf": csrf_of(client),
                                         "next": "/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
    return csrf_of(client, "/experiments/checkout")


def written(gov: Governance) -> tuple[Any, ...]:
    b = gov.backplane
    return (gov.state("checkout"), len(gov.history("checkout")), len(b.approvals("checkout")),
            len(b.versions("checkout")))


def test_a_wrong_password_is_refused_and_writes_nothing(client: TestClient, gov: Governance) -> None:
    before = written(gov)
    for headers in (basic("amy", "wrong"), basic("amy", ""), basic("ghost", "x"), {"Authorization": "Bearer x"}):
        answer = client.post("/api/experiments/checkout/approve", json={"to": "Approved"}, headers=headers)
        assert answer.status_code == 401 and answer.json()["error"] == "Unauthorized", headers
    form = client.post("/login", data={"username": "amy", "password": "wrong", "csrf": csrf_of(client)})
    assert form.status_code == 401 and 'data-testid="error"' in form.text
    assert client.get("/").status_code == 303  # still logged out
    assert written(gov) == before


def test_the_login_form_needs_its_csrf_token(client: TestClient) -> None:
    csrf_of(client)  # a session with a token exists; the posts below do not send it
    for data in ({"username": "olga", "password": PASSWORDS["olga"]},
                 {"username": "olga", "password": PASSWORDS["olga"], "csrf": "forged" * 8}):
        assert client.post("/login", data=data).status_code == 403
    assert client.get("/").status_code == 303  # not logged in
    log_in(client, "olga")
    assert client.get("/").status_code == 200
    assert client.post("/logout").status_code == 403  # logging out is a state change too


def test_page_posts_need_the_csrf_token_and_the_role(gov: Governance, users_file: Path) -> None:
    before = written(gov)
    viewer = new_client(gov, users_file)
    token = log_in(viewer, "vic")
    approve = {"op": "approve", "to": "Approved", "csrf": token}
    assert viewer.post("/experiments/checkout", data=approve).status_code == 403  # a viewer may not approve
    assert viewer.post("/api/experiments/checkout/approve", json={"to": "Approved"},
                       headers=basic("vic")).status_code == 403
    assert written(gov) == before

    operator = new_client(gov, users_file)
    token = log_in(operator, "olga")
    without = {"op": "approve", "to": "Approved"}
    assert operator.post("/experiments/checkout", data=without).status_code == 403
    assert operator.post("/experiments/checkout", data={**without, "csrf": "x" * 43}).status_code == 403
    assert operator.post("/experiments/checkout", data={"op": "transition", "to": "Draft"}).status_code == 403
    assert written(gov) == before
    done = operator.post("/experiments/checkout", data={**without, "csrf": token})
    assert done.status_code == 303
    (record,) = gov.backplane.approvals("checkout")
    assert record.approver == "olga"


def test_a_session_signed_with_another_secret_is_logged_out(gov: Governance, users_file: Path) -> None:
    elsewhere = new_client(gov, users_file, OTHER_SECRET)
    log_in(elsewhere, "olga")
    forged = elsewhere.cookies.get("redgov_session")
    assert forged
    here = new_client(gov, users_file)
    here.cookies.set("redgov_session", forged)
    page = here.get("/")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert here.get("/api/experiments", headers=basic("vic")).status_code == 200  # the API is unaffected

    # a real session of this server does not authenticate an API call either
    own = new_client(gov, users_file)
    log_in(own, "olga")
    assert own.get("/").status_code == 200
    before = written(gov)
    assert own.get("/api/experiments").status_code == 401
    answer = own.post("/api/experiments/checkout/transition", json={"to": "Draft"})
    assert answer.status_code == 401 and answer.json()["error"] == "Unauthorized"
    assert written(gov) == before


def test_a_login_ends_with_logout_a_password_change_or_its_lifetime(gov: Governance, users_file: Path) -> None:
    from redgov.keys import web_session

    redis_client = gov.backplane.client
    sessions = lambda: list(redis_client.scan_iter(match=gov.backplane.prefix + "{web}:session:*"))  # noqa: E731
    first = new_client(gov, users_file)
    log_in(first, "olga")
    [key] = sessions()
    assert 0 < redis_client.pttl(key) <= 12 * 3600 * 1000  # the login's lifetime, as its TTL
    copied = dict(first.cookies)
    assert first.get("/").status_code == 200
    first.post("/logout", data={"csrf": csrf_of(first, "/")})
    assert sessions() == []
    thief = new_client(gov, users_file)
    thief.cookies.update(copied)  # the cookie from before the logout: signed, but its login is gone
    answer = thief.get("/")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    before = written(gov)
    refused = thief.post("/experiments/checkout", data={"op": "transition", "to": "Draft", "csrf": "x" * 43})
    assert refused.status_code in (303, 403) and written(gov) == before

    # a changed password ends the logins made with the old one
    second = new_client(gov, users_file)
    log_in(second, "vic")
    assert second.get("/").status_code == 200
    add_user(users_file, "vic", "viewer", "a new password")
    try:
        assert second.get("/").status_code == 303
    finally:
        add_user(users_file, "vic", "viewer", PASSWORDS["vic"])

    # a login whose key expired (or was deleted) is over
    third = new_client(gov, users_file)
    log_in(third, "amy")
    for key in sessions():
        redis_client.delete(key)
    assert third.get("/").status_code == 303
    assert web_session("p", "s") == "p{web}:session:s"


def test_api_posts_from_another_site_are_refused(client: TestClient, gov: Governance) -> None:
    before = written(gov)
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        answer = client.post("/api/experiments/checkout/transition", json={"to": "Draft"},
                             headers={**basic("olga"), **headers})
        assert answer.status_code == 403 and "cross-site" in answer.json()["message"], headers
    assert written(gov) == before
    same = client.post("/api/experiments/checkout/transition", json={"to": "Draft"},
                       headers={**basic("olga"), "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200


def test_experiment_names_are_data_never_paths_or_markup(client: TestClient, gov: Governance) -> None:
    v = basic("olga")
    missing = client.get("/api/experiments/..%2F..%2Fetc", headers=v)
    assert missing.status_code == 404 and missing.json() == {
        "error": "NotFoundError", "message": "experiment ../../etc does not exist (the default scope)"}
    for path in ("/api/experiments/..%2F..%2Fetc%2Fpasswd/history", "/api/experiments/%2e%2e/versions",
                 "/api/experiments/..%2F..%2Fredgov%2Fweb%2Fapp.py"):
        answer = client.get(path, headers=v)
        assert answer.status_code == 404 and answer.headers["content-type"] == "application/json", path
        assert "def create_app" not in answer.text and "root:x:0" not in answer.text

    markup = "<script>alert(1)</script>"
    for name in ("../../etc", markup, "a/b", "100% & more"):
        gov.create(name, actor="seed")
    encoded = {"../../etc": "..%2F..%2Fetc", markup: "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "a/b": "a%2Fb",
               "100% & more": "100%25%20%26%20more"}
    for name, segment in encoded.items():
        state = client.get(f"/api/experiments/{segment}", headers=v)
        assert state.status_code == 200 and state.json()["experiment"] == name, name
        moved = client.post(f"/api/experiments/{segment}/transition", json={"to": "Archived"}, headers=v)
        assert moved.status_code == 200 and moved.json()["experiment"] == name, name
    listing = client.get("/api/experiments", headers=v)
    assert markup in [row["experiment"] for row in listing.json()]
    assert "<" not in listing.text and "\\u003cscript\\u003e" in listing.text  # escaped in the JSON text
    unknown = client.get("/api/experiments/%3Cimg%20src%3Dx%3E", headers=v)
    assert unknown.status_code == 404 and "<img" not in unknown.text and "\\u003cimg" in unknown.text
    assert client.get("/api/experiments/a/b", headers=v).status_code == 404  # an unencoded / is not a name


def test_static_files_never_leave_their_folder(client: TestClient) -> None:
    assert client.get("/static/redgov.css").status_code == 200
    for path in ("/static/../app.py", "/static/..%2Fapp.py", "/static/%2e%2e/app.py", "/static/%2e%2e%2fapp.py",
                 "/static/..%5Capp.py", "/static/../templates/login.html", "/static//etc/passwd"):
        answer = client.get(path)
        assert answer.status_code in (400, 404), (path, answer.status_code)
        assert "def create_app" not in answer.text and "{% extends" not in answer.text, path
        assert "root:x:0" not in answer.text, path


def test_every_answer_carries_the_security_headers(client: TestClient) -> None:
    for path in ("/login", "/", "/api/experiments", "/api/openapi.json", "/metrics", "/static/redgov.css",
                 "/api/nothing"):
        headers = client.get(path).headers
        csp = headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert headers.get("x-frame-options") == "DENY" and headers.get("x-content-type-options") == "nosniff", path
        assert headers.get("referrer-policy") == "same-origin", path
    answer = client.post("/login", data={"username": "vic", "password": PASSWORDS["vic"], "csrf": csrf_of(client)})
    cookie = answer.headers["set-cookie"].lower()
    assert answer.status_code == 303 and "httponly" in cookie and "samesite=strict" in cookie


def test_bodies_are_bounded_and_read_only_with_a_session(client: TestClient, gov: Governance) -> None:
    from redgov.web.app import MAX_FORM_BODY

    big = "x" * (MAX_FORM_BODY + 1)
    for path in ("/login", "/logout", "/experiments/checkout"):
        declared = client.post(path, data={"csrf": "t", "blob": big})
        assert declared.status_code == 413, (path, declared.status_code)
    # no session, so no CSRF token to compare: refused before the body is read
    assert client.post("/logout", data={"csrf": "t"}).status_code == 403
    log_in(client, "olga")
    before = written(gov)

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(MAX_FORM_BODY // 4096 + 2):
            yield b"a" * 4096

    streamed = client.post("/experiments/checkout", content=chunks(),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 413
    assert written(gov) == before


def test_answers_are_not_cached_and_failures_keep_the_headers(gov: Governance, users_file: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    client = TestClient(create_app(gov, users_file, SECRET, live=False), follow_redirects=False,
                        raise_server_exceptions=False)
    log_in(client, "vic")
    assert client.get("/").headers["cache-control"] == "no-store"
    assert client.get("/api/experiments", headers=basic("vic")).headers["cache-control"] == "no-store"
    assert "no-store" not in client.get("/static/redgov.css").headers.get("cache-control", "")

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("a bug with a secret detail")

    monkeypatch.setattr(gov, "experiments", broken)
    for path, headers in (("/", {}), ("/api/experiments", basic("vic"))):
        failed = client.get(path, headers=headers)
        assert failed.status_code == 500 and "secret detail" not in failed.text, path
        assert failed.headers["content-security-policy"].startswith("default-src 'self'"), path
        assert failed.headers["cache-control"] == "no-store" and failed.headers["x-frame-options"] == "DENY", path


def test_a_broken_users_file_is_a_500_that_names_no_path(client: TestClient, users_file: Path) -> None:
    users_file.write_text("{not json", encoding="utf-8")
    answer = client.get("/api/experiments", headers=basic("vic"))
    assert answer.status_code == 500 and answer.json()["error"] == "ConfigError"
    assert str(users_file) not in answer.text and "server's log" in answer.json()["message"]


# -- issue 16 (security review) ------------------------------------------------------------------


def burst(app: Any, make: Any, count: int, client: tuple[str, int] = ("203.0.113.7", 4711)) -> list[int]:
    """``count`` requests sent at once (asyncio, one event loop with the app) from one address:
    ``make(http, k)`` sends the k-th; their statuses in order."""

    async def run() -> list[int]:
        transport = httpx2.ASGITransport(app=app, client=client)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver",
                                      follow_redirects=False) as http:
            answers = await asyncio.gather(*(make(http, k) for k in range(count)))
        return [answer.status_code for answer in answers]

    return asyncio.run(run())


def test_a_burst_of_names_from_one_address_is_throttled_like_a_sequence(gov: Governance, users_file: Path) -> None:
    from redgov.web.auth import ADDRESS_FREE

    # HTTP Basic: 60 guesses at once, each for another name
    app = create_app(gov, users_file, SECRET, live=False)
    statuses = burst(app, lambda http, k: http.get("/api/whoami", headers=basic_pair(f"guess{k}", "x")), 60)
    assert statuses.count(401) == ADDRESS_FREE and statuses.count(429) == 60 - ADDRESS_FREE, statuses
    # as after 60 guesses one by one: the right password from that address waits too; elsewhere it does not
    assert burst(app, lambda http, k: http.get("/api/whoami", headers=basic("vic")), 1) == [429]
    assert burst(app, lambda http, k: http.get("/api/whoami", headers=basic("vic")), 1, ("198.51.100.1", 1)) == [200]

    # the login form: the same burst through one session's CSRF token
    app = create_app(gov, users_file, SECRET, live=False)

    async def form_burst() -> list[int]:
        transport = httpx2.ASGITransport(app=app, client=("203.0.113.8", 4711))
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            page = await http.get("/login")
            found = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert found
            answers = await asyncio.gather(*(http.post("/login", data={
                "username": f"guess{k}", "password": "x", "csrf": found.group(1)}) for k in range(60)))
        return [answer.status_code for answer in answers]

    statuses = asyncio.run(form_burst())
    assert statuses.count(401) == ADDRESS_FREE and statuses.count(429) == 60 - ADDRESS_FREE, statuses


def metric_values(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``GET /metrics``: (name, sorted labels) -> value."""
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_failed_logins_and_throttled_answers(client: TestClient) -> None:
    def failures(via: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return "redgov_login_failures_total", (("via", via),)

    def throttled(reason: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return "redgov_throttled_total", (("reason", reason),)

    start = metric_values(client)
    assert start[failures("api")] == start[failures("form")] == 0  # there before the first failure (alerts)
    assert start[throttled("login")] == start[throttled("streams")] == 0

    statuses = [client.get("/api/whoami", headers=basic("vic", "wrong")).status_code for _ in range(7)]
    assert statuses == [401] * 5 + [429] * 2  # five failures of the pair, then it waits
    token = csrf_of(client)
    for _ in range(3):
        assert client.post("/login", data={"username": "amy", "password": "nope", "csrf": token}).status_code == 401
    assert client.get("/api/whoami", headers=basic("olga")).status_code == 200  # a success counts nowhere

    now = metric_values(client)
    assert now[failures("api")] == 5 and now[failures("form")] == 3
    assert now[throttled("login")] == 2 and now[throttled("streams")] == 0


def test_odd_input_is_a_400_never_a_500(gov: Governance, users_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(create_app(gov, users_file, SECRET, live=False), follow_redirects=False)  # a 500 raises here
    token = log_in(client, "olga")
    before = written(gov)
    caplog.set_level(logging.INFO)
    for path in ("/experiments/a%00b", "/experiments/" + "x" * 1025, "/experiments/a%00b?tenant=t&environment=e",
                 "/experiments/%E2%80%AEevil", "/experiments/x%0d%0ay"):
        answer = client.get(path)
        assert answer.status_code in (400, 404, 414), (path, answer.status_code)
        assert 'data-testid="error"' in answer.text and "Traceback" not in answer.text, path
        posted = client.post(path, data={"op": "transition", "to": "Draft", "csrf": token})
        assert posted.status_code in (400, 404, 414), (path, posted.status_code)

    deep_list = "[" * 1000 + "]" * 1000
    for body in ('{"to": "Draft", "reason": "r", "x": ' + deep_list + "}",
                 '{"to": "Draft", "telemetry": ' + '{"a":' * 1500 + "1" + "}" * 1501,
                 '{"to": "Draft", "telemetry": ' + '{"a":' * 200 + "1" + "}" * 201):
        answer = client.post("/api/experiments/checkout/transition", content=body,
                             headers={**basic("olga"), "content-type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"] == "ValidationError", answer.text[:200]
        assert "nested" in answer.json()["message"]
    answer = client.post("/api/experiments/checkout/versions", content='{"configuration": {"a": ' + deep_list + "}}",
                         headers={**basic("olga"), "content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"] == "ValidationError"

    deep_form = '{"a":' * 2000 + "1" + "}" * 2000
    answer = client.post("/experiments/checkout", data={"op": "version", "configuration": deep_form, "csrf": token})
    assert answer.status_code == 400 and 'data-testid="error"' in answer.text and "nested" in answer.text
    assert written(gov) == before
    assert [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()] == []
