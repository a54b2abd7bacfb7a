"""Input validation: every value a caller passes is checked here before anything is sent.

Each check names the field and the value it refuses (``ValidationError``, a
``RedgovError`` and a ``ValueError``). Nothing in this module performs I/O.

Names (``check_name``: experiments, tenants, environments, users, actors, approvers,
owners, idempotency keys, transition ids, policy names and kinds, telemetry keys) are
identifiers people read and compare on screens, so a name may hold only characters that
show as themselves. Refused, with the character (``U+XXXX NAME``), its 0-based index and
the field in the message (``hidden_char`` finds it):

- control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F);
- format characters (Cf): the bidirectional controls U+061C, U+200E, U+200F,
  U+202A-U+202E, U+2066-U+2069, the zero-width U+200B-U+200D, U+2060, U+FEFF, the soft
  hyphen U+00AD, tag characters, and the rest of Cf;
- the other default-ignorable code points, which render as nothing although Unicode
  files them as marks or letters: U+034F COMBINING GRAPHEME JOINER, the Hangul fillers
  U+115F, U+1160, U+3164, U+FFA0, U+17B4, U+17B5, the variation selectors U+180B-U+180F,
  U+FE00-U+FE0F, U+E0100-U+E01EF, and U+2800 BRAILLE PATTERN BLANK. So emoji pass, but
  not those spelled with a zero-width joiner or U+FE0F (e.g. a family, a red heart
  with its emoji selector): each sequence would have invisible twins;
- separators other than U+0020 SPACE: U+00A0, U+3000 and the other Zs spaces (each
  looks like a space), U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR;
- private-use characters (Co: whatever a font draws), unassigned code points (Cn, in
  the Unicode version of this Python, noncharacters included) and lone surrogates (Cs).

Not refused: visible characters that resemble others (U+2010 HYPHEN or U+2013 EN DASH
for ``-``, Cyrillic ``а`` for Latin ``a``, fullwidth letters, ``é`` written as ``e`` and
a combining accent): they are legitimate in names, and no fixed list tells a look-alike
from a letter of someone's language. The web pages mark them instead
(``redgov.web.visible``). Free text (reasons, descriptions, metadata) is stored as given.
ASCII names cost one ``str.isprintable`` pass (as before); others one more regex search.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .errors import ValidationError
from .records import LifecycleState

__all__ = ["MAX_DEPTH", "MAX_NAME_LENGTH", "check_data", "check_name", "check_scope_part", "check_state",
           "check_version_number", "describe_char", "hidden_char"]

#: Longest experiment name, tenant, environment, policy, actor or id (characters).
MAX_NAME_LENGTH = 1024
#: Deepest nesting of metadata and configurations.
MAX_DEPTH = 64
_STATE_NAMES = ", ".join(s.value for s in LifecycleState)
#: names that passed check_name (bounded; a set lookup is cheaper than checking again)
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 8192

#: The characters refused in names that ``str.isprintable`` accepts: the default-ignorable code
#: points outside Cf (they render as nothing) and U+2800 BRAILLE PATTERN BLANK. ``isprintable``
#: refuses every Cc, Cf, Cs, Co, Cn, Zl, Zp character and every Zs but U+0020, in C.
_INVISIBLE_PRINTABLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164"
                                  "\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_KIND_OF_CATEGORY = {"Cc": "a control character", "Cf": "an invisible format character",
                     "Cs": "a lone surrogate, not valid Unicode text", "Co": "a private-use character",
                     "Cn": "a code point unassigned in Unicode " + unicodedata.unidata_version,
                     "Zs": "a space other than U+0020", "Zl": "a line separator", "Zp": "a paragraph separator"}
_UNNAMED = {"Cc": "<control>", "Cs": "<surrogate>", "Co": "<private use>", "Cn": "<unassigned>"}


def describe_char(char: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``: a character's code point and Unicode name (for the
    unnamed ones ``<control>``, ``<private use>``, ``<unassigned>`` or ``<surrogate>``)."""
    name = unicodedata.name(char, None) or _UNNAMED.get(unicodedata.category(char), "<unnamed>")
    return f"U+{ord(char):04X} {name}"


