"""``curation run``: the main job, from Parquet to clean, synthetic and decisions outputs."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

import click

from app.options import settings_options
from curation.audit.warnings import run_warnings
from curation.config import RunConfig, build_config
from curation.errors import DATA_CHECK_FAILED
from curation.texts import printable

if TYPE_CHECKING:  # the runner imports Beam, which flag errors must not wait for
    from pipelines.runner import RunResult


def print_summary(result: RunResult, stream: TextIO | None = None) -> None:
    """Counts per origin and reason, tables, index and errors of a finished run."""
    stream = stream or sys.stdout
    m = result.manifest
    texts = m["texts"]
    images = m["images"]
    write = stream.write
    write(
        f"\nrun {result.run_id}: {result.rows} input rows in {result.seconds:.1f} s -> {result.out_dir}\n"
    )
    write(
        f"  device {m['device']['device']} ({m['device']['dtype']}, batches of "
        f"{m['device']['batch_size']}) on the {m['runner']} runner\n"
    )
    write(f"  images scored {images['scored']}, from cache {images['cached']}\n")
    for origin in ("web", "synthetic"):
        write(
            f"  {origin + ' texts':<16} kept {texts[origin]['kept']:>8}"
            f"  dropped {texts[origin]['dropped']:>8}\n"
        )
    write("  decisions per reason (after dedup)\n")
    for reason, n in sorted(m["counts"].items(), key=lambda kv: -kv[1]):
        if n:
            write(f"    {reason:<18} {n:>10}\n")
    for name, info in m["tables"].items():
        write(f"  {name + '/':<20} {info['rows']:>10} rows\n")
    write(
        f"  {'index/':<20} {images['index_total']:>10} images"
        f" ({images['indexed_this_round']} added by this round)\n"
    )
    for warning in run_warnings(result.out_dir):
        write(f"  warning: {printable(warning.message, 1000)}\n")
    errors = m["errors"]
    if errors["count"]:
        write(f"  errors: {errors['count']} rows; for example:\n")
        for example in errors["examples"]:
            key, source = printable(example["key"], 120), printable(example["source_file"])
            write(
                f"    {key} ({source} row {example['source_row']}): {printable(example['detail'])}\n"
            )


@click.command("run")
@click.argument("input", nargs=-1)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML file with the same keys as the flags (dashes or underscores); flags win.",
)
@settings_options(RunConfig, skip=("input",), required=("out",), config_file=True)
def run_command(input: tuple[str, ...], config_file: str | None, **flags: Any) -> None:
    """Caption, filter and deduplicate INPUT (Parquet files, globs or folders) into --out.

    \b
    Examples:
      curation run 'data/*.parquet' --out runs/r1 -k 3 --threshold 0.5
      curation run s3://bucket/shards/ --out s3://bucket/runs/r1 --config run.yaml

    Exit codes: 0 done (with --detach on a remote runner: submitted), 2 unusable input or configuration (nothing was run), 3 the run
    finished but more than --max-error-rate of the rows hit an error, 130 interrupted
    (re-run the same command to resume).
    """
    config = build_config(config_file, input=input or None, **flags)
    from pipelines.runner import run_pipeline  # Beam and torch load only for a valid config

    result = run_pipeline(config)
    if result.submitted:
        job = f"job {result.job}" if result.job else "the job"
        click.echo(
            f"submitted {job} ({result.rows} input rows); it commits into {result.out_dir} "
            "when it ends. Follow it on the runner; then: curation report "
            f"{result.out_dir}"
        )
        return
    print_summary(result)
    if result.error_rate > config.max_error_rate:
        click.echo(
            f"error: {result.counts.get('error', 0)} of {result.rows} rows hit an error "
            f"({result.error_rate:.2%} > --max-error-rate {config.max_error_rate:.2%}); "
            "the outputs are written, see decisions/ (reason 'error')",
            err=True,
        )
        sys.exit(DATA_CHECK_FAILED)
