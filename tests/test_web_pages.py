"""The HTML pages of ``redgov serve`` (Starlette TestClient against a real Redis prefix).

Every page for each role with its data-testid hooks; refusals shown in ``[data-testid=error]`` with
nothing written; role and CSRF refusals (403) writing nothing; experiment names with HTML or ``..``
escaped and routed safely; history and audit paging; the version diff.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import redgov
from redgov import ErrorRate, Governance, ManualGate
from redgov import LifecycleState as S
from redgov.keys import Scope
from redgov.web import add_user, create_app, pages

from .conftest import delete_prefix

SECRET = "test-secret-" + "x" * 32
PASSWORD = {"olga": "operator-pw", "abe": "approver-pw", "vic": "viewer-pw"}
ROLE = {"olga": "operator", "abe": "approver", "vic": "viewer"}
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("web-users") / "users.json"
    for name, role in ROLE.items():
        add_user(path, name, role, PASSWORD[name])
    return path


@pytest.fixture
def gov(redis_url: str, prefix: str) -> Iterator[Governance]:
    bp = redgov.connect(redis_url, prefix=prefix)
    governance = Governance(bp, gates=[ManualGate(to_state=S.APPROVED)], policies=[ErrorRate(0.05)])
    yield governance
    delete_prefix(bp.client, prefix)
    bp.close()


@pytest.fixture
def app(gov: Governance, users_file: Path) -> object:
    return create_app(gov, users_file, SECRET, live=False)


def csrf_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert found, "no csrf meta in the page"
    return found.group(1)


def login(app: object, name: str) -> TestClient:
    client = TestClient(app)  # type: ignore[arg-type]
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"username": name, "password": PASSWORD[name], "csrf": token, "next": "/"},
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client


def hooks(page: str, testid: str) -> list[str]:
    """The opening tags carrying data-testid=<testid>."""
    return re.findall(r'<[^>]*data-testid="%s"[^>]*>' % re.escape(testid), page)


def attr(tag: str, name: str) -> str | None:
    found = re.search(r'\s%s="([^"]*)"' % re.escape(name), tag)
    return html.unescape(found.group(1)) if found else None


def seed(gov: Governance) -> None:
    gov.create("checkout", actor="ana", configuration={"rollout": {"percent": 5}, "color": "red"})
    gov.create("search", actor="ben", tenant="acme", environment="prod")
    gov.transition("checkout", S.PENDING_APPROVAL, actor="ana", reason="ready")
    gov.create_version("checkout", {"rollout": {"percent": 10, "steps": [1, 2]}, "size": 3}, actor="ana",
                       description="wider rollout")
    # a new version lapses the request that entering PendingApproval made: ask again for this version
    gov.request("checkout", S.APPROVED, actor="ana", reason="review v2")


def log_length(gov: Governance, tenant: str | None, environment: str | None) -> int:
    return int(gov.backplane.client.xlen(Scope(gov.backplane.prefix, tenant, environment).log))


def post(client: TestClient, url: str, data: dict[str, str], *, csrf: bool = True) -> object:
    if csrf:
        data = {**data, "csrf": csrf_of(client.get("/").text)}
    return client.post(url, data=data, follow_redirects=False)


# -- every page, every role ------------------------------------------------------------------

def test_pages_need_a_login(app: object) -> None:
    client = TestClient(app)  # type: ignore[arg-type]
    for url in ("/", "/experiments/checkout", "/approvals", "/audit"):
        answer = client.get(url, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize("name", ["olga", "abe", "vic"])
def test_every_page_for_each_role(app: object, gov: Governance, name: str) -> None:
    seed(gov)
    client = login(app, name)
    listing = client.get("/")
    assert listing.status_code == 200
    rows = hooks(listing.text, "experiment-row")
    assert sorted(attr(r, "data-experiment") or "" for r in rows) == ["checkout", "search"]
    states = re.findall(r'data-testid="state">([^<]+)<', listing.text)
    assert sorted(states) == ["Draft", "PendingApproval"]
    assert "script-src 'self'" in listing.headers["content-security-policy"]

    page = client.get("/experiments/checkout")
    assert page.status_code == 200
    current = hooks(page.text, "current-state")
    assert len(current) == 1 and attr(current[0], "data-state") == "PendingApproval"
    buttons = hooks(page.text, "transition")
    assert sorted(attr(b, "data-to") or "" for b in buttons) == ["Approved", "Draft", "Rejected"]
    assert all(("disabled" in b) == (name != "olga") for b in buttons)
    assert len(hooks(page.text, "history-entry")) == 2
    assert len(hooks(page.text, "version")) == 2
    # the approver and the operator may decide the move a manual gate blocks; the viewer may not
    decide = hooks(page.text, "approve")
    assert len(decide) == (0 if name == "vic" else 1)

    inbox = client.get("/approvals")
    pending = hooks(inbox.text, "pending-approval")
    assert [(attr(p, "data-experiment"), attr(p, "data-to")) for p in pending] == [("checkout", "Approved")]
    approve = hooks(inbox.text, "approve") + hooks(inbox.text, "reject")
    assert len(approve) == 2 and all(("disabled" in b) == (name == "vic") for b in approve)

    audit = client.get("/audit")
    entries = hooks(audit.text, "audit-entry")
    assert len(entries) == log_length(gov, None, None) + log_length(gov, "acme", "prod")
    assert [attr(e, "data-kind") for e in entries[:2]] == ["version", "policy"]  # newest first

    assert len(hooks(page.text, "lease")) == 1 and "Nobody holds the lease" in page.text
    scoped = client.get("/experiments/search?tenant=acme&environment=prod")
    assert scoped.status_code == 200 and "acme" in scoped.text
    held = gov.acquire_lease("search", owner="<b>controller</b>", ttl=timedelta(minutes=5), tenant="acme",
                             environment="prod")
    leased = client.get("/experiments/search?tenant=acme&environment=prod").text
    assert "&lt;b&gt;controller&lt;/b&gt;" in leased and str(held.token) in leased  # the holder, escaped
    assert client.get("/experiments/search").status_code == 404  # not in the default scope


def test_the_list_is_paged_and_its_counts_cover_every_page(app: object, gov: Governance,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "LIST_ROWS", 4)
    for k in range(10):
        gov.create(f"e{k:02d}", tenant="acme", environment="prod")
    gov.transition("e07", S.PENDING_APPROVAL, tenant="acme", environment="prod")
    client = login(app, "vic")

    def names(url: str) -> tuple[list[str], str]:
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        return [attr(r, "data-experiment") or "" for r in hooks(answer.text, "experiment-row")], answer.text

    first, page = names("/?tenant=acme")
    assert first == ["e00", "e01", "e02", "e03"] and "1&ndash;4 of 10 experiments" in page
    assert re.search(r'<b>9</b>', page) and re.search(r'<b>1</b>', page)  # Draft 9, PendingApproval 1: all pages
    older = attr(hooks(page, "list-next")[0], "href")
    assert older == "/?tenant=acme&page=2" and not hooks(page, "list-previous")
    assert names(older)[0] == ["e04", "e05", "e06", "e07"]
    last, page = names("/?tenant=acme&page=3")
    assert last == ["e08", "e09"] and not hooks(page, "list-next")
    assert attr(hooks(page, "list-previous")[0], "href") == "/?tenant=acme&page=2"
    assert names("/?tenant=acme&state=Draft&page=3")[0] == ["e09"]  # the filter applies before the pages
    assert names("/?tenant=acme&page=9")[0] == []
    assert client.get("/?page=0").status_code == 400


def test_list_filters(app: object, gov: Governance) -> None:
    seed(gov)
    client = login(app, "vic")

    def names(url: str) -> list[str]:
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        return sorted(attr(r, "data-experiment") or "" for r in hooks(answer.text, "experiment-row"))

    assert names("/?state=Draft") == ["search"]
    assert names("/?q=CHECK") == ["checkout"]
    assert names("/?tenant=acme") == ["search"]
    assert names("/?scope=acme:prod") == ["search"]
    assert names("/?scope=~:~") == ["checkout"]
    assert client.get("/?state=Nope").status_code == 400
    for page in ("/", "/approvals", "/audit"):  # a scope filter that names no scope is an error, not "all"
        answer = client.get(f"{page}?scope=no-colon")
        assert answer.status_code == 400 and "is not a scope of this installation" in answer.text, page


# -- moves: the logged-in user acts; refusals are shown and write nothing ----------------------

def shown_error(page: str) -> str:
    """The text of the page's one ``[data-testid=error]``."""
    found = re.findall(r'data-testid="error">([^<]*)<', page)
    assert len(found) == 1, found
    return html.unescape(found[0]).strip()


