"""The command line's parts in-process: help on every argument, the exit-code table, tables and colour,
the restore progress bar, and global options before or after the command."""

from __future__ import annotations

import argparse
import io
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import RedisClusterException

import redgov
from redgov import errors
from redgov.cli import COMMANDS, build_parser, exit_code, main
from redgov.cli.output import Output
from redgov.cli.parser import GLOBAL_OPTIONS, UsageError
from redgov.embedded import EmbeddedError
from redgov.sql import SqlCopyError

from .conftest import delete_prefix, new_prefix


@pytest.fixture
def fresh_prefix(redis_url: str) -> Iterator[str]:
    prefix = new_prefix()
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, prefix)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_argument_and_option_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == set(COMMANDS)
    (listing,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help for choice in listing._choices_actions}
    assert set(summaries) == set(commands) and all(summaries.values())
    for name, sub in [("redgov", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if name != "redgov" and set(action.option_strings) & set(GLOBAL_OPTIONS):
                assert action.help == argparse.SUPPRESS, (name, action.option_strings)  # described once, at the top
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings or action.dest)
    top = parser.format_help()
    for name, summary in summaries.items():
        assert f"    {name}" in top and str(summary)[:30] in top.replace("\n" + " " * 24, " ")
    for name in ("transition", "approve"):
        text = commands[name].format_help()
        assert all(state.value in text for state in redgov.LifecycleState), name
    assert "exit status" in top and "3  the server" in top


def test_global_options_before_or_after_the_command() -> None:
    parse = build_parser().parse_args
    before = parse(["--prefix", "p", "--json", "--tenant", "t", "state", "x"])
    after = parse(["state", "x", "--prefix", "p", "--json", "--tenant", "t"])
    assert vars(before) == vars(after)
    mixed = parse(["--url", "memory://", "--env", "e", "state", "x", "--debug"])
    assert (mixed.url, mixed.environment, mixed.debug, mixed.json, mixed.prefix) == (
        "memory://", "e", True, False, None)
    assert parse(["--prefix", "a", "state", "x", "--prefix", "b"]).prefix == "b"


@pytest.mark.parametrize(("error", "code"), [
    (errors.ConflictError("c"), 1), (errors.InvalidTransitionError("i"), 1), (errors.ApprovalRequiredError("a"), 1),
    (errors.PolicyViolationError("p"), 1), (errors.NotFoundError("n"), 1), (errors.HistoryTrimmedError("h"), 1),
    (errors.RedgovError("unknown code"), 1),
    (errors.ConfigError("c"), 2), (errors.ValidationError("v"), 2), (UsageError("u"), 2), (SqlCopyError("s"), 2),
    (errors.CorruptDataError("c"), 3), (errors.AccessDeniedError("a"), 3), (errors.UnavailableError("u"), 3),
    (EmbeddedError("e"), 3), (redis.ConnectionError("c"), 3), (redis.TimeoutError("t"), 3),
    (redis.ResponseError("OOM command not allowed"), 3), (redis.exceptions.NoPermissionError("NOPERM"), 3),
    (RedisClusterException("no cluster"), 3), (OSError("disk"), 3), (ConnectionRefusedError("refused"), 3),
    (KeyError("bug"), 4),
])
def test_one_function_decides_the_exit_code(error: BaseException, code: int) -> None:
    assert exit_code(error) == code


def test_lease_and_durability_errors_when_the_library_has_them() -> None:
    lease = getattr(errors, "LeaseError", None)
    if lease is not None:
        assert exit_code(lease("held")) == 1
    durability = getattr(errors, "DurabilityError", None)
    if durability is not None:
        assert exit_code(durability("not confirmed")) == 3


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tables_are_aligned_and_coloured_only_on_a_terminal() -> None:
    rows = [("checkout", "Running", 12), ("search-v2", "Paused", None)]
    plain = Output(False, stdout=io.StringIO(), environ={})
    text = plain.table(rows, ["name", "state", "version"], {1: plain.styled})
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines == ["name       state    version", "---------  -------  -------",
                     "checkout   Running  12", "search-v2  Paused"]
    tty = Output(False, stdout=FakeTTY(), environ={})
    coloured = tty.table(rows, ["name", "state", "version"], {1: tty.styled})
    assert "\x1b[32mRunning\x1b[0m" in coloured and "\x1b[1m" in coloured
    assert _strip(coloured) == text  # colour never moves a column
    assert "\x1b" not in Output(False, stdout=FakeTTY(), environ={"NO_COLOR": "1"}).state("Running")
    assert "\x1b" not in Output(False, stdout=FakeTTY(), environ={"TERM": "dumb"}).state("Running")
    assert "\x1b" in Output(False, stdout=FakeTTY(), environ={"NO_COLOR": ""}).state("Running")
    assert "\x1b" not in Output(True, stdout=FakeTTY(), environ={}).state("Running")  # never in JSON


def _strip(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "redgov", *args], check=False, stdout=follower,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, timeout=60)
        os.close(follower)
        follower = -1
        assert done.returncode == 0, done.stderr
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)


def test_colour_on_a_real_terminal_unless_no_color(redis_url: str, fresh_prefix: str) -> None:
    with redgov.Governance(redgov.connect(redis_url, prefix=fresh_prefix)) as gov:
        gov.create("exp")
    args = ["--url", redis_url, "--prefix", fresh_prefix, "list"]
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "REDGOV_URL")}
    env["TERM"] = "xterm"
    assert "\x1b[" in _on_a_terminal(args, env)
    assert "\x1b[" not in _on_a_terminal(args, {**env, "NO_COLOR": "1"})


def test_restore_shows_progress_unless_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    from redgov.sql import command
    from redgov.sql.restorer import RestoreSummary

    seen: list[dict[str, Any]] = []

    def fake_restore(backplane: Any, url: str, **kwargs: Any) -> RestoreSummary:
        seen.append(kwargs)
        return RestoreSummary(url=url, prefix=backplane.prefix, source_prefix="gov")

    monkeypatch.setattr(command, "restore", fake_restore)
    monkeypatch.chdir(tmp_path)
    assert main(["--url", "memory://", "restore", "--from", "sqlite:///x.db"]) == 0
    assert main(["--url", "memory://", "restore", "--from", "sqlite:///x.db", "--json", "--force"]) == 0
    assert [s["progress"] for s in seen] == [True, False] and seen[1]["force"] is True
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("restored") or "restore" in out[0]
    assert '"prefix":"gov"' in out[1]


def test_an_embedded_server_that_cannot_start_exits_3(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("REDGOV_REDIS_SERVER", str(tmp_path / "no-such-redis-server"))
    assert main(["--url", f"embedded://{tmp_path / 'x.db'}", "state", "x", "--json"]) == 3
    out, err = capsys.readouterr()
    assert '"error":"EmbeddedError"' in out and '"exit":3' in out and err == ""  # --json: stdout only
