"""The README.md model card written beside finetuned weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from models.finetune.data import describe_skipped
from models.finetune.settings import DomainName, FinetuneSettings, ModelKind

if TYPE_CHECKING:
    from models.finetune.train import TrainResult

_TITLES = {
    ModelKind.CAPTIONER: "BLIP captioner",
    ModelKind.FILTER: "BLIP image-text matching filter",
}
_LOSSES = {
    ModelKind.CAPTIONER: "language-modelling cross-entropy, label smoothing 0.1, prompt masked",
    ModelKind.FILTER: (
        "ITC (learnable temperature, init 0.07) + ITM with hard negatives from the ITC softmax"
    ),
}


def render_model_card(result: TrainResult, settings: FinetuneSettings, command: str) -> str:
    """Markdown describing data, training, final losses and the held-out evaluation."""
    base, train_path = settings.base, settings.train
    lines = [
        f"# {_TITLES[result.kind]}, finetuned",
        "",
        f"Finetuned from `{base}` with `curation finetune {result.kind}` ({_LOSSES[result.kind]}).",
        "",
        "## Reproduce",
        "",
        "```",
        command or f"curation finetune {result.kind} --train {train_path} --base {base}",
        "```",
        "",
        "## Data",
        "",
        f"- training file: `{Path(train_path).name}`",
        f"- pairs: {result.train_pairs} for training, {result.heldout_pairs} held out"
        f" ({settings.holdout:.0%}, seed {settings.seed})",
        f"- {describe_skipped(result.skipped) or 'no rows skipped'}",
        "",
        "## Training",
        "",
        f"- steps: {result.steps} (batch size {settings.batch_size}, epochs {settings.epochs}"
        + (f", max steps {settings.max_steps}" if settings.max_steps else "")
        + ")",
        f"- optimiser: AdamW, learning rate {result.lr:g}, weight decay {settings.weight_decay:g},"
        f" warmup {settings.warmup:.0%} then cosine decay",
    ]
    if result.kind == ModelKind.FILTER:
        lines += _extra_text_lines(settings)
    lines += [
        f"- time: {result.seconds:.0f} s",
        "- final losses (mean of the last logged steps): "
        + ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items()),
        "",
        "## Held-out evaluation",
        "",
    ]
    lines += [f"- {name}: {value:.4f}" for name, value in result.evaluation.items()] or ["- none"]
    if result.examples:
        lines += ["", "| reference | beam-search caption |", "| --- | --- |"]
        lines += [f"| {ref} | {got} |" for ref, got in result.examples]
    return "\n".join(lines) + "\n"


def _extra_text_lines(settings: FinetuneSettings) -> list[str]:
    """The extra ITM texts of a filter's training, one line each."""
    shares = settings.extra_text_shares()
    lines = []
    if shares.composition:
        lines.append(
            f"- composition negatives: {shares.composition:.0%} of pairs also get their own"
            " text with its words kept and its composition broken (modifiers, nouns or noun"
            " phrases exchanged, neighbouring words shuffled) as an ITM negative"
        )
    if shares.truncated:
        lines.append(
            f"- truncated negatives: {shares.truncated:.0%} of pairs also get their own text"
            " broken off inside a phrase as an ITM negative"
        )
    if shares.partial:
        lines.append(
            f"- partial positives: {shares.partial:.0%} of pairs also get a true text that"
            " describes part of their image as an ITM positive (partial texts are to be kept)"
        )
    if shares.reworded:
        lines.append(
            f"- reworded positives: {shares.reworded:.0%} of pairs also get their own text with"
            " an opening or unknown words inserted as an ITM positive (the other extra"
            " texts reworded as often)"
        )
    if shares.unreadable:
        lines.append(
            f"- unreadable negatives: {shares.unreadable:.0%} of pairs also get their own text"
            " with every open-class word unknown (half also scrambled) as an ITM negative"
        )
    if shares.rephrased:
        lines.append(
            f"- rephrased positives: {shares.rephrased:.0%} of pairs also get their own text"
            " said another way (clauses reordered, a place first or stated with a verb,"
            " modifiers reordered) as an"
            " ITM positive (the other extra texts rephrased as often)"
        )
    if settings.text_domain != DomainName.GENERAL:
        lines.append(
            f"- text domain: {settings.text_domain} (captions parsed: exact attribute and"
            " position exchanges, negatives checked to be false, texts true of an image"
            " never drawn as its in-batch negatives)"
        )
    return lines


def write_model_card(
    path: str | Path,
    result: TrainResult,
    settings: FinetuneSettings,
    command: str,
) -> Path:
    """Write :func:`render_model_card` to ``path``."""
    path = Path(path)
    path.write_text(render_model_card(result, settings, command), encoding="utf-8")
    return path
