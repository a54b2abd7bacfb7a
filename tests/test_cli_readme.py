"""README's shell blocks run as printed, twice in a row, printing the same; its lists of lifecycle
states, default rules and global options are the ones in the code.

``redgov`` in a block is the real command behind a small wrapper that points it at the test's server
(``--url``) and maps every prefix p to ``<run>p`` (a command that names no prefix gets ``<run>gov``,
the default it would have had); REDGOV_URL and REDGOV_EXPORT_URL are unset, and each block runs in
a fresh folder under bash ``set -euo pipefail``. Before the shell blocks, the README's Python
examples run once on the same server and mapping, as for a reader following the README top to
bottom: no shell block may trip over what they left. Where a block prints something that differs
from run to run by design, ``SHELL_VARIES`` says what and why, and only that is normalised.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from redgov import DEFAULT_RULES, LifecycleState
from redgov.cli import build_parser

from .test_readme import BLOCKS as PYTHON_BLOCKS
from .test_readme import delete_run, run_example

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text()
SECTION = TEXT.split("## Configuration and the command line", 1)[1].split("\n## ", 1)[0]
SHELL_BLOCKS = re.findall(r"```sh\n(.*?)```", TEXT, re.DOTALL)


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", SECTION, re.DOTALL)


def shell_block(marker: str) -> str:
    (block,) = [b for b in SHELL_BLOCKS if marker in b]
    return block


QUICK_START = shell_block("redgov demo")
LIFECYCLE = shell_block("redgov create ")
SERVE = shell_block(" serve ")
SQL = shell_block("redgov export ")

#: what a block prints that differs from run to run by design: (pattern, stand-in, why)
SHELL_VARIES: dict[str, list[tuple[str, str, str]]] = {
    LIFECYCLE: [
        (r"(configuration version \d+) \(live\)", r"\1",
         "configure says '(live)' when the version it wrote is live now; on the second run its write is "
         "the first run's (by its idempotency key) and the rollback further down has made version 3 live"),
    ],
    SQL: [
        (r"in [\d.]+ s \([\d,.]+ entries/s\)", "in <t> s", "how long it took"),
        (r"exported [\d,]+ new entries of (\d+) scope\(s\) \([\d,]+ experiment states\)",
         r"exported <n> new entries of \1 scope(s)", "re-running adds nothing: the copy holds every entry already"),
        (r"trimmed [\d,]+ exported entries", "trimmed <n> exported entries",
         "the first run removed them from Redis: a second finds nothing more to remove"),
        (r"; replaced [\d,]+ existing keys \(forced\)", "",
         "the first restore finds the prefix empty; the second replaces what the first wrote"),
    ],
    SERVE: [
        (r"(added|replaced) user ana", "added user ana", "adding a name the users file holds replaces it, and says so"),
        (r"http://127\.0\.0\.1:\d+/", "http://127.0.0.1:<port>/",
         "the test serves on any free port (--port 0): 8765 may be taken on a shared machine"),
    ],
    QUICK_START: [
        (r"checkout-[0-9a-f]{6}", "checkout-<new>", "the demo walks a new experiment each run"),
        (r"process-\d (won|conflict), process-\d (won|conflict)", "<one won, one got a conflict>",
         "which of the two racing processes wins is up to the scheduler"),
    ],
}

WRAPPER = '''#!{python}
"""The README tests' `redgov`: the real command on the test's server, every prefix mapped."""
import sys

from redgov.cli import main

RUN, URL = {run!r}, {url!r}
argv, named = [], False
args = iter(sys.argv[1:])
for arg in args:
    if arg == "--prefix":
        argv += [arg, RUN + next(args)]
        named = True
    elif arg.startswith("--prefix="):
        argv.append("--prefix=" + RUN + arg.split("=", 1)[1])
        named = True
    elif arg == "--url" or arg.startswith("--url="):
        sys.exit("a README shell block names --url: the test cannot point it at its own server")
    else:
        argv.append(arg)
sys.exit(main(["--url", URL] + ([] if named else ["--prefix", RUN + "gov"]) + argv))
'''


def normalised(block: str, output: str) -> str:
    for pattern, stand_in, _why in SHELL_VARIES.get(block, []):
        output = re.sub(pattern, stand_in, output)
    return output


def same_twice(outputs: list[str], what: str) -> None:
    assert outputs[0].strip(), f"{what} prints what it shows"
    assert outputs[1] == outputs[0], f"{what} printed something else the second time:\n" + "".join(
        difflib.unified_diff(outputs[0].splitlines(True), outputs[1].splitlines(True), "run 1", "run 2"))


class Shell:
    """Runs README shell blocks with ``redgov`` pointed at the test's server under ``run``."""

    def __init__(self, folder: Path, url: str, run: str) -> None:
        self.folder, self.url, self.run = folder, url, run
        self.bin = folder / ".bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        wrapper = self.bin / "redgov"
        wrapper.write_text(WRAPPER.format(python=sys.executable, run=run, url=url))
        wrapper.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDGOV_URL", "REDGOV_EXPORT_URL")}
        self.env["PATH"] = f"{self.bin}{os.pathsep}{self.env.get('PATH', '')}"

    def run_block(self, block: str, what: str) -> str:
        """stdout of ``block`` run as a script; fails the test, naming the line, when a command fails."""
        assert "keyPrefix" not in block, "a config's keyPrefix would escape the prefix mapping: map it here"
        script = self.folder / "block.sh"
        script.write_text("trap 'echo \"README block line $((LINENO - 1)) failed\" >&2' ERR\n" + block)
        done = subprocess.run(["bash", "-euo", "pipefail", script.name], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=180, check=False)
        failed = re.search(r"README block line (\d+) failed", done.stderr)
        line = block.splitlines()[int(failed.group(1)) - 1] if failed else "?"
        assert done.returncode == 0, (f"{what}, line: {line}", done.stderr)
        assert done.stderr == "", (what, done.stderr)
        return done.stdout


