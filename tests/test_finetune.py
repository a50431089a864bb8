"""Finetuning: losses learn, hard negatives follow the ITC softmax, saved folders reload."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from images import (
    HF_SCHEMA,
    gradient,
    hf_image_rows,
    jpeg_bytes,
    write_img2dataset_parquet,
    write_pairs_parquet,
)
from runs import corrupt_row_group
from transformers import BlipForImageTextRetrieval

from app.finetune import finetune_command
from curation.errors import InputError, UsageError
from curation.reasons import Reason
from curation.shapes import (
    COLOURS,
    SIZE_WORDS,
    Scene,
    caption,
    is_true_of,
    make_clean_split,
    parse_caption,
    random_scene,
)
from models.captioner import Captioner, CaptionSettings
from models.finetune import phrases
from models.finetune.data import TrainingPairs, describe_skipped, read_pairs
from models.finetune.losses import (
    IGNORE,
    ITM_CHUNK_ROWS,
    NO_NEGATIVE,
    ExtraTexts,
    Temperature,
    caption_labels,
    captioner_loss,
    filter_losses,
    itm_logits,
    itm_pairs,
    same_group,
    sample_hard_negatives,
)
from models.finetune.text_negatives import (
    OPENINGS,
    SHUFFLE_WINDOW,
    TRANSFORMS,
    ExtraTextShares,
    ShapesDomain,
    TextDomain,
    composition_negative,
    extra_texts,
    reorder_clauses,
    reorder_modifiers,
    rephrase,
    restate_place,
    reword,
    shuffle_words,
    text_domain,
    truncate_words,
    unreadable,
)
from models.finetune.train import (
    PROMPT,
    _prompt_length,
    _tokenize,
    evaluate_filter,
    prepare_base,
)
from models.finetune.warm_start import filter_from_captioner
from models.loading import load_captioner, load_filter
from models.preprocess import pixel_values
from models.presets import ENC_TOKEN, build_tokenizer, save_model_folder, words_of
from models.scorer import Scorer

BUNDLED_FILTER = Path(__file__).resolve().parents[1] / "models" / "bundled" / "filter"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clean_split(24, 3, tmp_path_factory.mktemp("data") / "clean.parquet")


@pytest.fixture(scope="module")
def pairs32(clean: Path) -> TrainingPairs:
    return read_pairs(clean, 32, group_column="scene").subset(np.arange(16))


def test_caption_labels_mask_prompt_and_padding() -> None:
    ids = torch.tensor([[2, 5, 6, 7, 9, 10, 3, 0], [2, 5, 6, 7, 11, 3, 0, 0]])
    mask = (ids != 0).long()
    labels = caption_labels(ids, mask, prompt_length=4)
    assert labels[0].tolist() == [IGNORE] * 4 + [9, 10, 3, IGNORE]
    assert labels[1].tolist() == [IGNORE] * 4 + [11, 3, IGNORE, IGNORE]


def _optimise(loss_fn, params, steps: int, lr: float) -> list[float]:
    optimizer = torch.optim.AdamW(params, lr=lr)
    history = []
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history


def test_captioner_lm_loss_decreases(pairs32: TrainingPairs) -> None:
    torch.manual_seed(0)
    loaded = prepare_base("captioner", "tiny", pairs32.texts, "cpu")
    loaded.model.train()
    pixels = pixel_values(pairs32.pixels, loaded)
    ids, mask = _tokenize(loaded, [PROMPT + t for t in pairs32.texts])
    assert loaded.tokenizer.unk_token_id not in ids.tolist()[0]
    history = _optimise(
        lambda: captioner_loss(loaded.model, pixels, ids, mask, _prompt_length(loaded)),
        loaded.model.parameters(),
        steps=30,
        lr=3e-3,
    )
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3])


def test_filter_itc_loss_decreases(pairs32: TrainingPairs) -> None:
    torch.manual_seed(0)
    loaded = prepare_base("filter", "tiny", pairs32.texts, "cpu")
    loaded.model.train()
    temperature = Temperature()
    pixels = pixel_values(pairs32.pixels, loaded)
    ids, mask = _tokenize(loaded, pairs32.texts)
    enc = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    groups = torch.from_numpy(pairs32.groups)
    history = _optimise(
        lambda: filter_losses(loaded.model, temperature, pixels, ids, mask, enc, groups).itc,
        [*loaded.model.parameters(), *temperature.parameters()],
        steps=80,
        lr=1e-3,
    )
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:3])


def test_filter_itm_loss_decreases_with_a_fresh_matching_head(clean: Path) -> None:
    """ITM from scratch needs ITC-aligned features first, so this trains a fresh ITM head on
    the bundled filter's encoders: the loss must fall well below the 1-in-3 prior (0.64)."""
    torch.manual_seed(0)
    loaded = load_filter(str(BUNDLED_FILTER), device="cpu")
    model = loaded.model
    model.requires_grad_(False)
    model.itm_head.reset_parameters()
    model.itm_head.requires_grad_(True)
    pairs = read_pairs(clean, loaded.image_size, group_column="scene").subset(np.arange(8))
    pixels = pixel_values(pairs.pixels, loaded)
    ids, mask = _tokenize(loaded, pairs.texts)
    enc = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    groups = torch.from_numpy(pairs.groups)
    history = _optimise(
        lambda: filter_losses(model, Temperature(), pixels, ids, mask, enc, groups).itm,
        model.itm_head.parameters(),
        steps=6,
        lr=1e-2,
    )
    assert history[-1] < 0.3 < history[0]


