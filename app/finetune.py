"""``curation finetune captioner|filter``: adapt a BLIP captioner or filter to a domain."""

from __future__ import annotations

import shlex
from typing import Any

import click
from click.core import ParameterSource

from app.options import from_flags, settings_options
from curation.errors import UsageError
from models.finetune.settings import (
    FILTER_ONLY,
    FinetuneSettings,
    ModelKind,
    model_folder,
    training_file,
)


@click.group("finetune")
def finetune_command() -> None:
    """Finetune a BLIP captioner or filter on clean (image, text) pairs, as CapFilt does."""


def _command_line(kind: ModelKind) -> str:
    """The command with every option given explicitly, for the model card."""
    ctx = click.get_current_context()
    words = ["curation", "finetune", kind]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        words += [param.opts[0], str(ctx.params[param.name])]
    return " ".join(shlex.quote(w) for w in words)


def _run(kind: ModelKind, options: dict[str, Any]) -> None:
    settings = from_flags(FinetuneSettings, options)
    training_file(settings.train)  # before the models load
    model_folder(settings.out)
    import torch

    from models.finetune.train import finetune

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        result = finetune(
            kind,
            settings,
            command=_command_line(kind),
            progress=lambda line: click.echo(line, err=True),
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    click.echo(
        f"saved {kind} to {settings.out} after {result.steps} steps in {result.seconds:.0f} s"
    )
    for name, value in result.evaluation.items():
        click.echo(f"  {name}: {value:.4f}")


_REQUIRED = ("train", "out")


@finetune_command.command("captioner")
@settings_options(FinetuneSettings, skip=FILTER_ONLY, required=_REQUIRED)
def captioner_command(**options: Any) -> None:
    """Train the captioner: LM loss with label smoothing 0.1, prompt "a picture of " masked."""
    _run(ModelKind.CAPTIONER, options)


@finetune_command.command("filter")
@settings_options(FinetuneSettings, required=_REQUIRED)
def filter_command(**options: Any) -> None:
    """Train the filter: ITC plus ITM with hard negatives mined from the ITC softmax."""
    _run(ModelKind.FILTER, options)
