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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run first, so that parallel workers (``make test``) do not end
    waiting on one long test started last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture(scope="session")
def distinct_filter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A tiny random filter whose image embeddings (and scores) differ between images.

    At BLIP's default initialiser scale a tiny random ViT maps every image to almost the
    same embedding; a larger scale makes random embeddings spread out like trained ones.
    """
    import torch
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    from models.presets import blip_config, image_processor

    config = blip_config("tiny", tiny_tokenizer)
    config.vision_config.initializer_range = 0.3
    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("models") / "distinct-filter"
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    BlipProcessor(image_processor=image_processor(32), tokenizer=tiny_tokenizer).save_pretrained(
        folder
    )
    return folder


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_bucket():
    """An S3 bucket on a moto server started on loopback; the standard AWS variables
    (``AWS_ENDPOINT_URL`` included) point every client of the process and its children at it.
    Yields the bucket's URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    boto3.client("s3").create_bucket(Bucket="curation-tests")
    try:
        yield "s3://curation-tests"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def gcs_bucket():
    """A bucket on a Google Cloud Storage emulator on loopback (``STORAGE_EMULATOR_HOST``
    points gcsfs at it). The emulator does not enforce write preconditions, so the run lock's
    exclusive create is checked on S3 only. Yields the bucket's URL."""
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="curation-tests")
    server.start()
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        yield "gs://curation-tests"
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
