"""The closed vocabulary of decision reasons, defined once for every stage and table."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a pair (or a candidate text) was kept or dropped."""

    KEPT = "kept"  # ITM probability >= threshold and not a duplicate
    DOWNLOAD_FAILED = "download_failed"  # input row says the download failed (img2dataset status)
    MISSING_IMAGE = "missing_image"  # the image cell is null or empty
    UNDECODABLE = "undecodable"  # bytes are not an image the decoder can read
    TRUNCATED = "truncated"  # the image file ends early
    TOO_SMALL = "too_small"  # below the minimum side length
    TOO_LARGE = "too_large"  # above the pixel budget (decompression-bomb guard)
    EMPTY_TEXT = "empty_text"  # the web text is null or blank after normalisation
    LOW_ITM = "low_itm"  # ITM match probability below the threshold
    DUPLICATE = "duplicate"  # the image (or the identical pair) duplicates another one

    def __str__(self) -> str:
        return self.value


#: Reasons that reject an input row before any model sees it.
PRE_MODEL_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.DOWNLOAD_FAILED,
        Reason.MISSING_IMAGE,
        Reason.UNDECODABLE,
        Reason.TRUNCATED,
        Reason.TOO_SMALL,
        Reason.TOO_LARGE,
    }
)

ALL_REASONS: tuple[str, ...] = tuple(r.value for r in Reason)
