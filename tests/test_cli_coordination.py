"""`redgov lease acquire|renew|release`, `redgov wait`, fenced writes (`--lease-owner/--lease-token`) and
`approve --valid-for`: one flow through real processes (two owners, a waiter woken by another process's
transition, a stale token refused), the rest in-process (JSON shapes, validation, help, exit codes)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import redgov
from redgov.cli import build_parser, exit_code
from redgov.cli.exits import TIMED_OUT, WaitTimeoutError
from redgov.cli.parser import GLOBAL_OPTIONS

from .conftest import delete_prefix, new_prefix
from .test_cli import CLI, InProcess


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    chosen = new_prefix()
    yield chosen
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, chosen)


def _running(redis_url: str, prefix: str, experiment: str = "exp", *, tenant: str | None = None,
             environment: str | None = None) -> None:
    """``experiment`` created and moved to Running (default rules, no gates)."""
    with redgov.Governance(redgov.connect(redis_url, prefix=prefix)) as gov:
        gov.create(experiment, tenant=tenant, environment=environment)
        for state in ("PendingApproval", "Approved", "Running"):
            gov.transition(experiment, state, tenant=tenant, environment=environment)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str,
        prefix: str) -> InProcess:
    return InProcess(capsys, monkeypatch, tmp_path, redis_url, prefix)


def test_two_owners_a_waiter_and_a_stale_token_across_processes(tmp_path: Path, redis_url: str,
                                                                 prefix: str) -> None:
    _running(redis_url, prefix)
    cli = CLI(tmp_path, redis_url, prefix)
    held = cli.json("lease", "acquire", "exp", "--owner", "ctl-a", "--ttl", "30")["lease"]
    assert held["owner"] == "ctl-a" and held["experiment"] == "exp" and held["token"] >= 1
    token = str(held["token"])
    second = cli("lease", "acquire", "exp", "--owner", "ctl-b", "--ttl", "30", code=1)
    assert second.stdout == "" and "held by ctl-a" in second.stderr and "ctl-b cannot acquire" in second.stderr

    waiter = subprocess.Popen([sys.executable, "-m", "redgov", *cli.base, "wait", "exp", "Paused", "RolledBack",
                               "--timeout", "30", "--json"], cwd=tmp_path, env=cli.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stale = cli.json("transition", "exp", "Paused", "--lease-owner", "ctl-a", "--lease-token",
                         str(held["token"] - 1), code=1)
        assert stale["error"] == "LeaseError" and stale["exit"] == 1
        assert waiter.poll() is None, waiter.communicate()  # still Running: the waiter waits
        # the move comes only once the waiter is blocked reading the log (else it would find Paused at once)
        with redis.Redis.from_url(redis_url) as watcher:
            deadline = time.monotonic() + 20
            while not any(c.get("cmd") == "xread" and "b" in c.get("flags", "") for c in watcher.client_list()):
                assert time.monotonic() < deadline and waiter.poll() is None, "the waiter never blocked on the log"
                time.sleep(0.02)
        moved = cli("transition", "exp", "Paused", "--lease-owner", "ctl-a", "--lease-token", token, "--actor", "a")
        assert "Running -> Paused" in moved.stdout
        out, err = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0 and err == "", err
    (line,) = out.splitlines()
    woke = json.loads(line)
    assert woke["experiment"] == "exp" and woke["state"] == "Paused"  # the state record, as `state --json`
    assert woke["last_modified_by"] == "a"


def test_lease_json_and_text_in_process(run: InProcess, redis_url: str, prefix: str) -> None:
    _running(redis_url, prefix)
    first = run.json("lease", "acquire", "exp", "--owner", "ctl-a", "--ttl", "30")
    assert set(first) == {"experiment", "lease"} and first["experiment"] == "exp"
    assert set(first["lease"]) == {"experiment", "owner", "token", "expires_at", "tenant", "environment"}
    token = first["lease"]["token"]
    again = run.json("lease", "acquire", "exp", "--owner", "ctl-a", "--ttl", "60")  # the holder: renewed
    assert again["lease"]["token"] == token and again["lease"]["expires_at"] > first["lease"]["expires_at"]
    text, _ = run("lease", "renew", "exp", "--owner", "ctl-a", "--token", str(token), "--ttl", "90")
    assert text.startswith(f"exp: lease renewed by ctl-a, token {token}, expires 20")
    refused = run.json("lease", "acquire", "exp", "--json", "--owner", "ctl-b", "--ttl", "5", code=1)
    assert refused["error"] == "LeaseError" and "held by ctl-a" in refused["message"]
    # fenced writes: the current token passes, a wrong one is refused and writes nothing
    run("configure", "exp", "-", "--lease-owner", "ctl-a", "--lease-token", str(token), stdin="a: 1\n")
    wrong = run.json("configure", "exp", "-", "--lease-owner", "ctl-a", "--lease-token", "7", stdin="a: 2\n",
                     code=1)
    assert wrong["error"] == "LeaseError"
    assert run.json("rollback", "exp", "1", "--lease-owner", "ctl-a", "--lease-token", "7", code=1)["exit"] == 1
    assert [v["version"] for v in run.json("versions", "exp")["versions"]] == [1]

    released = run.json("lease", "release", "exp", "--owner", "ctl-a", "--token", str(token))
    assert released == {"experiment": "exp", "released": True,
                        "lease": {"experiment": "exp", "owner": "ctl-a", "token": token, "tenant": None,
                                  "environment": None}}
    assert run.json("lease", "show", "exp") == {"experiment": "exp", "lease": None}
    assert run("lease", "show", "exp")[0] == "exp: nobody holds the lease\n"
    text, _ = run("lease", "release", "exp", "--owner", "ctl-a", "--token", str(token))  # nothing left: exit 0
    assert text == f"exp: nothing released: the lease of ctl-a with token {token} had expired or was taken over\n"
    assert run.json("lease", "renew", "exp", "--owner", "ctl-a", "--token", str(token), "--ttl", "5",
                    code=1)["error"] == "LeaseError"
    text, _ = run("lease", "acquire", "exp", "--owner", "ctl-b", "--ttl", "30")
    newer = int(text.split("token ")[1].split(",")[0])
    assert newer > token and text.startswith("exp: lease held by ctl-b, token ")
    # who holds it, the token, the expiry (read back as the server's TIME + PTTL: to the ms, not always equal)
    assert run("lease", "show", "exp")[0].startswith(f"exp: lease held by ctl-b, token {newer}, expires 20")
    shown = run.json("lease", "show", "exp")["lease"]
    assert (shown["owner"], shown["token"]) == ("ctl-b", newer)
    taken = run.json("transition", "exp", "Paused", "--lease-owner", "ctl-a", "--lease-token", str(token), code=1)
    assert taken["error"] == "LeaseError" and "nothing was written" in taken["message"]
    assert run.json("state", "exp")["state"] == "Running"
    assert run.json("transition", "exp", "Paused")["state"] == "Paused"  # unfenced writes are not refused


def test_leases_in_a_tenant_scope(run: InProcess, redis_url: str, prefix: str) -> None:
    _running(redis_url, prefix, tenant="acme", environment="prod")
    held = run.json("--tenant", "acme", "lease", "acquire", "exp", "--owner", "o", "--ttl", "5", "--env", "prod")
    assert (held["lease"]["tenant"], held["lease"]["environment"]) == ("acme", "prod")
    token = str(held["lease"]["token"])
    assert run.json("lease", "acquire", "exp", "--owner", "p", "--ttl", "5", code=1)["error"] == "NotFoundError"
    moved = run.json("transition", "exp", "Paused", "--tenant", "acme", "--env", "prod", "--lease-owner", "o",
                     "--lease-token", token)
    assert moved["state"] == "Paused"


def test_wait_and_approve_valid_for_in_process(run: InProcess, redis_url: str, prefix: str) -> None:
    _running(redis_url, prefix)
    now = run.json("wait", "exp", "Running", "Paused", "--timeout", "0")  # already there: at once
    assert now["experiment"] == "exp" and now["state"] == "Running" and now["revision"] == 4
    assert run("wait", "exp", "running", "--timeout", "1")[0].startswith("exp: Running (revision 4, ")
    started = time.monotonic()
    out, err = run("wait", "exp", "Paused", "--timeout", "0.2", code=TIMED_OUT)
    assert time.monotonic() - started >= 0.2 and out == ""
    assert err == ("redgov: timed out: experiment exp did not reach Paused within 0.2 s "
                   "(it was Running when the wait began)\n")
    timed_out = run.json("wait", "exp", "Paused", "Archived", "--timeout", "0.1", code=1)
    assert timed_out["error"] == "WaitTimeoutError" and timed_out["exit"] == 1
    assert "did not reach Archived, Paused" in timed_out["message"]
    assert run.json("wait", "nobody", "Paused", "--timeout", "5", code=1)["error"] == "NotFoundError"

    with redgov.Governance(redgov.connect(redis_url, prefix=prefix)) as gov:
        gov.create("gated")
        gov.transition("gated", "PendingApproval")
    (Path.cwd() / "gate.yaml").write_text("governance:\n  approvalGates:\n    - {type: manual, toState: Approved}\n")
    approval = run.json("approve", "gated", "Approved", "--approver", "lead", "--valid-for", "0.05")["approval"]
    assert approval["valid_until"] is not None and approval["approver"] == "lead"
    time.sleep(0.1)
    lapsed = run.json("transition", "gated", "Approved", "--config", "gate.yaml", code=1)
    assert lapsed["error"] == "ApprovalRequiredError" and "expired" in lapsed["message"]
    text, _ = run("approve", "gated", "Approved", "--approver", "lead", "--valid-for", "60")
    assert "approved by lead, valid until 20" in text
    assert run.json("transition", "gated", "Approved", "--config", "gate.yaml")["state"] == "Approved"


@pytest.mark.parametrize("args", [
    ["lease", "acquire", "exp", "--owner", "o", "--ttl", "0"],
    ["lease", "acquire", "exp", "--owner", "o", "--ttl", "-1"],
    ["lease", "acquire", "exp", "--owner", "o", "--ttl", "nan"],
    ["lease", "acquire", "exp", "--owner", "o", "--ttl", "soon"],
    ["lease", "acquire", "exp", "--owner", "o", "--ttl", "700000"],  # over 7 days
    ["lease", "acquire", "exp", "--ttl", "5"],                       # no --owner
    ["lease", "acquire", "exp", "--owner", "o"],                     # no --ttl
    ["lease", "renew", "exp", "--owner", "o", "--token", "0", "--ttl", "5"],
    ["lease", "renew", "exp", "--owner", "o", "--ttl", "5"],         # no --token
    ["lease", "release", "exp", "--owner", "o", "--token", "1.5"],
    ["lease", "release", "exp", "--owner", "o", "--token", "-3"],
    ["lease", "exp"],                                                # no action
    ["lease"],
    ["transition", "exp", "Paused", "--lease-owner", "o"],           # one without the other
    ["transition", "exp", "Paused", "--lease-token", "3"],
    ["configure", "exp", "-", "--lease-token", "3"],
    ["rollback", "exp", "1", "--lease-owner", "o"],
    ["transition", "exp", "Paused", "--lease-owner", "o", "--lease-token", "x"],
    ["approve", "exp", "Approved", "--approver", "a", "--valid-for", "0"],
    ["approve", "exp", "Approved", "--approver", "a", "--valid-for", "inf"],
    ["wait", "exp", "Paused"],                                       # no --timeout
    ["wait", "exp", "--timeout", "1"],                               # no state
    ["wait", "exp", "Flying", "--timeout", "1"],
    ["wait", "exp", "Paused", "--timeout", "-1"],
])
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                             tmp_path: Path) -> None:
    run = InProcess(capsys, monkeypatch, tmp_path, "memory://", "gov")
    body = run.json(*args, code=2, stdin="a: 1\n")
    assert body["error"] == "UsageError" and body["exit"] == 2 and body["message"]
    out, err = run(*args, code=2, stdin="a: 1\n")
    assert out == "" and err.splitlines()[-1].startswith("redgov: error: ")


def test_usage_messages_name_the_problem(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    run = InProcess(capsys, monkeypatch, tmp_path, "memory://", "gov")
    assert "--ttl: expected a number of seconds from 0.001 to 604800" in run(
        "lease", "acquire", "e", "--owner", "o", "--ttl", "0", code=2)[1]
    assert "--token: expected a lease token (a positive integer), got 0" in run(
        "lease", "release", "e", "--owner", "o", "--token", "0", code=2)[1]
    assert "--lease-owner needs --lease-token" in run("transition", "e", "Paused", "--lease-owner", "o", code=2)[1]
    assert "--lease-token needs --lease-owner" in run("transition", "e", "Paused", "--lease-token", "2", code=2)[1]
    assert "--timeout" in run("wait", "e", "Paused", code=2)[1]


def _parsers(parser: argparse.ArgumentParser, name: str = "redgov") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser, nested subcommands (``lease acquire``) included."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


GLOBAL = set(GLOBAL_OPTIONS)


def test_help_documents_every_option_of_the_new_commands() -> None:
    parsers = dict(_parsers(build_parser()))
    assert {"redgov lease acquire", "redgov lease renew", "redgov lease release", "redgov wait"} <= set(parsers)
    for name, parser in parsers.items():  # every parser, nested ones too, has help on every argument
        for action in parser._actions:  # (but the global options, described once in `redgov --help`)
            if not isinstance(action, argparse._SubParsersAction) and not set(action.option_strings) & GLOBAL:
                assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings or action.dest)
    text = {name: " ".join(p.format_help().split()) for name, p in parsers.items()}
    assert all(f"--{o}" in text["redgov lease acquire"] for o in ("owner", "ttl"))
    assert "--tenant" not in text["redgov lease acquire"] and "see `redgov --help`" in text["redgov lease acquire"]
    assert all(f"--{o}" in text["redgov lease renew"] for o in ("owner", "token", "ttl"))
    assert all(f"--{o}" in text["redgov lease release"] for o in ("owner", "token"))
    for name in ("redgov transition", "redgov configure", "redgov rollback"):
        assert "--lease-owner O" in text[name] and "--lease-token N" in text[name], name
    assert "--valid-for SECONDS" in text["redgov approve"]
    assert "exit 1 on timeout" in text["redgov wait"] and "&& take-over" in text["redgov wait"]
    assert "wait: none of the states reached within --timeout" in text["redgov"]
    # global options after the nested command
    args = build_parser().parse_args(["lease", "release", "e", "--owner", "o", "--token", "3", "--json", "--env", "x"])
    assert (args.json, args.environment, args.token, args.lease_command) == (True, "x", 3, "release")


def test_exit_codes_of_a_timed_out_wait_and_a_socket_timeout() -> None:
    assert exit_code(WaitTimeoutError("not yet")) == 1
    assert exit_code(TimeoutError("socket timed out")) == 3  # a TimeoutError is an OSError: a failure
    assert exit_code(redis.TimeoutError("read timed out")) == 3
    assert exit_code(redgov.LeaseError("held")) == 1
