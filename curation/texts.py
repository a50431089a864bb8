"""Web texts as they are stored and as the models see them."""

from __future__ import annotations


def decode_utf8(raw: bytes) -> tuple[str, bool]:
    """``raw`` as text, bytes that are not valid UTF-8 replaced by U+FFFD; and whether any were."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True