def test_hard_negatives_are_drawn_in_proportion_to_the_itc_softmax() -> None:
    """Statistical check over many draws (BLIP blip_retrieval.py: multinomial over the
    softmax of the similarities with positives zeroed)."""
    draws = 30_000
    row = torch.tensor([5.0, 2.0, 1.0, 0.0, -1.0])
    sim = row.repeat(draws, 1)
    positives = torch.zeros_like(sim, dtype=torch.bool)
    positives[:, 0] = True
    picked = sample_hard_negatives(sim, positives, torch.Generator().manual_seed(1))
    counts = torch.bincount(picked, minlength=5).double()
    assert counts[0] == 0  # the positive is never a negative
    expected = torch.softmax(row[1:].double(), dim=0) * draws
    observed = counts[1:]
    assert torch.all(observed[:-1] > observed[1:])  # more similar -> drawn more often
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


def test_same_group_pairs_are_never_negatives_and_rows_without_candidates_get_none() -> None:
    groups = torch.tensor([0, 0, 1, 2])
    positives = same_group(groups, 4, torch.device("cpu"))
    assert positives.tolist()[0] == [True, True, False, False]
    sim = torch.zeros(4, 4)
    sim[0, 1] = 10.0  # the most similar column is a positive of row 0
    picked = torch.stack(
        [
            sample_hard_negatives(sim, positives, torch.Generator().manual_seed(s))
            for s in range(200)
        ]
    )
    for i in range(4):
        assert not positives[i, picked[:, i]].any()
    only_positives = torch.ones(2, 2, dtype=torch.bool)
    assert sample_hard_negatives(torch.zeros(2, 2), only_positives).tolist() == [NO_NEGATIVE] * 2


def test_itm_pairs_label_no_matching_pair_as_a_negative() -> None:
    """Five captions of one image and one of another (COCO-style groups, small batch): rows
    of the big group have one candidate negative, and a batch of one group has none."""
    groups = torch.tensor([0, 0, 0, 0, 0, 1])
    positives = same_group(groups, 6, torch.device("cpu"))
    for seed in range(20):
        pairs = itm_pairs(torch.randn(6, 6), positives, torch.Generator().manual_seed(seed))
        negatives = pairs.labels == 0
        assert not positives[pairs.images[negatives], pairs.texts[negatives]].any()
        assert int(negatives.sum()) == 12  # every row has a negative text and image here
        assert int((pairs.labels == 1).sum()) == 6
    one_group = same_group(torch.zeros(4, dtype=torch.long), 4, torch.device("cpu"))
    pairs = itm_pairs(torch.randn(4, 4), one_group)
    assert pairs.labels.tolist() == [1, 1, 1, 1]
    assert torch.equal(pairs.images, pairs.texts)
    extra = ExtraTexts(
        rows=torch.tensor([2, 0]),
        input_ids=torch.zeros(2, 3, dtype=torch.long),
        attention_mask=torch.ones(2, 3, dtype=torch.long),
        matches=torch.tensor([False, True]),
    )
    pairs = itm_pairs(torch.randn(4, 4), one_group, extra=extra)
    assert pairs.images.tolist()[-2:] == [2, 0] and pairs.texts.tolist()[-2:] == [4, 5]
    assert pairs.labels.tolist()[-2:] == [0, 1]


def test_texts_true_of_an_image_are_not_drawn_as_its_negatives() -> None:
    true_of = torch.tensor([[False, True, True], [False, False, False], [False, False, False]])
    excluded = torch.eye(3, dtype=torch.bool) | true_of
    sim = torch.zeros(3, 3)
    for seed in range(30):
        pairs = itm_pairs(sim, excluded, torch.Generator().manual_seed(seed))
        negatives = pairs.labels == 0
        assert not excluded[pairs.images[negatives], pairs.texts[negatives]].any()
        # Image 0 has no negative text left; texts 1 and 2 still get image 1 or 2.
        assert 0 not in pairs.images[negatives][pairs.texts[negatives] != 0].tolist()


def test_filter_losses_of_a_batch_of_one_group_use_its_positives_only(
    pairs32: TrainingPairs,
) -> None:
    torch.manual_seed(0)
    loaded = prepare_base("filter", "tiny", pairs32.texts, "cpu")
    loaded.model.eval()
    pixels = pixel_values(pairs32.pixels[:4], loaded)
    ids, mask = _tokenize(loaded, pairs32.texts[:4])
    enc = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    with torch.no_grad():
        losses = filter_losses(
            loaded.model, Temperature(), pixels, ids, mask, enc, torch.zeros(4, dtype=torch.long)
        )
        matching = _match_probability(loaded, pixels, pairs32.texts[:4])
    # Cross-entropy over the four matching pairs labelled as matches, and nothing else.
    assert float(losses.itm) == pytest.approx(float(-matching.log().mean()), rel=1e-4)


