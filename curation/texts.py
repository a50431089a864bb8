"""Web texts: what is stored as it came, and the cleaned, bounded text the models see.

One rule for every web text:

- **Stored** (``decisions/``, ``clean/``): the text as it came. Parquet strings are UTF-8, so
  only what UTF-8 cannot carry is replaced, each by U+FFFD: every invalid byte sequence of a
  text given as bytes (one U+FFFD per maximal invalid subsequence, Python's ``"replace"``
  decoding) and every lone surrogate of a Python string (a surrogate pair split into two code
  points is joined into its character). NUL, control characters and long texts are stored
  unchanged.
- **For the models**: from the stored text, control characters (Unicode category Cc, NUL
  included; tab and line breaks count as whitespace), format characters (Cf: zero-width spaces
  and joiners, bidirectional marks, byte order marks), surrogates (Cs) and U+FFFD are removed;
  every run of whitespace becomes one space and the ends are stripped; the result is cut to
  ``max_chars`` characters (default :data:`DEFAULT_MAX_CHARS`). A text that is empty after
  this counts as empty.
- **Note**: what the cleaning changed beyond whitespace, for the decision's detail, e.g.
  ``"2 control or invisible characters removed; 1 invalid character (U+FFFD) removed; text
  cut to 2048 of 150000 characters for the models"``; empty when nothing else changed.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# More than BLIP's text encoder can read (512 positions; a wordpiece of ordinary text averages
# about 4 characters) and than the scorer keeps (35 tokens by default).
DEFAULT_MAX_CHARS = 2048
REPLACEMENT = "\ufffd"
_REMOVED_CATEGORIES = ("Cc", "Cf", "Cs")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class ModelText:
    """The text the captioner and filter see, and what cleaning changed (empty: nothing)."""

    text: str
    note: str


def stored_text(raw: str | bytes | None) -> str | None:
    """The text to store: ``raw`` unchanged but for what UTF-8 cannot carry (see module)."""
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw).decode("utf-8", "replace")
    if _SURROGATE.search(raw) is None:
        return raw
    return raw.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def model_text(text: str | None, max_chars: int = DEFAULT_MAX_CHARS) -> ModelText:
    """The cleaned text the models see, at most ``max_chars`` characters, and its note."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if not text:
        return ModelText("", "")
    notes = []
    if not text.isprintable() or REPLACEMENT in text:
        replaced = text.count(REPLACEMENT)
        text, removed = _removed().subn("", text)
        if removed > replaced:
            notes.append(_count(removed - replaced, "control or invisible character") + " removed")
        if replaced:
            notes.append(_count(replaced, "invalid character (U+FFFD)") + " removed")
    cleaned = " ".join(text.split())
    if len(cleaned) > max_chars:
        notes.append(f"text cut to {max_chars} of {len(cleaned)} characters for the models")
        cleaned = cleaned[:max_chars].rstrip()
    return ModelText(cleaned, "; ".join(notes))


def empty_detail(text: str | None) -> str:
    """Why a web text leaves the models nothing (the detail of ``empty_text``)."""
    if text is None:
        return "no text (null)"
    if not text.strip():
        return "blank text" if text else "empty text"
    return f"nothing left for the models: {model_text(text).note}"


@functools.cache
def _removed() -> re.Pattern[str]:
    """Characters removed for the models: Cc, Cf and Cs except whitespace, and U+FFFD."""
    ranges: list[str] = []
    start = previous = -2
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if code == 0xFFFD or (
            unicodedata.category(char) in _REMOVED_CATEGORIES and not char.isspace()
        ):
            if code != previous + 1:
                if start >= 0:
                    ranges.append(_span(start, previous))
                start = code
            previous = code
    ranges.append(_span(start, previous))
    return re.compile("[" + "".join(ranges) + "]")


def listing(names: Iterable[str], shown: int = 3) -> str:
    """The first ``shown`` names, each :func:`printable`, and the count of the rest:
    ``"a, b and 3 more"``."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(printable(name, 100) for name in names[:shown]) + more


def printable(value: object, max_chars: int = 300) -> str:
    """``value`` as one line that is safe to print on a terminal: every character Python does
    not call printable (controls such as ESC, line breaks, bidirectional overrides and other
    format characters, surrogates) escaped as ``\\x1b``, ``\\n``, ``\\u202e``; cut to
    ``max_chars`` characters with the count of the rest."""
    text = str(value)
    cut = len(text) - max_chars
    if cut > 0:
        text = text[:max_chars]
    if not text.isprintable():
        text = "".join(
            char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
            for char in text
        )
    return text + (f"... ({cut} more characters)" if cut > 0 else "")


def _count(number: int, thing: str) -> str:
    if number == 1:
        return f"1 {thing}"
    head, _, tail = thing.partition(" (")
    return f"{number} {head}s" + (f" ({tail}" if tail else "")


def _span(first: int, last: int) -> str:
    return f"\\U{first:08x}" if first == last else f"\\U{first:08x}-\\U{last:08x}"
