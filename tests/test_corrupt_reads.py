"""Stored data no write makes (non-UTF-8 names, numbers out of range) and odd input met by the reads
added for the operator view, the watch and the SQL copy: each is a named RedgovError, a 400, or the
corrupt item passed over, never a bare ValueError/UnicodeDecodeError/OverflowError, a 500 with a
traceback, or a CLI "internal error".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import redgov
from redgov import CorruptDataError, Governance, ManualGate, ValidationError
from redgov import LifecycleState as S
from redgov.codec import decode_fields
from redgov.keys import Scope, web_session
from redgov.sql.exporter import discover
from redgov.web import add_user, create_app

from .conftest import delete_prefix
from .webusers import PASSWORDS, basic, write_users


@pytest.fixture
def gov(redis_url: str, prefix: str) -> Iterator[Governance]:
    governance = Governance(redgov.connect(redis_url, prefix=prefix), gates=[ManualGate(to_state=S.APPROVED)])
    yield governance
    delete_prefix(governance.backplane.client, prefix)
    governance.close()


def test_an_approval_valid_until_out_of_range_is_corrupt_data(gov: Governance) -> None:
    gov.create("e")
    gov.transition("e", S.PENDING_APPROVAL)
    gov.approve("e", S.APPROVED, approver="amy", valid_for=timedelta(minutes=5))
    log = Scope(gov.backplane.prefix).log
    entry_id, raw = gov.backplane.client.xrevrange(log, count=1)[0]
    fields = {k.decode(): v for k, v in raw.items()}
    assert fields["k"] == b"approval" and "vu" in fields
    assert decode_fields(entry_id.decode(), fields, log).record.valid_until is not None  # as written: fine
    with pytest.raises(CorruptDataError, match="cannot be decoded"):
        decode_fields(entry_id.decode(), {**fields, "vu": b"9" * 17}, log)


def test_awaiting_approval_reads_odd_pending_fields_and_names_unreadable_ones(gov: Governance) -> None:
    gov.create("e")
    gov.transition("e", S.PENDING_APPROVAL)
    key = Scope(gov.backplane.prefix).experiment("e").state
    client = gov.backplane.client
    client.hset(key, "p:PendingApproval>Approved", "1-0\tlead\t\t0")  # an approval waiting to be consumed
    assert gov.awaiting_approval() == []
    client.hset(key, "p:PendingApproval>Approved", "1-0\tlead\t\u00b2\t0")  # '²' is no expiry: named
    with pytest.raises(CorruptDataError, match=re.escape(key) + ".*p:PendingApproval>Approved"):
        gov.awaiting_approval()
    client.hset(key, "q:PendingApproval>*", "no tabs")
    client.hdel(key, "p:PendingApproval>Approved")
    with pytest.raises(CorruptDataError, match=re.escape(key) + ".*q:PendingApproval>Approved"):
        gov.awaiting_approval()
    client.hset(key, "q:PendingApproval>*", "\t1\t")
    assert [m.experiment for m in gov.awaiting_approval()] == ["e"]
    client.hset(key, b"\xff\xfe", b"x")
    with pytest.raises(CorruptDataError, match=re.escape(key)):
        gov.awaiting_approval()


def test_watch_names_a_log_entry_that_cannot_be_read(gov: Governance) -> None:
    gov.create("e")
    log = Scope(gov.backplane.prefix).log
    cursor = gov.backplane.client.xrevrange(log, count=1)[0][0].decode()
    gov.backplane.client.xadd(log, {b"\xff": b"x", b"k": b"state"})
    with pytest.raises(CorruptDataError, match="cannot be decoded"):
        list(gov.watch(from_id=cursor, timeout=0.2))


def test_a_key_that_is_not_utf8_is_no_scope(gov: Governance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gov.create("e")
    prefix = gov.backplane.prefix
    client = gov.backplane.client
    client.xadd(prefix.encode() + b"{\xff:~}:log", {"k": "v"})
    assert discover(client, prefix) == [Scope(prefix).log]  # the SQL copy's look for scopes
    users = write_users(tmp_path / "users.json", monkeypatch)
    web = TestClient(create_app(gov, users, "s" * 48, live=False), raise_server_exceptions=False)
    listed = web.get("/api/experiments", headers=basic("vic"))
    assert listed.status_code == 200 and [r["experiment"] for r in listed.json()] == ["e"]


def test_web_numbers_and_logins_that_cannot_be_read(gov: Governance, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    gov.create("e", configuration={"a": 1})
    gov.transition("e", S.PENDING_APPROVAL)
    gov.approve("e", S.APPROVED, approver="amy", valid_for=timedelta(minutes=5))
    users = write_users(tmp_path / "users.json", monkeypatch)
    web = TestClient(create_app(gov, users, "s" * 48, live=False), follow_redirects=False,
                     raise_server_exceptions=False)
    for query in ("from=\u00b2&to=1", "from=1&to=" + "9" * 5000):
        answer = web.get(f"/api/experiments/e/diff?{query}", headers=basic("vic"))
        assert answer.status_code == 400 and answer.json()["error"] == "ValidationError", query[:20]
    # a login whose stored value is not text is no login; one whose key holds a hash is a named failure
    token = re.search(r'name="csrf" value="([^"]+)"', web.get("/login").text)
    assert token is not None
    assert web.post("/login", data={"csrf": token.group(1), "username": "vic", "password": PASSWORDS["vic"],
                                    "next": "/"}).status_code == 303
    [key] = gov.backplane.client.scan_iter(match=gov.backplane.prefix + "{web}:session:*")
    gov.backplane.client.set(key, b"\xff\xfe")
    assert web.get("/").status_code == 303
    gov.backplane.client.delete(key)
    gov.backplane.client.hset(key, "a", "b")
    failed = web.get("/")
    assert (failed.status_code == 500 and "Traceback" not in failed.text
            and "no-store" in failed.headers["cache-control"])
    assert web_session("p", "x").startswith("p{web}")


def test_the_audit_page_shows_an_entry_that_cannot_be_read(gov: Governance, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    gov.create("e")
    gov.backplane.client.xadd(Scope(gov.backplane.prefix).log, {b"k": b"approval", b"x": b"e", b"\xff": b"1",
                                                                 b"r": b"{"})
    users = write_users(tmp_path / "users.json", monkeypatch)
    web = TestClient(create_app(gov, users, "s" * 48, live=False), raise_server_exceptions=False)
    token = re.search(r'name="csrf" value="([^"]+)"', web.get("/login").text)
    assert token is not None
    web.post("/login", data={"csrf": token.group(1), "username": "vic", "password": PASSWORDS["vic"], "next": "/"})
    page = web.get("/audit")
    assert page.status_code == 200 and "cannot be decoded" in page.text
    assert web.get("/audit?kind=approval").status_code == 200


def test_add_user_refuses_bytes_that_are_not_text_and_names_a_folder_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not valid text"):
        add_user(tmp_path / "users.json", "ana", "viewer", "\udcff")
    assert not (tmp_path / "users.json").exists()
    with pytest.raises(redgov.ConfigError, match="users file /proc/"):
        add_user("/proc/redgov-users/users.json", "ana", "viewer", "pw")
