"""A user's first hour with ``redgov`` (issue 16): labels that say what failed, messages that name
the store a command used, ``--json`` in one place with one shape per record, help that shows the
global options once, progress on a terminal for ``export``, and a lease's not-found that explains.

In-process (``redgov.cli.main``) except where only a real process shows it.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import redgov
from redgov.cli import build_parser, main
from redgov.cli.exits import FAILED, REFUSED, USAGE, WaitTimeoutError, label
from redgov.cli.parser import DEFAULT_URL
from redgov.records import (
    ApprovalRecord,
    ConfigurationVersion,
    ExperimentState,
    StateTransition,
)

from .conftest import delete_prefix, new_prefix
from .servers import free_port


class Run:
    """``main()`` in a fresh folder, without REDGOV_URL/REDGOV_EXPORT_URL; stdout and stderr captured."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
        self.capsys = capsys
        monkeypatch.chdir(cwd)
        for name in ("REDGOV_URL", "REDGOV_EXPORT_URL", "NO_COLOR"):
            monkeypatch.delenv(name, raising=False)

    def __call__(self, *args: str, code: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as exit_:  # --help
            status = int(exit_.code or 0)
        out, err = self.capsys.readouterr()
        assert status == code, (args, status, out, err)
        return out, err

    def json(self, *args: str, code: int = 0) -> Any:
        """The one JSON object of a --json run, which prints nothing on stderr."""
        out, err = self(*args, "--json", code=code)
        lines = out.splitlines()
        assert len(lines) == 1, out
        assert err == "", err
        return json.loads(lines[0])


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    return Run(capsys, monkeypatch, tmp_path)


@pytest.fixture
def on_redis(redis_url: str) -> Iterator[list[str]]:
    """``--url`` and ``--prefix`` of a fresh prefix on the test server (deleted afterwards)."""
    prefix = new_prefix()
    yield ["--url", redis_url, "--prefix", prefix]
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, prefix)


# -- 1. labels ---------------------------------------------------------------------------------------


def test_each_failure_is_labelled_by_what_it_is(run: Run, redis_url: str, on_redis: list[str]) -> None:
    run(*on_redis, "create", "exp")
    _, refused = run(*on_redis, "create", "exp", code=REFUSED)
    assert refused.startswith("redgov: refused: "), refused
    _, usage = run(*on_redis, "transition", "exp", "Flying", code=USAGE)
    assert usage.splitlines()[-1].startswith("redgov: error: argument STATE: unknown state 'Flying'"), usage
    port = free_port()
    _, failed = run("--url", f"redis://127.0.0.1:{port}/0", "state", "exp", code=FAILED)
    assert failed.startswith(f"redgov: failed: cannot use redis://127.0.0.1:{port}/0"), failed
    _, timed_out = run(*on_redis, "wait", "exp", "Paused", "--timeout", "0", code=REFUSED)
    assert timed_out.startswith("redgov: timed out: "), timed_out
    assert label(FAILED, redis.ConnectionError("x")) == "failed"
    assert label(REFUSED, redgov.ConflictError("c")) == "refused" and label(USAGE) == "error"
    assert label(REFUSED, WaitTimeoutError("late")) == "timed out"


def test_corrupt_data_is_a_failure_too(run: Run, redis_url: str, on_redis: list[str]) -> None:
    from redgov.keys import Scope

    with redis.Redis.from_url(redis_url) as client:
        client.set(Scope(on_redis[3]).experiment("exp").state, "garbage")
    _, err = run(*on_redis, "state", "exp", code=FAILED)
    assert err.startswith("redgov: failed: ") and ":s:exp" in err, err


# -- 2. which store ----------------------------------------------------------------------------------


def test_not_found_names_the_default_store_and_how_to_change_it(run: Run, tmp_path: Path) -> None:
    _, err = run("state", "checkout", code=REFUSED)  # no --url, no REDGOV_URL: the embedded default here
    assert f"experiment checkout not found in {DEFAULT_URL} (prefix gov)" in err, err
    assert "--url" in err and "REDGOV_URL" in err, err
    body = run.json("transition", "checkout", "Running", code=REFUSED)  # the library's NotFoundError
    assert body["error"] == "NotFoundError" and DEFAULT_URL in body["message"] and "REDGOV_URL" in body["message"]
    assert "prefix gov" in body["message"]


