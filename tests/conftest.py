"""Shared fixtures: tiny BLIP captioner and filter saved as checkpoint folders.

They are randomly initialised but real: ``save_pretrained`` folders with tokenizer and
processor, loaded through the same ``from_pretrained`` path as hub checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models gain nothing from threads, and on a busy machine torch's thread pool makes
# every small operation wait; subprocesses started by tests inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: Words the tiny tokenizer knows, so that real captions tokenize to real ids.
TINY_WORDS = (
    "a picture of an image photo with the and on in at top bottom left right center "
    "one two three red green blue yellow white black small large big circle square "
    "triangle star shape shapes dog cat background"
)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A WordPiece tokenizer over :data:`TINY_WORDS`, with BLIP's [DEC] and [ENC]."""
    from models.presets import build_tokenizer, words_of

    return build_tokenizer(words_of([TINY_WORDS]))


@pytest.fixture(scope="session")
def tiny_captioner_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """Folder of a tiny ``BlipForConditionalGeneration`` (32 px images)."""
    from models.presets import save_model_folder

    folder = tmp_path_factory.mktemp("models") / "tiny-captioner"
    return save_model_folder("captioner", folder, "tiny", tiny_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_filter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """Folder of a tiny ``BlipForImageTextRetrieval`` (32 px images)."""
    from models.presets import save_model_folder

    folder = tmp_path_factory.mktemp("models") / "tiny-filter"
    return save_model_folder("filter", folder, "tiny", tiny_tokenizer, seed=1)
