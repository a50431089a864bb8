"""``curation run``: the main job, from Parquet to clean, synthetic and decisions outputs."""

from __future__ import annotations

import sys

import click

from curation.config import build_config


def print_summary(result: object, stream=None) -> None:
    """A table of decisions per reason and rows per output table."""
    stream = stream or sys.stdout
    manifest = result.manifest
    tables = manifest.get("tables", {}) if isinstance(manifest, dict) else {}
    stream.write(
        f"\nrun {result.run_id}: {result.rows} input rows in {result.seconds:.1f} s -> {result.out_dir}\n"
    )
    stream.write(f"  images scored {result.images_scored}, from cache {result.images_cached}\n")
    stream.write("  decisions per reason\n")
    for reason, n in sorted(result.counts.items(), key=lambda kv: -kv[1]):
        if n:
            stream.write(f"    {reason:<16} {n:>10}\n")
    for name, n in tables.get("rows", {}).items():
        stream.write(f"  {name + '/':<18} {n:>10} rows\n")
    stream.write(f"  {'index/':<18} {tables.get('indexed_images', 0):>10} images\n")


@click.command("run")
@click.argument("input", required=False)
@click.option("--out", "out", help="Output folder (created; re-running into it resumes).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML file with the same keys as the flags.",
)
@click.option("--captioner", help="Captioner: hub id or local folder.")
@click.option("--filter", "filter_", help="ITM filter: hub id or local folder.")
@click.option("--captioner-revision", help="Hub revision (branch, tag or commit) of the captioner.")
@click.option("--filter-revision", help="Hub revision of the filter.")
@click.option(
    "--allow-pickle", is_flag=True, default=None, help="Allow loading pickle (.bin) weights."
)
@click.option(
    "--captions-per-image", "-k", type=int, help="Synthetic captions per image (default 1)."
)
@click.option(
    "--threshold", type=float, help="Keep a text when ITM probability >= this (default 0.5)."
)
@click.option(
    "--first-token",
    type=click.Choice(["enc", "cls"]),
    help="Token at ITM position 0 (default enc).",
)
@click.option(
    "--sample/--beam-search", default=None, help="Nucleus sampling (default) or beam search."
)
@click.option("--top-p", type=float, help="Nucleus sampling top-p (default 0.9).")
@click.option("--max-length", type=int, help="Max caption tokens, prompt included (default 30).")
@click.option("--min-length", type=int, help="Min caption tokens, prompt included (default 10).")
@click.option("--batch-size", type=int, help="Images per model batch (default 8).")
@click.option("--device", help="auto, cpu or cuda[:N] (default auto).")
@click.option(
    "--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), help="Model dtype (default fp32)."
)
@click.option("--seed", type=int, help="Seed of caption sampling (default 0).")
@click.option("--workers", type=int, help="Local worker processes (default 1: in-process).")
@click.option("--image-column", help="Column with image bytes (or an image struct).")
@click.option("--text-column", help="Column with the web text.")
@click.option("--key-column", help="Column with a unique key per row.")
@click.option(
    "--phash-distance",
    type=int,
    help="Max Hamming distance of perceptual copies (default 4; -1: off).",
)
@click.option(
    "--near-threshold",
    type=float,
    help="Cosine above which images are near duplicates (default 0.95).",
)
@click.option("--dedup-against", help="A previous run's index/ folder to deduplicate against.")
@click.option("--progress/--no-progress", default=None, help="Live progress line on stderr.")
@click.option(
    "--beam-arg",
    "beam_args",
    multiple=True,
    help="Extra Beam pipeline option, e.g. --beam-arg=--runner=DataflowRunner.",
)
def run_command(
    input: str | None,
    out: str | None,
    config_file: str | None,
    filter_: str | None,
    **flags: object,
) -> None:
    """Caption, filter and deduplicate INPUT (Parquet file, glob or folder) into --out.

    \b
    Example:
      curation run 'data/*.parquet' --out runs/r1 -k 3 --threshold 0.5
    """
    from pipelines.runner import run_pipeline

    beam_args = flags.pop("beam_args") or None
    config = build_config(
        config_file, input=input, out=out, filter=filter_, beam_args=beam_args, **flags
    )
    result = run_pipeline(config)
    print_summary(result)
