"""README's command-line section stays true: its shell block runs top to bottom on a fresh prefix, and
its lists of lifecycle states and default transition rules are the ones in the code."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from redgov import DEFAULT_RULES, LifecycleState
from redgov.cli import build_parser

from .conftest import delete_prefix, new_prefix


@pytest.fixture
def fresh_prefix(redis_url: str) -> Iterator[str]:
    prefix = new_prefix()
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        delete_prefix(client, prefix)

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = README.read_text().split("## Configuration and the command line", 1)[1].split("\n## ", 1)[0]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", SECTION, re.DOTALL)


def test_the_readme_cli_block_runs_top_to_bottom(tmp_path: Path, redis_url: str, fresh_prefix: str) -> None:
    (block,) = [b for b in _blocks("sh") if "redgov create " in b]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) >= 10 and all("redgov " in line for line in lines)
    for command in ("create", "transition", "approve", "configure", "versions", "diff", "rollback", "list",
                    "history", "state", "verify"):
        assert f"redgov {command} " in block, command
    # each line runs as written; `redgov` is the real entry point with this test's url and prefix
    entry = f"{shlex.quote(sys.executable)} -m redgov --url {shlex.quote(redis_url)} --prefix {fresh_prefix}"
    script = "set -euo pipefail\n" + f'redgov() {{ {entry} "$@"; }}\n'
    for number, line in enumerate(lines, 1):
        script += f"echo '>>> line {number}'\n{line}\n"
    env = {k: v for k, v in os.environ.items() if k not in ("REDGOV_URL", "REDGOV_EXPORT_URL")}
    done = subprocess.run(["bash", "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=env)
    failed_at = done.stdout.rsplit(">>> line ", 1)[-1].split("\n", 1)[0]
    assert done.returncode == 0, (f"README line {failed_at}: {lines[int(failed_at) - 1]}", done.stderr)
    assert "Traceback" not in done.stderr and done.stderr == "", done.stderr
    out = done.stdout
    assert '"state":"Ramping"' in out and "Draft -> PendingApproval" in out
    assert "modified  rollout.percent" in out and "version 3 restores the configuration of version 1" in out
    assert "checkout: consistent" in out and "ramp up" in out


def test_the_readme_lists_the_lifecycle_states() -> None:
    listed = re.search(r"The lifecycle states \(`redgov.LifecycleState`\)\s+are (.*?);", SECTION, re.DOTALL)
    assert listed is not None
    assert re.findall(r"`(\w+)`", listed.group(1)) == [s.value for s in LifecycleState]


def test_the_readme_rules_are_the_default_rules() -> None:
    (block,) = [b for b in _blocks("text") if "->" in b and "(terminal)" in b]
    documented: dict[LifecycleState, frozenset[LifecycleState]] = {}
    for line in block.strip().splitlines():
        source, targets = (part.strip() for part in line.split("->"))
        names = [] if targets == "(terminal)" else [t.strip() for t in targets.split(",")]
        documented[LifecycleState(source)] = frozenset(LifecycleState(n) for n in names)
    assert documented == dict(DEFAULT_RULES)
    assert set(documented) == set(LifecycleState)


def test_the_readme_synopsis_names_every_global_option() -> None:
    synopsis = next(b for b in _blocks("text") if b.startswith("redgov ["))
    options = {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")}
    assert options - {"--help", "--version"} <= set(re.findall(r"--[a-z]+", synopsis))
