"""Look-alike names (issue 16): hidden characters are refused in names, kept in free text, and the
web pages show both hidden characters and visible look-alikes for what they are.

The finding: ``checkout‐button‐color`` (U+2010 HYPHEN) was accepted beside
``checkout-button-color``, so was a name ending in U+200B ZERO WIDTH SPACE and
``safe\\u202egnp.exe`` (U+202E RIGHT-TO-LEFT OVERRIDE, shown as ``safeexe.png``); the list showed
identical rows and an audit reason holding U+202E read reversed.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from markupsafe import Markup
from starlette.testclient import TestClient

import redgov
from redgov import ErrorRate, Governance, ManualGate, ValidationError, validate
from redgov import LifecycleState as S
from redgov.cli import main
from redgov.web import add_user, create_app, pages
from redgov.web import users as users_module
from redgov.web.visible import visible, visible_name, visible_text

from .conftest import delete_prefix

RLO = "safe\u202egnp.exe"
ZWSP = "checkout\u200b"
HYPHEN = "checkout\u2010button\u2010color"
#: name -> (character, index) check_name names in its refusal
HIDDEN = {RLO: ("U+202E RIGHT-TO-LEFT OVERRIDE", 4), ZWSP: ("U+200B ZERO WIDTH SPACE", 8)}
SECRET = "test-secret-" + "x" * 32


def refused(call: Callable[[], object], field: str, name: str) -> str:
    described, index = HIDDEN[name]
    with pytest.raises(ValidationError) as caught:
        call()
    message = str(caught.value)
    assert f"{field} {name!r} contains {described} (" in message and f" at index {index};" in message, message
    return message


@pytest.fixture
def gov(redis_url: str, prefix: str) -> Iterator[Governance]:
    bp = redgov.connect(redis_url, prefix=prefix)
    governance = Governance(bp, gates=[ManualGate(to_state=S.APPROVED)])
    yield governance
    delete_prefix(bp.client, prefix)
    bp.close()


def written(gov: Governance) -> list[bytes]:
    return list(gov.backplane.client.scan_iter(match="*" + gov.backplane.prefix + "*"))


# -- the library ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [RLO, ZWSP])
def test_every_name_a_write_takes_refuses_hidden_characters(gov: Governance, name: str) -> None:
    gov.create("checkout", actor="ana")
    gov.transition("checkout", S.PENDING_APPROVAL, actor="ana", reason="ready")
    before = sorted(written(gov))
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: gov.create(name, actor="ana"), "experiment"),
        (lambda: gov.create("new", actor=name), "actor"),
        (lambda: gov.create("new", actor="ana", tenant=name), "tenant"),
        (lambda: gov.create("new", actor="ana", environment=name), "environment"),
        (lambda: gov.create("new", actor="ana", idempotency_key=name), "idempotency_key"),
        (lambda: gov.transition("checkout", S.DRAFT, actor=name), "actor"),
        (lambda: gov.transition("checkout", S.DRAFT, actor="ana", idempotency_key=name), "idempotency_key"),
        (lambda: gov.transition(name, S.DRAFT, actor="ana"), "experiment"),
        (lambda: gov.approve("checkout", S.APPROVED, approver=name), "approver"),
        (lambda: gov.approve("checkout", S.APPROVED, approver="abe", idempotency_key=name), "idempotency_key"),
        (lambda: gov.request("checkout", S.APPROVED, actor=name), "actor"),
        (lambda: gov.create_version("checkout", {"a": 1}, actor=name), "actor"),
        (lambda: gov.acquire_lease("checkout", owner=name, ttl=timedelta(seconds=30)), "owner"),
        (lambda: gov.publish(actor=name), "actor"),
        (lambda: gov.state(name), "experiment"),
        (lambda: gov.state("checkout", tenant=name), "tenant"),
        (lambda: ErrorRate(0.05, name=name), "policy name"),
    ]
    for call, field in calls:
        refused(call, field, name)
    assert sorted(written(gov)) == before  # refused before anything was sent


def test_visible_look_alikes_and_ordinary_names_stay_names(gov: Governance) -> None:
    """U+2010 HYPHEN is visible: a name (the pages mark it); so are é, 客户, Cyrillic and emoji."""
    for name in ("checkout-button-color", HYPHEN, "café", "客户-7", "тест", "launch 🚀"):
        gov.create(name, actor="ana", tenant="客户", environment="prod-é")
    assert {s.experiment for s in gov.experiments(tenant="客户", environment="prod-é")} == {
        "checkout-button-color", HYPHEN, "café", "客户-7", "тест", "launch 🚀"}


def test_free_text_keeps_hidden_characters(gov: Governance) -> None:
    reason = "rollback \u202eno\u202c ok\u200b"
    gov.create("checkout", actor="ana", metadata={"note": reason})
    moved = gov.transition("checkout", S.PENDING_APPROVAL, actor="ana", reason=reason)
    version = gov.create_version("checkout", {"text": reason}, actor="ana", description=reason)
    approval = gov.approve("checkout", S.APPROVED, approver="abe", reason=reason, approved=False)
    assert moved.reason == reason and version.description == reason and approval.reason == reason
    assert reason in [t.reason for t in gov.history("checkout")]
    assert gov.state("checkout").metadata["note"] == reason  # type: ignore[union-attr]


@pytest.fixture
def cheap_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    path = tmp_path / "users.json"
    add_user(path, "olga", "operator", "operator-pw")
    return path


@pytest.mark.parametrize("name", [RLO, ZWSP])
def test_users_add_refuses_hidden_characters(name: str, cheap_users: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    before = cheap_users.read_bytes()
    refused(lambda: add_user(cheap_users, name, "viewer", "pw"), "user name", name)
    monkeypatch.setattr("redgov.cli.web._password", lambda _name: "pw")
    assert main(["--json", "users", "add", name, "--role", "viewer", "--users", str(cheap_users)]) == 2
    answer = json.loads(capsys.readouterr().out)
    described, index = HIDDEN[name]
    assert answer["error"] == "ValidationError"
    assert described in answer["message"] and f"at index {index}" in answer["message"]
    assert cheap_users.read_bytes() == before
    assert main(["users", "add", HYPHEN, "--role", "viewer", "--users", str(cheap_users)]) == 0  # visible: a name


def test_a_users_file_holding_a_hidden_name_is_refused_naming_it(cheap_users: Path) -> None:
    document = json.loads(cheap_users.read_text())
    document["users"][RLO] = document["users"]["olga"]
    cheap_users.write_text(json.dumps(document))
    with pytest.raises(redgov.ConfigError, match=r"U\+202E RIGHT-TO-LEFT OVERRIDE .* at index 4"):
        users_module.read_users(cheap_users)


# -- the filters ------------------------------------------------------------------------------

TOKEN = '<span class="invisible-char" title="U+202E RIGHT-TO-LEFT OVERRIDE">\u27e8U+202E\u27e9</span>'


def test_the_filters_show_hidden_characters_as_tokens_and_escape_the_rest() -> None:
    assert visible("a <b> \u202e & \u200b") == Markup(
        'a &lt;b&gt; ' + TOKEN + ' &amp; <span class="invisible-char" title="U+200B ZERO WIDTH SPACE">'
        '\u27e8U+200B\u27e9</span>')
    assert visible(None) == "" and visible(Markup("<i>x</i>")) == Markup("<i>x</i>")
    assert visible("two\nlines\tand \x1b") == Markup(
        'two\nlines\tand <span class="invisible-char" title="U+001B &lt;control&gt;">\u27e8U+001B\u27e9</span>')
    # prose keeps what is ordinary in prose: emoji selectors, no-break spaces, private use
    assert visible("\u2764\ufe0f\u00a0\ue000") == "\u2764\ufe0f\u00a0\ue000"
    assert visible_name(RLO) == Markup("safe" + TOKEN + "gnp.exe")
    assert visible_name("a\u00a0b") == Markup(
        'a<span class="invisible-char" title="U+00A0 NO-BREAK SPACE">\u27e8U+00A0\u27e9</span>b')
    assert visible_text(RLO) == "safe\u27e8U+202E\u27e9gnp.exe"
    # in a name even tab and newline are tokens (names never hold them)
    assert visible_name("a\tb") == Markup(
        'a<span class="invisible-char" title="U+0009 &lt;control&gt;">\u27e8U+0009\u27e9</span>b')
    assert visible_text("a\nb") == "a\u27e8U+000A\u27e9b"
    assert visible_name("<\u0338>") == Markup(  # a mark composing with markup's own characters stays escaped
        '<mark class="lookalike-char" title="U+003C LESS-THAN SIGN + U+0338 COMBINING LONG SOLIDUS OVERLAY, '
        'not U+226E NOT LESS-THAN">&lt;\u0338</mark>&gt;')
    for plain in ("checkout-button-color", "café", "客户-7", "тест", "launch 🚀", "<&>"):
        assert visible_name(plain) == Markup(html.escape(plain, quote=True).replace("&#x27;", "&#39;"))


@pytest.mark.parametrize(("name", "shown", "title"), [
    (HYPHEN, "\u2010", "U+2010 HYPHEN, looks like U+002D HYPHEN-MINUS"),
    ("a\u2013b", "\u2013", "U+2013 EN DASH, looks like U+002D HYPHEN-MINUS"),
    ("a\u2212b", "\u2212", "U+2212 MINUS SIGN, looks like U+002D HYPHEN-MINUS"),
    ("\uff43heckout", "\uff43", "U+FF43 FULLWIDTH LATIN SMALL LETTER C, looks like U+0063 LATIN SMALL LETTER C"),
    ("p\u0430ypal", "\u0430", "U+0430 CYRILLIC SMALL LETTER A in a Latin name"),
    ("cafe\u0301", "e\u0301", "U+0065 LATIN SMALL LETTER E + U+0301 COMBINING ACUTE ACCENT, "
                              "not U+00E9 LATIN SMALL LETTER E WITH ACUTE"),
])
def test_visible_look_alikes_are_marked_in_names(name: str, shown: str, title: str) -> None:
    marked = visible_name(name)
    assert f'<mark class="lookalike-char" title="{title}">{shown}</mark>' in marked
    assert visible(name) == name  # in prose they are ordinary


# -- the pages --------------------------------------------------------------------------------

@pytest.fixture
def app(gov: Governance, cheap_users: Path) -> object:
    add_user(cheap_users, "abe", "approver", "approver-pw")
    return create_app(gov, cheap_users, SECRET, live=False)


def login(app: object, name: str, password: str) -> TestClient:
    client = TestClient(app)  # type: ignore[arg-type]
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/login").text)
    assert token is not None
    answer = client.post("/login", data={"username": name, "password": password, "csrf": token.group(1),
                                         "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client


def names_shown(page: str) -> list[str]:
    """The experiment links of the list, as HTML."""
    return re.findall(r'<td class="name"><a href="[^"]+">(.*?)</a></td>', page)


def test_a_reason_with_an_override_is_shown_as_a_token_never_applied(app: object, gov: Governance) -> None:
    reason = "approved by \u202emoc.live\u202c, see ticket\u200b"
    gov.create("checkout", actor="ana", configuration={"a": 1})
    gov.transition("checkout", S.PENDING_APPROVAL, actor="ana", reason=reason)
    gov.create_version("checkout", {"a": 2}, actor="ana", description=reason)
    gov.request("checkout", S.APPROVED, actor="ana", reason=reason)
    gov.approve("checkout", S.APPROVED, approver="abe", reason=reason, approved=False)
    assert reason in [t.reason for t in gov.history("checkout")]  # stored as given

    client = login(app, "olga", "operator-pw")
    shown = ("approved by " + TOKEN + "moc.live"
             '<span class="invisible-char" title="U+202C POP DIRECTIONAL FORMATTING">\u27e8U+202C\u27e9</span>'
             ', see ticket<span class="invisible-char" title="U+200B ZERO WIDTH SPACE">\u27e8U+200B\u27e9</span>')
    experiment = client.get(pages.experiment_url("checkout")).text
    audit = client.get("/audit").text
    for page in (experiment, audit):
        assert "\u202e" not in page and "\u202c" not in page and "\u200b" not in page
    assert f'<td class="reason">{shown}</td>' in experiment  # the history
    assert f'<div class="rec-reason">{shown}</div>' in experiment  # the rejection
    assert f"<td>{shown}" in experiment  # the version's description
    entries = re.findall(r'<tr data-testid="audit-entry" data-kind="(\w+)".*?</tr>', audit, re.S)
    with_reason = re.findall(r'<tr data-testid="audit-entry" data-kind="(\w+)"[^>]*>(?:(?!</tr>).)*'
                             + re.escape(f'<div class="rec-reason">{shown}</div>'), audit, re.S)
    assert sorted(with_reason) == ["approval", "transition", "version"], entries


def test_look_alike_rows_of_the_list_are_told_apart(app: object, gov: Governance,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    gov.create("checkout", actor="ana")
    gov.create(HYPHEN, actor="ana")
    gov.create("checkout-button-color", actor="ana")
    # names stored before hidden characters were refused: let them past the check, as it was then
    # (reads refuse them too, see the next test)
    monkeypatch.setattr(validate, "_GOOD_NAMES", {ZWSP, RLO})
    gov.create(ZWSP, actor=RLO, tenant=RLO)

    client = login(app, "olga", "operator-pw")
    listing = client.get("/").text
    shown = names_shown(listing)
    assert len(shown) == len(set(shown)) == 4
    assert "checkout-button-color" in shown and "checkout" in shown
    assert ("checkout<mark class=\"lookalike-char\" title=\"U+2010 HYPHEN, looks like U+002D HYPHEN-MINUS\">"
            "\u2010</mark>button<mark class=\"lookalike-char\" title=\"U+2010 HYPHEN, looks like U+002D "
            "HYPHEN-MINUS\">\u2010</mark>color") in shown
    assert 'checkout<span class="invisible-char" title="U+200B ZERO WIDTH SPACE">\u27e8U+200B\u27e9</span>' in shown
    assert '<span class="who-name">safe' + TOKEN + "gnp.exe</span>" in listing  # the actor
    assert "safe" + TOKEN + "gnp.exe" in re.findall(r'<span class="scope">(.*?)<span class="sep">', listing)
    assert "safe\u27e8U+202E\u27e9gnp.exe / default</option>" in listing  # the scope filter: plain text
    visible_parts = re.sub(r"<[^>]+>", "", listing)  # what a reader sees, outside tags and attributes
    assert "\u202e" not in visible_parts and "\u200b" not in visible_parts

    page = client.get(pages.experiment_url(ZWSP, RLO)).text
    assert '<h1 class="exp-name">checkout<span class="invisible-char" title="U+200B ZERO WIDTH SPACE">' in page
    assert "<title>checkout\u27e8U+200B\u27e9 \u00b7 redgov</title>" in page
    assert "\u200b" not in re.sub(r"<[^>]+>", "", page)


def test_a_page_asked_for_a_hidden_name_says_why_it_is_refused(app: object) -> None:
    client = login(app, "olga", "operator-pw")
    refusal = client.get(pages.experiment_url(ZWSP, RLO))
    assert refusal.status_code == 400
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in refusal.text and "at index 4" in refusal.text
    assert "\u202e" not in refusal.text


def test_a_scope_named_before_the_rule_does_not_take_the_pages_down(app: object, gov: Governance) -> None:
    """A tenant stored before hidden characters were refused cannot be read by name any more; the list,
    the inbox and the audit pages still answer for every other scope (that one is left out, logged)."""
    from redgov.keys import Scope

    gov.create("checkout", actor="ana")
    old = Scope(gov.backplane.prefix, "ten\u202et", None)
    gov.backplane.client.xadd(old.log, {"k": "state", "x": "legacy", "r": "{}"})
    gov.backplane.client.zadd(old.index, {"legacy": 0})
    client = login(app, "olga", "operator-pw")
    for path in ("/", "/approvals", "/audit"):
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.status_code)
        assert "\u202e" not in answer.text
    assert "checkout" in client.get("/").text
