"""``embedded://`` hygiene: unusable data folders, runtime files, the runtime folder's ownership.

Each test points the system temp folder at a short private folder of its own
(``runtime`` fixture), so the runtime folder ``<tmp>/redgov-<uid>`` it checks
holds only what the test made. Servers are stopped only through redgov's own
close; a server's pid is only ever observed here, never signalled.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import redgov
import redgov.aio
import redgov.embedded
from redgov import ExperimentState, LifecycleState, UnavailableError
from redgov.embedded import EmbeddedError, EmbeddedServer

from .test_embedded import DEBIAN_REDIS_SERVER, running, url_of, wait_gone


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The runtime folder the code under test will use, inside a fresh temp folder (not created yet)."""
    temp = Path(tempfile.mkdtemp(prefix="rgt-"))  # short: a unix socket path has at most 107 bytes
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield temp / f"redgov-{os.geteuid()}"
    shutil.rmtree(temp, ignore_errors=True)


def draft(name: str) -> ExperimentState:
    return ExperimentState(experiment=name, state=LifecycleState.DRAFT, last_modified_by="alice")


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in, even as root."""
    if os.geteuid() == 0:
        # root writes through any mode bits; nobody can create a file in a process's /proc folder
        return Path(f"/proc/{os.getpid()}")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def why_unwritable(folder: Path) -> str:
    """The OS's own reason why a file cannot be created in folder."""
    try:
        (folder / "probe").open("w").close()
    except OSError as exc:
        return str(exc.strerror)
    raise AssertionError(f"{folder} is writable")


def runtime_files(run: Path, server: EmbeddedServer) -> list[str]:
    if not run.exists():
        return []
    return sorted(name for name in os.listdir(run) if name.startswith(server._digest))


# -- (1) a data file the server cannot write: a clear error, no server left ----------------------


@pytest.mark.parametrize("kind", ["unwritable-folder", "folder-is-a-file", "data-file-is-a-folder"])
def test_unusable_data_file_is_refused_before_any_server_starts(kind: str, tmp_path: Path, runtime: Path) -> None:
    if kind == "unwritable-folder":
        folder = unwritable_folder(tmp_path)
        data, expected = folder / "gov.db", [str(folder), why_unwritable(folder)]
    elif kind == "folder-is-a-file":
        folder = tmp_path / "not-a-folder"
        folder.write_text("a regular file\n")
        data, expected = folder / "gov.db", [str(folder), "is not a folder"]
    else:
        data = tmp_path / "gov.db"
        data.mkdir()
        expected = [str(data), "is not a regular file"]

    with pytest.raises(UnavailableError) as info:
        redgov.connect(url_of(data), prefix="p")
    assert isinstance(info.value, EmbeddedError)
    for text in expected:
        assert text in str(info.value)

    server = EmbeddedServer(data)
    with pytest.raises(EmbeddedError):
        server.open()
    assert server.started_pid is None, "a server was started for a data file it cannot write"
    assert not os.path.exists(server.socket)
    assert runtime_files(runtime, server) == []


