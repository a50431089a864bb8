"""Cross-attention of many texts to few images, with keys and values projected once per image.

When several texts attend to the same image (K captions of one image, or the web text and
the captions scored against it), the BLIP text model's cross-attention projects that
image's ~577 vision states to keys and values once per text: at ViT-B size about 16 GFLOP
per text, a seventh of a vision pass, and as many copies of them to read.

- :func:`image_keys_values` projects them once per image, for every layer;
  :func:`grouped_cross_attention` lets the texts (or caption rows) of each image attend to
  them together, as one ``images x slots`` block laid out by :class:`RowGroups`: nothing
  is repeated or gathered per text.
- :class:`SharedCrossAttention` does the projection once per image inside transformers'
  own forward (``generate`` with beam search), through temporary hooks: the projections of
  a tensor made by :meth:`SharedCrossAttention.repeat` run on the distinct images, are
  kept for the context's lifetime and gathered per text; any other input goes through the
  projections unchanged, so results never depend on the shortcut being taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F

_PROJECTIONS = ("crossattention.self.key", "crossattention.self.value")


def image_keys_values(
    layers: list[torch.nn.Module], states: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Cross-attention keys and values of every BLIP text layer for ``states`` (images x
    tokens x dim): per layer ``images x heads x tokens x head_size``, contiguous, as every
    step or chunk reads them whole."""
    keys, values = [], []
    for layer in layers:
        attention = layer.crossattention.self
        shape = (*states.shape[:2], attention.num_attention_heads, attention.attention_head_size)
        keys.append(attention.key(states).view(shape).transpose(1, 2).contiguous())
        values.append(attention.value(states).view(shape).transpose(1, 2).contiguous())
    return keys, values


@dataclass
class RowGroups:
    """Rows grouped by image: row ``r`` sits at position ``to_rows[r]`` of an ``images x
    slots`` block; ``to_slots`` names the row at each position (``rows``: none)."""

    images: int
    slots: int
    to_slots: torch.Tensor
    to_rows: torch.Tensor

    @classmethod
    def empty(cls, rows: int, images: int, slots: int, device: torch.device) -> RowGroups:
        """Index tensors to fill with :meth:`assign` (kept across CUDA graph replays)."""
        return cls(
            images,
            slots,
            torch.empty(images * slots, dtype=torch.long, device=device),
            torch.empty(rows, dtype=torch.long, device=device),
        )

    @staticmethod
    def ranks(image_of_row: torch.Tensor, images: int) -> tuple[torch.Tensor, int]:
        """Each row's rank among its image's rows (rows in any order), and the most rows any
        image has."""
        order = torch.argsort(image_of_row, stable=True)
        counts = torch.bincount(image_of_row, minlength=images)
        starts = counts.cumsum(0) - counts
        rank = torch.empty_like(image_of_row)
        rank[order] = torch.arange(len(order), device=order.device) - starts[image_of_row[order]]
        return rank, int(counts.max())

    @classmethod
    def of(cls, image_of_row: torch.Tensor, images: int) -> RowGroups:
        """Groups for rows in any order; ``image_of_row`` in ``[0, images)``."""
        slot_of_row, slots = cls.ranks(image_of_row, images)
        groups = cls.empty(len(image_of_row), images, slots, image_of_row.device)
        groups.assign(image_of_row, slot_of_row)
        return groups

    def assign(self, image_of_row: torch.Tensor, slot_of_row: torch.Tensor) -> None:
        """Place the first ``len(image_of_row)`` rows; later rows read position 0."""
        rows = image_of_row.shape[0]
        position = image_of_row * self.slots + slot_of_row
        self.to_slots.fill_(self.to_rows.shape[0])
        self.to_slots[position] = torch.arange(rows, device=position.device)
        self.to_rows.zero_()
        self.to_rows[:rows] = position


def grouped_cross_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, groups: RowGroups
) -> torch.Tensor:
    """Attention of ``query`` (rows x length x dim) to its rows' images' ``keys``/``values``
    (images x heads x tokens x head_size); all image tokens attended."""
    rows, length, dim = query.shape
    heads, size = keys.shape[1], keys.shape[3]
    flat = query.reshape(rows, length * dim)
    block = torch.cat([flat, flat.new_zeros(1, length * dim)])[groups.to_slots]
    block = block.view(groups.images, groups.slots * length, heads, size).transpose(1, 2)
    context = F.scaled_dot_product_attention(block, keys, values)
    context = context.transpose(1, 2).reshape(groups.images * groups.slots, length * dim)
    return context[groups.to_rows].view(rows, length, dim)


class SharedCrossAttention:
    """Context over one batch of image states ``images x tokens x dim``."""

    def __init__(self, text_model: torch.nn.Module, states: torch.Tensor) -> None:
        self.states = states
        self._modules = [
            module for name, module in text_model.named_modules() if name.endswith(_PROJECTIONS)
        ]
        self._handles: list[Any] = []
        self._projected: dict[torch.nn.Module, torch.Tensor] = {}
        self._pending: set[torch.nn.Module] = set()
        self._repeated: torch.Tensor | None = None
        self._owner: torch.Tensor | None = None

    def repeat(self, owner: torch.Tensor) -> torch.Tensor:
        """``states[owner]``, to pass as ``encoder_hidden_states``; ``owner[i]`` is row i's image."""
        self._owner = owner
        self._repeated = self.states[owner]
        return self._repeated

    def __enter__(self) -> SharedCrossAttention:
        for module in self._modules:
            self._handles.append(module.register_forward_pre_hook(self._before))
            self._handles.append(module.register_forward_hook(self._after))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        _trace: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._projected.clear()
        self._repeated = self._owner = None

    def _before(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self._repeated is None or not args or args[0] is not self._repeated:
            return None
        self._pending.add(module)
        if module in self._projected:
            return (args[0][:0], *args[1:])  # already projected: skip the work
        return (self.states, *args[1:])

    def _after(self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
        if module not in self._pending:
            return None
        self._pending.discard(module)
        projected = self._projected.setdefault(module, output)
        return projected[self._owner]
