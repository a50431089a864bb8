"""Start a filter from a trained captioner.

BLIP's text encoder and decoder share every weight but the self-attention layers (Li et al.
2022, section 3.1), and both attend to the same vision transformer. A captioner trained on a
domain has therefore learned most of what the filter needs: the image features, the word
embeddings, the cross-attention to the image and the feed-forward layers. A filter that
takes those from the captioner learns ITC and ITM in far fewer steps than from random
weights. Self-attention starts fresh, as do the ITC projections and the ITM head: the
decoder's causal self-attention reads a caption's prefix as a plausible caption, and a
filter started from it learns to accept truncated texts.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from transformers import BlipForImageTextRetrieval

from curation.storage import Location
from models.loading import LoadedModel

CAPTIONER_ARCHITECTURE = "BlipForConditionalGeneration"
_DECODER_PREFIX = "text_decoder.bert."
_ENCODER_PREFIX = "text_encoder."
#: Filter weights with no counterpart in a captioner.
FRESH_PREFIXES = ("vision_proj.", "text_proj.", "itm_head.")
#: Self-attention blocks (attention and its output projection and norm), not shared.
_SELF_ATTENTION = re.compile(r"\.layer\.\d+\.attention\.")


def is_captioner_folder(path: str | Path) -> bool:
    """True when ``path`` is a checkpoint folder (local or on object storage) saved from a
    BLIP captioner."""
    config = Location(str(path)) / "config.json"
    if not config.is_file():
        return False
    architectures = config.read_json().get("architectures") or []
    return CAPTIONER_ARCHITECTURE in architectures


def filter_state_from_captioner(
    captioner_state: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename a captioner's vision and shared text weights to the filter's names.

    Left out: the decoder's self-attention blocks and its language-model head.
    """
    state: dict[str, torch.Tensor] = {}
    for name, tensor in captioner_state.items():
        if name.startswith("vision_model."):
            state[name] = tensor
        elif name.startswith(_DECODER_PREFIX) and not _SELF_ATTENTION.search(name):
            state[_ENCODER_PREFIX + name[len(_DECODER_PREFIX) :]] = tensor
    return state


def filter_from_captioner(captioner: LoadedModel) -> LoadedModel:
    """A filter with the captioner's config, tokenizer, preprocessing and shared weights.

    Raises ``ValueError`` if any filter weight other than the projections and the ITM head
    would be left without a value (a captioner of a different layout).
    """
    model = BlipForImageTextRetrieval(captioner.model.config)
    state = filter_state_from_captioner(captioner.model.state_dict())
    result = model.load_state_dict(state, strict=False)
    missing = [
        name
        for name in result.missing_keys
        if not name.startswith(FRESH_PREFIXES) and not _SELF_ATTENTION.search(name)
    ]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{captioner.name} does not match a BLIP filter's layout: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model.to(device=captioner.device, dtype=captioner.dtype)
    return dataclasses.replace(captioner, model=model)
