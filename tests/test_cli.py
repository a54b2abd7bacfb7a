"""The ``redgov`` command line: the real entry point in subprocesses, and ``main()`` in-process for breadth.

Subprocesses cost about 0.4 s each (Python start and imports), so each one checks
something only a real process shows (the console script, exit status, stdout and
stderr as a user sees them); in-process calls of ``redgov.cli.main`` check the
details. Every subprocess output is checked for tracebacks and, since it is not a
terminal, for colour escape codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import redgov
from redgov.cli import main
from redgov.keys import Scope

from .conftest import delete_prefix, new_prefix
from .servers import free_port

CONFIG = """
governance:
  initialState: Draft
  approvalGates:
    - type: manual
      toState: Approved
    - type: roleBased
      fromState: Running
      toState: Ramping
      allowedRoles: [sre]
  policies:
    - type: errorRate
      maxErrorRate: 0.05
"""


class CLI:
    """Runs ``python -m redgov`` with fixed global options in a working directory."""

    def __init__(self, cwd: Path, url: str | None = None, prefix: str = "gov", *extra: str) -> None:
        self.cwd, self.url, self.prefix = cwd, url, prefix
        self.base = [*(["--url", url] if url else []), "--prefix", prefix, *extra]
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDGOV_URL", "REDGOV_EXPORT_URL", "NO_COLOR")}

    def __call__(self, *args: str, code: int | None = 0, stdin: str | None = None,
                 program: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [*(program or [sys.executable, "-m", "redgov"]), *self.base, *args]
        done = subprocess.run(command, check=False, cwd=self.cwd, capture_output=True, text=True, timeout=120,
                              env=self.env, input=stdin)
        if code is not None:
            assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert "\x1b" not in done.stdout + done.stderr, "colour escapes on a stream that is not a terminal"
        return done

    def json(self, *args: str, code: int = 0, stdin: str | None = None) -> Any:
        """The one JSON object a --json run prints on stdout."""
        done = self(*args, "--json", code=code, stdin=stdin)
        lines = done.stdout.splitlines()
        assert len(lines) == 1, done.stdout
        return json.loads(lines[0])


class InProcess:
    """``redgov.cli.main`` called in this process with fixed global options; stdout and stderr captured."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path,
                 url: str, prefix: str, *extra: str) -> None:
        self.capsys, self.monkeypatch = capsys, monkeypatch
        self.base = ["--url", url, "--prefix", prefix, *extra]
        monkeypatch.chdir(cwd)
        for name in ("REDGOV_URL", "REDGOV_EXPORT_URL", "NO_COLOR"):
            monkeypatch.delenv(name, raising=False)

    def __call__(self, *args: str, code: int = 0, stdin: str | None = None) -> tuple[str, str]:
        if stdin is not None:
            import io

            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        self.capsys.readouterr()
        status = main([*self.base, *args])
        out, err = self.capsys.readouterr()
        assert status == code, (args, status, out, err)
        return out, err

    def json(self, *args: str, code: int = 0, stdin: str | None = None) -> Any:
        out, _ = self(*args, "--json", code=code, stdin=stdin)
        lines = out.splitlines()
        assert len(lines) == 1, out
        return json.loads(lines[0])


@pytest.fixture
def prefix_on_redis(redis_url: str) -> Iterator[str]:
    prefix = new_prefix()
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, prefix)


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, prefix_on_redis: str) -> CLI:
    (tmp_path / "gov.yaml").write_text(CONFIG)
    return CLI(tmp_path, redis_url, prefix_on_redis, "--config", "gov.yaml")


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str,
        prefix_on_redis: str) -> InProcess:
    (tmp_path / "gov.yaml").write_text(CONFIG)
    return InProcess(capsys, monkeypatch, tmp_path, redis_url, prefix_on_redis, "--config", "gov.yaml")


# -- through the real entry point ----------------------------------------------------------------


def test_gates_policies_and_refusals_in_subprocesses(cli: CLI) -> None:
    (cli.cwd / "conf.json").write_text('{"rollout": {"percent": 5}}')
    assert "created exp: Draft" in cli("create", "exp", "--actor", "ana", "--configuration", "conf.json").stdout
    duplicate = cli.json("create", "exp", code=1)
    assert duplicate["error"] == "ConflictError" and duplicate["exit"] == 1
    cli("transition", "exp", "PendingApproval")
    refused = cli("transition", "exp", "Approved", code=1)
    assert "manual approval" in refused.stderr and refused.stdout == ""
    bad = cli.json("transition", "exp", "Approved", "--telemetry", "errorRate=lots", code=2)
    assert bad["error"] == "UsageError" and "errorRate=lots" in bad["message"] and bad["exit"] == 2


