"""README's Python examples run as written against a real Redis, and each runs twice in a row.

Each prefix an example uses (the default ``gov`` included) is mapped to a fresh one, so the
examples keep apart from each other exactly as on a fresh server, and from other tests.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import redgov

from .conftest import delete_prefix

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.fixture
def isolated(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """redgov.connect with every prefix mapped to a fresh one (the prefixes used are collected)."""
    run = f"readme-{uuid.uuid4().hex[:8]}-"
    used: list[str] = []
    real = redgov.connect

    def connect(url: str = "memory://", *, prefix: str = "gov", **kwargs: Any) -> redgov.Backplane:
        mapped = run + prefix
        used.append(mapped)
        return real(url.replace("redis://localhost:6379/0", redis_url), prefix=mapped, **kwargs)

    monkeypatch.setattr(redgov, "connect", connect)
    yield used
    client = redis.Redis.from_url(redis_url)
    for prefix in set(used):
        delete_prefix(client, prefix)
    client.close()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_twice_in_a_row(index: int, isolated: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    printed = []
    for run in (1, 2):
        namespace: dict[str, object] = {}
        exec(compile(BLOCKS[index], f"README.md example {index + 1}, run {run}", "exec"), namespace)  # noqa: S102
        for value in namespace.values():
            if isinstance(value, (redgov.Backplane, redgov.Governance)):
                value.close()
        printed.append(capsys.readouterr().out.strip())
    assert printed[0], "every example prints what it shows"
    assert isolated, "the example connects through redgov.connect"


YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)


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
