"""``curation finetune captioner|filter``: adapt a BLIP captioner or filter to a domain."""

from __future__ import annotations

import shlex
from typing import Any

import click
from click.core import ParameterSource

from curation.errors import UsageError


def _options(function: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option(
            "--train",
            "train_path",
            required=True,
            type=click.Path(exists=True, dir_okay=False),
            help="Parquet file of clean (image, text) pairs.",
        ),
        click.option(
            "--out",
            required=True,
            type=click.Path(file_okay=False),
            help="Folder to write the finetuned model to.",
        ),
        click.option(
            "--base",
            default="small",
            show_default=True,
            help=(
                "Hub id, checkpoint folder, or a preset (tiny, mini, small, base): random "
                "weights, tokenizer from the training texts. A filter may start from a "
                "captioner folder: it takes the weights BLIP's encoder and decoder share."
            ),
        ),
        click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1)),
        click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=2)),
        click.option(
            "--lr",
            type=click.FloatRange(min=0, min_open=True),
            help="Peak learning rate [default: 5e-4 for a preset, 1e-5 for a checkpoint].",
        ),
        click.option(
            "--weight-decay", default=0.05, show_default=True, type=click.FloatRange(min=0)
        ),
        click.option(
            "--max-steps", type=click.IntRange(min=1), help="Stop after this many optimiser steps."
        ),
        click.option(
            "--holdout",
            default=0.05,
            show_default=True,
            type=click.FloatRange(0, 0.5),
            help="Share of pairs held out for the evaluation in the model card.",
        ),
        click.option("--image-column", default="image", show_default=True),
        click.option("--text-column", default="text", show_default=True),
        click.option(
            "--group-column",
            help="Rows with equal values here show the same content (never drawn as each other's negatives).",
        ),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]."),
        click.option(
            "--save-dtype",
            default="fp32",
            show_default=True,
            type=click.Choice(["fp32", "fp16"]),
            help="Precision of the saved weights (fp16 halves the size; loads in fp32).",
        ),
        click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group("finetune")
def finetune_command() -> None:
    """Finetune a BLIP captioner or filter on clean (image, text) pairs, as CapFilt does."""


def _command_line(kind: str) -> str:
    """The command with every option given explicitly, for the model card."""
    ctx = click.get_current_context()
    words = ["curation", "finetune", kind]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        words += [param.opts[0], str(ctx.params[param.name])]
    return " ".join(shlex.quote(w) for w in words)


def _run(kind: str, options: dict[str, Any]) -> None:
    import torch

    from models.finetune.text_negatives import ExtraTextShares
    from models.finetune.train import TrainSettings, finetune

    threads = options.pop("threads")
    if threads is not None:
        torch.set_num_threads(threads)
    shares = ExtraTextShares(
        composition=options.pop("composition_negatives", 0.0),
        truncated=options.pop("truncated_negatives", 0.0),
        partial=options.pop("partial_positives", 0.0),
        reworded=options.pop("reworded_positives", 0.0),
        unreadable=options.pop("unreadable_negatives", 0.0),
    )
    domain = options.pop("text_domain", "general")
    if shares.partial and domain == "general":
        raise UsageError(
            "--partial-positives needs a --text-domain that knows which parts of a caption "
            "are true on their own (shapes)"
        )
    settings = TrainSettings(
        epochs=options.pop("epochs"),
        batch_size=options.pop("batch_size"),
        lr=options.pop("lr"),
        weight_decay=options.pop("weight_decay"),
        max_steps=options.pop("max_steps"),
        seed=options.pop("seed"),
        holdout=options.pop("holdout"),
        extra_texts=shares,
        text_domain=domain,
    )
    try:
        result = finetune(
            kind,
            settings=settings,
            command=_command_line(kind),
            progress=lambda line: click.echo(line, err=True),
            **options,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    click.echo(
        f"saved {kind} to {options['out']} after {result.steps} steps in {result.seconds:.0f} s"
    )
    for name, value in result.evaluation.items():
        click.echo(f"  {name}: {value:.4f}")


@finetune_command.command("captioner")
@_options
def captioner_command(**options: Any) -> None:
    """Train the captioner: LM loss with label smoothing 0.1, prompt "a picture of " masked."""
    _run("captioner", options)


@finetune_command.command("filter")
@_options
@click.option(
    "--composition-negatives",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help=(
        "Share of pairs whose own text, with its words kept and its composition broken "
        "(two noun phrases' modifiers, nouns or places exchanged, neighbouring words "
        "shuffled), is added as an ITM negative: teaches the filter to read which word "
        "goes with which object, not just which words occur."
    ),
)
@click.option(
    "--truncated-negatives",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help=(
        "Share of pairs whose own text, broken off inside a phrase, is added as an ITM "
        "negative (teaches the filter to reject cut texts; a cut after a complete phrase "
        "is a partial but true text and is never used)."
    ),
)
@click.option(
    "--partial-positives",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help=(
        "Share of pairs that also get a true text describing part of their image as an ITM "
        "positive, so that partial descriptions are kept (needs --text-domain shapes)."
    ),
)
@click.option(
    "--reworded-positives",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help=(
        "Share of pairs that also get their text reworded (an opening such as 'a photo of', "
        "or words the tokenizer does not know) as an ITM positive; the other extra texts "
        "are reworded as often. Keeps a filter with a small domain vocabulary from rejecting "
        "correct texts worded differently."
    ),
)
@click.option(
    "--unreadable-negatives",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help=(
        "Share of pairs whose own text with every noun, adjective and other open-class word "
        "unknown is added as an ITM negative: a text the filter cannot read (spam, to a "
        "small vocabulary) is not kept. Use with --reworded-positives."
    ),
)
@click.option(
    "--text-domain",
    default="general",
    show_default=True,
    type=click.Choice(["general", "shapes"]),
    help=(
        "general: the transformations work on any English captions. shapes: captions of "
        "the shapes domain are parsed, adding exact exchanges of attributes and positions "
        "between objects and partial positives; no negative is true of its image, and no "
        "in-batch text true of an image is drawn as its negative."
    ),
)
def filter_command(**options: Any) -> None:
    """Train the filter: ITC plus ITM with hard negatives mined from the ITC similarities."""
    _run("filter", options)
