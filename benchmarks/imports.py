"""Import time of ``redgov`` against ``redis``, measured in one run.

    python benchmarks/imports.py [--n 15] [--json]

Each sample is a fresh interpreter (``python -X importtime -c "import X"``), the
two alternating; the time is the cumulative import time of the top-level module
as ``-X importtime`` reports it (interpreter start-up excluded). Bytecode is
compiled first (as pip does at install), so the numbers are those of an
installed package. Target: ``import redgov`` <= 1.3x ``import redis`` (redgov
imports redis; the async side, the configuration DSL (YAML), the embedded server
manager and the SQL copy are loaded on first use). The second table lists the
redgov modules by their own import time (median). Exit status 0 even when the
target is missed: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks._util`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import environment, format_report, positive_int, report_dict, row, table_dict

__all__ = ["main", "run"]

_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$")


def _sample(module: str) -> tuple[int, dict[str, int]]:
    """(cumulative µs of ``module``, own µs of each redgov module) from one fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                          text=True, env=env, timeout=60, check=True)
    total, own = 0, {}
    for line in done.stderr.splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        self_us, cumulative_us, _indent, name = found.groups()
        if name == module:
            total = int(cumulative_us)
        if name.startswith("redgov"):
            own[name] = int(self_us)
    return total, own


def run(n: int) -> dict[str, object]:
    """Alternate ``n`` samples of each import; the report as a dict."""
    import compileall

    import redgov

    compileall.compile_dir(str(Path(redgov.__file__).parent), quiet=1)  # as an installed wheel has it
    for module in ("redis", "redgov"):  # warm the file cache
        _sample(module)
    redis_us: list[int] = []
    redgov_us: list[int] = []
    own: dict[str, list[int]] = defaultdict(list)
    for _ in range(n):
        redis_us.append(_sample("redis")[0] * 1000)
        total, parts = _sample("redgov")
        redgov_us.append(total * 1000)
        for name, value in parts.items():
            own[name].append(value)
    rows = [row("import redgov", redgov_us, "import redis", redis_us, target=1.3)]
    heaviest = sorted(((statistics.median(v), k) for k, v in own.items()), reverse=True)[:8]
    modules = table_dict("redgov modules by own import time (median µs)", ("module", "own µs"),
                         [(name, f"{us:.0f}") for us, name in heaviest], numeric=(1,))
    unloaded = [m for m in ("redgov.aio", "redgov.config", "redgov.embedded", "redgov.sql", "yaml", "sqlalchemy")
                if m not in own and not any(k.startswith(m + ".") for k in own)]
    notes = [f"not loaded by `import redgov`: {', '.join(unloaded)}"]
    return report_dict("import time (µs columns are per import, fresh interpreter each)",
                       environment(samples=n), rows, tables=[modules], notes=notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/imports.py", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=15, help="samples of each import (default 15)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    print(format_report(run(args.n), as_json=args.json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
