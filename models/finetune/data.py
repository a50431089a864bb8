"""Training pairs for finetuning: read from Parquet, decoded exactly as the pipeline does.

Images go through :func:`curation.decode.decode_image` at the model's input size (the decode
stage of the pipeline) and are kept as uint8; texts go through BLIP's ``pre_caption``
(:func:`models.scorer.normalize_text`), so what the model sees in training is what it sees
when curating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from curation.decode import DecodeError, decode_image
from curation.errors import InputError
from models.finetune.settings import training_file
from models.scorer import normalize_text


@dataclass
class TrainingPairs:
    """Decoded images (``N x S x S x 3`` uint8), their normalised texts and optional groups.

    Pairs with the same ``groups`` value describe the same content (for example the same
    image with several captions); the filter's losses treat them as matches of each other.
    """

    pixels: np.ndarray
    texts: list[str]
    groups: np.ndarray | None

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

    Rows whose image does not decode or whose text is empty after normalisation are skipped;
    a missing column raises :class:`InputError` naming the file and the column.
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
    for row in table.to_pylist():
        data = _image_bytes(row[image_column])
        text = normalize_text(row[text_column] or "")
        if data is None or not text:
            continue
        try:
            decoded = decode_image(data, image_size)
        except DecodeError:
            continue
        images.append(decoded.pixels)
        texts.append(text)
        if group_column:
            group_values.append(str(row[group_column]))
    if not texts:
        raise InputError(f"{path}: no usable (image, text) pairs")
    groups = None
    if group_column:
        codes = {value: i for i, value in enumerate(dict.fromkeys(group_values))}
        groups = np.array([codes[v] for v in group_values], dtype=np.int64)
    return TrainingPairs(pixels=np.stack(images), texts=texts, groups=groups)
