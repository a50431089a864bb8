"""Synthetic captions with a BLIP captioner: K captions per image from one vision pass.

Sampling follows salesforce/BLIP ``BLIP_Decoder.generate(sample=True)``: nucleus top_p 0.9,
top_k 50, repetition penalty 1.1, max/min length 30/10 counting the prompt "a picture of ".

Reproducibility per key: sampling is done as greedy decoding over logits perturbed with
Gumbel noise (the argmax of log-probabilities plus Gumbel(0, 1) noise is a draw from the
distribution). The noise is a counter-based hash of (key, seed, caption index, step,
token), so a caption depends on its image and key only, never on which other images share
its batch, and the same integers are drawn on CPU and GPU.

The K rows of an image share its vision states; their cross-attention keys and values are
projected once per image (``models.shared_states``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from curation.caption_settings import CaptionSettings
from models.loading import LoadedModel
from models.preprocess import pixel_values
from models.shared_states import SharedCrossAttention

_MASK32 = 0xFFFFFFFF


def row_seeds(keys: Sequence[str], seed: int, captions_per_image: int) -> torch.Tensor:
    """Two 32-bit words per (key, caption index), from sha256, in ``generate``'s row order."""
    words = []
    for key in keys:
        for index in range(captions_per_image):
            digest = hashlib.sha256(f"{seed}\x00{index}\x00{key}".encode()).digest()
            words.append(
                (int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little"))
            )
    return torch.tensor(words, dtype=torch.int64).reshape(-1, 2)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 integer hash on int64 tensors holding 32-bit values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """Gumbel(0, 1) noise of shape ``rows x vocab``, a pure function of (seed row, step, token)."""
    step_word = _mix32(torch.tensor(step * 0x9E3779B9 + 0x632BE5AB, device=seeds.device))
    state = _mix32(seeds[:, 0] ^ _mix32(seeds[:, 1] ^ step_word))
    tokens = _mix32(torch.arange(vocab_size, device=seeds.device, dtype=torch.int64) * 0x9E3779B1)
    bits = _mix32(state[:, None] ^ tokens[None, :]) >> 8
    uniform = (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(uniform))


class SeededSampling(LogitsProcessor):
    """Top-k and top-p filtering, then per-row seeded Gumbel noise: greedy decoding over the
    result samples from the filtered distribution, reproducibly per row.

    ``generate`` runs its own processors (repetition penalty, minimum length) before custom
    ones, so the penalised distribution is the one filtered and sampled, as with
    ``do_sample=True``.
    """

    def __init__(self, seeds: torch.Tensor, top_k: int, top_p: float) -> None:
        self.seeds = seeds
        self.filters: list[LogitsProcessor] = []
        if top_k > 0:
            self.filters.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.filters.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warp in self.filters:
            scores = warp(input_ids, scores)
        noise = gumbel_noise(self.seeds.to(scores.device), input_ids.shape[1], scores.shape[-1])
        return scores.float().log_softmax(dim=-1) + noise


class Captioner:
    """Writes ``captions_per_image`` captions for each image of a batch."""

    def __init__(self, loaded: LoadedModel, settings: CaptionSettings) -> None:
        self.loaded = loaded
        self.settings = settings
        tokenizer = loaded.tokenizer
        # As BlipForConditionalGeneration.generate: [DEC] replaces [CLS], the trailing
        # [SEP] is dropped, and decoding continues the prompt.
        prompt_ids = tokenizer(settings.prompt, return_tensors="pt").input_ids[:, :-1]
        prompt_ids[:, 0] = loaded.model.config.text_config.bos_token_id
        if prompt_ids.shape[1] >= settings.max_length:
            raise ValueError(f"prompt {settings.prompt!r} is longer than max_length")
        self.prompt_ids = prompt_ids
        text_config = loaded.model.config.text_config
        self.generation = GenerationConfig(
            max_length=settings.max_length,
            min_length=settings.min_length,
            repetition_penalty=settings.repetition_penalty,
            num_return_sequences=1 if settings.sample else settings.captions_per_image,
            num_beams=1 if settings.sample else settings.num_beams,
            do_sample=False,
            bos_token_id=text_config.bos_token_id,
            eos_token_id=text_config.sep_token_id,
            pad_token_id=text_config.pad_token_id,
        )

    def caption(self, pixels: np.ndarray, keys: Sequence[str]) -> list[list[str]]:
        """Captions per image (prompt stripped, whitespace collapsed), in input order."""
        if len(keys) != len(pixels):
            raise ValueError(f"{len(pixels)} images but {len(keys)} keys")
        if len(keys) == 0:
            return []
        settings = self.settings
        loaded = self.loaded
        batch = pixel_values(pixels, loaded)
        model = loaded.model
        k = settings.captions_per_image
        processors = LogitsProcessorList()
        with loaded.inference():
            states = model.vision_model(pixel_values=batch).last_hidden_state
            # One vision pass; with sampling, each image's states serve its K rows (beam
            # search expands them itself).
            copies = k if settings.sample else 1
            if settings.sample:
                seeds = row_seeds(keys, settings.seed, k).to(loaded.device)
                processors.append(SeededSampling(seeds, settings.top_k, settings.top_p))
            owner = torch.arange(len(keys), device=loaded.device).repeat_interleave(copies)
            input_ids = self.prompt_ids.repeat(len(owner), 1).to(loaded.device)
            with SharedCrossAttention(model.text_decoder, states) as shared:
                encoder_states = shared.repeat(owner)
                output = model.text_decoder.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    encoder_hidden_states=encoder_states,
                    encoder_attention_mask=torch.ones(
                        encoder_states.shape[:2], dtype=torch.long, device=loaded.device
                    ),
                    generation_config=self.generation,
                    logits_processor=processors,
                )
        generated = output[:, self.prompt_ids.shape[1] :]
        texts = loaded.tokenizer.batch_decode(generated, skip_special_tokens=True)
        texts = [" ".join(text.split()) for text in texts]
        return [texts[i * k : (i + 1) * k] for i in range(len(keys))]
