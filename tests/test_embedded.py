"""``embedded://path``: one real redis-server per data file, shared by processes.

Other OS processes are ``sys.executable -c CHILD`` subprocesses that talk
through a line protocol on stdin/stdout; every wait is bounded. Each test
uses its own data file under tmp_path, so its server is private to it; no
process is ever stopped by name, only servers these tests opened, and only
through redgov's own close.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import redgov
import redgov.aio
from redgov import (
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    RedgovError,
    StateTransition,
)
from redgov.embedded import EmbeddedServer

DEBIAN_REDIS_SERVER = "/usr/bin/redis-server"
WAIT = 20.0  # upper bound for any one wait on a child or a server
PROMPT_CLOSE = 1.0  # saving and stopping an idle, tiny server takes milliseconds

CHILD = r"""
import json, sys
import redgov
from redgov import ExperimentState, LifecycleState, StateTransition

url, prefix, experiment = sys.argv[1:4]

def say(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()

bp = redgov.connect(url, prefix=prefix)
try:
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] == "read":
            state = bp.get_state(experiment)
            say(state=state.state.value if state else None, etag=state.etag if state else None,
                by=state.last_modified_by if state else None,
                transitions=[t.to_state.value for t in bp.transitions(experiment)],
                versions=[v.version for v in bp.versions(experiment)],
                executable=bp.client.info("server")["executable"])
        elif command[0] == "write":
            name = command[1]
            result = bp.save_state(ExperimentState(experiment=name, state=LifecycleState.DRAFT,
                                                   last_modified_by="child"))
            bp.append_transition(StateTransition(experiment=name, to_state=LifecycleState.DRAFT,
                                                 actor="child"))
            say(ok=result.ok, etag=result.etag)
        elif command[0] == "close":
            break
finally:
    bp.close()
say(closed=True)
"""


class Child:
    """Another OS process holding the same embedded:// path open."""

    def __init__(self, url: str, prefix: str, experiment: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, prefix, experiment],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=str(Path(__file__).resolve().parent.parent),
        )

    def ask(self, *command: str) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(" ".join(command) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], WAIT)
        if not ready:
            self.kill()
            raise AssertionError(f"child did not answer {command} within {WAIT}s")
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"child exited: {self.finish()}")
        return dict(json.loads(line))

    def close(self) -> dict:
        answer = self.ask("close")
        code, err = self.finish()
        assert code == 0, err
        return answer

    def finish(self) -> tuple[int, str]:
        try:
            _, err = self.process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.process.returncode, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # our own child, by its pid
        self.process.communicate(timeout=WAIT)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.kill()
        else:
            child.process.communicate(timeout=WAIT)