def test_itm_logits_in_length_chunks_match_one_padded_pass_with_their_order(
    pairs32: TrainingPairs,
) -> None:
    """Pairs of mixed text lengths, more than one chunk: every pair's logits are those of one
    padded pass over all pairs, at the position the returned order gives."""
    torch.manual_seed(0)
    loaded = prepare_base("filter", "tiny", pairs32.texts, "cpu")
    model = loaded.model.eval()
    texts = [
        " ".join(text.split()[: 2 + i % 9]) + (" and" + " " + text) * (i % 3)
        for i, text in enumerate(pairs32.texts * 5)
    ]
    ids, mask = _tokenize(loaded, texts)
    ids[:, 0] = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    n = len(texts)
    rows = torch.arange(n) % len(pairs32)
    with torch.no_grad():
        embeds = model.vision_model(pixel_values=pixel_values(pairs32.pixels, loaded))
        embeds = embeds.last_hidden_state
        logits, order = itm_logits(model, embeds, rows, ids, mask)
        expected = _one_pass_itm_logits(model, embeds[rows], ids, mask)
    assert n > ITM_CHUNK_ROWS
    assert len(set(mask.sum(dim=1).tolist())) > 5
    assert sorted(order.tolist()) == list(range(n))
    torch.testing.assert_close(logits, expected[order], rtol=1e-4, atol=1e-5)


def test_evaluation_of_the_bundled_filter_reads_its_itm_right(tmp_path: Path) -> None:
    """The held-out evaluation's ITM rates (through the length-chunked encoding) are those of
    a filter trained for them: matches accepted, hard and composition negatives rejected."""
    loaded = load_filter(str(BUNDLED_FILTER), device="cpu")
    split = make_clean_split(200, 31, tmp_path / "heldout.parquet")
    pairs = read_pairs(split, loaded.image_size, group_column="scene")
    metrics = evaluate_filter(loaded, pairs, domain=text_domain("shapes"), seed=0)
    assert metrics["itm_accept_matching"] >= 0.95
    assert metrics["itm_reject_hard_negative"] >= 0.9
    assert metrics["itm_reject_composition"] >= 0.75
    assert metrics["itm_reject_unreadable"] >= 0.95
    assert metrics["itm_accept_reworded"] >= 0.85


def _mixed_file(clean: Path, path: Path) -> Path:
    """Six rows of ``clean``: three usable, one undecodable, one without an image, one with a
    blank text; two usable rows have no scene."""
    table = pq.read_table(clean).slice(0, 6).to_pylist()
    table[1]["image"] = b"not an image"
    table[2]["text"] = "  ...  "
    table[3]["image"] = None
    table[4]["scene"] = table[5]["scene"] = None
    pq.write_table(pa.Table.from_pylist(table), path)
    return path


def test_read_pairs_counts_skipped_rows_by_reason_and_names_missing_columns(
    tmp_path: Path, clean: Path
) -> None:
    path = _mixed_file(clean, tmp_path / "mixed.parquet")
    pairs = read_pairs(path, 32, group_column="scene")
    assert len(pairs) == 3 and pairs.pixels.shape == (3, 32, 32, 3)
    assert pairs.skipped == {Reason.UNDECODABLE: 1, Reason.EMPTY_TEXT: 1, Reason.MISSING_IMAGE: 1}
    assert describe_skipped(pairs.skipped).startswith("3 rows skipped: 1 ")
    # rows without a group match no other row, not each other
    assert len(set(pairs.groups.tolist())) == 3
    with pytest.raises(InputError, match="'caption'"):
        read_pairs(path, 32, text_column="caption")
    table = pq.read_table(path).slice(1, 3)
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="no usable .*3 rows skipped"):
        read_pairs(tmp_path / "bad.parquet", 32)


def test_read_pairs_reads_img2dataset_output_as_the_run_does(tmp_path: Path) -> None:
    """No column flags: img2dataset's columns are recognised, failed downloads are skipped as
    ``download_failed``, and the key column can group rows."""
    images = [jpeg_bytes(gradient(40, 30, seed=i)) for i in range(4)]
    texts = ["a red circle", "a blue square", "a green star", "a red square"]
    path = write_img2dataset_parquet(tmp_path / "00000.parquet", images, texts, failed=[2])
    pairs = read_pairs(path, 32, group_column="key")
    assert pairs.texts == ["a red circle", "a blue square", "a red square"]
    assert pairs.skipped == {Reason.DOWNLOAD_FAILED: 1}
    assert len(set(pairs.groups.tolist())) == 3


def test_read_pairs_reads_image_paths_bytes_texts_and_damaged_row_groups_as_the_run_does(
    tmp_path: Path,
) -> None:
    """Hugging Face image structs naming a file beside the Parquet file are read (a path
    outside its folder is not); texts stored as bytes are UTF-8 and cleaned as the run cleans
    them; a row group that cannot be read is skipped as ``error``, the others still read."""
    (tmp_path / "beside.jpg").write_bytes(jpeg_bytes(gradient(40, 30, seed=1)))
    (tmp_path.parent / "outside.jpg").write_bytes(jpeg_bytes(gradient(40, 30, seed=2)))
    rows = hf_image_rows(
        [None, None, jpeg_bytes(gradient(40, 30, seed=3)), jpeg_bytes(gradient(40, 30, seed=4))],
        ["x"] * 4,
        ["beside.jpg", "../outside.jpg", None, None],
    )
    texts = ["A Red\u200b Circle".encode(), b"a blue square", b"caf\xe9 \x00star", b"a cat"]
    for row, text in zip(rows, texts, strict=True):
        row["text"] = text
    schema = HF_SCHEMA.set(1, pa.field("text", pa.binary()))
    path = write_pairs_parquet(tmp_path / "hf.parquet", rows, row_group_size=2, schema=schema)
    pairs = read_pairs(path, 32)
    assert pairs.texts == ["a red circle", "caf star", "a cat"]
    assert pairs.skipped == {Reason.MISSING_IMAGE: 1}
    assert not np.array_equal(pairs.pixels[0], pairs.pixels[1])
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(path.read_bytes())
    corrupt_row_group(damaged, 1)
    pairs = read_pairs(damaged, 32)
    assert pairs.texts == ["a red circle"]
    assert pairs.skipped == {Reason.MISSING_IMAGE: 1, Reason.ERROR: 2}


