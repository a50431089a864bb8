"""Training pairs for finetuning: read from Parquet, decoded exactly as the pipeline does.

Images go through :func:`curation.decode.decode_image` at the model's input size (the decode
stage of the pipeline) and are kept as uint8; texts go through BLIP's ``pre_caption``
(:func:`models.scorer.normalize_text`), so what the model sees in training is what it sees
when curating.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from curation.decode import DecodeError, decode_image
from curation.errors import InputError
from curation.reasons import Reason
from models.finetune.settings import training_file
from models.scorer import normalize_text


@dataclass
class TrainingPairs:
    """Decoded images (``N x S x S x 3`` uint8), their normalised texts and optional groups.

    Pairs with the same ``groups`` value describe the same content (for example the same
    image with several captions); the filter's losses treat them as matches of each other.
    ``skipped`` counts the rows of the file left out, by reason.
    """

    pixels: np.ndarray
    texts: list[str]
    groups: np.ndarray | None
    skipped: Counter[Reason] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray) -> TrainingPairs:
        """The pairs at ``index``, in that order."""
        return TrainingPairs(
            pixels=self.pixels[index],
            texts=[self.texts[i] for i in index],
            groups=None if self.groups is None else self.groups[index],
        )

    def split(self, holdout: float, seed: int) -> tuple[TrainingPairs, TrainingPairs]:
        """A seeded random (train, held-out) split; the held-out part has ``holdout`` of the pairs."""
        order = np.random.default_rng(seed).permutation(len(self))
        n_held = int(round(len(self) * holdout))
        return self.subset(order[n_held:]), self.subset(order[:n_held])


def _image_bytes(cell: object) -> bytes | None:
    if isinstance(cell, bytes | bytearray):
        return bytes(cell)
    if isinstance(cell, dict):  # Hugging Face datasets image struct
        data = cell.get("bytes")
        return bytes(data) if data else None
    return None


def read_pairs(
    path: str,
    image_size: int,
    image_column: str = "image",
    text_column: str = "text",
    group_column: str | None = None,
    limit: int | None = None,
) -> TrainingPairs:
    """Read, decode and normalise up to ``limit`` (image, text) pairs from a Parquet file.

    Rows whose image is missing or does not decode, or whose text is empty after
    normalisation, are skipped and counted by reason (:attr:`TrainingPairs.skipped`); a row
    with no group value is a group of its own. A missing column raises :class:`InputError`
    naming the file and the column, and so does a file with no usable pair.
    """
    location = training_file(str(path))
    columns = [image_column, text_column] + ([group_column] if group_column else [])
    with location.open() as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        for column in columns:
            if column not in names:
                raise InputError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
        table = parquet.read(columns=columns)
    if limit is not None:
        table = table.slice(0, limit)
    images, texts, group_values = [], [], []
    skipped: Counter[Reason] = Counter()
    for index, row in enumerate(table.to_pylist()):
        text = normalize_text(row[text_column] or "")
        if not text:
            skipped[Reason.EMPTY_TEXT] += 1
            continue
        try:
            decoded = decode_image(_image_bytes(row[image_column]), image_size)
        except DecodeError as err:
            skipped[err.reason] += 1
            continue
        images.append(decoded.pixels)
        texts.append(text)
        if group_column:
            value = row[group_column]
            # A missing group matches no other row: it must not join the other missing ones.
            group_values.append(("row", index) if value is None else ("value", str(value)))
    if not texts:
        raise InputError(
            f"{path}: no usable (image, text) pairs ({describe_skipped(skipped) or 'no rows'})"
        )
    groups = None
    if group_column:
        codes = {value: i for i, value in enumerate(dict.fromkeys(group_values))}
        groups = np.array([codes[v] for v in group_values], dtype=np.int64)
    return TrainingPairs(pixels=np.stack(images), texts=texts, groups=groups, skipped=skipped)


def describe_skipped(skipped: Counter[Reason]) -> str:
    """``"3 rows skipped: 2 undecodable, 1 empty_text"`` (most frequent first), or ``""``."""
    total = sum(skipped.values())
    if not total:
        return ""
    reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common())
    return f"{total} row{'s' if total != 1 else ''} skipped: {reasons}"
