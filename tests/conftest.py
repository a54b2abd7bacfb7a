"""Fixtures: real Redis first.

The server is ``REDGOV_TEST_URL``, else the one at 127.0.0.1:6379, else a
private ``redis-server`` this session starts on a free port. No server at
all fails the run; nothing is skipped. Every test works under its own uuid
prefix, and only its own keys are deleted afterwards (no FLUSHDB).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

import redgov
from redgov import Backplane

from .servers import RedisProcess

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    explicit = os.environ.get("REDGOV_TEST_URL")
    if explicit:
        if not _answers(explicit):
            pytest.fail(f"REDGOV_TEST_URL={explicit} does not answer PING")
        yield explicit
        return
    if _answers(DEFAULT_URL):
        yield DEFAULT_URL
        return
    try:
        server = RedisProcess()
    except Exception as exc:  # noqa: BLE001 - any failure to get a server fails the run
        pytest.fail(f"no Redis at 127.0.0.1:6379 and no private redis-server could be started: {exc}")
    yield server.url
    server.stop()


def new_prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key of ``prefix`` (keys are ``<prefix>{<tenant>:<environment>}:...``)."""
    from redgov.keys import prefix_pattern

    keys = list(client.scan_iter(match=prefix_pattern(prefix), count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture(scope="session")
def embedded_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = "embedded://" + str(tmp_path_factory.mktemp("embedded") / "session.db")
    keeper = redgov.connect(url)  # holds the server for the session
    yield url
    keeper.close()


ENGINES = ["redis", "memory"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def engine_url(engine: str, request: pytest.FixtureRequest) -> str:
    if engine == "redis":
        return str(request.getfixturevalue("redis_url"))
    if engine == "memory":
        return "memory://"
    return str(request.getfixturevalue("embedded_url"))


@pytest.fixture
def url(engine: str, request: pytest.FixtureRequest) -> str:
    return engine_url(engine, request)


@pytest.fixture
def backplane(url: str, prefix: str) -> Iterator[Backplane]:
    bp = redgov.connect(url, prefix=prefix)
    yield bp
    if not url.startswith("memory://"):
        delete_prefix(bp.client, prefix)
    bp.close()


@pytest.fixture(params=["redis", "memory", "embedded"])
def any_backplane(request: pytest.FixtureRequest, prefix: str) -> Iterator[Backplane]:
    """The smoke subset: also the embedded engine."""
    url = engine_url(str(request.param), request)
    bp = redgov.connect(url, prefix=prefix)
    yield bp
    if not url.startswith("memory://"):
        delete_prefix(bp.client, prefix)
    bp.close()
