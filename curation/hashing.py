"""Content hashes of images: exact (SHA-256 of the bytes) and perceptual (64-bit DCT hash).

The perceptual hash is the classic pHash: the 2-D DCT of a 32x32 grayscale image, its 8x8
lowest frequencies, each bit set when the coefficient is above their median. It survives
resizing and recompression, so copies of one image land within a few bits of each other.
"""

from __future__ import annotations

import hashlib

import numpy as np

HASH_SIDE = 32  # side of the grayscale image the hash is computed from
_LOW = 8  # 8x8 low frequencies -> 64 bits


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` so that ``D @ x`` is the DCT of a length-n vector."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_DCT = _dct_matrix(HASH_SIDE)
_WEIGHTS = 1 << np.arange(63, -1, -1, dtype=np.uint64)  # first coefficient = highest bit


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def phash64(gray: np.ndarray) -> int:
    """64-bit perceptual hash of a 32x32 grayscale image (any numeric dtype).

    Returns a Python int in ``[0, 2**64)``; bit 63 is the DC coefficient.
    """
    if gray.shape != (HASH_SIDE, HASH_SIDE):
        raise ValueError(
            f"phash64 needs a {HASH_SIDE}x{HASH_SIDE} grayscale array, got {gray.shape}"
        )
    x = gray.astype(np.float64)
    coeffs = (_DCT @ x @ _DCT.T)[:_LOW, :_LOW].ravel()
    bits = (coeffs > np.median(coeffs)).astype(np.uint64)
    return int((bits * _WEIGHTS).sum())


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()
