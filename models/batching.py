"""How many images a model batch holds on a device.

On CPU a batch of 8 already keeps the matrix units busy (the vision transformer's rows are
577 tokens per image), and larger batches only hold more memory. On a GPU the decoding
steps are the bottleneck and their cost hardly grows with the rows, so the batch is as
large as memory allows: the free memory after the models are loaded, divided by what one
image needs at the peak, rounded down to a power of two. Only the models' configurations
are read, so a pipeline can size its batches before it loads them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BlipConfig

CPU_BATCH = 8
#: Share of the free GPU memory the batch may take (the rest: allocator slack, fragmentation).
GPU_MEMORY_SHARE = 0.6
MAX_BATCH = 1024


def bytes_per_image(
    config: BlipConfig, dtype: torch.dtype, captions_per_image: int, max_length: int = 30
) -> int:
    """Peak device memory one image needs in a batch of a BLIP captioner or filter: vision
    activations of one layer, cross-attention keys/values of every text layer (twice:
    projected, and in the decoder's workspace), and the caption rows' caches (``max_length``
    tokens) and scores."""
    vision, text = config.vision_config, config.text_config
    size = torch.finfo(dtype).bits // 8
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    activations = tokens * (5 * vision.hidden_size + 2 * vision.intermediate_size) * size
    cross = 2 * 2 * text.num_hidden_layers * tokens * text.hidden_size * size
    caption_rows = captions_per_image * (
        2 * text.num_hidden_layers * max_length * text.hidden_size * size + 8 * text.vocab_size * 4
    )
    return activations + cross + caption_rows


def batch_size_for(
    configs: Sequence[BlipConfig],
    dtype: torch.dtype,
    device: torch.device,
    captions_per_image: int,
    *,
    free_bytes: int | None = None,
) -> int:
    """Images per batch for models with ``configs`` on ``device`` at K captions per image:
    :data:`CPU_BATCH` on CPU; on CUDA a power of two from the free memory (``free_bytes``,
    default measured on ``device`` after the models are loaded), from 1 to :data:`MAX_BATCH`."""
    if device.type != "cuda" and free_bytes is None:
        return CPU_BATCH
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    need = max(bytes_per_image(config, dtype, captions_per_image) for config in configs)
    fits = int(free_bytes * GPU_MEMORY_SHARE // need)
    return max(1, min(MAX_BATCH, 1 << max(0, fits.bit_length() - 1)))
