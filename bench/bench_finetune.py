"""Filter finetuning speed: ITM pairs encoded in length chunks against one padded pass.

Runs ``models.finetune.train.train`` on generated shapes pairs from the bundled filter, in
the same process, alternating the current code with the baseline (every ITM pair in one
pass padded to the longest text: the chunk rule switched off). Two recipes: the plain one
(batch texts and in-batch hard negatives only) and the last composition stage of
``models/bundled/reproduce.sh`` (every extra text kind). Prints seconds per optimiser step.

Usage: python bench/bench_finetune.py [--steps 30] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from curation.shapes import make_clean_split
from models import length_chunks
from models.finetune import losses
from models.finetune.data import read_pairs
from models.finetune.settings import FinetuneSettings, ModelKind
from models.finetune.train import prepare_base, train

ROOT = Path(__file__).resolve().parents[1]
FILTER = ROOT / "models" / "bundled" / "filter"
RECIPES = {
    "plain": {},
    "every extra text": {
        "composition_negatives": 1.0,
        "truncated_negatives": 0.25,
        "partial_positives": 1.0,
        "reworded_positives": 1.0,
        "unreadable_negatives": 1.0,
        "rephrased_positives": 1.0,
        "text_domain": "shapes",
    },
}


@contextmanager
def one_padded_pass() -> Iterator[None]:
    """The baseline: the length-chunk rule switched off, every ITM pair in one chunk."""
    rows, padding = losses.ITM_CHUNK_ROWS, length_chunks.PADDING_ALLOWED
    losses.ITM_CHUNK_ROWS, length_chunks.PADDING_ALLOWED = 1 << 30, float("inf")
    try:
        yield
    finally:
        losses.ITM_CHUNK_ROWS, length_chunks.PADDING_ALLOWED = rows, padding


def seconds_per_step(data: Path, recipe: dict, steps: int, baseline: bool) -> float:
    """Seconds per step of ``steps`` steps from the bundled filter, after two untimed ones."""
    loaded = prepare_base(ModelKind.FILTER, str(FILTER), [], "cpu")
    pairs = read_pairs(data, loaded.image_size, group_column="scene")

    def run(max_steps: int) -> float:
        settings = FinetuneSettings(
            train=str(data),
            out="unused",
            base=str(FILTER),
            batch_size=64,
            group_column="scene",
            max_steps=max_steps,
            device="cpu",
            seed=7,
            **recipe,
        )
        start = time.perf_counter()
        train(ModelKind.FILTER, loaded, pairs, settings, 5e-5)
        return time.perf_counter() - start

    with one_padded_pass() if baseline else nullcontext():
        run(2)
        return run(steps) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, batch 64, {args.steps} steps per timing"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = make_clean_split(64 * (args.steps + 4), 5, Path(tmp) / "train.parquet")
        for name, recipe in RECIPES.items():
            best: dict[str, float] = {}
            for _ in range(args.repeats):
                for label, baseline in (("one padded pass", True), ("length chunks", False)):
                    seconds = seconds_per_step(data, recipe, args.steps, baseline)
                    best[label] = min(best.get(label, float("inf")), seconds)
                    print(f"  {name}: {label} {seconds:.3f} s/step", flush=True)
            ratio = best["one padded pass"] / best["length chunks"]
            print(
                f"{name}: one padded pass {best['one padded pass']:.3f} s/step, length "
                f"chunks {best['length chunks']:.3f} s/step, {ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