def library_error(call: Callable[[], object]) -> str:
    """The message of the RedgovError ``call`` raises (a refusal: it writes nothing)."""
    with pytest.raises(redgov.RedgovError) as raised:
        call()
    return str(raised.value)


def test_operator_moves_and_refusals_are_shown(app: object, gov: Governance) -> None:
    seed(gov)
    client = login(app, "olga")
    before = gov.state("checkout")
    assert before is not None
    # a gated move: ApprovalRequiredError, shown, nothing written
    refused = post(client, "/experiments/checkout", {"op": "transition", "to": "Approved", "reason": "go"})
    assert refused.status_code == 409  # type: ignore[attr-defined]
    assert shown_error(refused.text) == library_error(lambda: gov.transition("checkout", S.APPROVED, actor="olga"))  # type: ignore[attr-defined]
    assert gov.state("checkout") == before
    # a policy refusal: the library's message
    gov.approve("checkout", S.APPROVED, approver="lead")
    gov.transition("checkout", S.APPROVED, actor="ana")
    moved = gov.state("checkout")
    refused = post(client, "/experiments/checkout", {"op": "transition", "to": "Running", "telemetry.errorRate": "0.5"})
    assert refused.status_code == 409  # type: ignore[attr-defined]
    assert shown_error(refused.text) == library_error(  # type: ignore[attr-defined]
        lambda: gov.transition("checkout", S.RUNNING, actor="olga", telemetry={"errorRate": 0.5}))
    assert gov.state("checkout") == moved
    # a stale page (another etag): a conflict, nothing written
    refused = post(client, "/experiments/checkout", {"op": "transition", "to": "Running", "etag": before.etag})
    assert refused.status_code == 409  # type: ignore[attr-defined]
    assert shown_error(refused.text) == library_error(  # type: ignore[attr-defined]
        lambda: gov.transition("checkout", S.RUNNING, actor="olga", expected_etag=before.etag))
    assert gov.state("checkout") == moved
    # a move the rules allow: done as the logged-in user, then back on the page with a notice
    done = post(client, "/experiments/checkout", {"op": "transition", "to": "Running", "reason": "launch",
                                                  "telemetry.errorRate": "0.01", "etag": moved.etag})  # type: ignore[union-attr]
    assert done.status_code == 303 and done.headers["location"] == "/experiments/checkout"  # type: ignore[attr-defined]
    latest = gov.history("checkout", limit=1, newest_first=True)[0]
    assert (latest.to_state, latest.actor, latest.reason) == (S.RUNNING, "olga", "launch")
    page = client.get("/experiments/checkout").text
    assert hooks(page, "notice") and 'data-state="Running"' in page
    assert "errorRate" in page  # the telemetry that decided the policy evaluation
    # a move the rules do not allow at all
    refused = post(client, "/experiments/checkout", {"op": "transition", "to": "Draft"})
    assert refused.status_code == 409  # type: ignore[attr-defined]
    assert gov.state("checkout").state is S.RUNNING  # type: ignore[union-attr]


