"""Whole runs against the straightforward script, the pipeline against the models layer
alone, and the pipeline's memory against input size.

1. Whole run: ``curation run`` and ``bench/straightforward.py`` (transformers as a user
   would call it: batched ``generate`` with K sampled sequences, then
   ``BlipForImageTextRetrieval`` ITM for the web texts and the captions) on the same web-
   sized JPEGs with the same BLIP-base-sized models (random weights, bert-base-uncased
   vocabulary), each a fresh process timed from start to exit, alternating, ``--repeats``
   times each. Reported: each run's wall and CPU seconds, the load average before it, and
   the speedup (median of the script's runs over the median of ours). Target: >= 2.8x at
   K=3 on 8 images (CPU).
2. Throughput in one process: the same images through (a) the models layer in a plain
   loop (decode at the model size, ``Captioner`` then ``Scorer`` in batches) and (b)
   ``curation run`` on the in-process runner, alternating, the best run of each counted;
   both include loading the models. Reported: images/s, the pipeline's share of (a)
   (target >= 90%), the models' FLOPs per image as a share of the device's matmul peak,
   and the time split of the pipeline's model work (input, vision, decoding, scoring) with
   the decoding of the JPEGs (input) measured alone.
3. Memory: ``curation run`` with tiny models in a fresh subprocess on N and 4N rows of
   distinct JPEGs; peak RSS of the process (sampled every 20 ms). Target: flat.

    .venv/bin/python bench/bench_pipeline.py --images 8 --k 3 --repeats 3 --skip-memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_models import WEB_TEXTS, default_vocab, matmul_peak, web_jpegs  # noqa: E402

from curation.config import build_config  # noqa: E402
from curation.decode import decode_image  # noqa: E402
from models.presets import build_tokenizer, save_model_folder  # noqa: E402


def write_input(path: Path, images: list[bytes]) -> None:
    texts = [WEB_TEXTS[i % len(WEB_TEXTS)] for i in range(len(images))]
    table = pa.table(
        {"key": [f"img{i:06d}" for i in range(len(images))], "image": images, "text": texts}
    )
    pq.write_table(table, path, row_group_size=100)


def timed_process(cmd: list[str]) -> dict[str, float]:
    """Wall seconds from start to exit, CPU seconds of the process tree, load before."""
    load = os.getloadavg()[0]
    before = psutil.Process().cpu_times()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = psutil.Process().cpu_times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": round(load, 2)}


def whole_runs(
    data: Path, work: Path, cap: str, flt: str, args: argparse.Namespace
) -> dict[str, object]:
    """``curation run`` and the straightforward script, alternating, fresh processes."""
    options = ["--device", args.device, "--dtype", args.dtype]
    ours, script = [], []
    for attempt in range(args.repeats):
        out = work / f"whole{attempt}"
        ours.append(
            timed_process(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "run",
                    str(data),
                    "--out",
                    str(out),
                    "--captioner",
                    cap,
                    "--filter",
                    flt,
                    "-k",
                    str(args.k),
                    "--batch-size",
                    str(args.batch_size),
                    "--no-progress",
                    *options,
                ]  # fmt: skip
            )
        )
        script.append(
            timed_process(
                [
                    sys.executable,
                    str(ROOT / "bench" / "straightforward.py"),
                    str(data),
                    cap,
                    flt,
                    str(work / f"script{attempt}.parquet"),
                    "-k",
                    str(args.k),
                    "--batch-size",
                    str(args.batch_size),
                    *options,
                ]  # fmt: skip
            )
        )
        print(json.dumps({"curation_run": ours[-1], "straightforward": script[-1]}), flush=True)
    ours_wall = statistics.median(r["wall_s"] for r in ours)
    script_wall = statistics.median(r["wall_s"] for r in script)
    return {
        "images": args.images, "k": args.k, "batch_size": args.batch_size,
        "curation_run": ours, "straightforward": script,
        "curation_run_median_s": ours_wall, "straightforward_median_s": script_wall,
        "speedup_median": round(script_wall / ours_wall, 2),
        "speedup_per_pair": [
            round(s["wall_s"] / o["wall_s"], 2) for o, s in zip(ours, script, strict=True)
        ],
        "images_per_s_curation_run": round(args.images / ours_wall, 3),
    }  # fmt: skip


def models_alone(data: Path, captioner: str, filter_: str, args: argparse.Namespace) -> float:
    """Seconds for load + decode + caption + score with the models layer in a plain loop."""
    from models.captioner import Captioner, CaptionSettings
    from models.loading import load_captioner, load_filter
    from models.scorer import Scorer

    start = time.perf_counter()
    options = {"device": args.device, "dtype": args.dtype}
    cap = Captioner(
        load_captioner(captioner, **options), CaptionSettings(captions_per_image=args.k)
    )
    scorer = Scorer(load_filter(filter_, **options))
    table = pq.read_table(data)
    keys, images, texts = (table.column(c).to_pylist() for c in ("key", "image", "text"))
    batch = args.batch_size
    for i in range(0, len(keys), batch):
        pixels = np.stack(
            [decode_image(b, cap.loaded.image_size).pixels for b in images[i : i + batch]]
        )
        captions = cap.caption(pixels, keys[i : i + batch])
        scorer.score(pixels, [[t, *c] for t, c in zip(texts[i : i + batch], captions, strict=True)])
    return time.perf_counter() - start


def pipeline(
    data: Path, out: Path, captioner: str, filter_: str, args: argparse.Namespace
) -> float:
    from pipelines.runner import run_pipeline

    config = build_config(
        input=str(data), out=str(out), captioner=captioner, filter=filter_,
        captions_per_image=args.k, batch_size=args.batch_size, progress=False,
        device=args.device, dtype=args.dtype,
    )  # fmt: skip
    start = time.perf_counter()
    run_pipeline(config)
    return time.perf_counter() - start


def model_flops(data: Path, captioner: str, filter_: str, args: argparse.Namespace) -> float:
    """FLOPs of captioning and scoring the input with the models layer (torch's counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops:
        models_alone(data, captioner, filter_, args)
    return float(flops.get_total_flops())


def in_process(
    data: Path, work: Path, cap: str, flt: str, args: argparse.Namespace
) -> dict[str, object]:
    """Models layer alone against the in-process pipeline, with FLOPs, peak and time split."""
    import torch

    from models.loading import resolve_device, resolve_dtype
    from models.phases import measure_phases

    alone_runs, piped_runs = [], []
    for attempt in range(args.repeats):  # alternate, so both see the same machine state
        alone_runs.append(models_alone(data, cap, flt, args))
        piped_runs.append(pipeline(data, work / f"run{attempt}", cap, flt, args))
    alone, piped = min(alone_runs), min(piped_runs)
    with measure_phases() as phases:
        pipeline(data, work / "phases", cap, flt, args)
    jpegs = pq.read_table(data).column("image").to_pylist()
    start = time.perf_counter()
    for blob in jpegs:
        decode_image(blob, 384)
    phases["input (JPEG decode, one thread)"] = time.perf_counter() - start
    flops = model_flops(data, cap, flt, args)
    device = resolve_device(args.device)
    peak = matmul_peak(device, resolve_dtype(args.dtype, device), args.peak_size)
    return {
        "images": args.images, "k": args.k, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "models_alone_runs_s": [round(x, 2) for x in alone_runs],
        "pipeline_runs_s": [round(x, 2) for x in piped_runs],
        "models_alone_s": round(alone, 2), "pipeline_s": round(piped, 2),
        "models_alone_img_s": round(args.images / alone, 3),
        "pipeline_img_s": round(args.images / piped, 3),
        "pipeline_share": round(alone / piped, 3),
        "model_gflop_per_image": round(flops / args.images / 1e9, 1),
        "matmul_peak_tflops": round(peak / 1e12, 3),
        "pipeline_fraction_of_peak": round(flops / piped / peak, 4),
        "pipeline_split_s": {name: round(seconds, 3) for name, seconds in phases.items()},
    }  # fmt: skip


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


def memory(work: Path, rows: int) -> dict[str, object]:
    tok = build_tokenizer(["a", "picture", "of", "dog", "beach"])
    tiny_cap = save_model_folder("captioner", work / "tcap", "tiny", tok)
    tiny_flt = save_model_folder("filter", work / "tflt", "tiny", tok, seed=1)
    runs = {}
    for n in (rows, 4 * rows):
        data = work / f"rows{n}.parquet"
        write_input(data, web_jpegs(n, seed=n))
        cmd = [
            sys.executable, "-m", "app.cli", "run", str(data), "--out", str(work / f"mem{n}"),
            "--captioner", str(tiny_cap), "--filter", str(tiny_flt), "--no-progress",
        ]  # fmt: skip
        runs[n] = {
            "input_mib": round(data.stat().st_size / 2**20, 1),
            "peak_rss_mib": round(peak_rss(cmd), 1),
        }
        print(n, runs[n], flush=True)
    small, large = runs[rows], runs[4 * rows]
    return {
        "runs": runs,
        "ratio_4n_over_n": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images for the throughput parts")
    parser.add_argument("--k", type=int, default=3, help="captions per image")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--rows", type=int, default=400, help="N for the memory part (and 4N)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul side for the peak")
    parser.add_argument("--skip-whole", action="store_true", help="skip part 1")
    parser.add_argument("--skip-throughput", action="store_true", help="skip part 2")
    parser.add_argument("--skip-memory", action="store_true", help="skip part 3")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}",
        "device": args.device,
        "dtype": args.dtype,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if not (args.skip_whole and args.skip_throughput):
        tok = build_tokenizer(vocab_file=default_vocab())
        cap = str(save_model_folder("captioner", work / "cap", "base", tok))
        flt = str(save_model_folder("filter", work / "flt", "base", tok, seed=1))
        data = work / "throughput.parquet"
        write_input(data, web_jpegs(args.images))
        if not args.skip_whole:
            results["whole_run"] = whole_runs(data, work, cap, flt, args)
            print(json.dumps(results["whole_run"]), flush=True)
        if not args.skip_throughput:
            results["throughput"] = in_process(data, work, cap, flt, args)
            print(json.dumps(results["throughput"]), flush=True)
    if not args.skip_memory:
        results["memory"] = memory(work, args.rows)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
