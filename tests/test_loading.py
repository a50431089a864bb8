"""Loading BLIP checkpoints: local folders, hub ids offline, pickle refusal, dtypes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from curation.errors import UsageError
from models.loading import ModelLoadError, check_model, load_captioner, load_filter, model_identity
from models.preprocess import pixel_values
from models.presets import image_processor


def test_loads_captioner_and_filter_from_folders(tiny_captioner_dir: Path, tiny_filter_dir: Path):
    captioner = load_captioner(str(tiny_captioner_dir), device="cpu")
    scorer = load_filter(str(tiny_filter_dir), device="cpu")
    assert isinstance(captioner.model, BlipForConditionalGeneration)
    assert isinstance(scorer.model, BlipForImageTextRetrieval)
    assert not captioner.model.training and not scorer.model.training
    assert captioner.image_size == 32
    assert captioner.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert captioner.device == torch.device("cpu") and captioner.dtype == torch.float32
    ids = captioner.tokenizer("a picture of a red circle").input_ids
    assert captioner.tokenizer.unk_token_id not in ids and len(ids) == 8
    assert captioner.tokenizer.convert_tokens_to_ids("[ENC]") != captioner.tokenizer.unk_token_id


def test_model_identity_is_exact_for_local_folders(tiny_filter_dir: Path, tmp_path: Path) -> None:
    first = model_identity(str(tiny_filter_dir))
    assert model_identity(str(tiny_filter_dir)) == first and len(first["sha256"]) == 64
    # Weights edited in the middle of the file, same size (a re-finetuned layer): new identity.
    copy = Path(shutil.copytree(tiny_filter_dir, tmp_path / "copy"))
    weights = bytearray((copy / "model.safetensors").read_bytes())
    middle = len(weights) // 2
    weights[middle] = (weights[middle] + 1) % 256
    (copy / "model.safetensors").write_bytes(bytes(weights))
    assert model_identity(str(copy))["sha256"] != first["sha256"]


def test_model_identity_of_a_hub_id_is_its_snapshot_commit(
    tiny_filter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id resolves, offline, to the commit of the cached snapshot its revision points
    at: another commit under the same name is another identity."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--capfilt-test--tiny-filter"
    commits = {"main": "a" * 40, "v2": "b" * 40}
    for ref, commit in commits.items():
        shutil.copytree(tiny_filter_dir, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    main = model_identity("capfilt-test/tiny-filter")
    assert main == {"name": "capfilt-test/tiny-filter", "revision": None, "commit": "a" * 40}
    assert model_identity("capfilt-test/tiny-filter", "v2")["commit"] == "b" * 40


def test_a_mistyped_local_folder_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    for name in (str(tmp_path / "models" / "fitler"), "./no/such/folder", "models/fitler"):
        with pytest.raises(ModelLoadError, match="does not exist"):
            check_model(name if name != "models/fitler" else str(tmp_path / "models/fitler"))


def test_hub_id_offline_names_the_remedies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError) as err:
        load_filter("capfilt-test/no-such-blip-filter", device="cpu")
    message = str(err.value)
    assert "local folder" in message and "HF_HOME" in message and "save_pretrained" in message
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2


def _pickle_only_copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    weights = load_file(target / "model.safetensors")
    (target / "model.safetensors").unlink()
    torch.save(weights, target / "pytorch_model.bin")
    return target


def test_pickle_weights_need_allow_pickle(tiny_filter_dir: Path, tmp_path: Path):
    folder = _pickle_only_copy(tiny_filter_dir, tmp_path / "pickled")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_filter(str(folder), device="cpu")
    pickled = load_filter(str(folder), device="cpu", allow_pickle=True)
    safe = load_filter(str(tiny_filter_dir), device="cpu")
    for (name, a), b in zip(
        pickled.model.state_dict().items(), safe.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_dtype_choices(tiny_filter_dir: Path):
    with pytest.raises(ModelLoadError, match="fp16 is not supported on CPU"):
        load_filter(str(tiny_filter_dir), device="cpu", dtype="fp16")
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_filter(str(tiny_filter_dir), device="cpu", dtype="int8")
    bf16 = load_filter(str(tiny_filter_dir), device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


def test_folder_without_weights_is_refused(tiny_filter_dir: Path, tmp_path: Path):
    shutil.copytree(tiny_filter_dir, tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no model weights"):
        load_filter(str(tmp_path / "empty"), device="cpu")


def test_pixel_values_match_blip_processor(tiny_filter_dir: Path):
    loaded = load_filter(str(tiny_filter_dir), device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expected = image_processor(32)(list(images), do_resize=False, return_tensors="pt").pixel_values
    assert torch.allclose(pixel_values(images, loaded), expected, atol=1e-5)
    with pytest.raises(ValueError, match="expected uint8 images"):
        pixel_values(images[:, :16], loaded)


def test_inference_context_is_scoped(tiny_filter_dir: Path):
    loaded = load_filter(str(tiny_filter_dir), device="cpu")
    context = loaded.inference()
    assert not torch.is_inference_mode_enabled()  # nothing happens before entering
    with context:
        assert torch.is_inference_mode_enabled()
    assert not torch.is_inference_mode_enabled()