def test_a_live_refresh_leaves_the_notice_for_the_page_it_belongs_to(app: object, gov: Governance) -> None:
    seed(gov)
    client = login(app, "olga")
    done = post(client, "/experiments/search?tenant=acme&environment=prod", {"op": "transition", "to": "Archived"})
    assert done.status_code == 303  # type: ignore[attr-defined]
    # the feed's refresh of the #live region may come before the redirected GET: it takes no notice
    refresh = client.get("/experiments/search?tenant=acme&environment=prod",
                         headers={"HX-Request": "true", "HX-Target": "live"})
    assert refresh.status_code == 200 and not hooks(refresh.text, "notice")
    page = client.get(done.headers["location"]).text  # type: ignore[attr-defined]
    assert text_of(page, "notice") == ["search moved from Draft to Archived"]
    assert not hooks(client.get(done.headers["location"]).text, "notice")  # type: ignore[attr-defined]  # once


def test_approver_approves_from_the_inbox_and_the_move_leaves_it(app: object, gov: Governance) -> None:
    seed(gov)
    client = login(app, "abe")
    # a rejection is recorded and closes the request: the move leaves the inbox until asked for again
    rejected = post(client, "/experiments/checkout", {"op": "reject", "to": "Approved", "reason": "not yet",
                                                      "back": "/approvals"})
    assert rejected.status_code == 303 and rejected.headers["location"] == "/approvals"  # type: ignore[attr-defined]
    inbox = client.get("/approvals").text
    assert hooks(inbox, "pending-approval") == [] and hooks(inbox, "notice")
    # requested again: back in the inbox, the last rejection shown beside it
    gov.request("checkout", S.APPROVED, actor="ana", reason="fixed the copy")
    inbox = client.get("/approvals").text
    assert len(hooks(inbox, "pending-approval")) == 1 and "not yet" in inbox and "fixed the copy" in inbox
    approved = post(client, "/experiments/checkout", {"op": "approve", "to": "Approved", "reason": "fine",
                                                      "back": "/approvals"})
    assert approved.status_code == 303  # type: ignore[attr-defined]
    inbox = client.get("/approvals").text
    assert hooks(inbox, "pending-approval") == [] and hooks(inbox, "notice")
    records = gov.backplane.approvals("checkout")
    assert [(r.approved, r.approver, r.reason) for r in records] == [(False, "abe", "not yet"), (True, "abe", "fine")]
    # the approver may not move it
    refused = post(client, "/experiments/checkout", {"op": "transition", "to": "Approved"})
    assert refused.status_code == 403  # type: ignore[attr-defined]
    assert gov.state("checkout").state is S.PENDING_APPROVAL  # type: ignore[union-attr]
    page = client.get("/experiments/checkout").text
    assert 'data-status="waiting"' in page


