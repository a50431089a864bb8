"""Rows of token sequences in chunks of similar length, so that little compute goes to padding.

The scorer encodes a batch's texts this way, and the filter's finetuning its ITM pairs:
rows sorted by length (shortest first), a chunk closing at ``max_rows`` rows or when
padding to its longest row would exceed :data:`PADDING_ALLOWED` of its real tokens.
"""

from __future__ import annotations

import torch

#: A chunk closes when padding would exceed this share of its real tokens.
PADDING_ALLOWED = 0.25


def length_chunks(lengths: torch.Tensor, max_rows: int) -> list[torch.Tensor]:
    """Indices of ``lengths`` (real tokens per row) in chunks of similar length, every row in
    exactly one chunk, each chunk at most ``max_rows`` rows; on ``lengths``' device."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    host = lengths.cpu()
    order = torch.argsort(host, stable=True)
    chunks, start, tokens = [], 0, 0
    for i, n in enumerate(host[order].tolist()):
        rows = i - start
        if rows and (rows >= max_rows or (rows + 1) * n > (1 + PADDING_ALLOWED) * (tokens + n)):
            chunks.append(order[start:i])
            start, tokens = i, 0
        tokens += n
    chunks.append(order[start:])
    return [chunk.to(lengths.device) for chunk in chunks]
