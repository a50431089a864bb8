"""Plain records passed between stages (no Beam, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Pair:
    """One input row: an image and its web text, with where it came from."""

    key: str
    source_file: str
    source_row: int
    image: bytes | None
    text: str | None
    status: str | None = None  # img2dataset download status, None when the input has none
    error: str | None = None  # img2dataset error_message for failed downloads
    extra: dict[str, Any] = field(default_factory=dict)  # passthrough columns
