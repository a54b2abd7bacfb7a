"""What the command line prints: JSON objects, or aligned tables and lines for people.

With ``--json`` every outcome is one JSON object on stdout (``emit``), an error too
(``error``: then nothing on stderr, so a script reads one place; warnings still go to stderr).
Records carry every field, those at their default too (``records.to_builtins``), so a record
has one shape wherever it appears (``state``, ``create``, ``list``, ``wait``, ``replay``).
Otherwise text goes to stdout, errors to stderr; colour is used only
when that stream is a terminal and ``NO_COLOR`` is unset or empty (no-color.org)
and ``TERM`` is not ``dumb``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

import msgspec

from ..records import ExperimentState, LifecycleState, to_builtins

__all__ = ["Output", "plain", "short", "state_line", "use_color", "when"]

RESET = "\x1b[0m"
BOLD, DIM, RED, GREEN, YELLOW, BLUE, MAGENTA, CYAN = ("\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[33m",
                                                      "\x1b[34m", "\x1b[35m", "\x1b[36m")
S = LifecycleState
STATE_COLORS: dict[str, str] = {
    S.DRAFT: DIM, S.PENDING_APPROVAL: YELLOW, S.APPROVED: CYAN, S.RUNNING: GREEN, S.RAMPING: GREEN + BOLD,
    S.PAUSED: YELLOW, S.ROLLED_BACK: MAGENTA, S.REJECTED: RED, S.ARCHIVED: DIM,
}
WORD_COLORS: dict[str, str] = {"yes": GREEN, "no": RED, "ok": GREEN, "consistent": GREEN}

Styler = Callable[[str], str]


def use_color(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Colour on ``stream``: a terminal, ``NO_COLOR`` unset or empty, ``TERM`` not dumb."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", "") != "" or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def plain(value: Any) -> Any:
    """Records (every field, defaults too), enums and datetimes as JSON-ready builtins."""
    return to_builtins(value)


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="seconds")


def short(value: Any, width: int = 40) -> str:
    """A value as compact JSON, cut to ``width`` characters."""
    if value is None:
        return ""
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= width else text[:width - 3] + "..."


def state_line(state: ExperimentState, paint: Callable[[LifecycleState], str] = str) -> str:
    """``exp: State (revision r, config vN, etag e, time by who)``; ``paint`` colours the state name."""
    by = f" by {state.last_modified_by}" if state.last_modified_by else ""
    return (f"{state.experiment}: {paint(state.state)} (revision {state.revision}, config v{state.config_version}, "
            f"etag {state.etag}, {when(state.last_modified)}{by})")


class Output:
    """One command's output: JSON objects or text, with colour where a person reads a terminal."""

    def __init__(self, as_json: bool, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.as_json = as_json
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.color = not as_json and use_color(self.stdout, environ)
        self.err_color = use_color(self.stderr, environ)

    # -- writing
    def emit(self, obj: Any, text: str) -> None:
        """One outcome: ``obj`` as one JSON line with --json, else ``text``."""
        if self.as_json:
            self.stdout.write(msgspec.json.encode(plain(obj)).decode() + "\n")
        else:
            self.stdout.write(text + "\n")
        self.stdout.flush()

    def warn(self, message: str) -> None:
        self.stderr.write(self._paint(f"redgov: warning: {message}", YELLOW, self.err_color) + "\n")
        self.stderr.flush()

    def error(self, kind: str, message: str, code: int, label: str, usage: str = "") -> None:
        """An error in one place: with --json one JSON object on stdout (nothing on stderr); else one line
        (after the usage, for a usage error) on stderr, yellow for a refusal or a timed-out wait (1),
        red otherwise."""
        if self.as_json:
            self.stdout.write(msgspec.json.encode({"error": kind, "message": message, "exit": code}).decode()
                              + "\n")
            self.stdout.flush()
            return
        if usage:
            self.stderr.write(usage)
        self.stderr.write(self._paint(f"redgov: {label}: {message}", YELLOW if code == 1 else RED,
                                      self.err_color) + "\n")
        self.stderr.flush()

    # -- text helpers
    @staticmethod
    def _paint(text: str, code: str, enabled: bool) -> str:
        return f"{code}{text}{RESET}" if enabled and code and text else text

    def paint(self, text: str, code: str) -> str:
        return self._paint(text, code, self.color)

    def state(self, value: LifecycleState | str | None) -> str:
        """A state name, coloured by what it means."""
        if value is None:
            return "-"
        name = value.value if isinstance(value, LifecycleState) else str(value)
        return self.paint(name, STATE_COLORS.get(name, ""))

    def styled(self, text: str) -> str:
        """A cell coloured by its content (state names, yes/no)."""
        return self.paint(text, STATE_COLORS.get(text, WORD_COLORS.get(text, "")))

    def table(self, rows: Sequence[Sequence[Any]], header: Sequence[str],
              styles: Mapping[int, Styler] | None = None) -> str:
        """Columns padded to their widest cell, a rule under the header. ``styles[i]`` colours column i's
        cells after padding (so escape codes never change the alignment)."""
        cells = [["" if c is None else str(c) for c in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
        styles = styles or {}

        def line(row: Sequence[str], style: Callable[[int, str], str]) -> str:
            parts = [style(i, c.ljust(w) if i < len(widths) - 1 else c)
                     for i, (c, w) in enumerate(zip(row, widths, strict=False))]
            return "  ".join(parts).rstrip()

        def cell(i: int, padded: str) -> str:
            styler = styles.get(i)
            if styler is None or not self.color:
                return padded
            text = padded.rstrip()
            return styler(text) + padded[len(text):]

        lines = [line(header, lambda i, c: self.paint(c, BOLD)), "  ".join("-" * w for w in widths)]
        lines += [line(row, cell) for row in cells]
        return "\n".join(lines)