def read_lines(process: subprocess.Popen[str], into: queue.Queue[str]) -> None:
    for line in process.stdout or ():
        into.put(line)


@pytest.fixture
def run_prefix(redis_url: str) -> Iterator[str]:
    run = f"readme-sh-{uuid.uuid4().hex[:8]}-"
    yield run
    delete_run(redis_url, run)


def test_every_shell_block_is_run_here() -> None:
    assert sorted(map(SHELL_BLOCKS.index, (QUICK_START, LIFECYCLE, SERVE, SQL))) == list(range(len(SHELL_BLOCKS)))


def test_the_quick_start_demo_runs_twice_as_printed(tmp_path: Path) -> None:
    """The quick start's demo line, twice, on the embedded default in a fresh folder. Its other lines
    install the package and run the whole suite: this test runs in that installation and suite."""
    lines = [line for line in QUICK_START.splitlines() if line.strip()]
    assert [line.split("#")[0].split()[0:2] for line in lines] == [
        ["python3", "-m"], [".venv/bin/redgov", "demo"], [".venv/bin/python", "-m"]]
    env = {k: v for k, v in os.environ.items() if k not in ("REDGOV_URL", "REDGOV_EXPORT_URL")}
    outputs = []
    for run in (1, 2):
        done = subprocess.run([sys.executable, "-m", "redgov", "demo"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=180, check=False)
        assert done.returncode == 0 and done.stderr == "", (f"run {run}", done.stderr)
        assert "embedded://.redgov/redgov.db" in done.stdout
        outputs.append(normalised(QUICK_START, done.stdout))
    same_twice(outputs, "redgov demo")


def test_the_shell_blocks_run_twice_where_the_python_examples_ran(tmp_path: Path, redis_url: str,
                                                                   run_prefix: str) -> None:
    """A reader's order: every Python example once, then the lifecycle block twice, then the SQL block
    twice (it copies what the lifecycle left), all on one server."""
    for index, block in enumerate(PYTHON_BLOCKS):
        run_example(block, tmp_path / "python", redis_url, run_prefix, f"example{index + 1}")
    shell = Shell(tmp_path, redis_url, run_prefix)

    lines = [line for line in LIFECYCLE.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) >= 10 and all("redgov " in line for line in lines)
    for command in ("create", "transition", "approve", "configure", "versions", "diff", "rollback", "list",
                    "history", "state", "verify", "wait"):
        assert f"redgov {command} " in LIFECYCLE, command
    writes = [line for line in lines if re.search(r"redgov (create|transition|approve|configure|rollback) ", line)]
    assert all("--idempotency-key " in line for line in writes), "a write without a key cannot run twice"
    outputs = [normalised(LIFECYCLE, shell.run_block(LIFECYCLE, f"the lifecycle block, run {run}"))
               for run in (1, 2)]
    out = outputs[0]
    assert '"state":"Ramping"' in out and "Draft -> PendingApproval" in out
    assert "modified  rollout.percent" in out and "version 3 restores the configuration of version 1" in out
    assert "signup: consistent" in out and "ramp up" in out
    same_twice(outputs, "the lifecycle block")

    outputs = [normalised(SQL, shell.run_block(SQL, f"the SQL block, run {run}")) for run in (1, 2)]
    out = outputs[0]
    assert "exported <n> new entries of 1 scope(s)" in out and "0 entries remain in Redis" in out
    assert "PendingApproval" in out and "signup: consistent" in out
    same_twice(outputs, "the SQL block")


def test_the_serve_block_runs_as_printed(tmp_path: Path, redis_url: str, run_prefix: str) -> None:
    """The block twice: its setup lines as a script, then `redgov serve` from its last line on a free
    port; it answers the password the block set, and SIGTERM to its PID stops it with exit 0."""
    *setup, serve_line = [line for line in SERVE.strip().splitlines()]
    assert " serve " in serve_line and "\n".join(setup) + "\n" + serve_line + "\n" == SERVE
    (password,) = re.findall(r"printf '%s\\n' '([^']+)' \| redgov users add ana ", SERVE)
    shell = Shell(tmp_path, redis_url, run_prefix)
    command = [str(shell.bin / "redgov")] + shlex.split(serve_line, comments=True)[1:] + ["--port", "0"]
    outputs = []
    for run in (1, 2):
        printed = shell.run_block("\n".join(setup) + "\n", f"the serve block, run {run}")
        with subprocess.Popen(command, cwd=tmp_path, env=shell.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as server:
            lines: queue.Queue[str] = queue.Queue()
            reader = threading.Thread(target=read_lines, args=(server, lines), daemon=True)
            reader.start()
            try:
                try:
                    first = lines.get(timeout=30)
                except queue.Empty:
                    pytest.fail(f"redgov serve printed nothing in 30 s (run {run})")
                (url,) = re.findall(r"http://127\.0\.0\.1:\d+/", first)
                asked = urllib.request.Request(url + "api/whoami", headers={
                    "Authorization": "Basic " + base64.b64encode(f"ana:{password}".encode()).decode()})
                with urllib.request.urlopen(asked, timeout=30) as answer:
                    assert answer.status == 200
                    assert json.loads(answer.read())["user"] == "ana"
            finally:
                server.send_signal(signal.SIGTERM)  # by its PID: the wrapper runs the server in its own process
                code = server.wait(30)
                reader.join(10)
            errors = server.stderr.read() if server.stderr else ""
        assert code == 0, (f"run {run}: exit {code}", errors)
        assert "Traceback" not in errors, errors
        outputs.append(normalised(SERVE, printed + first))
    assert f"(prefix {run_prefix}gov, users users.json)" in outputs[0]
    same_twice(outputs, "the serve block")


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
