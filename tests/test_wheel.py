"""The wheel ships every Lua script and works installed in a fresh virtualenv."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (found,) = out.glob("redgov-*.whl")
    return found


def test_wheel_carries_every_lua_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("redgov/lua/") for n in names if n.startswith("redgov/lua/")}
    expected = {str(p.relative_to(ROOT / "lua")) for p in (ROOT / "lua").rglob("*.lua")}
    assert shipped == expected


def test_installed_wheel_saves_and_appends(wheel: Path, tmp_path: Path, redis_url: str) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # Dependencies come from this environment's site-packages (no network needed);
    # redgov itself must come from the fresh venv, not from the source tree.
    deps = sysconfig.get_paths()["purelib"]
    script = f"""
import redgov, uuid
assert "{venv}" in redgov.__file__, redgov.__file__
for url in ("memory://", "{redis_url}"):
    prefix = "wheel" + uuid.uuid4().hex[:8]
    with redgov.connect(url, prefix=prefix) as bp:
        assert bp.save_state(redgov.ExperimentState(experiment="e", state=redgov.LifecycleState.DRAFT)).ok
        bp.append_transition(redgov.StateTransition(experiment="e", to_state="Draft"))
        assert len(bp.transitions("e")) == 1
        keys = list(bp.client.scan_iter(match="{{" + prefix + ":*"))
        if keys and not url.startswith("memory"):
            bp.client.delete(*keys)
print("ok")
"""
    done = subprocess.run([str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