def test_lifecycle_in_process(run: InProcess) -> None:
    out, _ = run("create", "exp", "--actor", "ana", "--configuration", "-", stdin="rollout:\n  percent: 5\n")
    assert "created exp: Draft" in out and "config v1" in out
    run("transition", "exp", "PendingApproval", "--actor", "ana")
    assert run("transition", "exp", "Approved", code=1)[0] == ""  # a refusal prints nothing on stdout
    assert "approved by lead" in run("approve", "exp", "Approved", "--approver", "lead")[0]
    run("transition", "exp", "Approved")
    run("transition", "exp", "Running", "--telemetry", "errorRate=0.01", "--telemetry", "trafficPercentage=5")
    assert "no actorRole given; one of sre" in run("transition", "exp", "Ramping", code=1)[1]
    assert "'dev' is not one of sre" in run("transition", "exp", "Ramping", "--role", "dev", code=1)[1]
    violation = run.json("transition", "exp", "Ramping", "--role", "sre", "--telemetry", "errorRate=0.2", code=1)
    assert violation["error"] == "PolicyViolationError" and violation["exit"] == 1
    moved = run.json("transition", "exp", "Ramping", "--role", "sre", "--reason", "ramp up")
    assert moved["experiment"] == "exp" and moved["state"] == "Ramping" and moved["from"] == "Running"
    assert moved["transition"]["metadata"] == {"actorRole": "sre"}
    # global options after the command, overriding nothing given before it
    elsewhere = run.json("state", "exp", "--prefix", "nowhere", code=1)  # given after the command, it wins
    assert elsewhere["error"] == "NotFoundError" and "prefix nowhere" in elsewhere["message"]
    state = run.json("state", "exp")
    assert state["experiment"] == "exp" and state["state"] == "Ramping" and state["revision"] == 5
    history = run.json("history", "exp", "--newest-first", "--limit", "2")
    assert [t["to_state"] for t in history["transitions"]] == ["Ramping", "Running"]
    assert history["state"] == "Ramping"
    table, _ = run("history", "exp")
    assert "ramp up" in table and "sre" in table and table.splitlines()[1].startswith("----")
    evaluations = run.json("evaluations", "exp")["evaluations"]
    assert {e["compliant"] for e in evaluations} == {True, False}
    approvals = run.json("approvals", "exp")
    assert "lead" in [a.get("approver") for a in approvals["approvals"]] and approvals["state"] == "Ramping"
    table, _ = run("approvals", "exp")
    assert "PendingApproval -> Approved  approved" in table and "lead" in table
    listed = run.json("list", "--state", "Ramping")
    assert [e["experiment"] for e in listed["experiments"]] == ["exp"] and listed["count"] == 1
    assert run.json("list", "--state", "Paused") == {"experiments": [], "count": 0}
    lines = run("list")[0].splitlines()
    assert lines[0].split() == ["name", "state", "version", "modified", "by"] and lines[2].startswith("exp ")


