"""Fused attention for BLIP: ``scaled_dot_product_attention`` in place of matmul + softmax.

transformers runs BLIP's attention eagerly (BLIP declares no SDPA support): the vision
encoder materialises a ``heads x 577 x 577`` score tensor per image and layer, and the
text model does the same against the image states. :func:`use_fused_attention` switches
every attention module of a BLIP model to a subclass whose forward computes the same
thing with :func:`torch.nn.functional.scaled_dot_product_attention` (flash or memory-
efficient kernels on CPU and GPU). Weights, module names, hooks and caches stay as they
are, so checkpoints, ``state_dict`` and :mod:`models.shared_states` are unaffected; the
attention probabilities are no longer returned (``output_attentions`` gets ``None``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention


class FusedBlipAttention(BlipAttention):
    """BLIP's vision self-attention through SDPA."""

    def forward(self, hidden_states: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, None]:
        batch, tokens, dim = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        context = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.dropout.p if self.training else 0.0, scale=self.scale
        )
        return self.projection(context.transpose(1, 2).reshape(batch, tokens, dim)), None


class FusedBlipTextAttention(BlipTextSelfAttention):
    """BLIP's text self- and cross-attention through SDPA, with transformers' caches."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: object | None = None,
        **kwargs: object,
    ) -> tuple[torch.Tensor, None]:
        if cache is None:  # transformers before 5.24 names it past_key_values
            cache = kwargs.get("past_key_values")
        heads, size = self.num_attention_heads, self.attention_head_size
        query = self.query(hidden_states)
        query = query.view(*hidden_states.shape[:-1], heads, size).transpose(1, 2)
        cross = encoder_hidden_states is not None
        mask = encoder_attention_mask if cross else attention_mask
        layer_cache = cache
        if isinstance(cache, EncoderDecoderCache):
            layer_cache = cache.cross_attention_cache if cross else cache.self_attention_cache
        if (
            cross
            and isinstance(cache, EncoderDecoderCache)
            and cache.is_updated.get(self.layer_idx)
        ):
            key = layer_cache.layers[self.layer_idx].keys
            value = layer_cache.layers[self.layer_idx].values
        else:
            states = encoder_hidden_states if cross else hidden_states
            shape = (*states.shape[:-1], heads, size)
            key = self.key(states).view(shape).transpose(1, 2)
            value = self.value(states).view(shape).transpose(1, 2)
            if cache is not None:
                key, value = layer_cache.update(key, value, self.layer_idx)
                if cross and isinstance(cache, EncoderDecoderCache):
                    cache.is_updated[self.layer_idx] = True
        if mask is not None:
            mask = mask.to(query.dtype)
        context = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        context = context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
        return context, None


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``B x L x D`` -> ``B x heads x L x D/heads`` (a view)."""
    return x.view(*x.shape[:-1], heads, x.shape[-1] // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``B x heads x L x d`` -> ``B x L x heads*d``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


_FUSED: dict[type, type] = {
    BlipAttention: FusedBlipAttention,
    BlipTextSelfAttention: FusedBlipTextAttention,
}


def use_fused_attention(model: torch.nn.Module) -> int:
    """Switch every BLIP attention module of ``model`` to its SDPA subclass; returns how many."""
    switched = 0
    for module in model.modules():
        fused = _FUSED.get(type(module))
        if fused is not None:
            module.__class__ = fused
            switched += 1
    return switched
