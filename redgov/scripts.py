"""Finds ``lua/*.lua``, inlines ``-- @include lib/<name>.lua`` and parses headers.

Each script opens with a ``--[[ name: summary`` header listing ``KEYS[n]``
and ``ARGV[n]`` lines: ``KEYS[n]`` one key, ``KEYS[a..b]`` a fixed range of keys
and ``KEYS[n..]`` a variadic tail; the fixed ones, numbered 1..n without gaps,
are the script's key count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["ScriptSpec", "load_scripts", "lua_root"]

_INCLUDE = re.compile(r"^-- @include (lib/[a-z_]+\.lua)\s*$", re.MULTILINE)
_HEADER = re.compile(r"\A--\[\[ ([a-z_]+): (.*?)\n(.*?)\]\]", re.DOTALL)
_KEY_LINE = re.compile(r"^KEYS\[(\d+)(?:(\.\.)(\d+)?)?\]", re.MULTILINE)
_ARG_LINE = re.compile(r"^ARGV\[(\d+)(\.\.)?\]", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class ScriptSpec:
    name: str
    summary: str
    text: str
    nkeys: int  # fixed keys
    variadic: bool  # accepts more keys after the fixed ones
    nargs: int  # fixed arguments
    variadic_args: bool = False

    def check_keys(self, count: int) -> None:
        if count < self.nkeys or (count > self.nkeys and not self.variadic):
            raise AssertionError(f"{self.name}.lua takes {self.nkeys} keys, got {count}")


def lua_root() -> Traversable:
    """The installed ``redgov/lua`` folder, else ``<repo>/lua`` (editable installs)."""
    packaged = resources.files("redgov") / "lua"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "lua"


def _parse(name: str, source: str, root: Traversable) -> ScriptSpec:
    header = _HEADER.match(source)
    if header is None:
        raise ValueError(f"lua/{name}.lua has no '--[[ {name}: ...' header")
    if header.group(1) != name:
        raise ValueError(f"lua/{name}.lua header names {header.group(1)!r}")
    body = header.group(3)
    fixed: list[int] = []
    variadic = False
    key_numbers = []
    for m in _KEY_LINE.finditer(body):
        first = int(m.group(1))
        key_numbers.append(first)
        if m.group(2) and m.group(3) is None:
            variadic = True
        else:
            fixed.extend(range(first, int(m.group(3) or first) + 1))
    if fixed != list(range(1, len(fixed) + 1)):
        raise ValueError(f"lua/{name}.lua header KEYS are not numbered 1..n: {key_numbers}")
    arg_numbers = [int(m.group(1)) for m in _ARG_LINE.finditer(body)]
    if arg_numbers != list(range(1, len(arg_numbers) + 1)):
        raise ValueError(f"lua/{name}.lua header ARGV are not numbered 1..n: {arg_numbers}")

    included: set[str] = set()

    def inline(match: re.Match[str]) -> str:
        path = match.group(1)
        if path in included:
            return f"-- (already included: {path})"
        included.add(path)
        helper = root.joinpath(*path.split("/")).read_text(encoding="utf-8")
        if _INCLUDE.search(helper):
            raise ValueError(f"{path} includes another file; helpers are one level deep")
        return helper

    text = _INCLUDE.sub(inline, source)
    return ScriptSpec(
        name=name,
        summary=header.group(2).strip(),
        text=text,
        nkeys=len(fixed),
        variadic=variadic,
        nargs=len(arg_numbers),
        variadic_args=any(m.group(2) for m in _ARG_LINE.finditer(body)),
    )


@cache
def load_scripts() -> dict[str, ScriptSpec]:
    """Every script in ``lua/``, by name; parsed once per process."""
    root = lua_root()
    specs: dict[str, ScriptSpec] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_file() and entry.name.endswith(".lua"):
            name = entry.name[:-4]
            specs[name] = _parse(name, entry.read_text(encoding="utf-8"), root)
    if not specs:
        raise RuntimeError(f"no Lua scripts found under {root}")
    return specs
