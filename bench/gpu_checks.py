"""Correctness of the GPU paths, on a CUDA device (the CPU paths are covered by the tests).

1. Captions from the static-shape decoder with CUDA graphs equal, token for token,
   transformers' ``generate`` path (stock attention, repeated image states, the same
   logits rules and seeded noise) in fp32 on the GPU: a small model whose rows end at
   different steps (so finished rows are dropped through smaller workspaces), several
   settings and batch sizes, then BLIP-base size.
2. In bf16, the decoder with CUDA graphs gives the same tokens as without them.
3. Fused (SDPA) attention agrees with the stock modules in bf16 (vision and text).
4. Scores agree with ``BlipForImageTextRetrieval.forward`` pair by pair in fp32.

    python bench/gpu_checks.py --json checks.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_models import WEB_TEXTS, default_vocab  # noqa: E402
from conftest import TINY_WORDS  # noqa: E402
from test_decoding import reference_captions  # noqa: E402

from curation.caption_settings import CaptionSettings  # noqa: E402
from models.captioner import Captioner  # noqa: E402
from models.loading import load_captioner, load_filter  # noqa: E402
from models.preprocess import pixel_values  # noqa: E402
from models.presets import build_tokenizer, save_model_folder, words_of  # noqa: E402
from models.scorer import Scorer, normalize_text  # noqa: E402

DEVICE = "cuda"  # --device cpu runs the same checks on CPU (a dry run of this script)


def images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def same_captions(folder: Path, settings: CaptionSettings, n: int) -> dict[str, Any]:
    """Decoder (fp32, CUDA graphs) against the generate path (fp32, stock attention)."""
    fused = load_captioner(str(folder), device=DEVICE)
    stock = load_captioner(str(folder), device=DEVICE, attention="eager")
    pixels = images(n, fused.image_size, seed=n)
    keys = [f"gpu-{i}" for i in range(n)]
    captioner = Captioner(fused, settings)
    start = time.perf_counter()
    got = captioner.caption(pixels, keys)
    again = captioner.caption(pixels, keys)  # graphs replayed from the workspaces kept
    seconds = time.perf_counter() - start
    expected = reference_captions(stock, settings, pixels, keys)
    rows = [c for group in expected for c in group]
    differing = sum(
        a != b for g, e in zip(got, expected, strict=True) for a, b in zip(g, e, strict=True)
    )
    lengths = {len(c.split()) for c in rows}
    return {
        "ok": got == expected and again == got,
        "images": n,
        "settings": settings.to_dict(),
        "rows": len(rows),
        "rows_differing": differing,
        "distinct_word_counts": len(lengths),
        "graphs": len(captioner.decoder._graph_cache),
        "seconds_two_calls": round(seconds, 3),
        "sample": got[0][:2],
    }


def graphs_match(folder: Path, n: int) -> dict[str, Any]:
    """bf16: the same tokens with and without CUDA graphs (static shapes both)."""
    loaded = load_captioner(str(folder), device=DEVICE, dtype="bf16")
    pixels = images(n, loaded.image_size, seed=1)
    keys = [f"bf16-{i}" for i in range(n)]
    settings = CaptionSettings(captions_per_image=3)
    with_graphs = Captioner(loaded, settings).caption(pixels, keys)
    plain = Captioner(loaded, settings)
    plain.decoder.cuda_graphs = False
    without = plain.caption(pixels, keys)
    return {"ok": with_graphs == without, "images": n, "sample": with_graphs[0][:2]}


def attention_agrees(folder: Path, kind: str) -> dict[str, Any]:
    """bf16: fused against stock attention, vision states and text states."""
    load = load_captioner if kind == "captioner" else load_filter
    fused = load(str(folder), device=DEVICE, dtype="bf16")
    stock = load(str(folder), device=DEVICE, dtype="bf16", attention="eager")
    pixels = pixel_values(images(8, fused.image_size, seed=2), fused)
    tokens = fused.tokenizer(WEB_TEXTS, padding=True, return_tensors="pt").to(DEVICE)
    with torch.inference_mode():
        a = stock.model.vision_model(pixel_values=pixels).last_hidden_state.float()
        b = fused.model.vision_model(pixel_values=pixels).last_hidden_state.float()
        text = "text_encoder" if kind == "filter" else "text_decoder"
        states = a[: len(WEB_TEXTS)].to(torch.bfloat16)
        kwargs = {
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "encoder_hidden_states": states,
        }
        if kind == "filter":
            c = getattr(stock.model, text)(**kwargs).last_hidden_state.float()
            d = getattr(fused.model, text)(**kwargs).last_hidden_state.float()
        else:
            c = getattr(stock.model, text)(**kwargs).logits.float()
            d = getattr(fused.model, text)(**kwargs).logits.float()
    mask = tokens.attention_mask.bool()
    vision = (a - b).abs().max().item() / a.abs().max().item()
    texts = (c[mask] - d[mask]).abs().max().item() / c[mask].abs().max().item()
    return {
        "ok": vision < 0.05 and texts < 0.05,
        "vision_rel_max_diff": vision,
        "text_rel_max_diff": texts,
    }


def scores_agree(folder: Path) -> dict[str, Any]:
    """fp32: the scorer against transformers' forward, one pair at a time."""
    loaded = load_filter(str(folder), device=DEVICE)
    stock = load_filter(str(folder), device=DEVICE, attention="eager")
    pixels = images(4, loaded.image_size, seed=3)
    texts = [WEB_TEXTS[i : i + 3] for i in range(4)]
    scores = Scorer(loaded, first_token="cls").score(pixels, texts)
    worst = 0.0
    for image, group, result in zip(pixels, texts, scores, strict=True):
        for j, text in enumerate(group):
            ids = stock.tokenizer(normalize_text(text), return_tensors="pt").input_ids.to(DEVICE)
            batch = pixel_values(image[None], stock)
            with torch.inference_mode():
                itm = stock.model(input_ids=ids, pixel_values=batch, use_itm_head=True).itm_score
                itc = stock.model(input_ids=ids, pixel_values=batch, use_itm_head=False).itm_score
            worst = max(
                worst,
                abs(itm.softmax(-1)[0, 1].item() - float(result.itm[j])),
                abs(itc[0, 0].item() - float(result.itc[j])),
            )
    return {"ok": worst < 1e-3, "max_abs_diff": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--base-images", type=int, default=32, help="images of the base checks")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    work = Path(tempfile.mkdtemp(prefix="gpu-checks-"))
    small_tok = build_tokenizer(words_of([TINY_WORDS]))
    mini = {
        kind: save_model_folder(kind, work / f"mini-{kind}", "mini", small_tok, seed=3)
        for kind in ("captioner", "filter")
    }
    base_tok = build_tokenizer(vocab_file=default_vocab())
    base = save_model_folder("captioner", work / "base-captioner", "base", base_tok)
    checks: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    plan = {
        "decoder_mini_k3": lambda: same_captions(
            mini["captioner"], CaptionSettings(captions_per_image=3), 37
        ),
        "decoder_mini_k1_short": lambda: same_captions(
            mini["captioner"], CaptionSettings(min_length=3, max_length=20, top_p=0.7), 64
        ),
        "decoder_mini_greedy": lambda: same_captions(
            mini["captioner"], CaptionSettings(sample=False, num_beams=1, min_length=4), 16
        ),
        "decoder_base_k3": lambda: same_captions(
            base, CaptionSettings(captions_per_image=3), args.base_images
        ),
        "graphs_bf16": lambda: graphs_match(base, 2 * args.base_images),
        "attention_bf16_filter": lambda: attention_agrees(mini["filter"], "filter"),
        "attention_bf16_captioner": lambda: attention_agrees(mini["captioner"], "captioner"),
        "scores_fp32": lambda: scores_agree(mini["filter"]),
    }
    for name, check in plan.items():
        try:
            checks[name] = check()
        except Exception as err:  # report every check, then fail
            checks[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(name, json.dumps(checks[name]), flush=True)
    passed = all(value["ok"] for value in checks.values() if isinstance(value, dict))
    checks["all_ok"] = passed
    if args.json:
        args.json.write_text(json.dumps(checks, indent=2))
    print("all GPU checks passed" if passed else "SOME GPU CHECKS FAILED")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
