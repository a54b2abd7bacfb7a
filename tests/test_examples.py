"""The scripts in examples/ run as a user runs them (``python examples/<name>.py``), twice in a row,
against the test's Redis: exit 0, nothing on stderr, and the same output both times.

Each script reads REDGOV_URL and keeps its keys under its own prefix, which REDGOV_EXAMPLE_PREFIX
replaces: here a fresh one per test, whose keys are deleted afterwards. A script runs in a fresh
folder (the SQL example writes its copy there).
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_there_are_a_few_examples_and_the_readme_names_each() -> None:
    assert 2 <= len(EXAMPLES) <= 4, [p.name for p in EXAMPLES]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Examples\n", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"examples/(\w+\.py)", section)) == {p.name for p in EXAMPLES}


@pytest.fixture
def example_prefix(redis_url: str) -> Iterator[str]:
    run = f"ex-{uuid.uuid4().hex[:10]}-"
    yield run
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=run + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_twice_with_the_same_output(script: Path, redis_url: str, example_prefix: str,
                                                 tmp_path: Path) -> None:
    text = script.read_text()
    assert 'os.environ.get("REDGOV_URL", "redis://localhost:6379/0")' in text
    assert 'os.environ.get("REDGOV_EXAMPLE_PREFIX", "example-' in text, "its own prefix, replaceable"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDGOV_")}
    env.update(REDGOV_URL=redis_url, REDGOV_EXAMPLE_PREFIX=example_prefix + script.stem + "-")
    outputs = []
    for run in (1, 2):
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, f"run {run} of {script.name} failed:\n{done.stderr}"
        assert done.stderr == "", f"run {run} of {script.name} wrote to stderr:\n{done.stderr}"
        outputs.append(done.stdout)
    assert outputs[0].strip(), "an example prints what it shows"
    assert outputs[1] == outputs[0], f"{script.name} printed something else the second time:\n" + "".join(
        difflib.unified_diff(outputs[0].splitlines(True), outputs[1].splitlines(True), "run 1", "run 2"))
    with redis.Redis.from_url(redis_url) as client:
        assert next(client.scan_iter(match=example_prefix + "*", count=1000), None), "it used the prefix given"
