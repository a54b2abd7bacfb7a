"""The ``redgov`` command line, through subprocesses, on embedded:// and on the real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .conftest import delete_prefix, new_prefix

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
        self.env = {k: v for k, v in os.environ.items() if k != "REDGOV_URL"}

    def __call__(self, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "redgov", *self.base, *args], cwd=self.cwd,
                              capture_output=True, text=True, timeout=120, env=self.env)
        if code is not None:
            assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        return done


@pytest.fixture(params=["embedded", "redis"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CLI]:
    (tmp_path / "gov.yaml").write_text(CONFIG)
    if request.param == "embedded":
        yield CLI(tmp_path, None, "gov", "--config", "gov.yaml")  # default url: embedded://.redgov/redgov.db
        return
    url = str(request.getfixturevalue("redis_url"))
    prefix = new_prefix()
    yield CLI(tmp_path, url, prefix, "--config", "gov.yaml")
    with redis.Redis.from_url(url) as client:
        delete_prefix(client, prefix)


def test_every_command(cli: CLI) -> None:
    assert "created exp: Draft" in cli("create", "exp", "--actor", "ana").stdout
    cli("create", "exp", code=1)
    assert "Draft -> PendingApproval" in cli("transition", "exp", "PendingApproval", "--actor", "ana").stdout
    refused = cli("transition", "exp", "Approved", code=1)
    assert "manual approval" in refused.stderr
    assert "approved by lead" in cli("approve", "exp", "Approved", "--approver", "lead").stdout
    cli("transition", "exp", "Approved")
    cli("transition", "exp", "Running")
    assert "no actorRole given; one of sre" in cli("transition", "exp", "Ramping", code=1).stderr
    assert "'dev' is not one of sre" in cli("transition", "exp", "Ramping", "--role", "dev", code=1).stderr
    cli("transition", "exp", "Ramping", "--role", "sre", "--reason", "ramp up")
    state = json.loads(cli("--json", "state", "exp").stdout)
    assert state["experiment"] == "exp" and state["state"] == "Ramping" and state["revision"] == 5
    history = cli("history", "exp").stdout
    assert "ramp up" in history and "PendingApproval" in history
    history_json = json.loads(cli("--json", "history", "exp").stdout)
    assert [t["to_state"] for t in history_json["transitions"]][-1] == "Ramping"
    assert "no versions" in cli("versions", "exp").stdout
    cli("rollback", "exp", "1", code=1)  # no version 1 yet: refusal, not a crash
    replayed = json.loads(cli("--json", "replay", "exp").stdout)
    assert replayed["state"] == "Ramping" and replayed["revision"] == 5
    assert "exp: ok" in cli("verify").stdout
    assert "exp: ok" in cli("verify", "exp").stdout
    events = cli("watch", "--from", "0", "--timeout", "0.3").stdout.splitlines()
    assert len(events) >= 7 and "transition" in events[1]


def test_versions_rollback_and_diff(cli: CLI) -> None:
    cli("create", "exp")
    # versions are created through the API; the CLI lists, diffs and rolls back
    script = (
        "import redgov, sys; bp = redgov.connect(sys.argv[1], prefix=sys.argv[2]); g = redgov.Governance(bp);"
        "g.create_version('exp', {'a': 1}); g.create_version('exp', {'a': 2, 'b': [1]}); bp.close()"
    )
    url = cli.url or "embedded://.redgov/redgov.db"
    subprocess.run([sys.executable, "-c", script, url, cli.prefix], cwd=cli.cwd, check=True, timeout=60)
    listing = cli("versions", "exp").stdout
    assert listing.count("\n") >= 3 and "*" in listing
    changes = cli("diff", "exp", "1", "2").stdout
    assert "modified  a" in changes and "added     b" in changes
    assert "version 3 restores the configuration of version 1" in cli("rollback", "exp", "1").stdout
    assert "no differences" in cli("diff", "exp", "1", "3").stdout
    assert json.loads(cli("--json", "versions", "exp").stdout)["versions"][2]["rolled_back_from"] == 1


def test_usage_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    run = CLI(tmp_path)
    assert "invalid choice" in run("fly", code=2).stderr
    assert "unknown state 'Flying'" in run("transition", "exp", "Flying", code=2).stderr
    assert "unrecognized arguments" in run("state", "exp", "--bogus", code=2).stderr
    assert "version number" in run("rollback", "exp", "zero", code=2).stderr
    missing = run("--config", "nope.yaml", "state", "exp", code=2).stderr
    assert "nope.yaml" in missing and missing.count("\n") == 1
    (tmp_path / "bad.yaml").write_text("governance:\n  policies: [\n")
    broken = run("--config", "bad.yaml", "state", "exp", code=2).stderr
    assert "line" in broken and "column" in broken
    (tmp_path / "typo.yaml").write_text("governance:\n  initalState: Draft\n")
    assert "initialState" in run("--config", "typo.yaml", "state", "exp", code=2).stderr
    unreachable = run("--url", "redis://127.0.0.1:1/0", "state", "exp", code=2).stderr
    assert "cannot use redis://127.0.0.1:1/0" in unreachable


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "redgov", "--debug", "--url", "memory://", "transition", "e",
                           "Running"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" in done.stderr and "NotFoundError" in done.stderr


def test_json_refusal_is_an_object(tmp_path: Path) -> None:
    done = CLI(tmp_path, "memory://", "gov", "--json")("transition", "e", "Running", code=1)
    body = json.loads(done.stdout)
    assert body["error"] == "NotFoundError" and body["exit"] == 1 and "e does not exist" in body["message"]


def test_demo_on_a_fresh_directory(tmp_path: Path) -> None:
    done = CLI(tmp_path)("demo")
    lines = done.stdout.splitlines()
    assert len(lines) >= 10
    assert "refused" in done.stdout and "won" in done.stdout and "conflict" in done.stdout
    assert lines[-1].endswith("True (revision 9)") or "equals the stored state: True" in lines[-1]
    assert (tmp_path / ".redgov").is_dir()


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "redgov"
    done = subprocess.run([str(script), "--url", "memory://", "state", "nothing"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "nothing: no state" in done.stdout
