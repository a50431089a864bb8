"""Scorer: one image encoding for many texts, equal to transformers' per-pair forward."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from models.loading import LoadedModel, load_filter
from models.preprocess import pixel_values
from models.scorer import Scorer, normalize_text

TEXTS = [
    ["a red circle", "two blue squares on the left of a big yellow star", "cat"],
    [],
    ["a green triangle", "dog"],
    ["one small black circle at the top with a white background and a large star"],
]


@pytest.fixture(scope="module")
def loaded(tiny_filter_dir: Path) -> LoadedModel:
    return load_filter(str(tiny_filter_dir), device="cpu")


@pytest.fixture(scope="module")
def stock(tiny_filter_dir: Path) -> LoadedModel:
    """The filter as transformers runs it (eager attention): the reference."""
    return load_filter(str(tiny_filter_dir), device="cpu", attention="eager")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def _reference(loaded: LoadedModel, image: np.ndarray, text: str, first_token_id: int | None):
    """ITM probability and ITC cosine from BlipForImageTextRetrieval.forward, one pair."""
    tokens = loaded.tokenizer(normalize_text(text), return_tensors="pt")
    itm_ids = tokens.input_ids.clone()
    if first_token_id is not None:
        itm_ids[:, 0] = first_token_id
    pixels = pixel_values(image[None], loaded)
    with torch.inference_mode():
        itm = loaded.model(input_ids=itm_ids, pixel_values=pixels, use_itm_head=True).itm_score
        itc = loaded.model(
            input_ids=tokens.input_ids, pixel_values=pixels, use_itm_head=False
        ).itm_score
    return itm.softmax(-1)[0, 1].item(), itc[0, 0].item()


def test_scores_equal_transformers_forward_pair_by_pair(loaded, stock, images):
    scores = Scorer(loaded, first_token="cls", text_batch_size=2).score(images, TEXTS)
    assert [len(s.itm) for s in scores] == [len(t) for t in TEXTS]
    for image, texts, result in zip(images, TEXTS, scores, strict=True):
        assert result.itm.dtype == np.float32 and result.itc.dtype == np.float32
        for j, text in enumerate(texts):
            itm, itc = _reference(stock, image, text, None)
            assert result.itm[j] == pytest.approx(itm, abs=1e-5)
            assert result.itc[j] == pytest.approx(itc, abs=1e-5)
    itms = np.concatenate([s.itm for s in scores])
    assert np.ptp(itms) > 1e-4  # the texts are told apart, so equality above means something


def test_enc_token_is_what_the_itm_branch_sees(loaded, stock, images):
    enc_id = loaded.tokenizer.convert_tokens_to_ids("[ENC]")
    cls_scores = Scorer(loaded, first_token="cls").score(images, TEXTS)
    enc_scores = Scorer(loaded, first_token="enc").score(images, TEXTS)
    itm, itc = _reference(stock, images[0], TEXTS[0][1], enc_id)
    assert enc_scores[0].itm[1] == pytest.approx(itm, abs=1e-5)
    assert enc_scores[0].itc[1] == pytest.approx(itc, abs=1e-5)
    for a, b in zip(cls_scores, enc_scores, strict=True):
        np.testing.assert_allclose(a.itc, b.itc, atol=1e-6)  # ITC always reads [CLS]
    assert not np.allclose(cls_scores[0].itm, enc_scores[0].itm, atol=1e-6, rtol=0)


def test_each_image_is_encoded_once(loaded, images):
    calls: list[int] = []
    hook = loaded.model.vision_model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["pixel_values"].shape[0]),
        with_kwargs=True,
    )
    try:
        Scorer(loaded, text_batch_size=2).score(images, TEXTS)
    finally:
        hook.remove()
    assert calls == [4]


def test_results_do_not_depend_on_text_batching(loaded, images):
    one = Scorer(loaded, text_batch_size=1).score(images, TEXTS)
    many = Scorer(loaded, text_batch_size=64).score(images, TEXTS)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a.itm, b.itm, atol=1e-5)
        np.testing.assert_allclose(a.itc, b.itc, atol=1e-5)
        np.testing.assert_array_equal(a.embedding, b.embedding)


def test_embedding_is_the_normalised_itc_image_feature(loaded, images):
    scores = Scorer(loaded).score(images, TEXTS)
    _, embeddings = Scorer(loaded).embed_images(images)
    assert scores[1].itm.size == 0 and scores[1].embedding.shape == (
        loaded.model.config.image_text_hidden_size,
    )
    for i, result in enumerate(scores):
        assert result.embedding.dtype == np.float32
        assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(result.embedding, embeddings[i].numpy(), atol=1e-6)


def test_long_texts_are_cut_to_max_words_and_max_tokens(loaded, images):
    long_text = " ".join(["red circle"] * 40)
    assert len(normalize_text(long_text).split()) == 30
    words = Scorer(loaded, first_token="cls").score(
        images[:1], [[long_text + " blue star", long_text]]
    )
    assert words[0].itm[0] == pytest.approx(words[0].itm[1], abs=1e-6)
    # [CLS] + 6 words + [SEP] fit in 8 tokens: what follows the sixth word is cut.
    short = Scorer(loaded, first_token="cls", max_tokens=8)
    texts = ["a red circle on the left of a big star", "a red circle on the left", "a red circle"]
    cut = short.score(images[:1], [texts])[0]
    assert cut.itm[0] == pytest.approx(cut.itm[1], abs=1e-6)
    assert cut.itm[0] != pytest.approx(cut.itm[2], abs=1e-6)


def test_normalize_text_follows_pre_caption():
    assert normalize_text('A "Red" Circle!!  (big)*  #1: ok;~') == "a red circle big 1 ok"
    assert normalize_text("  Two\tblue\nsquares.  ") == "two blue squares"
    assert normalize_text("it's a dog, isn't it?") == "it's a dog, isn't it?"
    assert normalize_text("one two three", max_words=2) == "one two"


def test_bf16_on_cpu_scores_close_to_fp32(tiny_filter_dir: Path, loaded, images):
    bf16 = load_filter(str(tiny_filter_dir), device="cpu", dtype="bf16")
    low = Scorer(bf16, first_token="cls").score(images, TEXTS)
    full = Scorer(loaded, first_token="cls").score(images, TEXTS)
    for a, b in zip(low, full, strict=True):
        assert a.itm.dtype == np.float32
        np.testing.assert_allclose(a.itm, b.itm, atol=0.03)
        np.testing.assert_allclose(a.itc, b.itc, atol=0.05)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=0.05)


def test_enc_needs_an_enc_token(loaded):
    tokenizer = BertTokenizerFast(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4})
    plain = dataclasses.replace(loaded, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"no \[ENC\] token"):
        Scorer(plain, first_token="enc")
    assert Scorer(plain, first_token="cls").first_token == "cls"
