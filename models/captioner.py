"""Synthetic captions with a BLIP captioner: K captions per image from one vision pass.

Sampling follows salesforce/BLIP ``BLIP_Decoder.generate(sample=True)``: nucleus top_p 0.9,
top_k 50, repetition penalty 1.1, max/min length 30/10 counting the prompt "a picture of ".
It is reproducible per key: the noise of each row is seeded by (key, seed, caption index)
(``models.sampling``), so a caption depends on its image and key only, never on which
other images share its batch.

Sampled and greedy captions are decoded by :class:`models.decoding.CaptionDecoder`
(static shapes, cross-attention keys/values once per image, finished rows dropped, CUDA
graphs on GPU); beam search goes through transformers' ``generate``, with the image's
cross-attention keys and values projected once for its beams (``models.shared_states``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig

from curation.caption_settings import CaptionSettings
from models.decoding import CaptionDecoder
from models.loading import LoadedModel
from models.phases import phase
from models.preprocess import pixel_values
from models.sampling import TokenSampler, row_seeds
from models.shared_states import SharedCrossAttention


def prompt_token_ids(tokenizer: Any, prompt: str, bos_token_id: int) -> torch.Tensor:
    """The tokens decoding starts from, as ``BlipForConditionalGeneration.generate`` makes
    them: [DEC] (``bos_token_id``) replaces [CLS] and the trailing [SEP] is dropped."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids[:, :-1]
    ids[:, 0] = bos_token_id
    return ids


def check_prompt(prompt_tokens: int, settings: CaptionSettings) -> None:
    """Raise ``ValueError`` when a prompt of ``prompt_tokens`` tokens leaves no token to
    write within ``settings.max_length``."""
    if prompt_tokens >= settings.max_length:
        raise ValueError(
            f"prompt {settings.prompt!r} is {prompt_tokens} tokens, which leaves no room "
            f"within max_length {settings.max_length}; shorten --prompt or raise --max-length"
        )


class Captioner:
    """Writes ``captions_per_image`` captions for each image of a batch."""

    def __init__(self, loaded: LoadedModel, settings: CaptionSettings) -> None:
        self.loaded = loaded
        self.settings = settings
        tokenizer = loaded.tokenizer
        bos = loaded.model.config.text_config.bos_token_id
        self.prompt_ids = prompt_token_ids(tokenizer, settings.prompt, bos)
        check_prompt(self.prompt_ids.shape[1], settings)
        text_config = loaded.model.config.text_config
        self.decoder: CaptionDecoder | None = None
        self.generation: GenerationConfig | None = None
        if settings.sample or settings.num_beams == 1:
            sampler = TokenSampler(
                end_token_id=text_config.sep_token_id,
                repetition_penalty=settings.repetition_penalty,
                min_length=settings.min_length,
                sample=settings.sample,
                top_k=settings.top_k,
                top_p=settings.top_p,
            )
            self.decoder = CaptionDecoder(
                loaded.model.text_decoder,
                sampler,
                max_length=settings.max_length,
                pad_token_id=text_config.pad_token_id,
            )
        else:
            self.generation = GenerationConfig(
                max_length=settings.max_length,
                min_length=settings.min_length,
                repetition_penalty=settings.repetition_penalty,
                num_return_sequences=settings.captions_per_image,
                num_beams=settings.num_beams,
                do_sample=False,
                bos_token_id=text_config.bos_token_id,
                eos_token_id=text_config.sep_token_id,
                pad_token_id=text_config.pad_token_id,
            )

    def caption(self, pixels: np.ndarray | torch.Tensor, keys: Sequence[str]) -> list[list[str]]:
        """Captions per image (prompt stripped, whitespace collapsed), in input order."""
        if len(keys) != len(pixels):
            raise ValueError(f"{len(pixels)} images but {len(keys)} keys")
        if len(keys) == 0:
            return []
        loaded = self.loaded
        device = loaded.device
        k = self.settings.captions_per_image
        with loaded.inference():
            with phase("input", device):
                batch = pixel_values(pixels, loaded)
            with phase("vision", device):
                states = loaded.model.vision_model(pixel_values=batch).last_hidden_state
            with phase("decoding", device):
                if self.decoder is not None:
                    seeds = row_seeds(keys, self.settings.seed, k).to(device)
                    prompt = self.prompt_ids[0].to(device)
                    output = self.decoder.decode(states, prompt, k, seeds)
                else:
                    output = self._beam_search(states)
                output = output.cpu()
        generated = output[:, self.prompt_ids.shape[1] :]
        texts = loaded.tokenizer.batch_decode(generated, skip_special_tokens=True)
        texts = [" ".join(text.split()) for text in texts]
        return [texts[i * k : (i + 1) * k] for i in range(len(keys))]

    def _beam_search(self, states: torch.Tensor) -> torch.Tensor:
        """transformers' beam search, which expands each image's states to its beams."""
        decoder = self.loaded.model.text_decoder
        owner = torch.arange(states.shape[0], device=states.device)
        input_ids = self.prompt_ids.repeat(len(owner), 1).to(states.device)
        with SharedCrossAttention(decoder, states) as shared:
            encoder_states = shared.repeat(owner)
            return decoder.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                encoder_hidden_states=encoder_states,
                encoder_attention_mask=torch.ones(
                    encoder_states.shape[:2], dtype=torch.long, device=states.device
                ),
                generation_config=self.generation,
            )
