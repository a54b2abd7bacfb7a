"""README's Python examples run as printed against a real Redis, twice in a row, printing the same.

A reader copies an example, runs it, and runs it again (after an edit, or to see it once more): the
second run must neither fail nor write something false, and shows the same thing. Each example runs
in its own interpreter, as ``python example.py`` would, with ``redgov.connect`` pointed at the test's
server and every prefix it names mapped to ``<run>`` + that prefix, where ``<run>`` is one fresh
prefix for this module: the examples share the server with each other, in README order, as they do
for a reader who runs them all (and keep apart from other tests). Where an example prints something
that differs from run to run by design, ``VARIES`` says what and why, and only that is normalised.

The shell blocks are run by test_cli_readme.py (which runs these examples first, on one server).
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import redgov

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.DOTALL)

#: what an example prints that differs from run to run by design: (pattern, stand-in, why)
VARIES: dict[str, list[tuple[str, str, str]]] = {
    "rules-demo:": [
        (r"search-[0-9a-f]{6}", "search-<new>",
         "a fresh experiment each run: a requester's refused self-approval can only happen before the move"),
    ],
    "coord-demo": [
        (r"ramp-[0-9a-f]{6}", "ramp-<new>",
         "a fresh experiment each run: the controller's lease must be new and expire during the run"),
        (r"token (is )?\d+", r"token \1<n>", "a fencing token grows on every acquisition, across runs too"),
    ],
}

#: runs an example with redgov.connect mapped: argv = url, the run's prefix, the example, a file
#: collecting the prefixes it connected with (appended by every process, forked ones included)
DRIVER = '''
import sys

import redgov

url, run, path, used = sys.argv[1:5]
real = redgov.connect


def connect(address="memory://", *, prefix="gov", **kwargs):
    with open(used, "a") as out:
        out.write(prefix + "\\n")
    return real(address.replace("redis://localhost:6379/0", url), prefix=run + prefix, **kwargs)


redgov.connect = connect
with open(path) as source:
    code = compile(source.read(), path, "exec")
exec(code, {"__name__": "__main__", "__file__": path})
'''


def section_of(block: str) -> str:
    """The README heading a block stands under (for test ids and messages)."""
    before = TEXT[: TEXT.index(block)]
    return re.findall(r"^## (.*)$", before, re.MULTILINE)[-1]


def normalised(block: str, output: str) -> str:
    for key, rules in VARIES.items():
        if key in block:
            for pattern, stand_in, _why in rules:
                output = re.sub(pattern, stand_in, output)
    return output


def run_example(block: str, folder: Path, url: str, run: str, name: str) -> tuple[str, list[str]]:
    """(stdout, the prefixes it connected with) of one run of ``block``; fails the test when it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "driver.py").write_text(DRIVER)
    (folder / f"{name}.py").write_text(block)
    used = folder / f"{name}.prefixes"
    used.write_text("")
    done = subprocess.run([sys.executable, "driver.py", url, run, f"{name}.py", used.name], cwd=folder,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{name} failed:\n{done.stderr}"
    return done.stdout, sorted(set(used.read_text().split()))


def delete_run(url: str, run: str) -> None:
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=run + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])


@pytest.fixture(scope="module")
def run_prefix(redis_url: str) -> Iterator[str]:
    """One fresh prefix for the module: every example's prefix p becomes ``<run>p``."""
    run = f"readme-{uuid.uuid4().hex[:8]}-"
    yield run
    delete_run(redis_url, run)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"{i + 1}-{re.sub(r'[^a-z]+', '-', section_of(b).lower()).strip('-')}"
                              for i, b in enumerate(BLOCKS)])
def test_readme_example_runs_twice_in_a_row_with_the_same_output(index: int, redis_url: str, run_prefix: str,
                                                                 tmp_path: Path) -> None:
    block = BLOCKS[index]
    outputs = []
    for run in (1, 2):
        out, used = run_example(block, tmp_path, redis_url, run_prefix, f"example{index + 1}-run{run}")
        assert used or "memory://" in block, "the example connects through redgov.connect"
        outputs.append(normalised(block, out))
    assert outputs[0].strip(), "every example prints what it shows"
    assert outputs[1] == outputs[0], "the second run printed something else:\n" + "".join(
        difflib.unified_diff(outputs[0].splitlines(True), outputs[1].splitlines(True), "run 1", "run 2"))


YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", TEXT, re.DOTALL)


@pytest.mark.parametrize("index", range(len(YAML_BLOCKS)))
def test_readme_configuration_loads_and_builds(index: int, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    config = redgov.load_config(YAML_BLOCKS[index])
    assert config.prefix == "prod:governance:" and config.retain_history == 10_000
    assert [type(p).__name__ for p in config.policies()] == ["ErrorRate", "TrafficLimit", "TimeWindow",
                                                           "ConflictPrevention"]
    with redgov.from_config(config, prefix=f"readme-{uuid.uuid4().hex[:8]}:", archive=False) as gov:
        assert gov.experiments() == []
        assert len(gov.core.gates) == 3 and gov.core.require_telemetry is False


def test_readme_has_a_configuration_example() -> None:
    assert YAML_BLOCKS


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_table_of_contents_lists_every_section_in_order() -> None:
    headings = re.findall(r"^## (.*)$", TEXT, re.MULTILINE)
    contents = TEXT.split("\n## ", 1)[0]
    linked = re.findall(r"\]\(#([^)]+)\)", contents)
    assert [a for a in linked if a in {slug(h) for h in headings}] == [slug(h) for h in headings]
    subsections = {slug(h) for h in re.findall(r"^### (.*)$", TEXT, re.MULTILINE)}
    assert set(linked) <= {slug(h) for h in headings} | subsections, "a link to no heading"
