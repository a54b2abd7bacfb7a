"""``redgov bench``: run the scripts in ``benchmarks/`` briefly and print their tables.

The benchmarks live in the source tree (``benchmarks/``), not in the wheel.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["run_benchmarks"]

SCRIPTS = ("backplane", "transitions", "cache", "leases", "otel", "web", "export")
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _load(path: Path) -> ModuleType:
    root = str(path.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"benchmarks.{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_benchmarks(url: str | None, n: int, as_json: bool) -> int:
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not folder.is_dir():
        sys.stderr.write("redgov: bench: the benchmarks ship with the source tree (benchmarks/); "
                         "run this from a checkout\n")
        return 2
    status = 0
    for name in SCRIPTS:
        path = folder / f"{name}.py"
        if not path.exists():
            continue
        module = _load(path)
        argv = ["--url", url or DEFAULT_URL, "--n", str(n)] + (["--json"] if as_json else [])
        header = sys.stderr if as_json else sys.stdout  # with --json, stdout carries only JSON
        header.write(f"== benchmarks/{name}.py ==\n")
        header.flush()
        status = max(status, int(module.main(argv)))
    return status