def test_versions_configure_diff_rollback_in_process(run: InProcess) -> None:
    run("create", "exp")
    assert "configuration version 1 (live)" in run("configure", "exp", "-", stdin='{"a": 1}')[0]
    (Path.cwd() / "v2.yaml").write_text("a: 2\nb: [1]\n")
    version = run.json("configure", "exp", "v2.yaml", "--description", "two", "--actor", "sam")
    assert version["version"]["version"] == 2 and version["state"] == "Draft"
    listing, _ = run("versions", "exp")
    assert listing.count("\n") == 4 and "*" in listing and "two" in listing
    newest = run.json("versions", "exp", "--newest-first", "--limit", "1")
    assert [v["version"] for v in newest["versions"]] == [2] and newest["config_version"] == 2
    changes, _ = run("diff", "exp", "1", "2")
    assert "modified  a" in changes and "added     b" in changes
    assert "version 3 restores the configuration of version 1" in run("rollback", "exp", "1")[0]
    assert "no differences" in run("diff", "exp", "1", "3")[0]
    assert run.json("versions", "exp")["versions"][2]["rolled_back_from"] == 1
    assert run.json("rollback", "exp", "9", code=1)["error"] == "NotFoundError"
    assert "not found" in run("configure", "exp", "missing.yaml", code=2)[1]
    assert "must be a mapping" in run("configure", "exp", "-", stdin="[1, 2]", code=2)[1]
    assert "not valid YAML or JSON" in run("configure", "exp", "-", stdin="a: [", code=2)[1]
    assert run.json("configure", "nobody", "-", stdin="a: 1", code=1)["error"] == "NotFoundError"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    run = CLI(tmp_path, "memory://")
    unknown = run.json("fly", code=2)
    assert unknown == {"error": "UsageError", "message": unknown["message"], "exit": 2}
    assert "invalid choice: 'fly'" in unknown["message"]
    assert "unknown state 'Flying'" in run("transition", "exp", "Flying", code=2).stderr
    missing = run("--config", "nope.yaml", "state", "exp", code=2).stderr
    assert "nope.yaml" in missing and missing.count("\n") == 1


def test_usage_errors_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    run = InProcess(capsys, monkeypatch, tmp_path, "memory://", "gov")
    assert "unrecognized arguments" in run("state", "exp", "--bogus", code=2)[1]
    assert run.json("state", "exp", "--bogus", code=2)["error"] == "UsageError"
    assert "version number" in run("rollback", "exp", "zero", code=2)[1]
    assert run.json("transition", "exp", "Flying", code=2)["exit"] == 2
    assert "KEY=VALUE" in run("transition", "e", "Running", "--telemetry", "errorRate", code=2)[1]
    assert "finite" in run("transition", "e", "Running", "--telemetry", "errorRate=nan", code=2)[1]
    (tmp_path / "bad.yaml").write_text("governance:\n  policies: [\n")
    broken = run("--config", "bad.yaml", "state", "exp", code=2)[1]
    assert "line" in broken and "column" in broken
    (tmp_path / "typo.yaml").write_text("governance:\n  initalState: Draft\n")
    assert "initialState" in run("--config", "typo.yaml", "state", "exp", code=2)[1]
    assert run.json("state", "exp", "--config", "typo.yaml", code=2)["error"] == "ConfigError"
    assert run.json("--url", "ftp://x", "state", "exp", code=2)["error"] == "ValidationError"
    (tmp_path / "three.yaml").write_text("governance:\n  initialState: Nope\n  policies:\n"
                                         "    - {type: errorRate, maxErrorRate: 5}\n    - {type: bogus}\n")
    every = run("--config", "three.yaml", "list", code=2)[1].splitlines()
    assert "3 configuration errors" in every[0] and len(every) == 4, every  # one problem per line
    assert [line.split(":")[0].strip() for line in every[1:]] == [
        "governance.initialState", "governance.policies[0].maxErrorRate", "governance.policies[1].type"]
    assert "no timezone" in run("replay", "exp", "--until", "2026-01-01T00:00:00", code=2)[1]


def test_server_and_data_failures_exit_3(tmp_path: Path, redis_url: str, prefix_on_redis: str) -> None:
    port = free_port()
    unreachable = CLI(tmp_path, f"redis://127.0.0.1:{port}/0").json("state", "exp", code=3)
    assert unreachable["error"] == "ConnectionError" and unreachable["exit"] == 3
    assert f"cannot use redis://127.0.0.1:{port}/0" in unreachable["message"]
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    cluster = CLI(tmp_path, f"redis+cluster://{host_port}")("list", "--json", code=3)
    assert json.loads(cluster.stdout)["exit"] == 3 and cluster.stdout.count("\n") == 1
    assert "use redis:// instead" in json.loads(cluster.stdout)["message"] and cluster.stderr == ""  # one place
    with redis.Redis.from_url(redis_url) as client:
        client.set(Scope(prefix_on_redis).experiment("exp").state, "garbage")
    corrupt = CLI(tmp_path, redis_url, prefix_on_redis).json("state", "exp", code=3)
    assert corrupt["error"] == "CorruptDataError" and ":s:exp" in corrupt["message"]


