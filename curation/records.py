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


@dataclass
class HashedPair:
    """A pair whose image decoded cleanly, with the hashes copy grouping needs."""

    uid: str  # unique per input row ("<source_file>:<row>"), unlike user keys
    pair: Pair
    sha256: str
    phash: int
    width: int
    height: int


@dataclass
class Member:
    """A pair of an image group and how its image relates to the group's image."""

    hashed: HashedPair
    kind: str  # "self" for the representative, else "exact" | "perceptual"
    similarity: float


@dataclass
class ImageGroup:
    """One unique image (its representative pair) with every pair whose image copies it.

    Only the representative keeps its image bytes; ``texts`` are the distinct non-empty web
    texts of all members, in member order, each scored once against the image.
    """

    rep: HashedPair
    members: list[Member]
    texts: list[str]

    @property
    def key(self) -> str:
        return self.rep.pair.key


@dataclass
class GroupScores:
    """Model outputs for one image group: captions and the ITM/ITC score of every text."""

    captions: list[str]
    text_itm: list[float]  # aligned with ImageGroup.texts
    text_itc: list[float]
    caption_itm: list[float]  # aligned with captions
    caption_itc: list[float]
    embedding: list[float]  # L2-normalised image embedding
