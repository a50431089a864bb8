"""The straightforward CapFilt script: the baseline that ``curation run`` is measured against.

What a user would write with transformers alone: decode the images with PIL and BLIP's
processor, ``BlipForConditionalGeneration.generate`` with K sampled sequences per image
(CapFilt's settings) in one batched call, then ``BlipForImageTextRetrieval`` ITM for every
web text and every caption (one forward per text, each re-running the ViT), and the
results written to Parquet.

    .venv/bin/python bench/straightforward.py pairs.parquet CAPTIONER FILTER out.parquet -k 3
"""

from __future__ import annotations

import argparse
import io

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipProcessor

PROMPT = "a picture of "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="Parquet file with key, image (bytes) and text columns")
    parser.add_argument("captioner")
    parser.add_argument("filter")
    parser.add_argument("out")
    parser.add_argument("-k", type=int, default=1, help="captions per image")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    table = pq.read_table(args.data)
    keys = table.column("key").to_pylist()
    texts = table.column("text").to_pylist()
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in table.column("image").to_pylist()]
    cap_processor = BlipProcessor.from_pretrained(args.captioner)
    captioner = BlipForConditionalGeneration.from_pretrained(args.captioner, dtype=dtype)
    captioner = captioner.to(args.device).eval()
    flt_processor = BlipProcessor.from_pretrained(args.filter)
    flt = BlipForImageTextRetrieval.from_pretrained(args.filter, dtype=dtype)
    flt = flt.to(args.device).eval()

    rows: dict[str, list] = {"key": [], "text": [], "origin": [], "itm": []}
    with torch.inference_mode():
        for start in range(0, len(images), args.batch_size):
            batch = images[start : start + args.batch_size]
            inputs = cap_processor(images=batch, text=[PROMPT] * len(batch), return_tensors="pt")
            inputs = inputs.to(args.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            output = captioner.generate(
                **inputs,
                do_sample=True,
                top_p=0.9,
                top_k=50,
                repetition_penalty=1.1,
                max_length=30,
                min_length=10,
                num_return_sequences=args.k,
            )
            decoded = cap_processor.batch_decode(output, skip_special_tokens=True)
            captions = [text[len(PROMPT) :].strip() for text in decoded]
            owners = [i for i in range(len(batch)) for _ in range(args.k)]
            candidates = [(i, texts[start + i], "web") for i in range(len(batch))]
            candidates += [(i, c, "synthetic") for i, c in zip(owners, captions, strict=True)]
            scored = flt_processor(
                images=[batch[i] for i, _, _ in candidates],
                text=[t for _, t, _ in candidates],
                padding=True,
                return_tensors="pt",
            ).to(args.device)
            scored["pixel_values"] = scored["pixel_values"].to(dtype)
            itm = flt(**scored, use_itm_head=True).itm_score.float().softmax(dim=-1)[:, 1]
            for (i, text, origin), score in zip(candidates, itm.tolist(), strict=True):
                rows["key"].append(keys[start + i])
                rows["text"].append(text)
                rows["origin"].append(origin)
                rows["itm"].append(score)
    pq.write_table(pa.table(rows), args.out)


if __name__ == "__main__":
    main()
