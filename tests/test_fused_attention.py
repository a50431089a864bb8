"""Fused (SDPA) attention agrees with transformers' eager BLIP attention modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

from models.fused_attention import (
    FusedBlipAttention,
    FusedBlipTextAttention,
    use_fused_attention,
)
from models.loading import ModelLoadError, load_captioner, load_filter
from models.presets import save_model_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        kind: save_model_folder(kind, root / kind, "mini", tiny_tokenizer, seed=4)
        for kind in ("captioner", "filter")
    }


def _pair(load, folder: Path, dtype: str = "fp32"):
    return (
        load(str(folder), device="cpu", dtype=dtype, attention="eager").model,
        load(str(folder), device="cpu", dtype=dtype).model,
    )


def _attention_types(model: torch.nn.Module) -> set[type]:
    return {
        type(m) for m in model.modules() if isinstance(m, BlipAttention | BlipTextSelfAttention)
    }


def test_loading_switches_every_attention_module(folders):
    stock, fused = _pair(load_captioner, folders["captioner"])
    assert _attention_types(stock) == {BlipAttention, BlipTextSelfAttention}
    assert _attention_types(fused) == {FusedBlipAttention, FusedBlipTextAttention}
    assert stock.state_dict().keys() == fused.state_dict().keys()
    layers = (
        stock.config.vision_config.num_hidden_layers
        + 2 * stock.config.text_config.num_hidden_layers
    )
    assert use_fused_attention(fused) == 0  # already switched
    assert use_fused_attention(stock) == layers
    assert _attention_types(stock) == {FusedBlipAttention, FusedBlipTextAttention}
    with pytest.raises(ModelLoadError, match="attention"):
        load_captioner(str(folders["captioner"]), device="cpu", attention="flash")


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 2e-5), ("bf16", 5e-2)])
def test_vision_encoder_agrees(folders, dtype, tolerance):
    stock, fused = _pair(load_filter, folders["filter"], dtype)
    pixels = torch.randn(3, 3, 64, 64).to(stock.dtype)
    with torch.inference_mode():
        expected = stock.vision_model(pixel_values=pixels).last_hidden_state.float()
        got = fused.vision_model(pixel_values=pixels).last_hidden_state.float()
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_text_encoder_agrees_with_padding_and_cross_attention(folders, tiny_tokenizer):
    stock, fused = _pair(load_filter, folders["filter"])
    tokens = tiny_tokenizer(
        ["a red circle", "two blue squares on the left of a big yellow star", "cat"],
        padding=True,
        return_tensors="pt",
    )
    states = torch.randn(3, 17, stock.config.vision_config.hidden_size)
    image_mask = torch.ones(3, 17, dtype=torch.long)
    image_mask[2, 9:] = 0  # padded image tokens are not attended to
    with torch.inference_mode():
        for kwargs in (
            {},
            {"encoder_hidden_states": states, "encoder_attention_mask": image_mask},
        ):
            expected = stock.text_encoder(**tokens, **kwargs).last_hidden_state
            got = fused.text_encoder(**tokens, **kwargs).last_hidden_state
            real = tokens.attention_mask.bool()
            torch.testing.assert_close(got[real], expected[real], atol=2e-5, rtol=2e-5)


def test_text_decoder_agrees_with_cache_step_by_step(folders, tiny_tokenizer):
    stock, fused = _pair(load_captioner, folders["captioner"])
    states = torch.randn(2, 17, stock.config.vision_config.hidden_size)
    prompt = tiny_tokenizer(["a picture of", "a picture of"], return_tensors="pt").input_ids[:, :-1]
    outputs = []
    with torch.inference_mode():
        for model in (stock, fused):
            out = model.text_decoder.generate(
                input_ids=prompt,
                encoder_hidden_states=states,
                max_length=12,
                min_length=12,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                eos_token_id=stock.config.text_config.sep_token_id,
                pad_token_id=0,
            )
            outputs.append(out)
    assert torch.equal(outputs[0].sequences, outputs[1].sequences)
    for a, b in zip(outputs[0].logits, outputs[1].logits, strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=2e-5)


def test_training_gradients_agree(folders, tiny_tokenizer):
    """Finetuning runs through the fused modules too: same loss and gradients."""
    stock, fused = _pair(load_captioner, folders["captioner"])
    tokens = tiny_tokenizer(
        ["a picture of a red circle", "a picture of a big dog"], return_tensors="pt"
    )
    pixels = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (stock, fused):
        model.train()
        loss = model(pixel_values=pixels, input_ids=tokens.input_ids, labels=tokens.input_ids).loss
        loss.backward()
        grads.append(
            (loss.detach(), model.vision_model.encoder.layers[0].self_attn.qkv.weight.grad)
        )
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=1e-4)