@pytest.fixture(params=["default", "debian"])
def binary(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "default":
        monkeypatch.delenv("REDGOV_REDIS_SERVER", raising=False)
    else:
        monkeypatch.setenv("REDGOV_REDIS_SERVER", DEBIAN_REDIS_SERVER)


def test_a_server_that_cannot_save_is_stopped(binary: None, tmp_path: Path, runtime: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the folder check (here: skipped), the started server proves it can save, else it is stopped."""
    folder = unwritable_folder(tmp_path)
    reason = why_unwritable(folder)
    monkeypatch.setattr(EmbeddedServer, "_check_data_file", lambda self: None)
    server = EmbeddedServer(folder / "gov.db")
    with pytest.raises(EmbeddedError) as info:
        server.open()
    message = str(info.value)
    assert str(folder / "gov.db") in message
    assert str(folder) in message and reason in message, message  # the server log's own line
    pid = server.started_pid
    assert pid is not None, "the server was expected to start"
    assert not running(pid), f"redis-server {pid} still runs after it failed to start"
    assert not os.path.exists(server.socket)
    assert runtime_files(runtime, server) == [f"{server._digest}.log"]  # kept for the error to point at

    # the log of the failure goes with the next open of any path
    with redgov.connect(url_of(tmp_path / "other.db"), prefix="p"):
        assert runtime_files(runtime, server) == []


@pytest.mark.parametrize("unsaved", [True, False], ids=["unsaved-writes", "nothing-unsaved"])
def test_a_last_close_that_cannot_save(unsaved: bool, tmp_path: Path, runtime: Path) -> None:
    """Unsaved writes keep the server running (close raises); with nothing unsaved it just stops."""
    data = tmp_path / "data" / "gov.db"
    url = url_of(data)
    bp = redgov.connect(url, prefix="p")
    server = EmbeddedServer(data)
    pid = int(server._pid_path.read_text())
    data.unlink()
    data.mkdir()  # the server cannot replace its RDB file now, not even as root
    if not unsaved:
        bp.close()
        wait_gone(pid)
        assert runtime_files(runtime, server) == []
        return
    assert bp.save_state(draft("kept")).ok
    with pytest.raises(UnavailableError) as info:
        bp.close()
    message = str(info.value)
    assert str(data) in message and "keeps running" in message and os.strerror(errno.EISDIR) in message, message
    assert running(pid), "the server holding unsaved writes was stopped"

    data.rmdir()  # fixed: opening and closing again saves and stops it
    with redgov.connect(url, prefix="p") as again:
        assert server_pid(server) == pid
        state = again.get_state("kept")
        assert state is not None and state.last_modified_by == "alice"
    wait_gone(pid)
    assert data.is_file()
    assert runtime_files(runtime, server) == []


def server_pid(server: EmbeddedServer) -> int:
    return int(server._pid_path.read_text())


# -- (2) runtime files go with their server -------------------------------------------------------


def test_runtime_files_go_with_the_last_close(tmp_path: Path, runtime: Path) -> None:
    paths = [tmp_path / f"db{i}" / "gov.db" for i in range(4)]
    for path in paths:
        with redgov.connect(url_of(path), prefix="p") as bp:
            assert bp.save_state(draft("x")).ok
            assert runtime_files(runtime, EmbeddedServer(path))
    assert os.listdir(runtime) == []

    shared = tmp_path / "shared.db"
    first = redgov.connect(url_of(shared), prefix="p")

    async def second_opener() -> None:
        bp = redgov.aio.connect(url_of(shared), prefix="p")
        try:
            assert await bp.get_state("x") is None
        finally:
            await bp.close()

    asyncio.run(second_opener())
    server = EmbeddedServer(shared)
    pid = server_pid(server)
    assert running(pid) and f"{server._digest}.sock" in runtime_files(runtime, server)
    first.close()
    wait_gone(pid)
    assert os.listdir(runtime) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".redgov-probe")] == []


def test_stale_runtime_files_are_removed_on_the_next_open(tmp_path: Path, runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    dead, live, busy, old = "a" * 20, "b" * 20, "c" * 20, "d" * 20
    for suffix in ("lock", "log", "users", "pid", "sock"):
        (runtime / f"{dead}.{suffix}").write_text(f"{exited.pid}:token\n" if suffix == "users" else
                                                  f"{exited.pid}\n" if suffix == "pid" else "")
    for suffix in ("lock", "log", "users"):  # what servers of older versions left behind
        (runtime / f"{old}.{suffix}").write_text("")
    for suffix in ("lock", "log", "users"):  # a server that runs (its pid is alive): kept
        (runtime / f"{live}.{suffix}").write_text("")
    (runtime / f"{live}.pid").write_text(f"{os.getpid()}\n")
    (runtime / "notes.txt").write_text("not redgov's: kept\n")
    with open(runtime / f"{busy}.lock", "a+") as lock:  # someone starting a server right now: kept
        fcntl.flock(lock, fcntl.LOCK_EX)
        with redgov.connect(url_of(tmp_path / "gov.db"), prefix="p") as bp:
            assert bp.get_state("x") is None
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert set(os.listdir(runtime)) == {f"{live}.lock", f"{live}.log", f"{live}.users", f"{live}.pid",
                                        f"{busy}.lock", "notes.txt"}


# -- (3) the runtime folder is this user's alone ---------------------------------------------------


def test_runtime_folder_is_created_private(tmp_path: Path, runtime: Path) -> None:
    with redgov.connect(url_of(tmp_path / "gov.db"), prefix="p"):
        info = os.lstat(runtime)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.geteuid()
    os.chmod(runtime, 0o755)  # readable by others, writable by nobody else: accepted
    with redgov.connect(url_of(tmp_path / "gov.db"), prefix="p"):
        pass


def refused(tmp_path: Path, *expected: str) -> None:
    with pytest.raises(UnavailableError) as info:
        redgov.connect(url_of(tmp_path / "gov.db"), prefix="p")
    for text in expected:
        assert text in str(info.value), str(info.value)
    assert not (tmp_path / "gov.db").exists(), "a server was started"


@pytest.mark.parametrize("mode", [0o777, 0o730])
def test_runtime_folder_others_can_write_is_refused(mode: int, tmp_path: Path, runtime: Path) -> None:
    runtime.mkdir()
    os.chmod(runtime, mode)
    refused(tmp_path, str(runtime), oct(mode))
    assert os.listdir(runtime) == []


def test_runtime_folder_of_another_user_is_refused(tmp_path: Path, runtime: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        runtime.mkdir(mode=0o700)
        os.chown(runtime, 54321, -1)  # root can hand it to another uid
        other = 54321
    else:  # we cannot chown: make the code believe it runs as another uid, which owns no folder here
        me = os.geteuid()
        monkeypatch.setattr(redgov.embedded, "_uid", lambda: me + 1)
        runtime = runtime.parent / f"redgov-{me + 1}"
        runtime.mkdir(mode=0o700)
        other = me
    refused(tmp_path, str(runtime), f"uid {other}")
    assert os.listdir(runtime) == []


@pytest.mark.parametrize("target", ["folder", "missing"])
def test_runtime_folder_symlink_is_not_followed(target: str, tmp_path: Path, runtime: Path) -> None:
    elsewhere = runtime.parent / "elsewhere"
    if target == "folder":
        elsewhere.mkdir(mode=0o700)  # even a private folder of ours: the link could be swapped
    runtime.symlink_to(elsewhere)
    refused(tmp_path, str(runtime), "symbolic link")
    assert os.listdir(elsewhere) == [] if target == "folder" else not elsewhere.exists()
