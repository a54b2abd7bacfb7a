"""Jinja filters that show hidden and look-alike characters on the pages instead of applying them.

A name or a reason holding U+202E RIGHT-TO-LEFT OVERRIDE reads reversed, a zero-width space
makes two rows look identical, U+2010 HYPHEN passes for ``-``. The pages pass every name and
every piece of free text through one of these filters, so such characters are seen, never
obeyed. Each returns ``Markup`` of escaped text (autoescaping stays on; ``Markup`` given to a
filter is HTML already built and comes back unchanged):

- ``visible`` (free text: reasons, descriptions, summaries, messages): a hidden character, i.e.
  a control character other than tab, newline and carriage return, a format character (Cf:
  bidirectional controls, zero-width characters, the soft hyphen...), U+2028, U+2029, a lone
  surrogate, or a default-ignorable letter or mark that draws nothing (Hangul fillers,
  U+034F...), becomes a token ``<span class="invisible-char" title="U+202E RIGHT-TO-LEFT
  OVERRIDE">⟨U+202E⟩</span>``. Variation selectors, spaces other than U+0020, private-use and
  unassigned code points stay: in prose they are ordinary (an emoji's U+FE0F, a no-break
  space, an emoji newer than this Python's Unicode tables).
- ``visible_name`` (experiments, tenants, environments, users, actors, approvers, policies):
  every character ``check_name`` refuses (names stored before it refused them) becomes a
  token, and a look-alike is wrapped in ``<mark class="lookalike-char" title="...">``: a
  non-ASCII dash (U+2010 HYPHEN...), a character NFKC folds to another (fullwidth letters,
  ligatures, U+2024 ONE DOT LEADER), punctuation that passes for ASCII (U+2212 MINUS SIGN,
  U+2215 DIVISION SLASH, U+02BC, quotes, U+0589...), a base letter with a combining mark
  that has a precomposed form (``e`` + U+0301 beside ``é``), and, in a name mixing Latin,
  Greek, Cyrillic, Armenian or Cherokee letters, those not of its main script (Cyrillic
  ``а`` in ``pаypal``). ``é``, ``客户``, whole-Cyrillic names and emoji are shown as they are.
- ``visible_text``: the tokens of ``visible_name`` as plain text (``⟨U+202E⟩``), for places
  that hold no markup (``<title>``, ``<option>``).

Text of printable ASCII costs one regex search; a name is worked out once (a small cache).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

from jinja2 import Environment
from markupsafe import Markup, escape

from ..validate import describe_char, hidden_char

__all__ = ["register", "visible", "visible_name", "visible_text"]

#: what may need a second look: in text anything but printable ASCII, tab, newline and carriage
#: return; in names anything but printable ASCII
_SUSPECT = re.compile("[^\t\n\r\x20-\x7e]")
_NAME_SUSPECT = re.compile("[^\x20-\x7e]")
#: default-ignorable code points outside Cf that draw nothing, and U+2800 (the variation selectors aside)
_DRAW_NOTHING = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")
#: punctuation and marks that pass for ASCII and that NFKC leaves alone: character -> the one it resembles
_PASSES_FOR = {
    "\u2212": "-", "\u2043": "-", "\u02d7": "-", "\u2796": "-", "\u2e3a": "-", "\u2e3b": "-",
    "\u00b7": ".", "\u2027": ".", "\u2219": ".", "\u22c5": ".", "\u0660": ".", "\u06f0": ".", "\u05c5": ".",
    "\u0589": ":", "\u05c3": ":", "\u0703": ":", "\u0704": ":", "\u16ec": ":", "\u2236": ":", "\ua789": ":",
    "\u2215": "/", "\u2044": "/", "\u29f8": "/", "\u2571": "/", "\u27cb": "/", "\u3033": "/",
    "\u2216": "\\", "\u29f5": "\\", "\u29f9": "\\", "\u2572": "\\", "\u27cd": "\\",
    "\u02bc": "'", "\u02b9": "'", "\u02c8": "'", "\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'",
    "\u05f3": "'", "\u00b4": "'", "\u201c": '"', "\u201d": '"', "\u201f": '"', "\u2033": '"', "\u05f4": '"',
    "\u01c0": "|", "\u05c0": "|", "\u2223": "|", "\u2502": "|", "\u23d0": "|", "\u01c3": "!", "\u2d51": "!",
    "\u02cd": "_", "\u2017": "_", "\u0131": "i", "\u0269": "i", "\u03b9": "i",
}
#: scripts whose letters pass for one another's
_LOOKALIKE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE")


def _hidden_in_text(char: str) -> bool:
    category = unicodedata.category(char)
    if category == "Cc":
        return char not in "\t\n\r"
    return category in ("Cf", "Zl", "Zp", "Cs") or char in _DRAW_NOTHING


def _hidden_in_name(char: str) -> bool:
    """The rule of ``check_name`` (one place: ``redgov.validate``)."""
    return hidden_char(char) is not None


def _token(char: str) -> str:
    return f'<span class="invisible-char" title="{escape(describe_char(char))}">\u27e8U+{ord(char):04X}\u27e9</span>'


def _mark(shown: str, title: str) -> str:
    return f'<mark class="lookalike-char" title="{escape(title)}">{escape(shown)}</mark>'


def _text(value: Any) -> str | None:
    """The text a filter works on, or None for Markup (already HTML: returned as it is)."""
    if isinstance(value, Markup):
        return None
    return "" if value is None else str(value)


def visible(value: Any) -> Markup:
    """Free text as escaped HTML, each hidden character replaced by a visible token (see the module)."""
    text = _text(value)
    if text is None:
        return value  # type: ignore[no-any-return]
    html = str(escape(text))
    if _SUSPECT.search(html) is None:
        return Markup(html)
    return Markup(_SUSPECT.sub(lambda m: _token(m[0]) if _hidden_in_text(m[0]) else m[0], html))


def _script(char: str) -> str | None:
    """LATIN, CYRILLIC, GREEK, ARMENIAN or CHEROKEE for a letter of one of them, else None."""
    if not char.isalpha():
        return None
    if char.isascii():
        return "LATIN"
    word = unicodedata.name(char, "").partition(" ")[0]
    return word if word in _LOOKALIKE_SCRIPTS else None


def _main_script(text: str) -> str | None:
    """The script most letters of ``text`` are in, when they mix look-alike scripts (Latin wins a tie)."""
    counts: dict[str, int] = {}
    for char in text:
        script = _script(char)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    if len(counts) < 2:
        return None
    return max(counts, key=lambda s: (counts[s], s == "LATIN"))


def _resembles(char: str) -> str | None:
    """The character ``char`` passes for, when it is a look-alike on its own."""
    known = _PASSES_FOR.get(char)
    if known is not None:
        return known
    if unicodedata.category(char) == "Pd":
        return "-"
    folded = unicodedata.normalize("NFKC", char)
    return folded if folded != char else None


@functools.lru_cache(maxsize=1024)
def _name_html(text: str) -> str:
    """A name with non-ASCII characters as HTML: hidden characters as tokens, look-alikes marked, the
    rest escaped (kept: a page shows the same names again and again)."""
    main = _main_script(text)
    out: list[str] = []
    index, end = 0, len(text)
    while index < end:
        char = text[index]
        index += 1
        following = text[index] if index < end else ""
        if following > "\x7f" and unicodedata.combining(following):
            composed = unicodedata.normalize("NFC", char + following)
            if len(composed) == 1:  # e + U+0301 beside é
                out.append(_mark(char + following, f"{describe_char(char)} + {describe_char(following)}, "
                                                   f"not {describe_char(composed)}"))
                index += 1
                continue
        if char.isascii() and char.isprintable():
            out.append(str(escape(char)))
        elif _hidden_in_name(char):
            out.append(_token(char))
        elif (resembles := _resembles(char)) is not None:
            like = describe_char(resembles) if len(resembles) == 1 else repr(resembles)
            out.append(_mark(char, f"{describe_char(char)}, looks like {like}"))
        elif main is not None and _script(char) not in (None, main):
            out.append(_mark(char, f"{describe_char(char)} in a {main.title()} name"))
        else:
            out.append(str(escape(char)))
    return "".join(out)


def visible_name(value: Any) -> Markup:
    """A name as escaped HTML: hidden characters as tokens, look-alikes marked (see the module)."""
    text = _text(value)
    if text is None:
        return value  # type: ignore[no-any-return]
    if _NAME_SUSPECT.search(text) is None:
        return escape(text)
    return Markup(_name_html(text))


def visible_text(value: Any) -> str:
    """A name as plain text, each hidden character written ``⟨U+202E⟩`` (autoescape escapes the rest)."""
    text = "" if value is None else str(value)
    if _NAME_SUSPECT.search(text) is None:
        return text
    return "".join(f"\u27e8U+{ord(c):04X}\u27e9" if _hidden_in_name(c) else c for c in text)


def register(env: Environment) -> None:
    """Add the filters ``visible``, ``visible_name`` and ``visible_text`` to ``env``."""
    env.filters.update(visible=visible, visible_name=visible_name, visible_text=visible_text)
