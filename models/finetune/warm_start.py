"""Start a filter from a trained captioner.

BLIP's text encoder and decoder share every weight but the self-attention layers, and both
attend to the same vision transformer. A captioner already trained on a domain has therefore
learned the image features and the word embeddings that the filter needs, so a filter whose
vision model and text transformer are copied from it (self-attention included, as a starting
point) learns ITC and ITM in a fraction of the steps that random weights take. The ITC
projections and the ITM head start fresh.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BlipForImageTextRetrieval

from models.loading import LoadedModel

CAPTIONER_ARCHITECTURE = "BlipForConditionalGeneration"
_DECODER_PREFIX = "text_decoder.bert."
_ENCODER_PREFIX = "text_encoder."
#: Filter weights with no counterpart in a captioner.
FRESH_PREFIXES = ("vision_proj.", "text_proj.", "itm_head.")


def is_captioner_folder(path: str | Path) -> bool:
    """True when ``path`` is a local checkpoint folder saved from a BLIP captioner."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return CAPTIONER_ARCHITECTURE in architectures


def filter_state_from_captioner(
    captioner_state: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename a captioner's vision and text-transformer weights to the filter's names.

    The decoder's language-model head has no filter counterpart and is left out.
    """
    state: dict[str, torch.Tensor] = {}
    for name, tensor in captioner_state.items():
        if name.startswith("vision_model."):
            state[name] = tensor
        elif name.startswith(_DECODER_PREFIX):
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
    missing = [name for name in result.missing_keys if not name.startswith(FRESH_PREFIXES)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{captioner.name} does not match a BLIP filter's layout: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model.to(device=captioner.device, dtype=captioner.dtype)
    return LoadedModel(
        model=model,
        tokenizer=captioner.tokenizer,
        image_size=captioner.image_size,
        image_mean=captioner.image_mean,
        image_std=captioner.image_std,
        name=captioner.name,
        revision=captioner.revision,
        device=captioner.device,
        dtype=captioner.dtype,
        fingerprint="",
    )
