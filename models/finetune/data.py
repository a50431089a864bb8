"""Training pairs for finetuning: read from Parquet, decoded exactly as the pipeline does.

Rows are read as ``curation run`` reads them; images go through
:func:`curation.decode.decode_image` at the model's input size (the decode stage of the
pipeline) and are kept as uint8; texts are cleaned as the run cleans them
(:func:`curation.texts.model_text`), then go through BLIP's ``pre_caption``
(:func:`models.scorer.normalize_text`), so what the model sees in training is what it sees
when curating.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from curation.decode import DecodeError, decode_image
from curation.errors import InputError
from curation.inputs import InputFile
from curation.layout import Layout, detect_layout
from curation.reader import iter_rows
from curation.reasons import Reason
from curation.records import Pair
from curation.screen import refused_before_decoding
from curation.texts import model_text
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


def read_pairs(
    path: str,
    image_size: int,
    image_column: str | None = None,
    text_column: str | None = None,
    group_column: str | None = None,
    limit: int | None = None,
) -> TrainingPairs:
    """Read, decode and normalise up to ``limit`` (image, text) pairs from a Parquet file.

    Columns are recognised, checked and read as ``curation run`` does
    (:func:`curation.layout.detect_layout`, :func:`curation.reader.iter_rows`): img2dataset
    and Hugging Face layouts, images named by path, texts stored as bytes. Rows the run would
    refuse before its models (a failed download, no image, an image that does not decode, an
    empty text, a row group that cannot be read) are skipped and counted by reason
    (:attr:`TrainingPairs.skipped`); a row with no group value is a group of its own. A
    missing or unusable column raises :class:`InputError` naming the file and the column,
    and so does a file with no usable pair.
    """
    location = training_file(str(path))
    layout = detect_layout(location, image_column, text_column)
    if group_column is not None:
        layout = _with_group(layout, group_column, location.url)
    images, texts, group_values = [], [], []
    skipped: Counter[Reason] = Counter()
    for index, (pair, error) in enumerate(iter_rows(InputFile(location, "train"), layout)):
        if limit is not None and index >= limit:
            break
        refused = (Reason.ERROR, None) if error else refused_before_decoding(pair)
        text = normalize_text(model_text(pair.text).text)
        if refused is None and not text:
            refused = (Reason.EMPTY_TEXT, None)
        if refused is None:
            try:
                decoded = decode_image(pair.image, image_size)
            except DecodeError as err:
                refused = (err.reason, None)
        if refused is not None:
            skipped[refused[0]] += 1
            continue
        images.append(decoded.pixels)
        texts.append(text)
        if group_column is not None:
            value = _group_value(pair, layout, group_column)
            # A missing group matches no other row: it must not join the other missing ones.
            group_values.append(("row", index) if value is None else ("value", str(value)))
    if not texts:
        raise InputError(
            f"{path}: no usable (image, text) pairs ({describe_skipped(skipped) or 'no rows'})"
        )
    groups = None
    if group_column is not None:
        codes = {value: i for i, value in enumerate(dict.fromkeys(group_values))}
        groups = np.array([codes[v] for v in group_values], dtype=np.int64)
    return TrainingPairs(pixels=np.stack(images), texts=texts, groups=groups, skipped=skipped)


def _with_group(layout: Layout, column: str, path: str) -> Layout:
    """``layout`` reading only ``column`` besides its roles (the key column may group)."""
    if column == layout.key_column:
        return replace(layout, passthrough=pa.schema([]))
    kept = [f for f in layout.passthrough if f.name == column]
    if not kept:
        roles = {layout.image_column, layout.text_column, layout.status_column}
        problem = "is the image or text column" if column in roles else "not found"
        raise InputError(
            f"{path}: group column {column!r} {problem} (other columns: "
            f"{', '.join(layout.passthrough.names) or 'none'})"
        )
    return replace(layout, passthrough=pa.schema(kept))


def _group_value(pair: Pair, layout: Layout, column: str) -> object:
    """The row's value of the group column; a row without a key has its own derived key."""
    if column == layout.key_column:
        return pair.key
    return pair.extra[layout.output_name(column)]


def describe_skipped(skipped: Counter[Reason]) -> str:
    """``"3 rows skipped: 2 undecodable, 1 empty_text"`` (most frequent first), or ``""``."""
    total = sum(skipped.values())
    if not total:
        return ""
    reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common())
    return f"{total} row{'s' if total != 1 else ''} skipped: {reasons}"