def test_read_pairs_refuses_columns_the_run_refuses_and_unusable_group_columns(
    tmp_path: Path, clean: Path
) -> None:
    table = pq.read_table(clean).slice(0, 4)
    numbers = tmp_path / "numbers.parquet"
    text = table.schema.get_field_index("text")
    pq.write_table(table.set_column(text, "text", pa.array(range(4))), numbers)
    with pytest.raises(InputError, match="text column 'text' has type int64, expected string"):
        read_pairs(numbers, 32)
    with pytest.raises(InputError, match="group column 'text' is the image or text column"):
        read_pairs(clean, 32, group_column="text")
    with pytest.raises(InputError, match="group column 'scen' not found .*scene"):
        read_pairs(clean, 32, group_column="scen")


def test_finetune_reports_skipped_rows_and_records_them_in_the_model_card(
    tmp_path: Path, clean: Path
) -> None:
    path = _mixed_file(clean, tmp_path / "mixed.parquet")
    out = tmp_path / "filter"
    args = ["filter", "--train", str(path), "--out", str(out), "--base", "tiny"]
    args += ["--max-steps", "1", "--batch-size", "2", "--holdout", "0", "--device", "cpu"]
    result = CliRunner().invoke(finetune_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = "3 rows skipped: 1 undecodable, 1 empty_text, 1 missing_image"
    assert line in result.output
    assert f"- {line}" in (out / "README.md").read_text()


def test_finetuned_preset_folders_reload_score_and_caption(tmp_path: Path, clean: Path) -> None:
    runner = CliRunner()
    folders = {}
    for kind in ("captioner", "filter"):
        out = tmp_path / kind
        args = [
            kind,
            "--train",
            str(clean),
            "--out",
            str(out),
            "--base",
            "tiny",
            "--max-steps",
            "3",
        ]
        args += [
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--holdout",
            "0.25",
            "--group-column",
            "scene",
            "--device",
            "cpu",
        ]
        result = runner.invoke(finetune_command, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "step 3/3" in result.output
        card = (out / "README.md").read_text()
        assert f"finetune {kind}" in card and "Held-out evaluation" in card
        assert (out / "model.safetensors").exists()
        folders[kind] = out

    captioner = load_captioner(str(folders["captioner"]), device="cpu")
    filt = load_filter(str(folders["filter"]), device="cpu")
    ids = captioner.tokenizer("a red circle").input_ids
    assert captioner.tokenizer.unk_token_id not in ids
    pixels = read_pairs(clean, captioner.image_size).pixels[:2]
    captions = Captioner(captioner, CaptionSettings(max_length=12, min_length=6)).caption(
        pixels, ["k0", "k1"]
    )
    assert len(captions) == 2 and all(len(c) == 1 and c[0] for c in captions)
    scores = Scorer(filt).score(pixels, [["a red circle on the left", captions[0][0]], []])
    assert scores[0].itm.shape == (2,) and np.all((scores[0].itm >= 0) & (scores[0].itm <= 1))


def test_finetune_continues_from_a_checkpoint_folder(tmp_path: Path, clean: Path) -> None:
    tokenizer = build_tokenizer(
        words_of(pq.read_table(clean, columns=["text"]).column("text").to_pylist())
    )
    base = save_model_folder("filter", tmp_path / "base", "tiny", tokenizer)
    before = load_filter(str(base), device="cpu").model.itm_head.weight.clone()
    out = tmp_path / "tuned"
    args = ["filter", "--train", str(clean), "--out", str(out), "--base", str(base), "--lr", "1e-2"]
    args += ["--max-steps", "2", "--batch-size", "8", "--device", "cpu", "--save-dtype", "fp16"]
    result = CliRunner().invoke(finetune_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = load_filter(str(out), device="cpu")
    assert after.model.itm_head.weight.dtype == torch.float32
    assert not torch.allclose(before, after.model.itm_head.weight, atol=1e-4)
    card = (out / "README.md").read_text()
    assert f"--base {base}" in card and "--lr 0.01" in card and "--max-steps 2" in card


def test_filter_starts_from_a_captioner_folder_with_its_shared_weights(
    tmp_path: Path, clean: Path
) -> None:
    tokenizer = build_tokenizer(
        words_of(pq.read_table(clean, columns=["text"]).column("text").to_pylist())
    )
    folder = save_model_folder("captioner", tmp_path / "captioner", "tiny", tokenizer, seed=4)
    captioner = load_captioner(str(folder), device="cpu").model
    filt = prepare_base("filter", str(folder), [], device="cpu").model
    assert isinstance(filt, BlipForImageTextRetrieval)
    decoder = captioner.text_decoder.bert
    pairs = [
        (
            filt.vision_model.embeddings.patch_embedding.weight,
            captioner.vision_model.embeddings.patch_embedding.weight,
        ),
        (
            filt.text_encoder.embeddings.word_embeddings.weight,
            decoder.embeddings.word_embeddings.weight,
        ),
        (
            filt.text_encoder.encoder.layer[0].crossattention.self.key.weight,
            decoder.encoder.layer[0].crossattention.self.key.weight,
        ),
        (
            filt.text_encoder.encoder.layer[0].output.dense.weight,
            decoder.encoder.layer[0].output.dense.weight,
        ),
    ]
    for mine, theirs in pairs:
        assert torch.equal(mine, theirs)
    # Self-attention is not shared between BLIP's encoder and decoder: it starts fresh.
    assert not torch.equal(
        filt.text_encoder.encoder.layer[0].attention.self.query.weight,
        decoder.encoder.layer[0].attention.self.query.weight,
    )

    out = tmp_path / "filter"
    args = ["filter", "--train", str(clean), "--out", str(out), "--base", str(folder)]
    args += ["--max-steps", "2", "--batch-size", "8", "--device", "cpu"]
    result = CliRunner().invoke(finetune_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    reloaded = load_filter(str(out), device="cpu")
    assert reloaded.tokenizer.get_vocab() == tokenizer.get_vocab()


def test_a_captioner_of_another_layout_is_refused_as_a_filter_start(tmp_path: Path) -> None:
    folder = save_model_folder("captioner", tmp_path / "captioner", "tiny")
    captioner = load_captioner(str(folder), device="cpu")
    captioner.model.text_decoder.bert.encoder.layer = torch.nn.ModuleList()
    with pytest.raises(ValueError, match="text_encoder.encoder.layer.0"):
        filter_from_captioner(captioner)


def test_truncate_words_breaks_off_inside_a_phrase() -> None:
    rng = random.Random(0)
    text = "a big red circle on the left and a small blue square"
    words = text.split()
    cuts = {truncate_words(text, rng) for _ in range(300)}
    # At least half the words kept; never ending on a head noun ("left", which would leave
    # a partial but true text).
    assert cuts == {" ".join(words[:k]) for k in (6, 8, 9, 10, 11)}
    assert truncate_words("a red circle", rng) is None
    cuts = {truncate_words("a man riding a horse , a dog", rng) for _ in range(100)}
    assert cuts == {"a man riding a", "a man riding a horse ,", "a man riding a horse , a"}


def _bag(text: str) -> list[str]:
    return sorted(phrases.words_of(text))


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("heads", "a man riding a horse", {"a horse riding a man"}),
        ("phrases", "a man riding a brown horse", {"a brown horse riding a man"}),
        (
            "modifiers",
            "a small red circle on the left and a large blue square on the right",
            {
                "a small blue circle on the left and a large red square on the right",
                "a large red circle on the left and a small blue square on the right",
            },
        ),
        (
            "phrases",
            "a large red circle on the left and a small blue square on the right",
            {
                "a small blue square on the left and a large red circle on the right",
                "a large red circle on the right and a small blue square on the left",
            },
        ),
    ],
)
def test_composition_transforms_keep_the_words_and_change_the_meaning(
    name: str, text: str, expected: set[str]
) -> None:
    results = {
        " ".join(TRANSFORMS[name](phrases.words_of(text), random.Random(s))) for s in range(40)
    }
    assert results == expected
    assert all(_bag(r) == _bag(text) and r != text for r in results)


@pytest.mark.parametrize(
    "text",
    [
        "a red ball and a blue ball",  # exchanging modifiers = exchanging the phrases
        "a cat and a dog",
        "a cat next to a dog",
        "two red apples",  # one noun phrase
    ],
)
def test_swaps_that_would_keep_the_meaning_are_not_made(text: str) -> None:
    for name in ("modifiers", "heads", "phrases"):
        for seed in range(20):
            assert TRANSFORMS[name](phrases.words_of(text), random.Random(seed)) is None, name


def test_shuffle_moves_a_closed_word_within_a_bounded_window() -> None:
    text = "a big red circle to the left"
    words = phrases.words_of(text)
    for seed in range(60):
        new = shuffle_words(words, random.Random(seed))
        assert sorted(new) == sorted(words) and new != words
        changed = [i for i, (a, b) in enumerate(zip(words, new, strict=True)) if a != b]
        assert changed[-1] - changed[0] < SHUFFLE_WINDOW
        # Not just open words reordered among themselves ("a big circle red ..." could be true).
        assert [phrases.is_open(w) for w in new] != [phrases.is_open(w) for w in words]


def test_general_composition_negatives_apply_to_ordinary_captions() -> None:
    rng = random.Random(3)
    captions = [
        "a man riding a brown horse on the beach",
        "a woman holding a red umbrella next to a bus",
        "two dogs playing with a ball in the grass",
        "a plate of food with a fork and a knife",
    ]
    for text in captions:
        for _ in range(10):
            negative = composition_negative(text, rng)
            assert negative is not None and negative != text and _bag(negative) == _bag(text)


def test_shapes_negatives_are_never_true_of_the_image() -> None:
    """Checked with the parser over many scenes: no negative describes the scene, not even
    partly; exchanges of equal attributes and meaning-keeping rewordings are refused."""
    rng = random.Random(4)
    domain = ShapesDomain()
    made = 0
    for _ in range(400):
        scene = random_scene(rng)
        text = caption(scene, rng)
        (known,) = domain.prepare([text])
        assert known == scene
        negative = domain.negative(text, known, rng)
        if negative is not None:
            made += 1
            said = parse_caption(negative)
            assert negative != text and not (said is not None and is_true_of(said, scene))
        cut = domain.truncated(text, known, rng)
        if cut is not None:
            said = parse_caption(cut)
            assert not (said is not None and is_true_of(said, scene)), cut
        part = domain.partial(text, known, rng)
        if len(scene.objects) > 1:
            said = parse_caption(part)
            assert is_true_of(said, scene) and said != scene
        else:
            assert part is None
    assert made > 380
    # "big" and "large" say the same: exchanging them is no negative.
    same = "a big red circle on the left and a large blue square on the right"
    (known,) = domain.prepare([same])
    for seed in range(50):
        negative = domain.negative(same, known, random.Random(seed))
        assert not is_true_of(parse_caption(negative) or Scene(()), known), negative


def test_shapes_domain_marks_batch_texts_true_of_other_images() -> None:
    domain = ShapesDomain()
    texts = [
        "a big red circle on the left and a small blue square on the right",
        "a large red circle on the left",  # true of image 0, partly
        "a small blue square on the left",
        "click here",
    ]
    true_of = domain.true_of(texts, domain.prepare(texts))
    assert true_of[0] == [True, True, False, False]
    assert true_of[1] == [False, True, False, False]
    assert [row[3] for row in true_of] == [False] * 4
    assert TextDomain().true_of(texts, TextDomain().prepare(texts)) is None


def test_reword_keeps_the_words_in_order_and_adds_an_opening_or_unknown_words() -> None:
    text = "a big red circle on the left and a small blue square on the right"
    kinds = set()
    for seed in range(300):
        new = reword(text, random.Random(seed), "[UNK]")
        opening = next((o for o in OPENINGS if new.startswith(o + " ")), None)
        rest = new[len(opening) + 1 :] if opening else new
        unknown = rest.split().count("[UNK]")
        kept = [w for w in rest.split() if w != "[UNK]"]
        dropped = len(kept) < len(text.split())
        assert kept == text.split() or kept == text.replace(" and", "").split()
        # at most 3 inserted (a quarter of 14 words is less), plus one for a joiner said so
        assert unknown <= 3 + dropped and (opening or unknown)
        kinds.add((opening is not None, unknown > 0, dropped))
    assert {(True, False, False), (True, True, False), (False, True, False)} <= kinds
    assert (True, False, True) in kinds and (False, True, True) in kinds  # dropped / said


def test_reword_adds_more_unknown_words_to_longer_texts() -> None:
    clause = "a big red circle on the left"
    long = " , ".join([clause] * 4)  # 31 words: up to 7 unknown words inserted
    counts = {reword(long, random.Random(seed), "[UNK]").count("[UNK]") for seed in range(300)}
    assert max(counts) > 4 and max(counts) <= 8
    short = {reword(clause, random.Random(seed), "[UNK]").count("[UNK]") for seed in range(300)}
    assert max(short) == 3


def test_reworded_positives_come_with_negatives_reworded_as_often() -> None:
    domain = ShapesDomain()
    rng = random.Random(6)
    texts = [caption(random_scene(rng, 2), rng) for _ in range(100)]
    known = domain.prepare(texts)
    shares = ExtraTextShares(composition=1.0, partial=1.0, reworded=1.0)
    made = extra_texts(texts, known, shares, domain, rng)

    def reworded(text: str) -> bool:
        return "[UNK]" in text or text.startswith(OPENINGS)

    positives = [t for t, m in zip(made.texts, made.matches, strict=True) if m]
    negatives = [t for t, m in zip(made.texts, made.matches, strict=True) if not m]
    assert len(positives) == 200 and all(reworded(t) for t in positives)  # partial ones too
    assert len(negatives) >= 95 and all(reworded(t) for t in negatives)
    frames = extra_texts(texts, known, ExtraTextShares(unreadable=1.0), domain, rng)
    assert frames.rows == list(range(len(texts))) and not any(frames.matches)
    for text, frame in zip(texts, frames.texts, strict=True):
        words = phrases.words_of(text)
        assert frame.split().count("[UNK]") == sum(phrases.is_open(w) for w in words)
        assert set(frame.split()) - {"[UNK]"} <= {w for w in words if not phrases.is_open(w)}


def _sizes_first(text: str) -> str:
    """``text`` with each colour written before a size put back after it (the grammar's
    order), so that the parser reads phrases whose modifiers were reordered."""
    sizes = "|".join(w for words in SIZE_WORDS.values() for w in words)
    return re.sub(rf"\b({'|'.join(COLOURS)}) ({sizes})\b", r"\2 \1", text)


def test_reorder_modifiers_keeps_each_phrase_and_its_words() -> None:
    words = phrases.words_of("a big red circle on the left and a small blue square")
    seen = set()
    for seed in range(40):
        new = reorder_modifiers(words, random.Random(seed))
        assert new != words and Counter(new) == Counter(words)
        assert new[3] == "circle" and new[-1] == "square" and new[4:9] == words[4:9]
        assert {tuple(sorted(new[1:3])), tuple(sorted(new[9:11]))} == {
            ("big", "red"),
            ("blue", "small"),
        }
        seen.add(" ".join(new))
    assert seen == {
        "a red big circle on the left and a small blue square",
        "a big red circle on the left and a blue small square",
    }
    assert (
        reorder_modifiers(phrases.words_of("a red circle and a big big dog"), random.Random(0))
        is None
    )


def test_rephrase_keeps_the_words_and_the_meaning_in_another_order() -> None:
    """Clauses of a list reordered, a clause's place said first or with a verb: for shapes
    captions the parser reads back the same scene; texts with neither form are left alone."""
    rng = random.Random(3)
    changed = 0
    for _ in range(200):
        scene = random_scene(rng, 1)
        text = caption(scene, rng)
        new = rephrase(text, rng)
        assert new != text and parse_caption(_sizes_first(new)) == parse_caption(text), (text, new)
        added = set(phrases.words_of(new)) - set(phrases.words_of(text))
        assert added <= {"is", "there"}
        changed += phrases.words_of(new)[:3] != phrases.words_of(text)[:3]
    assert changed > 100
    clauses = ["a", "cat", "on", "a", "bed", "and", "a", "dog", "on", "the", "floor"]
    assert reorder_clauses(clauses, rng) == [
        "a",
        "dog",
        "on",
        "the",
        "floor",
        "and",
        "a",
        "cat",
        "on",
        "a",
        "bed",
    ]
    assert reorder_clauses(["a", "cat", "on", "a", "bed"], rng) is None
    # a clause with a verb keeps its order: its place may belong to the object of the verb
    assert restate_place(["a", "man", "riding", "a", "horse", "on", "the", "beach"], rng) is None
    assert restate_place(["a", "cat", "on", "a", "bed", "with", "a", "hat"], rng) is None
    back = {
        " ".join(
            restate_place(
                ["on", "the", "left", "there", "is", "a", "red", "ball"], random.Random(s)
            )
        )
        for s in range(40)
    }
    assert "a red ball on the left" in back and "on the left there is a red ball" not in back
    assert rephrase("two dogs playing", rng) is None
    fronted = {
        " ".join(restate_place(["a", "cat", "on", "a", "couch"], random.Random(s)))
        for s in range(40)
    }
    assert fronted == {
        "on a couch a cat", "on a couch is a cat", "on a couch there is a cat",
        "a cat is on a couch", "there is a cat on a couch",
    }  # fmt: skip


def test_rephrased_positives_come_with_negatives_rephrased_as_often() -> None:
    domain = ShapesDomain()
    rng = random.Random(8)
    texts = [caption(random_scene(rng, 2), rng) for _ in range(100)]
    known = domain.prepare(texts)
    made = extra_texts(texts, known, ExtraTextShares(composition=1.0, rephrased=1.0), domain, rng)
    positives = [t for t, m in zip(made.texts, made.matches, strict=True) if m]
    negatives = [t for t, m in zip(made.texts, made.matches, strict=True) if not m]
    assert len(positives) == 100 and not set(positives) & set(texts)
    for row, text, matches in zip(made.rows, made.texts, made.matches, strict=True):
        said = parse_caption(_sizes_first(text))  # a negative with words shuffled may not parse
        assert (said is not None and is_true_of(said, known[row])) == matches, text
    fronted = [t for t in negatives if t.startswith(("on ", "in ", "to ", "there "))]
    assert len(negatives) >= 95 and len(fronted) > 20  # rephrased as often as the positives


def test_unreadable_keeps_only_closed_class_words() -> None:
    """Every open-class word becomes unknown; half the frames also lose some of their known
    words and come shuffled, as spam reads to a small vocabulary."""
    text = "a big red circle on the left , a man riding a horse"
    frame = "a [UNK] [UNK] [UNK] on the [UNK] , a [UNK] riding a [UNK]"
    made = [unreadable(text, "[UNK]", random.Random(seed)) for seed in range(40)]
    assert frame in made
    scrambled = [m for m in made if m != frame]
    assert 10 <= len(scrambled) <= 30
    for m in scrambled:
        assert m.split().count("[UNK]") == 6
        known = [w for w in m.split() if w != "[UNK]"]
        assert not Counter(known) - Counter(w for w in frame.split() if w != "[UNK]")
    assert any(len(m.split()) < len(frame.split()) for m in scrambled)


def test_extra_texts_follow_their_shares() -> None:
    domain = ShapesDomain()
    rng = random.Random(5)
    texts = [caption(random_scene(rng, 2), rng) for _ in range(200)]
    known = domain.prepare(texts)
    none = extra_texts(texts, known, ExtraTextShares(), domain, rng)
    assert none.rows == []
    made = extra_texts(texts, known, ExtraTextShares(1.0, 0.0, 0.5), domain, rng)
    negatives = [m for m in made.matches if not m]
    assert len(negatives) >= 195 and 70 < sum(made.matches) < 130
    for row, text, true in zip(made.rows, made.texts, made.matches, strict=True):
        said = parse_caption(text)
        assert (said is not None and is_true_of(said, known[row])) == true


def _match_probability(loaded, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
    ids, mask = _tokenize(loaded, texts)
    ids[:, 0] = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    model = loaded.model
    with torch.no_grad():
        images = model.vision_model(pixel_values=pixels).last_hidden_state
        return _one_pass_itm_logits(model, images, ids, mask).softmax(-1)[:, 1]


def _one_pass_itm_logits(
    model, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """ITM logits of every row in one pass through the stock text encoder."""
    hidden = model.text_encoder(
        input_ids=ids,
        attention_mask=mask,
        encoder_hidden_states=images,
        encoder_attention_mask=torch.ones(images.shape[:2], dtype=torch.long),
    ).last_hidden_state
    return model.itm_head(hidden[:, 0])


def test_truncated_negatives_teach_the_filter_to_reject_cut_texts(pairs32: TrainingPairs) -> None:
    torch.manual_seed(0)
    loaded = prepare_base("filter", "tiny", pairs32.texts, "cpu")
    loaded.model.train()
    pixels = pixel_values(pairs32.pixels, loaded)
    ids, mask = _tokenize(loaded, pairs32.texts)
    enc = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    groups = torch.from_numpy(pairs32.groups)
    rng = random.Random(1)
    domain = TextDomain()
    known = domain.prepare(pairs32.texts)

    def loss() -> torch.Tensor:
        made = extra_texts(pairs32.texts, known, ExtraTextShares(truncated=1.0), domain, rng)
        made_ids, made_mask = _tokenize(loaded, made.texts)
        extra = ExtraTexts(torch.tensor(made.rows), made_ids, made_mask, torch.tensor(made.matches))
        return filter_losses(
            loaded.model, Temperature(), pixels, ids, mask, enc, groups, None, extra
        ).itm

    _optimise(loss, loaded.model.parameters(), steps=120, lr=3e-3)
    loaded.model.eval()
    full = _match_probability(loaded, pixels, pairs32.texts)
    cut = _match_probability(
        loaded, pixels, [truncate_words(t, random.Random(7)) or t for t in pairs32.texts]
    )
    # Without the extra negatives both sit near the prior; with them cut texts are rejected.
    assert cut.mean() < 0.1 and (cut < 0.5).all() and full.mean() > 0.3


def test_finetune_refuses_an_out_folder_it_could_not_or_should_not_write_before_training(
    tmp_path: Path, clean: Path
) -> None:
    from app.cli import main

    (tmp_path / "a_file").write_text("x")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    args = ["finetune", "filter", "--train", str(clean), "--base", "tiny", "--max-steps", "1"]
    args += ["--batch-size", "2", "--holdout", "0", "--device", "cpu", "--out"]
    for out, message in (
        (tmp_path / "a_file", "is not a folder"),
        (mine, "holds other files (notes.txt) and is not a model folder (no config.json)"),
    ):
        result = CliRunner().invoke(main, [*args, str(out)])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert "finetuning" not in result.stderr  # refused before the models
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    model = tmp_path / "model"
    for _ in range(2):  # a saved model's folder is replaced
        assert CliRunner().invoke(main, [*args, str(model)]).exit_code == 0
    assert (model / "config.json").is_file()


def test_truncated_negatives_option_is_recorded_and_filter_only(
    tmp_path: Path, clean: Path
) -> None:
    out = tmp_path / "filter"
    common = ["--train", str(clean), "--out", str(out), "--base", "tiny", "--max-steps", "2"]
    common += ["--batch-size", "8", "--device", "cpu"]
    runner = CliRunner()
    result = runner.invoke(
        finetune_command,
        ["filter", *common, "--truncated-negatives", "0.5"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "--truncated-negatives 0.5" in card and "50% of pairs also get their own text" in card
    refused = runner.invoke(
        finetune_command, ["captioner", *common, "--truncated-negatives", "0.5"]
    )
    assert refused.exit_code == 2 and "No such option" in refused.output


def test_composition_options_are_recorded_in_the_model_card(tmp_path: Path, clean: Path) -> None:
    out = tmp_path / "filter"
    common = ["--train", str(clean), "--out", str(out), "--base", "tiny", "--max-steps", "2"]
    common += ["--batch-size", "8", "--device", "cpu", "--holdout", "0.25"]
    runner = CliRunner()
    options = ["--composition-negatives", "1.0", "--partial-positives", "0.25"]
    options += ["--reworded-positives", "0.5", "--unreadable-negatives", "0.5"]
    options += ["--rephrased-positives", "0.5"]
    result = runner.invoke(
        finetune_command,
        ["filter", *common, *options, "--text-domain", "shapes"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "--composition-negatives 1.0" in card and "--text-domain shapes" in card
    assert "composition negatives: 100% of pairs" in card
    assert "partial positives: 25% of pairs" in card and "text domain: shapes" in card
    assert "reworded positives: 50% of pairs" in card and "itm_accept_reworded" in card
    assert "unreadable negatives: 50% of pairs" in card and "itm_reject_unreadable" in card
    assert "rephrased positives: 50% of pairs" in card and "itm_accept_rephrased" in card
    # The held-out evaluation measures what the extra texts teach.
    assert "itm_reject_composition" in card and "itm_accept_partial" in card
    refused = runner.invoke(finetune_command, ["filter", *common, *options])
    assert isinstance(refused.exception, UsageError) and "--text-domain" in str(refused.exception)


def test_finetune_flags_and_their_defaults_come_from_the_settings() -> None:
    """Each setting is a flag whose help shows its declared default; the captioner's command
    has no filter-only flag; the settings the command builds are the declared defaults."""
    import click

    from models.finetune.settings import FILTER_ONLY, FinetuneSettings

    for kind in ("captioner", "filter"):
        command = finetune_command.commands[kind]
        ctx = click.Context(command)
        helps = {p.name: p.get_help_record(ctx)[1] for p in command.params if p.name != "help"}
        expected = [
            n for n in FinetuneSettings.model_fields if kind == "filter" or n not in FILTER_ONLY
        ]
        assert list(helps) == expected
        for name in expected:
            field = FinetuneSettings.model_fields[name]
            assert helps[name].startswith(field.description), name
            if name in ("train", "out"):
                assert "[required]" in helps[name]
            else:
                default = "none" if field.default is None else str(field.default)
                assert helps[name].endswith(f"[default: {default}]"), name
    defaults = FinetuneSettings(train="t.parquet", out="m")
    assert defaults.learning_rate(from_preset=True) == 5e-4
    assert defaults.learning_rate(from_preset=False) == 1e-5
    assert defaults.extra_text_shares() == ExtraTextShares()
