"""Decoded uint8 RGB images -> normalised pixel tensors for a loaded BLIP model.

Images arrive already resized to the model's square input size (the decode stage squash-
resizes bicubic, as BLIP's processor does), so what is left is scaling, normalisation with
the checkpoint's mean/std, NCHW layout, device and dtype. The uint8 array travels to the
device first, so a GPU receives a quarter of the bytes of a float tensor; from pinned host
memory (:func:`pinned`, :mod:`models.feeder`) that copy runs asynchronously.
"""

from __future__ import annotations

import numpy as np
import torch

from models.loading import LoadedModel


def pinned(pixels: np.ndarray) -> torch.Tensor:
    """``pixels`` as a CPU tensor in page-locked memory when CUDA is available (so copies
    to the GPU are asynchronous), else as is."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


def pixel_values(pixels: np.ndarray | torch.Tensor, loaded: LoadedModel) -> torch.Tensor:
    """``B x H x W x 3`` uint8 at ``loaded.image_size`` (numpy, or a tensor on any device)
    -> ``B x 3 x H x W`` model input on the model's device, in its dtype."""
    size = loaded.image_size
    if (
        pixels.ndim != 4
        or tuple(pixels.shape[1:]) != (size, size, 3)
        or pixels.dtype not in (np.uint8, torch.uint8)
    ):
        raise ValueError(
            f"expected uint8 images of shape (B, {size}, {size}, 3), got {pixels.dtype} {tuple(pixels.shape)}"
        )
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    batch = pixels.to(loaded.device, non_blocking=True)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(loaded.image_mean, device=loaded.device).view(1, 3, 1, 1)
    std = torch.tensor(loaded.image_std, device=loaded.device).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std).to(loaded.dtype)
