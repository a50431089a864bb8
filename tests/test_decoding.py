"""The static-shape decoder gives exactly the tokens of transformers' ``generate`` path.

The reference is the captioner's former path: stock (eager) attention, the vision states
repeated per caption row, ``generate`` with its own repetition-penalty and minimum-length
processors, then transformers' top-k and top-p warpers and the seeded Gumbel noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

from curation.caption_settings import CaptionSettings
from models.captioner import Captioner
from models.loading import LoadedModel, load_captioner
from models.preprocess import pixel_values
from models.presets import save_model_folder
from models.sampling import gumbel_noise, row_seeds


class ReferenceSampling(LogitsProcessor):
    """transformers' top-k and top-p warpers, then the rows' seeded Gumbel noise."""

    def __init__(self, seeds: torch.Tensor, top_k: int, top_p: float) -> None:
        self.seeds = seeds
        self.warpers = [TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        noise = gumbel_noise(self.seeds, input_ids.shape[1], torch.arange(scores.shape[-1]))
        return scores.float().log_softmax(dim=-1) + noise


def reference_captions(
    loaded: LoadedModel, settings: CaptionSettings, images: np.ndarray, keys: Sequence[str]
) -> list[list[str]]:
    """Captions by ``generate`` over repeated vision states (the former captioner path)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    text = model.config.text_config
    k = settings.captions_per_image if settings.sample else 1
    prompt = tokenizer(settings.prompt, return_tensors="pt").input_ids[:, :-1]
    prompt[:, 0] = text.bos_token_id
    prompt = prompt.repeat(len(keys) * k, 1)
    processors = []
    if settings.sample:
        seeds = row_seeds(keys, settings.seed, k)
        processors.append(ReferenceSampling(seeds, settings.top_k, settings.top_p))
    with torch.inference_mode():
        states = model.vision_model(pixel_values=pixel_values(images, loaded)).last_hidden_state
        states = states.repeat_interleave(k, dim=0)
        output = model.text_decoder.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            encoder_hidden_states=states,
            encoder_attention_mask=torch.ones(states.shape[:2], dtype=torch.long),
            logits_processor=processors,
            do_sample=False,
            num_beams=1,
            max_length=settings.max_length,
            min_length=settings.min_length,
            repetition_penalty=settings.repetition_penalty,
            bos_token_id=text.bos_token_id,
            eos_token_id=text.sep_token_id,
            pad_token_id=text.pad_token_id,
        )
    texts = tokenizer.batch_decode(output[:, prompt.shape[1] :], skip_special_tokens=True)
    texts = [" ".join(t.split()) for t in texts]
    return [texts[i * k : (i + 1) * k] for i in range(len(keys))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A small captioner (2 layers, 64 px): big enough that rows end at different steps."""
    path = tmp_path_factory.mktemp("models") / "mini-captioner"
    return save_model_folder("captioner", path, "mini", tiny_tokenizer, seed=3)


@pytest.fixture(scope="module")
def fused(folder: Path) -> LoadedModel:
    return load_captioner(str(folder), device="cpu")


@pytest.fixture(scope="module")
def stock(folder: Path) -> LoadedModel:
    return load_captioner(str(folder), device="cpu", attention="eager")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)


KEYS = [f"photo-{i}" for i in range(6)]


def _end_steps(loaded: LoadedModel, captions: list[list[str]]) -> set[int]:
    return {
        len(loaded.tokenizer(c, add_special_tokens=False).input_ids) for g in captions for c in g
    }


@pytest.mark.parametrize(
    "settings",
    [
        CaptionSettings(captions_per_image=3),
        CaptionSettings(captions_per_image=1, seed=5),
        CaptionSettings(captions_per_image=2, min_length=4, max_length=20, top_p=0.7, top_k=20),
        CaptionSettings(captions_per_image=1, sample=False, num_beams=1, min_length=5),
    ],
    ids=["capfilt-k3", "capfilt-k1", "short-nucleus", "greedy"],
)
def test_tokens_equal_generate_on_cpu_fp32(stock, fused, images, settings):
    expected = reference_captions(stock, settings, images, KEYS)
    got = Captioner(fused, settings).caption(images, KEYS)
    assert got == expected
    # Rows ended at different steps, so dropping finished rows was exercised.
    assert len(_end_steps(stock, expected)) > 1


def test_rows_that_end_early_are_dropped_from_the_work(fused, images):
    """With a minimum length of 1 many rows end early; each step runs only the live ones."""
    settings = CaptionSettings(captions_per_image=3, min_length=1, max_length=24)
    captioner = Captioner(fused, settings)
    batch_rows: list[int] = []
    hook = fused.model.text_decoder.cls.register_forward_hook(
        lambda module, args, output: batch_rows.append(args[0].shape[0])
    )
    try:
        captions = captioner.caption(images, KEYS)
    finally:
        hook.remove()
    lengths = sorted(
        len(fused.tokenizer(c, add_special_tokens=False).input_ids) for g in captions for c in g
    )
    # First call: the prompt, once per image; then one call per step with the live rows.
    assert batch_rows[0] == len(KEYS)
    steps = batch_rows[1:]
    assert steps == sorted(steps, reverse=True) and steps[0] <= 3 * len(KEYS)
    assert steps[-1] < steps[0]
    assert sum(steps) < len(steps) * 3 * len(KEYS)
    assert lengths[0] < lengths[-1]


def test_static_shapes_give_the_same_tokens_and_reuse_workspaces(stock, fused, images):
    """The GPU layout (power-of-two workspaces, idle rows and images, kept for reuse) run on
    CPU: same tokens; a second batch of the same size refills the same workspaces."""
    settings = CaptionSettings(captions_per_image=3, min_length=3)
    expected = reference_captions(stock, settings, images[:5], KEYS[:5])
    captioner = Captioner(fused, settings)
    captioner.decoder.static_shapes = True
    assert captioner.caption(images[:5], KEYS[:5]) == expected  # 15 rows in 16, 5 images in 8
    workspaces = dict(captioner.decoder._graph_cache)
    assert (16, 8, 3, 17) in workspaces and len(workspaces) > 1  # and smaller ones after rows end
    assert captioner.caption(images[:5], KEYS[:5]) == expected
    assert captioner.decoder._graph_cache.keys() == workspaces.keys()
    assert all(captioner.decoder._graph_cache[key] is ws for key, ws in workspaces.items())
    other = [f"other-{i}" for i in range(5)]
    assert captioner.caption(images[:5], other) == reference_captions(
        stock, settings, images[:5], other
    )
