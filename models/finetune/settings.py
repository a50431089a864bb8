"""Settings of ``curation finetune``, each declared once: type, default, bounds and help.

The command's flags, their help with defaults and the validation come from
:class:`FinetuneSettings` (:mod:`app.options` builds the flags), as they do for ``run`` from
:mod:`curation.config`. This module imports neither torch nor transformers, so a bad value
is refused before the models load.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import model_validator

from curation.config import Settings, flag
from curation.errors import InputError
from curation.storage import Location, check_writable_folder
from curation.texts import listing


class ModelKind(StrEnum):
    """What ``curation finetune`` trains."""

    CAPTIONER = "captioner"
    FILTER = "filter"


class DomainName(StrEnum):
    """Which grammar the filter's extra training texts are made with."""

    GENERAL = "general"
    SHAPES = "shapes"


@dataclass(frozen=True)
class ExtraTextShares:
    """Shares of training pairs that get each kind of extra text (0 turns a kind off)."""

    composition: float = 0.0
    truncated: float = 0.0
    partial: float = 0.0
    reworded: float = 0.0
    unreadable: float = 0.0
    rephrased: float = 0.0


#: Settings that only the filter's training reads (the captioner's command has no such flags).
FILTER_ONLY = (
    "composition_negatives",
    "truncated_negatives",
    "partial_positives",
    "reworded_positives",
    "unreadable_negatives",
    "rephrased_positives",
    "text_domain",
)