@pytest.fixture(params=["default", "debian"])
def binary(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The server binary: redgov's default choice, or the Debian one named by REDGOV_REDIS_SERVER."""
    if request.param == "default":
        monkeypatch.delenv("REDGOV_REDIS_SERVER", raising=False)
        return None
    assert os.access(DEBIAN_REDIS_SERVER, os.X_OK), f"{DEBIAN_REDIS_SERVER} is missing"
    monkeypatch.setenv("REDGOV_REDIS_SERVER", DEBIAN_REDIS_SERVER)
    return DEBIAN_REDIS_SERVER


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "gov.db"


def url_of(path: Path) -> str:
    return "embedded://" + str(path)


def server_pid(path: Path) -> int:
    return int(EmbeddedServer(path)._pid_path.read_text().strip())


def running(pid: int) -> bool:
    """True while pid is a live process (a zombie has exited: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + WAIT
    while running(pid):
        assert time.monotonic() < deadline, f"redis-server {pid} still running {WAIT}s after the last close"
        time.sleep(0.02)


def draft(experiment: str, by: str) -> ExperimentState:
    return ExperimentState(experiment=experiment, state=LifecycleState.DRAFT, last_modified_by=by,
                           metadata={"owner": by})


def check_binary(bp: redgov.Backplane, binary: str | None) -> None:
    executable = bp.client.info("server")["executable"]
    if binary is not None:
        assert os.path.realpath(executable) == os.path.realpath(binary)


# -- (a) several OS processes share one server -------------------------------


def test_other_process_sees_writes_while_first_holds_it_open(data_file: Path, binary: str | None,
                                                              children: list[Child]) -> None:
    url, prefix = url_of(data_file), "p" + uuid.uuid4().hex[:8]
    parent = redgov.connect(url, prefix=prefix)
    try:
        check_binary(parent, binary)
        pid = server_pid(data_file)
        created = parent.save_state(draft("checkout", "parent"))
        assert created.ok
        parent.append_version(ConfigurationVersion(experiment="checkout", version=1,
                                                   configuration={"traffic": 5}))

        # a second process opens the same path while the parent still has it open
        reader = Child(url, prefix, "checkout")
        children.append(reader)
        seen = reader.ask("read")
        assert seen["state"] == "Draft" and seen["etag"] == created.etag and seen["by"] == "parent"
        assert seen["versions"] == [1]
        assert os.path.realpath(seen["executable"]) == os.path.realpath(
            parent.client.info("server")["executable"])
        # ... writes, and the parent sees it
        written = reader.ask("write", "from-child")
        assert written["ok"] is True
        state = parent.get_state("from-child")
        assert state is not None and state.etag == written["etag"] and state.last_modified_by == "child"
        assert [t.actor for t in parent.transitions("from-child")] == ["child"]
        # the child closing does not stop the server the parent still uses
        assert reader.close() == {"closed": True}
        assert running(pid)
        assert parent.get_state("from-child") is not None

        # a child holds the path open; the parent closes first; the child still works
        holder = Child(url, prefix, "checkout")
        children.append(holder)
        assert holder.ask("write", "held")["ok"] is True
        assert parent.get_state("held") is not None
    finally:
        parent.close()
    assert running(pid), "the server stopped while another process still had it open"
    again = holder.ask("read")
    assert again["state"] == "Draft" and again["versions"] == [1]
    # the child is the last opener: its close saves and stops the server
    assert holder.close() == {"closed": True}
    wait_gone(pid)
    assert data_file.is_file()


def test_two_openers_in_one_process_share_and_release(data_file: Path) -> None:
    url = url_of(data_file)
    first = redgov.connect(url, prefix="p")
    pid = server_pid(data_file)

    async def main() -> ExperimentState | None:
        second = redgov.aio.connect(url, prefix="p")  # no I/O yet: the first call opens (in a thread)
        try:
            assert await second.get_state("shared") is None
            assert first.save_state(draft("shared", "sync")).ok
            first.close()  # the asyncio opener still holds the server
            assert running(pid), "closing one opener stopped the server another opener in this process holds"
            return await second.get_state("shared")
        finally:
            await second.close()

    try:
        state = asyncio.run(main())
    finally:
        first.close()  # idempotent
    assert state is not None and state.last_modified_by == "sync"
    wait_gone(pid)


# -- (b) data survives close and reopen --------------------------------------


def test_data_survives_close_and_reopen(data_file: Path, binary: str | None) -> None:
    url, prefix = url_of(data_file), "p" + uuid.uuid4().hex[:8]
    assert not data_file.exists()
    with redgov.connect(url, prefix=prefix) as bp:
        check_binary(bp, binary)
        pid_path = EmbeddedServer(data_file)._pid_path
        pid = int(pid_path.read_text().strip())
        assert running(pid)
        created = bp.save_state(draft("checkout", "alice"))
        t1 = bp.append_transition(StateTransition(experiment="checkout", to_state=LifecycleState.DRAFT,
                                                  actor="alice", tenant="acme", environment="prod"))
        v1 = bp.append_version(ConfigurationVersion(experiment="checkout", version=1,
                                                    configuration={"rollout": {"steps": [1, 10]}}))
    wait_gone(pid)
    assert not pid_path.exists()
    assert data_file.is_file() and data_file.stat().st_size > 0

    with redgov.connect(url, prefix=prefix) as bp:
        check_binary(bp, binary)
        new_pid = server_pid(data_file)
        state = bp.get_state("checkout")
        assert state is not None
        assert state.etag == created.etag and state.revision == 1
        assert state.last_modified_by == "alice" and state.metadata == {"owner": "alice"}
        assert bp.transitions("checkout", tenant="acme", environment="prod") == [t1]
        assert bp.versions("checkout") == [v1]
        assert bp.latest_version("checkout") == v1
        # still append-only after a restart: the reloaded history refuses a duplicate
        with pytest.raises(redgov.ConflictError):
            bp.append_version(ConfigurationVersion(experiment="checkout", version=1, configuration={}))
        assert bp.save_state(draft("checkout", "bob")).conflict is True
    wait_gone(new_pid)


def test_async_writes_survive_reopen(data_file: Path) -> None:
    url = url_of(data_file)

    async def write() -> str:
        bp = redgov.aio.connect(url, prefix="p")
        try:
            result = await bp.save_state(draft("async-exp", "carol"))
            assert result.ok and result.etag
            return result.etag
        finally:
            await bp.close()

    etag = asyncio.run(write())
    assert data_file.is_file()
    with redgov.connect(url, prefix="p") as bp:
        state = bp.get_state("async-exp")
        assert state is not None and state.etag == etag and state.last_modified_by == "carol"


def test_async_first_calls_at_once_or_in_a_batch_start_the_server_once(data_file: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url = url_of(data_file)
    opened: list[int] = []
    real_open = EmbeddedServer.open

    def counted(self: EmbeddedServer) -> None:
        opened.append(1)
        time.sleep(0.05)  # long enough for the other first calls to ask too
        real_open(self)

    monkeypatch.setattr(EmbeddedServer, "open", counted)

    async def first_calls() -> int:
        bp = redgov.aio.connect(url, prefix="p")
        try:  # a batch of reads (no scope, no WAIT) as the very first call, next to plain ones
            batch, *single = await asyncio.gather(
                bp.run_many([bp.core.get_state("a", None, None), bp.core.get_state("b", None, None)]),
                bp.get_state("c"), bp.get_state("d"))
            assert batch == [None, None] and single == [None, None]
            return server_pid(data_file)
        finally:
            await bp.close()

    pid = asyncio.run(first_calls())
    assert opened == [1]
    wait_gone(pid)  # its one handle released: the server stopped


def test_last_close_is_prompt(data_file: Path) -> None:
    """Closing the last opener saves a tiny DB and stops the server: well under a second."""
    bp = redgov.connect(url_of(data_file), prefix="p")
    pid = server_pid(data_file)
    assert bp.save_state(draft("quick", "alice")).ok
    started = time.monotonic()
    bp.close()
    elapsed = time.monotonic() - started
    wait_gone(pid)
    assert data_file.is_file()
    assert elapsed < PROMPT_CLOSE, f"closing the last embedded opener took {elapsed:.2f}s"


# -- crashes: a dead opener or a dead server does not wedge the path -----------


def test_crashed_opener_does_not_keep_the_server_alive(data_file: Path, children: list[Child]) -> None:
    url = url_of(data_file)
    holder = Child(url, "p", "crashy")
    children.append(holder)
    assert holder.ask("write", "crashy")["ok"] is True
    pid = server_pid(data_file)
    with redgov.connect(url, prefix="p") as bp:
        assert bp.get_state("crashy") is not None
        holder.kill()  # the child dies without closing (SIGKILL to our own child)
        assert holder.process.returncode != 0
        assert running(pid)
    # the parent was the last live opener: the dead child's registration does not count
    wait_gone(pid)
    with redgov.connect(url, prefix="p") as bp:
        state = bp.get_state("crashy")
        assert state is not None and state.last_modified_by == "child"


def test_reopen_after_the_server_died(data_file: Path) -> None:
    url = url_of(data_file)
    with redgov.connect(url, prefix="p") as bp:
        assert bp.save_state(draft("survivor", "alice")).ok
        bp.client.save()  # on disk before the crash
        pid = server_pid(data_file)
        os.kill(pid, 9)  # the server this test started, by its pid
        wait_gone(pid)
    # a stale socket file may be left behind; opening again starts a fresh server promptly
    started = time.monotonic()
    with redgov.connect(url, prefix="p") as bp:
        assert time.monotonic() - started < 5.0
        assert server_pid(data_file) != pid
        state = bp.get_state("survivor")
        assert state is not None and state.last_modified_by == "alice"


# -- (d) a bad REDGOV_REDIS_SERVER fails fast and clearly ---------------------


@pytest.mark.parametrize("kind", ["missing", "directory", "not-executable"])
def test_bad_redis_server_binary_raises_clearly(kind: str, tmp_path: Path, data_file: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "missing":
        bad = tmp_path / "no" / "such" / "redis-server"
    elif kind == "directory":
        bad = tmp_path / "a-directory"
        bad.mkdir()
    else:
        bad = tmp_path / "redis-server"
        bad.write_text("not a program\n")
        bad.chmod(0o644)
    monkeypatch.setenv("REDGOV_REDIS_SERVER", str(bad))
    url = url_of(data_file)

    started = time.monotonic()
    with pytest.raises(RedgovError) as info:
        redgov.connect(url, prefix="p")
    assert time.monotonic() - started < 5.0
    message = str(info.value)
    assert str(bad) in message and str(data_file) in message

    async def first_call() -> None:
        backplane = redgov.aio.connect(url, prefix="p")  # does no I/O: the first call starts the server
        try:
            await backplane.get_state("anything")
        finally:
            await backplane.close()

    with pytest.raises(RedgovError) as async_info:
        asyncio.run(first_call())
    assert str(bad) in str(async_info.value)

    # the failure leaves nothing behind: a good binary opens the same path afterwards
    monkeypatch.delenv("REDGOV_REDIS_SERVER")
    with redgov.connect(url, prefix="p") as bp:
        pid = server_pid(data_file)
        assert bp.get_state("anything") is None
        assert bp.save_state(draft("after-failure", "alice")).ok
    wait_gone(pid)
