"""Plain records passed between stages (no Beam, no torch). Records are immutable: a stage
that changes one builds a new one (``dataclasses.replace``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curation.reasons import DuplicateKind, Reason


@dataclass(frozen=True)
class Pair:
    """One input row: an image and its web text, with where it came from."""

    key: str
    source_file: str
    source_row: int
    image: bytes | None
    text: str | None
    status: str | None = None  # img2dataset download status, None when the input has none
    error: str | None = None  # img2dataset error_message for failed downloads
    extra: dict[str, Any] = field(default_factory=dict)  # passthrough columns (output names)
    text_repaired: bool = False  # invalid UTF-8 in the text was replaced
    image_issue: tuple[Reason, str] | None = None  # why an image file named by path was refused
    key_note: str | None = None  # the key was derived or repaired: said in the decision's detail
    passthrough_note: str | None = None  # a passthrough value could not be kept: said there too

    @property
    def uid(self) -> str:
        """Unique per input row (``<source_file>:<row>``), unlike user keys."""
        return f"{self.source_file}:{self.source_row}"


@dataclass(frozen=True)
class HashedPair:
    """A pair whose image decoded cleanly, with the hashes copy grouping needs; the image
    bytes are left behind (read again for the one image of a group that is kept)."""

    pair: Pair
    sha256: str
    phash: int
    width: int
    height: int

    @property
    def uid(self) -> str:
        return self.pair.uid


@dataclass(frozen=True)
class Member:
    """A pair of an image group and how its image relates to the group's image."""

    hashed: HashedPair
    kind: DuplicateKind | None  # None for the representative, else EXACT or PERCEPTUAL
    similarity: float


@dataclass(frozen=True)
class ImageGroup:
    """One unique image (its representative pair) with every pair whose image copies it.

    ``texts`` are the distinct non-empty web texts of all members, in member order, each
    scored once against the image. ``image`` holds the representative's bytes once they
    are read back for the models (None before).
    """

    rep: HashedPair
    members: tuple[Member, ...]
    texts: tuple[str, ...]
    image: bytes | None = None

    @property
    def key(self) -> str:
        return self.rep.pair.key


@dataclass(frozen=True)
class GroupScores:
    """Model outputs for one image group: captions and the ITM/ITC score of every text."""

    captions: tuple[str, ...]
    text_itm: tuple[float, ...]  # aligned with ImageGroup.texts
    text_itc: tuple[float, ...]
    caption_itm: tuple[float, ...]  # aligned with captions
    caption_itc: tuple[float, ...]
    embedding: tuple[float, ...]  # L2-normalised image embedding
