"""Small BLIP configurations and domain tokenizers built without a model hub.

Used by finetuning (``--base tiny`` / ``--base small``) to start from random weights, by the
tests to build real BLIP models that go through the same ``from_pretrained`` path as hub
checkpoints, and by benchmarks (``base``: BLIP-base-sized, random weights).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from transformers import (
    BertTokenizerFast,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    BlipProcessor,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEC_TOKEN = "[DEC]"
ENC_TOKEN = "[ENC]"

#: name -> (image_size, patch_size, vision hidden, vision layers, text hidden, text layers, heads)
PRESETS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "tiny": (32, 8, 32, 1, 32, 1, 2),
    "mini": (64, 16, 128, 3, 128, 3, 4),
    "small": (96, 16, 192, 4, 192, 4, 4),
    "base": (384, 16, 768, 12, 768, 12, 12),
}

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words_of(texts: Iterable[str]) -> list[str]:
    """Distinct lowercase word pieces of ``texts`` in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in _WORD.findall(text.lower()):
            seen.setdefault(word, None)
    return list(seen)


def build_tokenizer(
    words: Iterable[str] | None = None, vocab_file: str | Path | None = None
) -> BertTokenizerFast:
    """A BLIP-style WordPiece tokenizer: BERT specials, the words, then [DEC] and [ENC].

    Pass ``vocab_file`` to use an existing BERT vocabulary (for example bert-base-uncased,
    which makes token ids identical to the real BLIP checkpoints).
    """
    if vocab_file is not None:
        lines = Path(vocab_file).read_text(encoding="utf-8").rstrip("\n").split("\n")
        vocab = {line: i for i, line in enumerate(lines)}
    else:
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for word in words or ():
            vocab.setdefault(word, len(vocab))
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN, "additional_special_tokens": [ENC_TOKEN]})
    return tokenizer


def blip_config(preset: str, tokenizer: BertTokenizerFast) -> BlipConfig:
    """A :class:`BlipConfig` of the named size whose text side matches ``tokenizer``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    image_size, patch, v_hidden, v_layers, t_hidden, t_layers, heads = PRESETS[preset]
    vision = dict(
        image_size=image_size,
        patch_size=patch,
        hidden_size=v_hidden,
        intermediate_size=4 * v_hidden,
        num_hidden_layers=v_layers,
        num_attention_heads=heads,
        # BlipVisionConfig's default (1e-10) makes a random vision tower map every image to
        # the same embedding; BERT's 0.02 gives random models image-dependent outputs.
        initializer_range=0.02,
    )
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=t_hidden,
        encoder_hidden_size=v_hidden,
        intermediate_size=4 * t_hidden,
        num_hidden_layers=t_layers,
        num_attention_heads=heads,
        max_position_embeddings=64 if preset != "base" else 512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids(DEC_TOKEN),
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    projection = 256 if preset == "base" else min(64, t_hidden)
    return BlipConfig(
        vision_config=vision,
        text_config=text,
        projection_dim=projection,
        image_text_hidden_size=projection,
    )


def image_processor(image_size: int) -> BlipImageProcessorPil:
    """BLIP's preprocessing (bicubic squash resize, CLIP mean/std) at ``image_size``."""
    return BlipImageProcessorPil(size={"height": image_size, "width": image_size})


def save_model_folder(
    kind: str,
    folder: str | Path,
    preset: str = "tiny",
    tokenizer: BertTokenizerFast | None = None,
    seed: int = 0,
) -> Path:
    """Build a randomly initialised captioner (``kind="captioner"``) or filter (``"filter"``)
    and save it with tokenizer and processor, as a hub checkpoint folder would hold them."""
    import torch

    tokenizer = tokenizer or build_tokenizer(
        words_of(["a picture of a red circle and blue square"])
    )
    config = blip_config(preset, tokenizer)
    torch.manual_seed(seed)
    if kind == "captioner":
        model = BlipForConditionalGeneration(config)
    elif kind == "filter":
        model = BlipForImageTextRetrieval(config)
    else:
        raise ValueError(f"kind must be 'captioner' or 'filter', not {kind!r}")
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    processor = BlipProcessor(
        image_processor=image_processor(config.vision_config.image_size), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    return folder
