"""``curation demo``: the whole job, offline, on a generated shapes dataset with known truth.

Generates a noisy "web" split of the shapes domain (a seed the bundled models never saw),
curates it with the real pipeline and the bundled captioner and filter, then measures the
filter's precision and recall at rejecting noisy texts, the correctness of the kept
synthetic captions, and the throughput, into ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from curation.storage import Location

#: Seed of the demo's web split; the bundled models were trained on seeds 1 to 11.
DEMO_SEED = 20261127
DEMO_ROWS = 1000
#: Background shading (grey levels): gives every generated image its own perceptual hash,
#: so that copy grouping only joins real copies.
DEMO_TEXTURE = 20.0


def bundled_model(kind: str) -> Path:
    """Folder of the bundled shapes ``captioner`` or ``filter``."""
    import models

    return Path(models.__file__).parent / "bundled" / kind


#: Run settings the demo sets; every other setting keeps its default (CapFilt's).
DEMO_OVERRIDES: dict[str, Any] = {"captions_per_image": 1, "batch_size": 16, "device": "cpu"}

#: The settings recorded in ``metrics.json``: those that decide the demo's outputs.
RECORDED_SETTINGS = (
    "captioner",
    "filter",
    "captions_per_image",
    "threshold",
    "first_token",
    "sample",
    "top_p",
    "top_k",
    "repetition_penalty",
    "max_length",
    "min_length",
    "seed",
    "batch_size",
    "device",
)


def demo_settings() -> dict[str, Any]:
    """Run settings of the demo besides input and output: the bundled models, the defaults."""
    return {
        "captioner": str(bundled_model("captioner")),
        "filter": str(bundled_model("filter")),
        **DEMO_OVERRIDES,
    }


#: What a demo folder holds; the demo replaces each of them.
DEMO_INPUT = "input/shapes-web.parquet"
DEMO_ENTRIES = ("input", "run", "metrics.json")


def check_demo_folder(out_dir: Location) -> None:
    """Raise :class:`UsageError` unless ``out_dir`` is new, empty or a demo's folder: the demo
    replaces its input, run and metrics, so a folder of other files is never taken for one."""
    from curation.errors import UsageError
    from curation.run_folder import RunFolder
    from curation.texts import listing

    def others(folder: Location, own: tuple[str, ...]) -> list[str]:
        return [c.name for c in folder.children() if c.name not in own and c.name[0] != "."]

    input_name = DEMO_INPUT.split("/")[1]
    found = (
        others(out_dir, DEMO_ENTRIES)
        + [f"input/{name}" for name in others(out_dir / "input", (input_name,))]
        + [name for name in ("input", "run") if (out_dir / name).is_file()]
    )
    if found:
        raise UsageError(
            f"--out {out_dir.url} holds files a demo does not write ({listing(found)}); "
            "give a new or empty folder, or a former demo's"
        )
    RunFolder.at((out_dir / "run").url).check_may_run_into([(out_dir / DEMO_INPUT).url])


def run_demo(
    out: str,
    rows: int = DEMO_ROWS,
    seed: int = DEMO_SEED,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the dataset, run the pipeline into ``out/run``, write ``out/metrics.json``."""
    from app.demo_metrics import run_metrics, write_metrics
    from curation.config import RunConfig
    from curation.shapes import make_web_split
    from curation.storage import Location, check_writable_folder
    from pipelines.runner import run_pipeline

    out_dir = Location(out)
    check_writable_folder(out_dir, "--out")
    check_demo_folder(out_dir)
    (out_dir / "run").remove()  # measure a full run, not a cached re-run
    data = make_web_split(rows, seed, (out_dir / DEMO_INPUT).url, texture=DEMO_TEXTURE)
    config = RunConfig(
        input=(data,),
        out=(out_dir / "run").url,
        workers=workers,
        progress=progress,
        key_column="key",
        text_column="text",
        image_column="image",
        **demo_settings(),
    )
    result = run_pipeline(config)
    metrics = run_metrics(result.out_dir, data)
    metrics["throughput"] = {
        "images": result.rows,
        "seconds": round(result.seconds, 2),
        "images_per_second": round(result.rows / result.seconds, 3) if result.seconds else None,
        "workers": workers,
    }
    metrics["reasons"] = result.manifest.get("counts", {})
    metrics["dataset"] = {"rows": rows, "seed": seed, "path": data, "texture": DEMO_TEXTURE}
    metrics["settings"] = {name: getattr(config, name) for name in RECORDED_SETTINGS}
    write_metrics(metrics, out_dir / "metrics.json")
    return metrics


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary(metrics: dict[str, Any]) -> str:
    """A short human-readable digest of ``metrics``."""
    from curation.shapes import TRUE_TYPES

    f, c, t = metrics["filter"], metrics["captioner"], metrics["throughput"]
    lines = [
        f"filter: precision {_fmt(f['precision'])}  recall {_fmt(f['recall'])}"
        f"  at rejecting noisy web texts ({f['noisy_texts']} noisy of {f['texts']})",
        f"  kept: {_fmt(f['correct_kept_share'])} of correct texts (as generated or rewritten),"
        f" {_fmt(f['partial_kept_share'])} of partial but true texts;"
        f" wrong binding rejected: {_fmt(f['binding_recall'])}",
    ]
    for kind, stats in f["per_noise_type"].items():
        verb, count = "rejected", stats["rejected"]
        if kind in TRUE_TYPES:
            verb, count = "kept", stats["texts"] - stats["rejected"]
        lines.append(
            f"  {kind:<20} {verb:>8} {count:>4}/{stats['texts']:<4} ({count / stats['texts']:.3f})"
        )
    lines += [
        f"captioner: {_fmt(c['kept_correct_share'])} of {c['kept']} kept synthetic captions fully correct;"
        f" noise ratio {_fmt(c['noise_ratio'])} (share the filter rejects)",
        f"throughput: {t['images']} images in {t['seconds']:.1f} s = {_fmt(t['images_per_second'])} images/s",
    ]
    return "\n".join(lines)


@click.command("demo")
@click.option(
    "--out",
    default="demo-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the dataset, the run and metrics.json.",
)
@click.option(
    "--rows",
    default=DEMO_ROWS,
    show_default=True,
    type=click.IntRange(min=10),
    help="Images in the generated web split.",
)
@click.option(
    "--seed",
    default=DEMO_SEED,
    show_default=True,
    type=int,
    help="Seed of the generated web split.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Local worker processes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json instead of the digest.")
def demo_command(out: str, rows: int, seed: int, workers: int, as_json: bool) -> None:
    """Curate a generated shapes dataset with the bundled models and measure quality."""
    from curation.storage import Location

    metrics = run_demo(out, rows=rows, seed=seed, workers=workers)
    if as_json:
        click.echo(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        click.echo(summary(metrics))
        click.echo(f"metrics written to {(Location(out) / 'metrics.json').url}")
