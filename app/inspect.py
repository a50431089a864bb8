"""``curation inspect``: the dry run's command line (the logic is :mod:`curation.inspect`)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from app.options import settings_options
from curation.config import InputSettings, RunConfig, build_settings
from curation.errors import DATA_CHECK_FAILED
from curation.inspect import format_report, inspect_input


def check_run_settings(config: RunConfig) -> list[str]:
    """What ``run`` checks before its models besides the rows: models and the previous index."""
    from pipelines.runner import prepare

    plan = prepare(config)
    return [
        f"models found: filter {config.filter} ({plan.embedding_dim}-d embeddings, "
        f"{plan.sizes[1]} px)"
        + (f", captioner {config.captioner} ({plan.sizes[0]} px)" if plan.sizes[0] else ""),
    ]


def _a_number(value: float | None) -> float | None:
    """A share that can be compared (NaN passes click's range check, and every comparison)."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("nan is not a share between 0 and 1")
    return value


@click.command("inspect")
@click.argument("input", nargs=-1, required=True)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="A run's YAML config: its input settings apply here, and every other key is checked.",
)
@settings_options(InputSettings, skip=("input",))
@click.option(
    "--check-run",
    is_flag=True,
    help="Also check what `run` checks before work: models (configs only), caption lengths, "
    "the previous-round index, runner options (needs --out via the config or --out).",
)
@click.option("--out", help="With --check-run: the run's output folder.")
@click.option(
    "--fail-under",
    type=click.FloatRange(0, 1),
    callback=lambda _ctx, _param, value: _a_number(value),
    help="Exit 3 when the share of rows that reach the models is below this.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def inspect_command(
    input: tuple[str, ...],
    config_file: str | None,
    check_run: bool,
    out: str | None,
    fail_under: float | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Read and screen INPUT (Parquet files, globs or folders) without models; count rows per
    reason, with the same rules and settings as `curation run`.

    Exit codes: 0 done, 2 unusable input or configuration, 3 fewer usable rows than
    --fail-under.
    """
    if config_file or check_run:
        placeholder = None if check_run else "-"  # the output folder matters to --check-run only
        config = build_settings(
            RunConfig, config_file, input=input, out=out or placeholder, **flags
        )
        settings = InputSettings.model_validate(
            {name: getattr(config, name) for name in InputSettings.model_fields}
        )
    else:
        settings = build_settings(InputSettings, None, input=input, **flags)
    notes = check_run_settings(config) if check_run else []
    report = inspect_input(settings, progress=not as_json)
    report.notes += notes
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(format_report(report))
    if fail_under is not None and report.usable_share < fail_under:
        click.echo(
            f"error: {report.usable_share:.2%} of the rows reach the models, below "
            f"--fail-under {fail_under:.2%}",
            err=True,
        )
        sys.exit(DATA_CHECK_FAILED)
