"""Captioner: K captions from one vision pass, sampling reproducible per key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models.captioner import Captioner, CaptionSettings, SeededSampling, row_seeds
from models.loading import LoadedModel, load_captioner
from models.preprocess import pixel_values


@pytest.fixture(scope="module")
def loaded(tiny_captioner_dir: Path) -> LoadedModel:
    return load_captioner(str(tiny_captioner_dir), device="cpu")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def vision_calls(loaded: LoadedModel) -> Iterator[list[int]]:
    """Batch sizes of the vision transformer's forward passes."""
    calls: list[int] = []
    hook = loaded.model.vision_model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["pixel_values"].shape[0]),
        with_kwargs=True,
    )
    yield calls
    hook.remove()


KEYS = ["img-0", "img-1", "img-2", "img-3", "img-4"]


def test_k_captions_from_one_vision_pass(loaded, images, vision_calls):
    captions = Captioner(loaded, CaptionSettings(captions_per_image=3)).caption(images, KEYS)
    assert vision_calls == [5]
    assert [len(c) for c in captions] == [3] * 5
    assert all(isinstance(text, str) and text for group in captions for text in group)
    # The K samples of an image differ: each row has its own noise.
    assert all(len(set(group)) > 1 for group in captions)


def test_beam_search_uses_one_vision_pass(loaded, images, vision_calls):
    settings = CaptionSettings(captions_per_image=2, sample=False, num_beams=3)
    captions = Captioner(loaded, settings).caption(images, KEYS)
    assert vision_calls == [5]
    assert [len(c) for c in captions] == [2] * 5


def test_captions_depend_on_key_not_on_batch(loaded, images):
    captioner = Captioner(loaded, CaptionSettings(captions_per_image=2))
    full = captioner.caption(images, KEYS)
    reordered = captioner.caption(images[[4, 1, 3]], [KEYS[4], KEYS[1], KEYS[3]])
    single = captioner.caption(images[2:3], KEYS[2:3])
    assert reordered == [full[4], full[1], full[3]]
    assert single == [full[2]]
    assert captioner.caption(images, KEYS) == full


def test_seed_and_key_change_the_samples(loaded, images):
    base = Captioner(loaded, CaptionSettings(captions_per_image=2, seed=0)).caption(images, KEYS)
    reseeded = Captioner(loaded, CaptionSettings(captions_per_image=2, seed=1)).caption(
        images, KEYS
    )
    renamed = Captioner(loaded, CaptionSettings(captions_per_image=2, seed=0)).caption(
        images, [key + "-b" for key in KEYS]
    )
    assert sum(a != b for a, b in zip(base, reseeded, strict=True)) >= 4
    assert sum(a != b for a, b in zip(base, renamed, strict=True)) >= 4


def test_beam_captions_match_transformers_generate_with_prompt_stripped(loaded, images):
    settings = CaptionSettings(
        captions_per_image=1, sample=False, num_beams=3, max_length=14, min_length=6
    )
    ours = Captioner(loaded, settings).caption(images[:2], KEYS[:2])
    tokenizer = loaded.tokenizer
    prompt = tokenizer([settings.prompt] * 2, return_tensors="pt").input_ids
    with torch.inference_mode():
        output = loaded.model.generate(
            pixel_values=pixel_values(images[:2], loaded),
            input_ids=prompt,
            num_beams=3,
            max_length=14,
            min_length=6,
            repetition_penalty=settings.repetition_penalty,
        )
    # salesforce/BLIP strips the prompt from the decoded text: caption[len(prompt):].
    decoded = tokenizer.batch_decode(output, skip_special_tokens=True)
    assert all(text.startswith(settings.prompt) for text in decoded)
    assert ours == [[text[len(settings.prompt) :].strip()] for text in decoded]


def test_max_length_counts_the_prompt(loaded, images):
    settings = CaptionSettings(captions_per_image=3, max_length=12, min_length=9)
    captions = Captioner(loaded, settings).caption(images, KEYS)
    prompt_tokens = 4  # [DEC] a picture of
    lengths = [
        len(loaded.tokenizer(text, add_special_tokens=False).input_ids)
        for group in captions
        for text in group
    ]
    assert max(lengths) == settings.max_length - prompt_tokens


def test_seeded_sampling_draws_from_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -6.0]])
    rows = 20000
    seeds = row_seeds([f"key-{i}" for i in range(rows)], seed=0, captions_per_image=1)
    processor = SeededSampling(seeds, top_k=5, top_p=0.9)
    input_ids = torch.zeros((rows, 3), dtype=torch.long)
    picks = processor(input_ids, logits.repeat(rows, 1)).argmax(dim=-1)
    counts = torch.bincount(picks, minlength=8).double() / rows
    # Expected: top-5, then the smallest set of top tokens with mass >= 0.9 (HF TopPLogitsWarper).
    probs = logits[0, :5].softmax(-1)
    keep = 4 if probs[:4].sum() >= 0.9 else 5
    expected = torch.zeros(8, dtype=torch.double)
    expected[:keep] = logits[0, :keep].double().softmax(-1)
    assert torch.allclose(counts, expected, atol=0.015)
    assert counts[keep:].sum() == 0
    # The same rows at the next step draw fresh noise.
    later = processor(torch.zeros((rows, 4), dtype=torch.long), logits.repeat(rows, 1)).argmax(-1)
    assert (later != picks).float().mean() > 0.3


def test_settings_validate_and_serialise():
    assert CaptionSettings().to_dict()["top_p"] == 0.9
    assert CaptionSettings().to_dict()["prompt"] == "a picture of "
    with pytest.raises(ValueError, match="num_beams"):
        CaptionSettings(captions_per_image=4, sample=False, num_beams=3)
    with pytest.raises(ValueError, match="min_length"):
        CaptionSettings(min_length=30, max_length=30)
    with pytest.raises(ValueError, match="top_p"):
        CaptionSettings(top_p=0.0)


def test_keys_must_match_images(loaded, images):
    with pytest.raises(ValueError, match="keys"):
        Captioner(loaded, CaptionSettings()).caption(images, KEYS[:2])
    assert Captioner(loaded, CaptionSettings()).caption(images[:0], []) == []


def test_sampled_captions_equal_plain_generate_with_repeated_states(loaded, images):
    settings = CaptionSettings(captions_per_image=3, max_length=16)
    ours = Captioner(loaded, settings).caption(images[:2], KEYS[:2])
    prompt = loaded.tokenizer(settings.prompt, return_tensors="pt").input_ids[:, :-1].repeat(6, 1)
    prompt[:, 0] = loaded.model.config.text_config.bos_token_id
    with torch.inference_mode():
        states = loaded.model.vision_model(pixel_values=pixel_values(images[:2], loaded))
        states = states.last_hidden_state.repeat_interleave(3, dim=0)
        output = loaded.model.text_decoder.generate(
            input_ids=prompt,
            encoder_hidden_states=states,
            encoder_attention_mask=torch.ones(states.shape[:2], dtype=torch.long),
            logits_processor=[SeededSampling(row_seeds(KEYS[:2], 0, 3), 50, 0.9)],
            do_sample=False,
            max_length=16,
            min_length=10,
            repetition_penalty=1.1,
            eos_token_id=loaded.model.config.text_config.sep_token_id,
            pad_token_id=loaded.model.config.text_config.pad_token_id,
        )
    texts = loaded.tokenizer.batch_decode(output[:, prompt.shape[1] :], skip_special_tokens=True)
    assert ours == [texts[:3], texts[3:]]
