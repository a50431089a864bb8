"""The closed vocabularies of the decision tables, defined once for every stage and table."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a pair (or a candidate text) was kept or dropped."""

    KEPT = "kept"  # ITM probability >= threshold and not a duplicate
    DOWNLOAD_FAILED = "download_failed"  # input row says the download failed (img2dataset status)
    MISSING_IMAGE = "missing_image"  # the image cell is null or empty, or its file is refused
    UNSUPPORTED_FORMAT = "unsupported_format"  # an image format outside the allow-list
    UNDECODABLE = "undecodable"  # bytes are not an image the decoder can read
    TRUNCATED = "truncated"  # the image file ends early
    TOO_SMALL = "too_small"  # below the minimum side length
    TOO_LARGE = "too_large"  # above the pixel, frame or memory budget (decompression bombs)
    DUPLICATE_KEY = "duplicate_key"  # an earlier input row already has this key
    EMPTY_TEXT = "empty_text"  # the web text is null or blank after normalisation
    LOW_ITM = "low_itm"  # ITM match probability below the threshold
    DUPLICATE = "duplicate"  # the image (or the identical pair) duplicates another one
    ERROR = "error"  # a stage failed on this element; the detail names the stage and error


class Decision(StrEnum):
    """What happened to a text."""

    KEPT = "kept"
    DROPPED = "dropped"


class TextOrigin(StrEnum):
    """Where a candidate text comes from."""

    WEB = "web"  # the input row's own text
    SYNTHETIC = "synthetic"  # a caption written by the captioner


class DuplicateKind(StrEnum):
    """How a removed image relates to the image it duplicates."""

    EXACT = "exact"  # same bytes (sha256)
    PERCEPTUAL = "perceptual"  # perceptual hash within the Hamming distance
    NEAR = "near"  # filter embeddings above the near-duplicate threshold
    PREVIOUS_ROUND = "previous-round"  # near duplicate of an image indexed by an earlier round


def decision_of(reason: Reason) -> Decision:
    """The decision a reason stands for: only ``kept`` keeps."""
    return Decision.KEPT if reason is Reason.KEPT else Decision.DROPPED


class Stage(StrEnum):
    """The per-element stages of a run, as error details name them."""

    READ = "read"
    SCREEN = "screen"
    KEYS = "keys"
    GROUP = "group"
    FETCH = "fetch"
    PIXELS = "pixels"
    CAPTION = "caption"
    SCORE = "score"
    DECIDE = "decide"
