"""``redgov rules publish|show|history|diff`` and ``redgov request``, against the real Redis.

In-process calls (``redgov.cli.main``) check the outputs; a few subprocesses check what a user
sees of enforcement: the exit status and the refusal line of a command run without --config,
or with a --config that differs from the published rules.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

import redgov
from redgov.cli import build_parser
from redgov.cli.parser import GLOBAL_OPTIONS
from redgov.cli.rules import between
from redgov.govdefinition import definition_of

from .conftest import delete_prefix, new_prefix
from .test_cli import CLI, InProcess

GATED = """
governance:
  approvalGates:
    - type: manual
      fromState: Approved
      toState: Running
  policies:
    - type: errorRate
      maxErrorRate: 0.05
"""

#: GATED with the gate needing two approvals and a time window more
STRICTER = """
governance:
  approvalGates:
    - type: manual
      fromState: Approved
      toState: Running
      requiredApprovals: 2
  policies:
    - type: errorRate
      maxErrorRate: 0.05
    - type: timeWindow
      name: office hours
      allowedStartTime: "09:00:00"
      allowedEndTime: "17:00:00"
"""


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    chosen = new_prefix()
    yield chosen
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, chosen)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str,
        prefix: str) -> InProcess:
    (tmp_path / "gated.yaml").write_text(GATED)
    (tmp_path / "stricter.yaml").write_text(STRICTER)
    return InProcess(capsys, monkeypatch, tmp_path, redis_url, prefix)


def _definition(config: redgov.GovernanceConfig) -> dict[str, object]:
    return definition_of(rules=config.lifecycle(), gates=config.gates(), policies=config.policies(),
                         initial_state=config.initial_state, require_telemetry=config.require_telemetry)


def test_publish_then_show_loads_with_load_config(run: InProcess, tmp_path: Path) -> None:
    out, _ = run("--config", "gated.yaml", "rules", "publish", "--actor", "ana", "--reason", "four eyes\nfor Running")
    assert out.startswith("published rules version 1 (prefix ") and "by ana: four eyes for Running" in out
    shown, _ = run("rules", "show")
    lines = shown.splitlines()
    assert lines[0].startswith("# rules version 1, published by ana at ") and lines[0].endswith(
        ": four eyes for Running")
    assert lines[1].startswith("# prefix ") and "hash sha256:" in lines[1]
    published = run.json("rules", "show")
    assert set(published) == {"version", "rules_hash", "created_at", "created_by", "reason", "tenant",
                              "environment", "definition"}
    assert (published["version"], published["created_by"], published["reason"]) == (1, "ana", "four eyes\nfor Running")
    assert published["tenant"] is None and published["environment"] is None
    (tmp_path / "shown.yaml").write_text(shown)
    loaded = redgov.load_config(tmp_path / "shown.yaml")
    assert _definition(loaded) == published["definition"] == _definition(redgov.load_config(GATED))
    assert yaml.safe_load(shown) == {"governance": published["definition"]}
    assert [g.to_state for g in loaded.gates()] == [redgov.LifecycleState.RUNNING]
    assert run.json("rules", "show", "1") == published


def test_publishing_twice_writes_one_version_and_history_and_diff(run: InProcess) -> None:
    first = run.json("--config", "gated.yaml", "rules", "publish", "--actor", "ana")
    assert first["version"] == 1 and first["written"] is True and first["definition"]["approvalGates"]
    again, _ = run("--config", "gated.yaml", "rules", "publish", "--actor", "bob", "--reason", "again")
    assert "rules version 1 is already current" in again and "nothing written" in again
    same = run.json("--config", "gated.yaml", "rules", "publish", "--actor", "bob")
    assert same["written"] is False and same["created_by"] == "ana" and same["rules_hash"] == first["rules_hash"]
    assert run.json("rules", "history")["count"] == 1
    second = run.json("--config", "stricter.yaml", "rules", "publish", "--actor", "carl", "--reason", "two approvers")
    assert second["version"] == 2 and second["written"] is True and second["rules_hash"] != first["rules_hash"]
    history = run.json("rules", "history")
    assert [v["version"] for v in history["versions"]] == [1, 2] and history["current"] == 2
    assert [v["created_by"] for v in history["versions"]] == ["ana", "carl"]
    assert history["versions"][0]["definition"] == first["definition"]
    table, _ = run("rules", "history")
    rows = table.splitlines()
    assert rows[0].split() == ["version", "published", "by", "reason", "hash", "current"]
    assert rows[1].startswith("----") and len(rows) == 4
    assert rows[2].split()[0] == "1" and "ana" in rows[2] and first["rules_hash"][:19] in rows[2]
    assert "two approvers" in rows[3] and rows[3].endswith("*")
    # the same definition as an older version, published again: a new version (history only grows)
    assert run.json("--config", "gated.yaml", "rules", "publish", "--actor", "ana")["version"] == 3
    assert run.json("rules", "show", "1")["definition"] == run.json("rules", "show")["definition"]
    diff, _ = run("rules", "diff", "1", "2")
    assert diff.splitlines() == [
        "approvalGates[0]: manual Approved->Running requiredApprovals 1 in v1, 2 in v2",
        "policies: timeWindow 'office hours' only in v2",
    ]
    backwards = run.json("rules", "diff", "2", "1")
    assert backwards["differences"] == [
        "approvalGates[0]: manual Approved->Running requiredApprovals 2 in v2, 1 in v1",
        "policies: timeWindow 'office hours' only in v2",
    ]
    assert (backwards["from"], backwards["to"]) == (2, 1)
    assert run("rules", "diff", "1", "3")[0] == "no differences between rules versions 1 and 3\n"
    assert run.json("rules", "diff", "1", "3")["differences"] == []
    missing = run.json("rules", "diff", "1", "9", code=1)
    assert missing["error"] == "NotFoundError" and "no rules version 9" in missing["message"]
    assert "refused: no rules version 7" in run("rules", "show", "7", code=1)[1]


def test_no_published_rules_and_publish_without_config(run: InProcess) -> None:
    out, _ = run("rules", "show")
    assert out.startswith("no rules published for this scope")
    nothing = run.json("rules", "show")
    assert nothing["version"] is None and nothing["definition"] is None
    assert run("rules", "history")[0].startswith("no rules published for this scope")
    assert run.json("rules", "history") == {"versions": [], "count": 0, "current": None, "tenant": None,
                                            "environment": None}
    refused = run.json("rules", "publish", "--actor", "ana", code=2)
    assert refused["error"] == "UsageError" and "publish needs --config FILE" in refused["message"]
    assert "publish needs --config FILE" in run("rules", "publish", code=2)[1]
    assert "no rules version 1" in run.json("rules", "show", "1", code=1)["message"]
    assert "expected a version number >= 1" in run("rules", "show", "0", code=2)[1]
    # published in one scope, not in another
    run("--config", "gated.yaml", "--tenant", "acme", "rules", "publish", "--actor", "ana")
    assert run.json("rules", "show", "--tenant", "acme")["tenant"] == "acme"
    assert run.json("rules", "show")["version"] is None


def test_publish_actor_defaults_to_the_os_user(run: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "olga")
    assert run.json("--config", "gated.yaml", "rules", "publish")["created_by"] == "olga"

    def no_login() -> str:
        raise OSError("no login name")

    monkeypatch.setattr(getpass, "getuser", no_login)
    monkeypatch.setenv("USER", "uma")
    assert run.json("--config", "stricter.yaml", "rules", "publish")["created_by"] == "uma"
    monkeypatch.delenv("USER")
    assert "give --actor" in run("--config", "gated.yaml", "rules", "publish", code=2)[1]


def test_published_rules_govern_the_cli_without_config(tmp_path: Path, redis_url: str, prefix: str) -> None:
    (tmp_path / "gated.yaml").write_text(GATED)
    (tmp_path / "stricter.yaml").write_text(STRICTER)
    cli = CLI(tmp_path, redis_url, prefix)
    assert "published rules version 1" in cli("--config", "gated.yaml", "rules", "publish", "--actor", "ana").stdout
    cli("create", "exp")
    cli("transition", "exp", "PendingApproval")
    cli("transition", "exp", "Approved")
    refused = cli("transition", "exp", "Running", code=1)
    assert refused.stdout == "" and refused.stderr.startswith("redgov: refused: ") and "manual" in refused.stderr
    other = cli("--config", "stricter.yaml", "transition", "exp", "Running", code=2)
    assert other.stdout == "" and "redgov: error: " in other.stderr
    assert "requiredApprovals 2 here, 1 published" in other.stderr and "'office hours' only here" in other.stderr
    mismatch = cli.json("--config", "stricter.yaml", "request", "exp", "Running", "--actor", "ana", code=2)
    assert mismatch["error"] == "RulesMismatchError" and mismatch["exit"] == 2
    assert "requiredApprovals" in mismatch["message"]
    # the config equal to the published rules is accepted
    requested = cli("--config", "gated.yaml", "request", "exp", "Running", "--actor", "ana", "--reason", "ready")
    assert requested.stdout == ("exp: Approved -> Running requested by ana (ready); approvals 0 of 1 "
                                "(gate manual:Approved->Running)\n")
    assert "approved by bob" in cli("approve", "exp", "Running", "--approver", "bob").stdout
    moved = cli.json("transition", "exp", "Running", "--actor", "ana")
    assert moved["state"] == "Running" and moved["from"] == "Approved"


def test_request_then_approve(run: InProcess) -> None:
    run("--config", "gated.yaml", "rules", "publish", "--actor", "admin")
    for name in ("exp", "solo"):
        run("create", name)
        run("transition", name, "PendingApproval", "--actor", "ana")
        run("transition", name, "Approved", "--actor", "ana")
    requested = run.json("request", "exp", "Running", "--actor", "ana", "--reason", "ready")
    assert (requested["experiment"], requested["state"], requested["to"]) == ("exp", "Approved", "Running")
    move = requested["request"]
    assert (move["requested_by"], move["reason"], move["approvals_given"], move["approvals_needed"]) == (
        "ana", "ready", 0, 1)
    assert move["from_state"] == "Approved" and move["to_state"] == "Running" and move["gate"]
    run("approve", "exp", "Running", "--approver", "bob")
    out, _ = run("transition", "exp", "Running", "--actor", "ana")
    assert "Approved -> Running" in out
    # four eyes: the requester may not approve its own request
    run("request", "solo", "Running", "--actor", "ana")
    same = run.json("approve", "solo", "Running", "--approver", "ana", code=1)
    assert same["error"] == "SeparationOfDutiesError" and same["exit"] == 1
    assert "refused: " in run("approve", "solo", "Running", "--approver", "ana", code=1)[1]
    assert run.json("state", "solo")["state"] == "Approved"
    # a move no manual gate guards needs no approval; an unknown experiment is refused
    free, _ = run("request", "exp", "Paused", "--actor", "ana")
    assert free == "exp: Running -> Paused requested by ana; no manual gate guards this move: it needs no approval\n"
    assert run.json("request", "nobody", "Running", "--actor", "ana", code=1)["error"] == "NotFoundError"
    assert "--actor" in run("request", "exp", "Paused", code=2)[1]


def test_between_words_differences_for_two_versions() -> None:
    assert between("initialState: Draft here, PendingApproval published", 1, 2) == (
        "initialState: Draft in v1, PendingApproval in v2")
    assert between("rules: Approved -> Ramping only published", 3, 4) == "rules: Approved -> Ramping only in v4"
    assert between("policies: errorRate 'e' only here", 3, 4) == "policies: errorRate 'e' only in v3"
    assert between("policies: the same policies in another order (here: 'a', 'b'; published: 'b', 'a')", 1, 2) == (
        "policies: the same policies in another order (v1: 'a', 'b'; v2: 'b', 'a')")


def _parsers(parser: argparse.ArgumentParser, name: str = "redgov") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


GLOBAL = set(GLOBAL_OPTIONS)


def test_help_describes_rules_and_request() -> None:
    parsers = dict(_parsers(build_parser()))
    names = {"redgov rules", "redgov rules publish", "redgov rules show", "redgov rules history",
             "redgov rules diff", "redgov request"}
    assert names <= set(parsers)
    for name in names:
        for action in parsers[name]._actions:  # the global options are described once, in `redgov --help`
            if not isinstance(action, argparse._SubParsersAction) and not set(action.option_strings) & GLOBAL:
                assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings or action.dest)
    text = {name: " ".join(parsers[name].format_help().split()) for name in [*names, "redgov"]}
    assert "rules publish, show, list or compare the scope's published rules" in text["redgov"]
    assert "request ask for a gated move" in text["redgov"]
    publish = text["redgov rules publish"]
    assert "--actor ACTOR" in publish and "default: the OS user name" in publish
    assert "needs --config" in publish and "--reason" in publish
    assert "load_config" in text["redgov rules show"] and "[N]" in text["redgov rules show"]
    assert "A B" in text["redgov rules diff"]
    assert "--actor ACTOR" in text["redgov request"] and "self-approval" in text["redgov request"]
    args = build_parser().parse_args(["rules", "show", "2", "--json", "--tenant", "t"])
    assert (args.command, args.rules_command, args.version, args.json, args.tenant) == ("rules", "show", 2, True, "t")
