"""The words of configuration errors: what a type expects, how a value is shown, did-you-mean, and the
collector that turns every problem found into one ConfigError."""

from __future__ import annotations

import difflib
from typing import Any

import msgspec.inspect as mi

from ..errors import ConfigError

__all__ = ["MAX_SHOWN", "Problems", "choices", "describe", "not_one_of", "prefixed", "show", "suggest"]

#: the problems one ConfigError message lists (the rest are counted; ``errors`` has them all)
MAX_SHOWN = 20


def prefixed(where: str, message: str) -> str:
    """``message`` after the file name ``where`` (when there is one)."""
    return f"{where}: {message}" if where else message


class Problems:
    """The problems found in one configuration, in the order found, at most one per path."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._paths: set[str] = set()

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, path: str, text: str) -> None:
        """Record ``path: text`` unless a problem was already recorded at that path."""
        if path not in self._paths:
            self._paths.add(path)
            self.lines.append(f"{path}: {text}")

    def error(self, where: str = "") -> ConfigError:
        """One ConfigError listing the problems (the first MAX_SHOWN, then how many more)."""
        lines = self.lines
        if len(lines) == 1:
            return ConfigError(prefixed(where, lines[0]), errors=lines)
        shown = [f"  {line}" for line in lines[:MAX_SHOWN]]
        if len(lines) > MAX_SHOWN:
            shown.append(f"  and {len(lines) - MAX_SHOWN} more")
        return ConfigError(prefixed(where, f"{len(lines)} configuration errors:\n" + "\n".join(shown)), errors=lines)

    def raise_if_any(self, where: str = "") -> None:
        """Raise ``error(where)`` when a problem was recorded."""
        if self.lines:
            raise self.error(where)


def _strip(kind: Any) -> Any:
    """Through Metadata and Optional."""
    while True:
        if isinstance(kind, mi.Metadata):
            kind = kind.type
            continue
        if isinstance(kind, mi.UnionType):
            options = [t for t in kind.types if not isinstance(t, mi.NoneType)]
            if len(options) == 1:
                kind = options[0]
                continue
        return kind


def choices(kind: Any) -> list[str]:
    """The values an enum (or the tags a tagged union) accepts; [] for other types."""
    kind = _strip(kind)
    if isinstance(kind, mi.EnumType):
        return [str(member.value) for member in kind.cls]
    if isinstance(kind, mi.UnionType):
        return [str(t.tag) for t in kind.types if isinstance(t, mi.StructType) and t.tag is not None]
    return []


def describe(kind: Any) -> str:
    """What a value of type ``kind`` (a msgspec.inspect type) must be, in words: "a number from 0 to 1"."""
    if isinstance(kind, mi.UnionType):
        options = [t for t in kind.types if not isinstance(t, mi.NoneType)]
        kind = options[0] if len(options) == 1 else kind
        if isinstance(kind, mi.UnionType):  # scalars side by side: the option that explains itself, or all
            told = [str(t.extra["expected"]) for t in options
                    if isinstance(t, mi.Metadata) and t.extra and "expected" in t.extra]
            if told:
                return told[0]
            if not any(isinstance(t, mi.StructType) for t in options):
                return " or ".join(describe(t) for t in options)
    if isinstance(kind, mi.Metadata) and kind.extra and "expected" in kind.extra:
        return str(kind.extra["expected"])
    accepted = choices(kind)
    if accepted:
        return "one of " + ", ".join(accepted)
    kind = _strip(kind)
    if isinstance(kind, mi.BoolType):
        return "true or false"
    if isinstance(kind, mi.FloatType | mi.IntType):
        if kind.ge is not None and kind.le is not None:
            return f"a number from {kind.ge:g} to {kind.le:g}"
        return "a number"
    if isinstance(kind, mi.StrType):
        return "a non-empty string" if kind.min_length else "a string"
    if isinstance(kind, mi.ListType | mi.VarTupleType):
        return "a list"
    if isinstance(kind, mi.StructType | mi.DictType | mi.UnionType):
        return "a mapping"
    return "a valid value"


def show(value: object) -> str:
    """A value as the error shows it: YAML words for true/false/null, repr otherwise, long ones summarized."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        if isinstance(value, dict):
            return "a mapping"
        if isinstance(value, list):
            return f"a list of {len(value)} items"
        return text[:57] + "..."
    return text


def suggest(word: str, accepted: list[str]) -> str | None:
    """The accepted word closest to ``word`` (difflib, or the same word in another case), or None."""
    close = difflib.get_close_matches(word, accepted, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in accepted}
        return lowered.get(word.lower())
    return close[0]


def not_one_of(word: str, accepted: list[str]) -> str:
    """``'manul' is not one of automatic, manual, roleBased; did you mean 'manual'?``"""
    hint = suggest(word, accepted)
    return f"{word!r} is not one of {', '.join(accepted)}" + (f"; did you mean {hint!r}?" if hint else "")