def test_not_found_names_the_store_from_the_environment(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDGOV_URL", "memory://")
    body = run.json("--prefix", "p", "--tenant", "acme", "history", "checkout", code=REFUSED)
    assert "not found in memory:// (prefix p, tenant acme)" in body["message"], body
    assert "$REDGOV_URL" in body["message"], body
    body = run.json("lease", "acquire", "checkout", "--owner", "o", "--ttl", "5", code=REFUSED)
    assert "memory://" in body["message"] and "$REDGOV_URL" in body["message"], body
    listed, _ = run("list")
    assert listed == "no experiments in memory:// (prefix gov)\n"


def test_top_level_help_says_which_store_and_how_to_change_it(run: Run) -> None:
    out, _ = run("--help")
    text = " ".join(out.split())
    assert f"{DEFAULT_URL}" in text and "in the current folder" in text, out
    assert "export REDGOV_URL=redis://localhost:6379" in text and "--url redis://localhost:6379" in text, out


# -- 3. --json ---------------------------------------------------------------------------------------


def test_json_errors_go_to_stdout_only(run: Run, on_redis: list[str]) -> None:
    assert run.json("--url", "memory://", "state", "nobody", code=REFUSED)["error"] == "NotFoundError"
    assert run.json("--url", "memory://", "transition", "x", "Flying", code=USAGE)["error"] == "UsageError"
    assert run.json("--url", "memory://", "fly", code=USAGE)["exit"] == USAGE  # usage line not printed either
    port = free_port()
    assert run.json("--url", f"redis://127.0.0.1:{port}/0", "list", code=FAILED)["exit"] == FAILED
    run(*on_redis, "create", "exp")
    assert run.json(*on_redis, "create", "exp", code=REFUSED)["error"] == "ConflictError"


STATE_KEYS = set(ExperimentState.__struct_fields__)


def test_every_record_has_every_field_and_one_shape(run: Run, on_redis: list[str]) -> None:
    created = run.json(*on_redis, "create", "exp")
    assert set(created) == STATE_KEYS and created["config_version"] == 0 and created["tenant"] is None
    assert created["metadata"] == {} and created["environment"] is None
    state = run.json(*on_redis, "state", "exp")
    assert state == created
    listed = run.json(*on_redis, "list")
    assert listed == {"experiments": [state], "count": 1}
    assert run.json(*on_redis, "wait", "exp", "Draft", "--timeout", "0") == state
    assert run.json(*on_redis, "replay", "exp") == state
    moved = run.json(*on_redis, "transition", "exp", "PendingApproval")
    assert set(moved["transition"]) == set(StateTransition.__struct_fields__)
    assert run.json(*on_redis, "list")["experiments"] == [run.json(*on_redis, "state", "exp")]
    history = run.json(*on_redis, "history", "exp")["transitions"]
    assert [set(t) for t in history] == [set(StateTransition.__struct_fields__)] * 2
    approval = run.json(*on_redis, "approve", "exp", "Approved", "--approver", "lead")["approval"]
    assert set(approval) == set(ApprovalRecord.__struct_fields__)


def test_versions_have_every_field(run: Run, on_redis: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    run(*on_redis, "create", "exp")
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"a": 1}'))
    written = run.json(*on_redis, "configure", "exp", "-")["version"]
    assert set(written) == set(ConfigurationVersion.__struct_fields__) and written["rolled_back_from"] is None
    listed = run.json(*on_redis, "versions", "exp")["versions"]
    assert listed == [written]


# -- 4. help -----------------------------------------------------------------------------------------

GLOBAL_OPTIONS = ("--url", "--prefix", "--config", "--tenant", "--env", "--archive", "--json", "--debug")


def _parsers(parser: Any, name: str = "redgov") -> Iterator[tuple[str, Any]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_global_options_are_described_once(run: Run) -> None:
    parsers = dict(_parsers(build_parser()))
    top = parsers.pop("redgov").format_help()
    assert all(option in top for option in GLOBAL_OPTIONS)
    assert {"redgov state", "redgov lease acquire", "redgov rules publish", "redgov users add"} <= set(parsers)
    for name, parser in parsers.items():
        text = parser.format_help()
        for action in parser._actions:
            if set(action.option_strings) & set(GLOBAL_OPTIONS):
                assert action.help == argparse.SUPPRESS, (name, action.option_strings)
        described = re.search(r"^ +(--url URL|--prefix P|--config FILE|--tenant T|--env E|--archive SQL_URL|--json|"
                              r"--debug)( |$)", text, re.MULTILINE)
        assert described is None, (name, text)
        usage = set(re.findall(r"--[a-z-]+", parser.format_usage()))
        assert not usage & set(GLOBAL_OPTIONS), (name, text)
        pointer = [line for line in text.splitlines() if "redgov --help" in line]
        assert len(pointer) == 1 and pointer[0].startswith("global options"), (name, text)
    out, _ = run("state", "--help")
    assert len(out.splitlines()) <= 12, out
    # still accepted after the command
    args = build_parser().parse_args(["state", "x", "--url", "memory://", "--json", "--tenant", "t", "--debug"])
    assert (args.url, args.json, args.tenant, args.debug) == ("memory://", True, "t", True)


# -- 5. export progress ------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _experiments(redis_url: str, prefix: str, count: int) -> None:
    with redgov.Governance(redgov.connect(redis_url, prefix=prefix)) as gov:
        for i in range(count):
            gov.create(f"e{i}")


def test_export_shows_progress_only_on_a_terminal(run: Run, redis_url: str, on_redis: list[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _experiments(redis_url, on_redis[3], 5)
    out, err = run(*on_redis, "export", "--to", f"sqlite:///{tmp_path / 'a.db'}")
    assert out.startswith("exported 10 new entries") and err == ""  # not a terminal: no bar
    json_screen = Terminal()
    monkeypatch.setattr(sys, "stderr", json_screen)
    assert main([*on_redis, "export", "--to", f"sqlite:///{tmp_path / 'b.db'}", "--json"]) == 0
    assert json_screen.getvalue() == ""  # --json: no bar, even on a terminal
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    assert main([*on_redis, "export", "--to", f"sqlite:///{tmp_path / 'c.db'}", "--trim"]) == 0
    drawn = screen.getvalue()
    assert "export:" in drawn and "entries" in drawn, drawn  # the copy's bar
    assert "trim:" in drawn, drawn                          # and the trim's, after it


def test_export_and_restore_help_mention_the_bar(run: Run) -> None:
    for command in ("export", "restore"):
        out, _ = run(command, "--help")
        assert "progress bar on a terminal" in " ".join(out.split()), (command, out)


# -- 6. leases need an experiment ------------------------------------------------------------------


def test_a_lease_on_no_experiment_says_leases_need_one(run: Run) -> None:
    with redgov.Governance(redgov.connect("memory://")) as gov, pytest.raises(redgov.NotFoundError) as caught:
        gov.acquire_lease("job:nightly-etl", owner="etl", ttl=timedelta(seconds=30))
    message = str(caught.value)
    assert "job:nightly-etl does not exist" in message
    assert "leases belong to a created experiment" in message and "named locks" in message
    assert "planned" in message
    _, err = run("--url", "memory://", "lease", "acquire", "job:nightly-etl", "--owner", "etl", "--ttl", "30",
                 code=REFUSED)
    assert err.startswith("redgov: refused: ") and "named locks" in err and "memory://" in err, err


def test_a_lease_on_no_experiment_in_asyncio(redis_url: str) -> None:
    import asyncio

    import redgov.aio

    async def acquire() -> str:
        async with redgov.aio.AsyncGovernance(redgov.aio.connect("memory://")) as gov:
            try:
                await gov.acquire_lease("job:nightly-etl", owner="etl", ttl=timedelta(seconds=30))
            except redgov.NotFoundError as exc:
                return str(exc)
        return ""

    assert "named locks" in asyncio.run(acquire())