class FinetuneSettings(Settings):
    """Data, starting model, optimisation and, for a filter, the extra ITM texts."""

    train: str = flag("Parquet file of clean (image, text) pairs.", default="")
    out: str = flag("Folder to write the finetuned model to.", default="")
    base: str = flag(
        "Hub id, checkpoint folder, or a preset (tiny, mini, small, base): random weights, "
        "tokenizer from the training texts. A filter may start from a captioner folder: it "
        "takes the weights BLIP's encoder and decoder share.",
        default="small",
    )
    epochs: int = flag("Passes over the training pairs.", default=1, ge=1)
    batch_size: int = flag("Pairs per optimiser step.", default=32, ge=2)
    lr: float | None = flag(
        "Peak learning rate (none: 5e-4 for a preset, 1e-5 for a checkpoint).", default=None, gt=0
    )
    weight_decay: float = flag("AdamW weight decay.", default=0.05, ge=0)
    warmup: float = flag(
        "Share of the steps with a linear warmup before the cosine decay.", default=0.05, ge=0, le=1
    )
    max_steps: int | None = flag("Stop after this many optimiser steps.", default=None, ge=1)
    holdout: float = flag(
        "Share of pairs held out for the evaluation in the model card.", default=0.05, ge=0, le=0.5
    )
    image_column: str | None = flag(
        "Column with the image bytes or a datasets Image struct (none: recognised as "
        "`curation run` does).",
        default=None,
    )
    text_column: str | None = flag(
        "Column with the text (none: recognised as `curation run` does).", default=None
    )
    group_column: str | None = flag(
        "Rows with equal values here show the same content (never drawn as each other's "
        "negatives); a row with no value is a group of its own. Any column but the image "
        "and text columns.",
        default=None,
    )
    seed: int = flag("Seed of the data order, the held-out split and the extra texts.", default=0)
    device: str = flag(
        "auto, cpu or cuda[:N].", default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$"
    )
    save_dtype: Literal["fp32", "fp16"] = flag(
        "Precision of the saved weights (fp16 halves the size; loads in fp32).", default="fp32"
    )
    threads: int | None = flag("CPU threads for torch (none: torch's choice).", default=None, ge=1)
    composition_negatives: float = flag(
        "Share of pairs whose own text, with its words kept and its composition broken (two "
        "noun phrases' modifiers, nouns or places exchanged, neighbouring words shuffled), is "
        "added as an ITM negative: teaches the filter to read which word goes with which "
        "object, not just which words occur.",
        default=0.0,
        ge=0,
        le=1,
    )
    truncated_negatives: float = flag(
        "Share of pairs whose own text, broken off inside a phrase, is added as an ITM "
        "negative (teaches the filter to reject cut texts; a cut after a complete phrase is a "
        "partial but true text and is never used).",
        default=0.0,
        ge=0,
        le=1,
    )
    partial_positives: float = flag(
        "Share of pairs that also get a true text describing part of their image as an ITM "
        "positive, so that partial descriptions are kept (needs --text-domain shapes).",
        default=0.0,
        ge=0,
        le=1,
    )
    reworded_positives: float = flag(
        "Share of pairs that also get their text reworded (an opening such as 'a photo of', "
        "or words the tokenizer does not know) as an ITM positive; the other extra texts are "
        "reworded as often. Keeps a filter with a small domain vocabulary from rejecting "
        "correct texts worded differently.",
        default=0.0,
        ge=0,
        le=1,
    )
    unreadable_negatives: float = flag(
        "Share of pairs whose own text with every noun, adjective and other open-class word "
        "unknown (half of them also with some known words dropped and the rest shuffled) is "
        "added as an ITM negative: a text the filter cannot read (spam, to a small "
        "vocabulary) is not kept. Use with --reworded-positives.",
        default=0.0,
        ge=0,
        le=1,
    )
    rephrased_positives: float = flag(
        "Share of pairs that also get their text said another way with the same meaning (the "
        "clauses of a list in another order, a clause's place first or stated with a verb: "
        "'on the left is a red ball', a phrase's modifiers in another order: 'a red big "
        "ball') as an ITM positive; the other extra texts are rephrased "
        "as often. Keeps correct texts that order their parts differently.",
        default=0.0,
        ge=0,
        le=1,
    )
    text_domain: DomainName = flag(
        "general: the transformations work on any English captions. shapes: captions of the "
        "shapes domain are parsed, adding exact exchanges of attributes and positions between "
        "objects and partial positives; no negative is true of its image, and no in-batch "
        "text true of an image is drawn as its negative.",
        default=DomainName.GENERAL,
    )

    @model_validator(mode="after")
    def _partial_needs_a_domain(self) -> FinetuneSettings:
        if self.partial_positives and self.text_domain == DomainName.GENERAL:
            raise ValueError(
                "--partial-positives needs a --text-domain that knows which parts of a "
                "caption are true on their own (shapes)"
            )
        return self

    def learning_rate(self, from_preset: bool) -> float:
        """The peak learning rate: the given one, else 5e-4 from a preset, 1e-5 from a checkpoint."""
        if self.lr is not None:
            return self.lr
        return 5e-4 if from_preset else 1e-5

    def extra_text_shares(self) -> ExtraTextShares:
        """The shares of the filter's extra ITM texts."""
        return ExtraTextShares(
            composition=self.composition_negatives,
            truncated=self.truncated_negatives,
            partial=self.partial_positives,
            reworded=self.reworded_positives,
            unreadable=self.unreadable_negatives,
            rephrased=self.rephrased_positives,
        )


def training_file(path: str) -> Location:
    """The Parquet file of training pairs at ``path``; :class:`InputError` when it is not one."""
    location = Location(path)
    if not location.is_file():
        raise InputError(f"training data not found: {path}")
    return location


def model_folder(path: str) -> Location:
    """The folder to save a finetuned model to at ``path``; :class:`InputError` unless it can
    be written and is new, empty or a saved model's (``config.json``), whose files the new
    model replaces: a folder of other files is never written into."""
    location = Location(path)
    check_writable_folder(location, "--out")
    names = [c.name for c in location.children() if not c.name.startswith(".")]
    if names and "config.json" not in names:
        raise InputError(
            f"--out {location.url} holds other files ({listing(names)}) and is not a model folder (no "
            "config.json); give a new or empty folder"
        )
    return location