def test_the_console_script_reports_a_missing_experiment(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "redgov"
    done = CLI(tmp_path, "memory://")("state", "nothing", "--json", code=1, program=[str(script)])
    body = json.loads(done.stdout)
    assert body["error"] == "NotFoundError" and body["exit"] == 1
    assert "experiment nothing not found in memory:// (prefix gov)" in body["message"]
    assert done.stderr == ""  # with --json the error is on stdout only


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "redgov", "--url", "memory://", "transition", "e", "Running",
                           "--debug"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" in done.stderr and "NotFoundError" in done.stderr


def test_demo_on_the_embedded_default(tmp_path: Path) -> None:
    run = CLI(tmp_path)  # no --url: embedded://.redgov/redgov.db
    done = run("demo")
    lines = done.stdout.splitlines()
    assert len(lines) >= 10
    assert "refused" in done.stdout and "won" in done.stdout and "conflict" in done.stdout
    assert lines[-1].endswith("True (revision 9)") or "equals the stored state: True" in lines[-1]
    assert (tmp_path / ".redgov").is_dir()
    listed = run.json("list")  # another process reads what the demo left in the file
    assert [e["state"] for e in listed["experiments"]] == ["Archived"]


# -- trimmed history through the SQL copy -----------------------------------------------------------


def test_history_replay_verify_after_trim_read_the_sql_copy(
        cli: CLI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    prefix = cli.prefix
    with redgov.Governance(redgov.connect(redis_url, prefix=prefix)) as gov:
        gov.create("exp", actor="ana", configuration={"a": 1})
        for target in ("PendingApproval", "Draft", "PendingApproval", "Rejected"):
            gov.transition("exp", target, actor="ana")
    sql = f"sqlite:///{cli.cwd / 'copy.db'}"
    run = InProcess(capsys, monkeypatch, cli.cwd, redis_url, prefix)  # export and trim run in subprocesses
    assert "exported" in run("export", "--to", sql)[0]                  # in test_acl.py and test_export.py
    assert "trimmed" in run("trim", "--to", sql)[0]
    whole = cli.json("history", "exp", "--archive", sql)
    assert [t["to_state"] for t in whole["transitions"]] == ["Draft", "PendingApproval", "Draft",
                                                             "PendingApproval", "Rejected"]
    replayed = cli.json("replay", "exp", "--archive", sql)
    assert replayed["state"] == "Rejected" and replayed["revision"] == 5
    assert cli("verify", "exp", "--archive", sql).stdout == "exp: consistent\n"

    assert "no transitions in Redis (trimmed?" in run("history", "exp")[0]
    assert len(run.json("history", "exp", "--archive", sql, "--limit", "3")["transitions"]) == 3
    assert len(run.json("approvals", "exp", "--archive", sql)["approvals"]) == 0
    (cli.cwd / "export.yaml").write_text(f"governance:\n  persistence:\n    type: inMemory\n"
                                         f"    export:\n      url: {sql}\n")
    by_config = run.json("history", "exp", "--config", "export.yaml")  # --url and --prefix still win
    assert len(by_config["transitions"]) == 5
    missing = run.json("history", "exp", "--archive", f"sqlite:///{cli.cwd / 'none.db'}", code=2)
    assert missing["error"] == "SqlCopyError"
    (cli.cwd / "later.yaml").write_text(f"governance:\n  persistence:\n    type: inMemory\n"
                                        f"    export:\n      url: sqlite:///{cli.cwd / 'later.db'}\n")
    out, err = run("history", "exp", "--config", "later.yaml")  # not exported yet: a warning, Redis only
    assert "no transitions" in out and "warning: history reads use Redis only" in err

    with redis.Redis.from_url(redis_url) as client:  # make the stored state disagree with its log
        client.hset(Scope(prefix).experiment("exp").state, "b", "mallory")
    out, _ = run("verify", "--archive", sql, code=1)
    lines = out.splitlines()
    assert lines[0].startswith("exp: differs: ") and lines[-1].endswith("1 with differences") and len(lines) == 2
    body = run.json("verify", "exp", "--archive", sql, code=1)
    assert body["consistent"] is False and body["experiment"] == "exp" and body["experiments"][0]["differences"]


# -- help, output, exit codes -------------------------------------------------------------------


def test_help_lists_states_and_rules(tmp_path: Path) -> None:
    text = CLI(tmp_path, "memory://")("transition", "--help").stdout
    assert all(state.value in text for state in redgov.LifecycleState)
    assert "PendingApproval -> " in text and "(terminal)" in text and "--telemetry KEY=VALUE" in text
