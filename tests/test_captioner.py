"""Captioner: K captions from one vision pass, sampling reproducible per key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models.captioner import Captioner, CaptionSettings
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
