"""The Beam pipeline against the models layer alone, and its memory against input size.

1. Throughput: the same images and texts go (a) through the models layer in a plain loop
   (decode at the model size, ``Captioner`` then ``Scorer`` in batches) and (b) through
   ``curation run`` on the in-process runner, with the same BLIP-base-sized models (random
   weights, bert-base-uncased vocabulary), batch size and K, in the same process. Both
   timings include loading the models; the two paths alternate and the best run counts. Target: the pipeline keeps >= 90% of (a).
2. Memory: ``curation run`` with tiny models in a fresh subprocess on N and 4N rows of
   distinct JPEGs; peak RSS of the process (sampled every 20 ms). Target: flat.

    .venv/bin/python bench/bench_pipeline.py --images 8 --rows 400
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_models import WEB_TEXTS, default_vocab  # noqa: E402

from curation.config import build_config  # noqa: E402
from curation.decode import decode_image  # noqa: E402
from models.presets import build_tokenizer, save_model_folder  # noqa: E402


def web_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Distinct photo-like JPEGs of web sizes (smooth gradients plus noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(500, 900)), int(rng.integers(400, 700))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack(
            [(xx * (i + 1)) % 256, (yy * 3 + i * 17) % 256, (xx + yy + i * 31) % 256], axis=2
        )
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def write_input(path: Path, images: list[bytes]) -> None:
    texts = [WEB_TEXTS[i % len(WEB_TEXTS)] for i in range(len(images))]
    table = pa.table(
        {"key": [f"img{i:06d}" for i in range(len(images))], "image": images, "text": texts}
    )
    pq.write_table(table, path, row_group_size=100)


def models_alone(data: Path, captioner: str, filter_: str, k: int, batch: int) -> float:
    """Seconds for load + decode + caption + score with the models layer in a plain loop."""
    from models.captioner import Captioner, CaptionSettings
    from models.loading import load_captioner, load_filter
    from models.scorer import Scorer

    start = time.perf_counter()
    cap = Captioner(load_captioner(captioner), CaptionSettings(captions_per_image=k))
    scorer = Scorer(load_filter(filter_))
    table = pq.read_table(data)
    keys, images, texts = (table.column(c).to_pylist() for c in ("key", "image", "text"))
    for i in range(0, len(keys), batch):
        pixels = np.stack(
            [decode_image(b, cap.loaded.image_size).pixels for b in images[i : i + batch]]
        )
        captions = cap.caption(pixels, keys[i : i + batch])
        scorer.score(pixels, [[t, *c] for t, c in zip(texts[i : i + batch], captions, strict=True)])
    return time.perf_counter() - start


def pipeline(data: Path, out: Path, captioner: str, filter_: str, k: int, batch: int) -> float:
    from pipelines.runner import run_pipeline

    config = build_config(
        input=str(data), out=str(out), captioner=captioner, filter=filter_,
        captions_per_image=k, batch_size=batch, progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    run_pipeline(config)
    return time.perf_counter() - start


def peak_rss(cmd: list[str]) -> float:
    """Peak RSS in MiB of a command's process tree, sampled every 20 ms."""
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.02)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images for the throughput part")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=400, help="N for the memory part (and 4N)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs of each path (best kept)"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}"
    }

    if not args.skip_throughput:
        tok = build_tokenizer(vocab_file=default_vocab())
        cap = str(save_model_folder("captioner", work / "cap", "base", tok))
        flt = str(save_model_folder("filter", work / "flt", "base", tok, seed=1))
        data = work / "throughput.parquet"
        write_input(data, web_jpegs(args.images))
        alone_runs, piped_runs = [], []
        for attempt in range(args.repeats):  # alternate, so both see the same machine state
            alone_runs.append(models_alone(data, cap, flt, args.k, args.batch_size))
            piped_runs.append(
                pipeline(data, work / f"run{attempt}", cap, flt, args.k, args.batch_size)
            )
        alone, piped = min(alone_runs), min(piped_runs)
        results["throughput"] = {
            "images": args.images, "k": args.k, "batch_size": args.batch_size,
            "models_alone_runs_s": [round(x, 2) for x in alone_runs],
            "pipeline_runs_s": [round(x, 2) for x in piped_runs],
            "models_alone_s": round(alone, 2), "pipeline_s": round(piped, 2),
            "models_alone_img_s": round(args.images / alone, 3), "pipeline_img_s": round(args.images / piped, 3),
            "pipeline_share": round(alone / piped, 3),
        }  # fmt: skip
        print(json.dumps(results["throughput"]))

    tok = build_tokenizer(["a", "picture", "of", "dog", "beach"])
    tiny_cap = save_model_folder("captioner", work / "tcap", "tiny", tok)
    tiny_flt = save_model_folder("filter", work / "tflt", "tiny", tok, seed=1)
    memory = {}
    for n in (args.rows, 4 * args.rows):
        data = work / f"rows{n}.parquet"
        write_input(data, web_jpegs(n, seed=n))
        cmd = [
            sys.executable, "-m", "app.cli", "run", str(data), "--out", str(work / f"mem{n}"),
            "--captioner", str(tiny_cap), "--filter", str(tiny_flt), "--no-progress",
        ]  # fmt: skip
        memory[n] = {
            "input_mib": round(data.stat().st_size / 2**20, 1),
            "peak_rss_mib": round(peak_rss(cmd), 1),
        }
        print(n, memory[n])
    small, large = memory[args.rows], memory[4 * args.rows]
    results["memory"] = {
        "runs": memory,
        "ratio_4n_over_n": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
