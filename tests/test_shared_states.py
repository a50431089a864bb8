"""Cross-attention keys/values projected once per image give the same outputs as per row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.loading import LoadedModel, load_filter
from models.shared_states import SharedCrossAttention


@pytest.fixture(scope="module")
def loaded(tiny_filter_dir: Path) -> LoadedModel:
    return load_filter(str(tiny_filter_dir), device="cpu")


def _key_input_rows(model: torch.nn.Module, calls: list[int]) -> list:
    return [
        module.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
        for name, module in model.named_modules()
        if name.endswith("crossattention.self.key")
    ]


def test_shared_projection_matches_repeated_states(loaded):
    text = loaded.model.text_encoder
    states = torch.randn(3, 17, loaded.model.config.vision_config.hidden_size)
    ids = loaded.tokenizer(
        ["a red circle", "two blue squares", "a star", "cat", "dog"],
        padding=True,
        return_tensors="pt",
    )
    owner = torch.tensor([2, 0, 2, 2, 1])
    first, second = slice(0, 3), slice(3, 5)

    def run(encoder_states: torch.Tensor, rows: slice) -> torch.Tensor:
        return text(
            input_ids=ids.input_ids[rows],
            attention_mask=ids.attention_mask[rows],
            encoder_hidden_states=encoder_states,
            encoder_attention_mask=torch.ones(encoder_states.shape[:2], dtype=torch.long),
        ).last_hidden_state

    with torch.inference_mode():
        expected = [run(states[owner[rows]], rows) for rows in (first, second)]
        calls: list[int] = []
        with SharedCrossAttention(text, states) as shared:
            handles = _key_input_rows(text, calls)  # runs after the context's own hooks
            got = [run(shared.repeat(owner[rows]), rows) for rows in (first, second)]
            # A tensor not made by repeat() goes through unchanged.
            plain = run(states[owner[first]], first)
            for handle in handles:
                handle.remove()
        after = run(states[owner[first]], first)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, expected[0])
    torch.testing.assert_close(after, expected[0])
    layers = text.config.num_hidden_layers
    # Projected once for the 3 images, skipped (empty input) for the second chunk, and
    # the plain tensor's rows projected as given.
    assert calls == [3] * layers + [0] * layers + [3] * layers


def test_grouped_cross_attention_equals_attention_to_repeated_states(loaded):
    """Texts of one image attend together to its keys/values, projected once per image:
    the same as each text attending to its own copy (rows in any order, images skipped)."""
    from models.shared_states import RowGroups, grouped_cross_attention, image_keys_values

    layers = list(loaded.model.text_encoder.encoder.layer)
    attention = layers[0].crossattention.self
    heads, size = attention.num_attention_heads, attention.attention_head_size
    states = torch.randn(4, 17, loaded.model.config.vision_config.hidden_size)
    owner = torch.tensor([2, 0, 2, 2, 3, 0])  # image 1 has no text
    query = torch.randn(6, 5, heads * size)
    with torch.inference_mode():
        keys, values = image_keys_values(layers, states)
        groups = RowGroups.of(owner, 4)
        got = grouped_cross_attention(query, keys[0], values[0], groups)
        repeated = states[owner]
        k = attention.key(repeated).view(6, 17, heads, size).transpose(1, 2)
        v = attention.value(repeated).view(6, 17, heads, size).transpose(1, 2)
        q = query.view(6, 5, heads, size).transpose(1, 2)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert keys[0].shape == (4, heads, 17, size) and keys[0].is_contiguous()
    assert (groups.images, groups.slots) == (4, 3)
    assert sorted(groups.to_rows.tolist()) == [0, 1, 6, 7, 8, 9]
    torch.testing.assert_close(
        got, expected.transpose(1, 2).reshape(6, 5, -1), atol=1e-5, rtol=1e-5
    )
