"""README's Python examples run as written (against memory:// instead of localhost)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = BLOCKS[index].replace("redis://localhost:6379/0", "memory://")
    namespace: dict[str, object] = {}
    exec(compile(code, f"README.md example {index + 1}", "exec"), namespace)  # noqa: S102
    bp = namespace.get("bp")
    if bp is not None:
        bp.close()  # type: ignore[attr-defined]
    assert capsys.readouterr().out.strip(), "every example prints what it shows"