def text_of(page: str, testid: str) -> list[str]:
    """The text inside each element carrying data-testid=<testid> (tags stripped, spaces folded)."""
    found = re.findall(r'<(\w+)[^>]*data-testid="%s"[^>]*>(.*?)</\1>' % re.escape(testid), page, re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", "", inner)).split()) for _, inner in found]


def test_the_inbox_shows_who_asked_why_how_long_and_the_approvals(app: object, gov: Governance,
                                                                 users_file: Path) -> None:
    seed(gov)
    client = login(app, "abe")
    inbox = client.get("/approvals").text
    (card,) = hooks(inbox, "pending-approval")
    assert (attr(card, "data-experiment"), attr(card, "data-to")) == ("checkout", "Approved")
    assert text_of(inbox, "requested-by") == ["ana"] and text_of(inbox, "request-reason") == ["review v2"]
    assert text_of(inbox, "waited") == ["under a minute"]
    assert text_of(inbox, "approvals-count") == ["0 of 1 approval"]
    assert not hooks(inbox, "separation-of-duties")  # abe did not ask for it
    assert all("disabled" not in b for b in hooks(inbox, "approve") + hooks(inbox, "reject"))

    # a gate that needs two approvers, a request made three hours ago: 1 of 2 after one approval
    hours_ago = Governance(gov.backplane, gates=[ManualGate(to_state=S.APPROVED, approvals=2)],
                           policies=[ErrorRate(0.05)], clock=lambda: datetime.now(UTC) - timedelta(hours=3, minutes=5))
    hours_ago.create("pricing", actor="ben")
    hours_ago.transition("pricing", S.PENDING_APPROVAL, actor="ben", reason="new prices")
    two = login(create_app(hours_ago, users_file, SECRET, live=False), "abe")
    done = post(two, "/experiments/pricing", {"op": "approve", "to": "Approved", "back": "/approvals"})
    assert done.status_code == 303  # type: ignore[attr-defined]
    inbox = two.get("/approvals?q=pricing").text
    assert [attr(c, "data-experiment") for c in hooks(inbox, "pending-approval")] == ["pricing"]
    assert text_of(inbox, "requested-by") == ["ben"] and text_of(inbox, "waited") == ["3 h 5 min"]
    assert text_of(inbox, "approvals-count") == ["1 of 2 approvals"]
    page = two.get("/experiments/pricing").text  # the experiment page says the same
    assert text_of(page, "requested-by") == ["ben"] and text_of(page, "approvals-count") == ["1 of 2 approvals"]


def test_nobody_approves_a_move_they_asked_for(app: object, gov: Governance) -> None:
    seed(gov)
    gov.approve("checkout", S.APPROVED, approver="abe", approved=False, reason="not yet")  # closes ana's request
    olga = login(app, "olga")
    page = olga.get("/experiments/checkout").text
    assert not hooks(page, "awaiting-approval")
    (button,) = hooks(page, "request")
    assert attr(button, "data-to") == "Approved"
    for name in ("abe", "vic"):  # only operators ask for moves
        assert not hooks(login(app, name).get("/experiments/checkout").text, "request"), name
        refused = post(login(app, name), "/experiments/checkout", {"op": "request", "to": "Approved"})
        assert refused.status_code == 403, name  # type: ignore[attr-defined]
    assert gov.awaiting_approval() == []

    asked = post(olga, "/experiments/checkout", {"op": "request", "to": "Approved", "reason": "copy fixed"})
    assert asked.status_code == 303 and asked.headers["location"] == "/experiments/checkout"  # type: ignore[attr-defined]
    (move,) = gov.awaiting_approval()
    assert (move.requested_by, move.reason, move.to_state) == ("olga", "copy fixed", S.APPROVED)
    page = olga.get("/experiments/checkout").text
    assert "requested" in text_of(page, "notice")[0] and not hooks(page, "request")
    # the requester sees why she may not approve: the button disabled, a note saying why
    for url, testid in (("/approvals", "pending-approval"), ("/experiments/checkout", "awaiting-approval")):
        shown = olga.get(url).text
        assert len(hooks(shown, testid)) == 1, url
        (approve,) = hooks(shown, "approve")
        assert "disabled" in approve and "another person" in (attr(approve, "title") or ""), url
        (note,) = text_of(shown, "separation-of-duties")
        assert "You asked for this move" in note, url
        assert "disabled" not in hooks(shown, "reject")[0], url  # she may withdraw it
        assert text_of(shown, "requested-by") == ["olga"], url
    # a crafted POST is refused by the library, its message shown, nothing written
    before = (gov.state("checkout"), gov.backplane.approvals("checkout"))
    for back in ("/approvals", ""):
        refused = post(olga, "/experiments/checkout", {"op": "approve", "to": "Approved", "back": back})
        assert refused.status_code == 409, back  # type: ignore[attr-defined]
        assert shown_error(refused.text) == library_error(  # type: ignore[attr-defined]
            lambda: gov.approve("checkout", S.APPROVED, approver="olga"))
        assert "SeparationOfDuties" not in refused.text and "olga requested this move" in refused.text  # type: ignore[attr-defined]
    assert (gov.state("checkout"), gov.backplane.approvals("checkout")) == before
    # another approver sees no such note and approves; then she (not the approver) moves it
    abe = login(app, "abe")
    assert not hooks(abe.get("/approvals").text, "separation-of-duties")
    assert post(abe, "/experiments/checkout", {"op": "approve", "to": "Approved"}).status_code == 303  # type: ignore[attr-defined]
    assert gov.awaiting_approval() == []
    assert post(olga, "/experiments/checkout", {"op": "transition", "to": "Approved"}).status_code == 303  # type: ignore[attr-defined]
    assert gov.state("checkout").state is S.APPROVED  # type: ignore[union-attr]


def test_an_approver_who_approved_may_not_make_the_move(app: object, gov: Governance) -> None:
    seed(gov)
    olga = login(app, "olga")  # an operator approves too
    assert post(olga, "/experiments/checkout", {"op": "approve", "to": "Approved"}).status_code == 303  # type: ignore[attr-defined]
    page = olga.get("/experiments/checkout").text
    button = [b for b in hooks(page, "transition") if attr(b, "data-to") == "Approved"]
    assert len(button) == 1 and "you approved it" in page
    before = gov.state("checkout")
    refused = post(olga, "/experiments/checkout", {"op": "transition", "to": "Approved"})
    assert refused.status_code == 409  # type: ignore[attr-defined]
    assert shown_error(refused.text) == library_error(  # type: ignore[attr-defined]
        lambda: gov.transition("checkout", S.APPROVED, actor="olga"))
    assert gov.state("checkout") == before


def test_published_rules_on_the_experiment_page_and_in_the_audit(app: object, gov: Governance) -> None:
    seed(gov)
    client = login(app, "vic")
    page = client.get("/experiments/checkout").text
    (rules,) = hooks(page, "published-rules")
    assert attr(rules, "data-version") == "" and "No rules published" in text_of(page, "published-rules")[0]
    published = gov.publish(actor="lead", reason="<i>baseline</i>")
    page = client.get("/experiments/checkout").text
    (rules,) = hooks(page, "published-rules")
    (shown,) = text_of(page, "published-rules")
    assert attr(rules, "data-version") == "1" and shown.startswith("rules v1, published by lead at ")
    assert published.created_at.strftime("%Y-%m-%d %H:%M:%S") in shown and "<i>baseline</i>" in shown
    assert "&lt;i&gt;baseline&lt;/i&gt;" in page
    assert "manual:*-&gt;Approved" in page  # the gates in force
    other = client.get("/experiments/search?tenant=acme&environment=prod").text  # another scope: none published
    assert "No rules published" in text_of(other, "published-rules")[0]

    audit = client.get("/audit")
    assert audit.status_code == 200
    entries = hooks(audit.text, "audit-entry")
    assert (attr(entries[0], "data-kind"), attr(entries[0], "data-experiment")) == ("rules", "")
    assert "rules version 1 published by lead" in audit.text
    only = client.get("/audit?kind=rules")
    assert only.status_code == 200 and [attr(e, "data-kind") for e in hooks(only.text, "audit-entry")] == ["rules"]
    # the moves still work under the published rules
    olga = login(app, "olga")
    assert post(olga, "/experiments/checkout", {"op": "transition", "to": "Draft"}).status_code == 303  # type: ignore[attr-defined]


def test_a_scope_published_under_other_rules_is_named_not_a_crash(app: object, gov: Governance) -> None:
    seed(gov)
    other = Governance(gov.backplane, gates=[ManualGate(to_state=S.APPROVED, approvals=2)])
    other.publish(actor="lead", tenant="acme", environment="prod")  # not the server's definition
    client = login(app, "vic")
    inbox = client.get("/approvals")
    assert inbox.status_code == 200
    assert [attr(c, "data-experiment") for c in hooks(inbox.text, "pending-approval")] == ["checkout"]
    (problem,) = text_of(inbox.text, "scope-problem")
    assert problem.startswith("acme / prod: ") and "differ" in problem
    page = client.get("/experiments/search?tenant=acme&environment=prod")
    assert page.status_code == 200
    assert text_of(page.text, "published-rules")[0].startswith("rules v1, published by lead")
    assert "differ" in text_of(page.text, "rules-mismatch")[0]


def test_viewer_posts_are_refused_and_write_nothing(app: object, gov: Governance) -> None:
    seed(gov)
    client = login(app, "vic")
    before = (gov.state("checkout"), gov.backplane.approvals("checkout"), gov.backplane.versions("checkout"))
    for data in ({"op": "transition", "to": "Draft"}, {"op": "approve", "to": "Approved"},
                 {"op": "reject", "to": "Approved"}, {"op": "version", "configuration": "{}"},
                 {"op": "rollback", "version": "1"}):
        answer = post(client, "/experiments/checkout", data)
        assert answer.status_code == 403, data  # type: ignore[attr-defined]
        assert hooks(answer.text, "error")  # type: ignore[attr-defined]
    assert (gov.state("checkout"), gov.backplane.approvals("checkout"), gov.backplane.versions("checkout")) == before


def test_missing_or_wrong_csrf_is_refused_and_writes_nothing(app: object, gov: Governance) -> None:
    seed(gov)
    client = login(app, "olga")
    before = gov.state("checkout")
    assert post(client, "/experiments/checkout", {"op": "transition", "to": "Draft"}, csrf=False).status_code == 403  # type: ignore[attr-defined]
    wrong = client.post("/experiments/checkout", data={"op": "transition", "to": "Draft", "csrf": "x" * 43},
                        follow_redirects=False)
    assert wrong.status_code == 403
    header = client.post("/experiments/checkout", data={"op": "transition", "to": "Draft"},
                         headers={"X-CSRF-Token": csrf_of(client.get("/").text)}, follow_redirects=False)
    assert header.status_code == 303  # the header (htmx) works as well as the field
    assert gov.state("checkout").state is S.DRAFT  # type: ignore[union-attr]
    assert gov.state("checkout").revision == before.revision + 1  # type: ignore[union-attr]
    # logged out: a POST goes to the login page and writes nothing
    anonymous = TestClient(app)  # type: ignore[arg-type]
    answer = anonymous.post("/experiments/checkout", data={"op": "transition", "to": "PendingApproval"},
                            follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    assert gov.state("checkout").state is S.DRAFT  # type: ignore[union-attr]


# -- names: HTML escaped, dots and slashes routed safely --------------------------------------

def test_html_in_an_experiment_name_is_escaped(app: object, gov: Governance) -> None:
    gov.create(XSS, actor=XSS, configuration={XSS: XSS}, tenant="<b>t</b>")
    gov.transition(XSS, S.PENDING_APPROVAL, actor=XSS, reason=XSS, tenant="<b>t</b>")
    gov.create_version(XSS, {XSS: 1}, actor=XSS, description=XSS, tenant="<b>t</b>")
    gov.request(XSS, S.APPROVED, actor=XSS, reason=XSS, tenant="<b>t</b>")  # the new version lapsed the first
    client = login(app, "olga")
    listing = client.get("/")
    rows = hooks(listing.text, "experiment-row")
    assert [attr(r, "data-experiment") for r in rows] == [XSS]
    link = re.search(r'<td class="name"><a href="([^"]+)">', listing.text)
    assert link is not None
    pages = [listing, client.get(html.unescape(link.group(1))), client.get("/approvals"), client.get("/audit"),
             client.get(html.unescape(link.group(1)) + "&from=1&to=2"),
             client.get("/experiments/" + XSS)]  # not in this scope: the 404 page names it
    assert [p.status_code for p in pages] == [200, 200, 200, 200, 200, 404]
    for page in pages:
        assert XSS not in page.text and "<b>t</b>" not in page.text
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert hooks(pages[2].text, "pending-approval")
    assert hooks(pages[4].text, "diff")


@pytest.mark.parametrize("name", ["..", ".", "../../etc/passwd", "a/../b", "x/transition", "100%?#&"])
def test_dots_and_slashes_in_names(app: object, gov: Governance, name: str) -> None:
    gov.create(name, actor="ana")
    client = login(app, "olga")
    listing = client.get("/").text
    link = re.search(r'<td class="name"><a href="([^"]+)">', listing)
    assert link is not None
    url = html.unescape(link.group(1))
    page = client.get(url)
    assert page.status_code == 200
    assert attr(hooks(page.text, "current-state")[0], "data-state") == "Draft"
    assert f"<h1 class=\"exp-name\">{html.escape(name, quote=False)}</h1>" in page.text
    done = post(client, url, {"op": "transition", "to": "PendingApproval"})
    assert done.status_code == 303 and done.headers["location"] == url  # type: ignore[attr-defined]
    assert gov.state(name).state is S.PENDING_APPROVAL  # type: ignore[union-attr]


def test_traversal_never_reaches_files(app: object, gov: Governance) -> None:
    client = login(app, "vic")
    for url in ("/experiments/..%2F..%2F..%2Fetc%2Fpasswd", "/experiments/..%2Fstatic%2Fredgov.css",
                "/experiments/%2e%2e%2fapp.py", "/experiments/", "/experiments/x?tenant=%00"):
        answer = client.get(url)
        assert answer.status_code in (400, 404), url
        assert "root:" not in answer.text and "--bg" not in answer.text


# -- paging and the diff ---------------------------------------------------------------------

def test_history_is_newest_first_and_paged(app: object, gov: Governance) -> None:
    gov.create("flip", actor="ana")
    for i in range(12):  # 1 create + 24 transitions = 25 entries: two pages of 20
        gov.transition("flip", S.PENDING_APPROVAL, actor="ana", reason=f"up {i}")
        gov.transition("flip", S.DRAFT, actor="ana", reason=f"down {i}")
    client = login(app, "vic")
    first = client.get("/experiments/flip").text
    entries = hooks(first, "history-entry")
    assert len(entries) == 20 and attr(entries[0], "data-to") == "Draft"
    assert ">down 11<" in first and ">up 2<" in first and ">down 1<" not in first
    assert hooks(first, "history-older") and not hooks(first, "history-newer")
    second = client.get("/experiments/flip?page=2").text
    entries = hooks(second, "history-entry")
    assert len(entries) == 5 and attr(entries[-1], "data-to") == "Draft"  # the create
    assert hooks(second, "history-newer") and not hooks(second, "history-older")
    assert client.get("/experiments/flip?page=0").status_code == 400
    deep = client.get(f"/experiments/flip?page={pages.HISTORY_PAGES + 1}")
    assert deep.status_code == 400 and "audit page" in deep.text
    assert client.get("/experiments/flip?page=x").status_code == 400


def test_audit_is_paged_and_filtered(app: object, gov: Governance) -> None:
    gov.create("a", actor="ana")
    gov.create("b", actor="ben", tenant="t1")
    for _ in range(30):
        gov.transition("a", S.PENDING_APPROVAL, actor="ana")
        gov.transition("a", S.DRAFT, actor="ana")
        gov.transition("b", S.PENDING_APPROVAL, actor="ben", tenant="t1")
        gov.transition("b", S.DRAFT, actor="ben", tenant="t1")
    client = login(app, "vic")
    seen: list[str] = []
    url: str | None = "/audit"
    while url:
        page = client.get(url).text
        seen.extend(attr(e, "data-experiment") or "" for e in hooks(page, "audit-entry"))
        older = re.search(r'<a href="([^"]+)" rel="next" data-testid="audit-older"', page)
        url = html.unescape(older.group(1)) if older else None
    assert seen.count("a") == log_length(gov, None, None) and seen.count("b") == log_length(gov, "t1", None)
    only_b = client.get("/audit?experiment=b&kind=transition").text
    assert {attr(e, "data-experiment") for e in hooks(only_b, "audit-entry")} == {"b"}
    assert len(hooks(only_b, "audit-entry")) == 50
    scoped = client.get("/audit?scope=t1:~&kind=transition").text
    assert {attr(e, "data-experiment") for e in hooks(scoped, "audit-entry")} == {"b"}
    assert client.get("/audit?kind=bogus").status_code == 400
    for bad in ("99999999999999999999999-0@~:~", "1-\u00b2@~:~", "abc", "1-1@nocolon", "1@~:~"):
        assert client.get("/audit", params={"before": bad}).status_code == 400, bad


def test_versions_diff_and_rollback(app: object, gov: Governance) -> None:
    seed(gov)
    client = login(app, "olga")
    page = client.get("/experiments/checkout?from=1&to=2").text
    diff = page[page.index('data-testid="diff"'):]
    kinds = {attr(r, "data-path"): attr(r, "data-kind") for r in hooks(diff, "diff-row")}
    assert kinds == {"rollout.percent": "modified", "color": "removed", "rollout.steps[0]": "added",
                     "rollout.steps[1]": "added", "size": "added"}
    assert "wider rollout" in diff and "&#34;red&#34;" in diff
    missing = client.get("/experiments/checkout?from=1&to=9").text
    assert "checkout has no configuration version 9" in missing[missing.index('data-testid="diff"'):]
    # a new version and a rollback, as the operator
    made = post(client, "/experiments/checkout", {"op": "version", "configuration": '{"rollout": {"percent": 50}}',
                                                  "description": "half"})
    assert made.status_code == 303  # type: ignore[attr-defined]
    bad = post(client, "/experiments/checkout", {"op": "version", "configuration": "{nope"})
    assert bad.status_code == 409 and "not valid JSON" in bad.text  # type: ignore[attr-defined]
    back = post(client, "/experiments/checkout", {"op": "rollback", "version": "1"})
    assert back.status_code == 303  # type: ignore[attr-defined]
    versions = gov.backplane.versions("checkout")
    assert [(v.version, v.created_by, v.rolled_back_from) for v in versions] == [
        (1, "ana", None), (2, "ana", None), (3, "olga", None), (4, "olga", 1)]
    assert versions[3].configuration == versions[0].configuration
    missing = post(client, "/experiments/checkout", {"op": "rollback", "version": "99"})
    assert missing.status_code == 404  # type: ignore[attr-defined]
    assert len(gov.backplane.versions("checkout")) == 4


def test_unknown_experiments_and_actions(app: object, gov: Governance) -> None:
    client = login(app, "olga")
    answer = client.get("/experiments/nope")
    assert answer.status_code == 404 and hooks(answer.text, "error")
    assert post(client, "/experiments/nope", {"op": "transition", "to": "Draft"}).status_code == 404  # type: ignore[attr-defined]
    assert post(client, "/experiments/nope", {"op": "explode"}).status_code == 400  # type: ignore[attr-defined]


def test_the_list_is_read_once_per_write_while_the_live_feed_runs(gov: Governance, users_file: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from redgov.web import app as app_module

    seed(gov)
    reads: list[tuple[str | None, str | None]] = []
    real = gov.experiments

    def counted(*, tenant: str | None = None, environment: str | None = None, **kw: object) -> object:
        reads.append((tenant, environment))
        return real(tenant=tenant, environment=environment, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(gov, "experiments", counted)
    site = create_app(gov, users_file, SECRET)  # with the live feed
    with TestClient(site) as client:  # the lifespan starts the hub
        token = csrf_of(client.get("/login").text)
        client.post("/login", data={"username": "vic", "password": PASSWORD["vic"], "csrf": token, "next": "/"})
        hub = site.state.ctx.hub

        def names() -> list[str]:
            return sorted(attr(r, "data-experiment") or "" for r in hooks(client.get("/").text, "experiment-row"))

        assert names() == ["checkout", "search"]
        first = len(reads)
        assert first == 2  # one read per scope
        for _ in range(3):
            assert names() == ["checkout", "search"]
        assert len(reads) == first  # nothing written since: nothing read again

        # a write to the default scope (from any process: the feed reads it from Redis): once the
        # feed read it, that scope is read again, the other is not
        seen = hub.generation(None, None)
        gov.create("pricing", actor="cho")
        deadline = time.monotonic() + 5
        while hub.generation(None, None) == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hub.generation(None, None) != seen, "the live feed did not read the write"
        assert names() == ["checkout", "pricing", "search"]
        assert reads[first:] == [(None, None)]  # only the scope written to

        monkeypatch.setattr(app_module, "LIST_TTL", 0.0)  # kept no longer than LIST_TTL
        names()
        assert len(reads) == first + 3
    # without the live feed every page reads
    plain = login(create_app(gov, users_file, SECRET, live=False), "vic")
    before = len(reads)
    plain.get("/")
    plain.get("/")
    assert len(reads) == before + 4