def _hidden_kind(char: str) -> str:
    if char in _BIDI_CONTROLS:
        return "a bidirectional control"
    if char == "\u2800":
        return "a blank character"
    return _KIND_OF_CATEGORY.get(unicodedata.category(char), "an invisible character")


def hidden_char(value: str) -> int | None:
    """The index of the first character ``check_name`` refuses in ``value`` (see the module), or None."""
    if value.isprintable() and (value.isascii() or _INVISIBLE_PRINTABLE.search(value) is None):
        return None
    for index, char in enumerate(value):  # only for a name being refused
        if not char.isprintable() or _INVISIBLE_PRINTABLE.match(char):
            return index
    return None  # pragma: no cover - one of the two tests above found a character


def check_etag(value: object, what: str = "expected_etag") -> str | None:
    """``value`` when it is None or a non-empty string (an etag to compare with), else ValidationError."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ValidationError(f"{what} must be a non-empty string or None, got {value!r}")
    return value


def check_name(value: object, what: str) -> str:
    """A non-empty, non-blank name of at most MAX_NAME_LENGTH characters, every one of them visible:
    no control, bidirectional, zero-width, format or other invisible character, no space but
    U+0020, no private-use or unassigned code point (the module says which and why)."""
    if value.__class__ is str and value in _GOOD_NAMES:  # names in use are checked once per process
        return value  # type: ignore[return-value, unused-ignore]
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value or value.isspace():
        raise ValidationError(f"{what} must not be empty or blank, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not value.isprintable() or (not value.isascii() and _INVISIBLE_PRINTABLE.search(value) is not None):
        index = hidden_char(value)
        assert index is not None
        char = value[index]
        raise ValidationError(f"{what} {value!r} contains {describe_char(char)} ({_hidden_kind(char)}) at index "
                              f"{index}; a name may hold no control, bidirectional, invisible or format characters, "
                              "no spaces but U+0020, no private-use or unassigned code points")
    if len(_GOOD_NAMES) >= _GOOD_NAMES_MAX:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(value)
    return value


def check_scope_part(value: object, what: str) -> str | None:
    """A tenant or environment: None, or a name (the empty string is a name distinct from None)."""
    if value is None or value == "":
        return value
    return check_name(value, what)


def check_state(value: object, what: str = "state") -> LifecycleState:
    if value.__class__ is LifecycleState:
        return value  # type: ignore[return-value, unused-ignore]
    try:
        return LifecycleState(value if isinstance(value, str) else repr(value))
    except ValueError:
        raise ValidationError(f"{what} {value!r} is not one of {_STATE_NAMES}") from None


def check_data(value: object, what: str) -> dict[str, Any]:
    """A metadata or configuration mapping that JSON round-trips exactly.

    Keys must be strings; values None, bool, int, finite float, str, lists and
    mappings of them (also datetimes, which are stored as ISO strings), nested
    at most MAX_DEPTH levels. NaN, infinities, sets, bytes and other objects are
    refused with the path of the offending value.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"{what} must be a mapping, got {type(value).__name__} {value!r}")
    _walk(value, what, 1)
    return dict(value)


def _walk(value: object, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValidationError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{path}: keys must be strings, got {type(key).__name__} {key!r}")
            if isinstance(item, (Mapping, list, tuple)) or not isinstance(item, (str, int, bool)) or item is None:
                _walk(item, f"{path}.{key}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", depth + 1)
        return
    if value is None or isinstance(value, (str, bool, int, datetime)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{path}: {value!r} is not a finite number (JSON has no NaN or infinity)")
        return
    raise ValidationError(f"{path}: a {type(value).__name__} ({value!r}) cannot be stored; use strings, numbers, "
                          "booleans, null, lists and mappings")


def check_version_number(value: object, what: str) -> int:
    """A version number: an integer from 1 to 2**53 - 1 (sorted-set scores are exact up to there)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**53 - 1:
        raise ValidationError(f"{what} must be an integer from 1 to 2**53 - 1, got {value!r}")
    return value
