"""Caption decoding settings (CapFilt's defaults), without importing torch.

The run configuration takes its defaults from here and checks a run's settings with it
before any work starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CaptionSettings:
    """Decoding settings; lengths count the prompt tokens, as in salesforce/BLIP."""

    prompt: str = "a picture of "
    captions_per_image: int = 1
    sample: bool = True
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_length: int = 30
    min_length: int = 10
    num_beams: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        if self.captions_per_image < 1:
            raise ValueError("captions_per_image must be at least 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be 0 (off) or positive")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be positive")
        if not 0 <= self.min_length < self.max_length:
            raise ValueError("need 0 <= min_length < max_length")
        if not self.sample and self.captions_per_image > self.num_beams:
            raise ValueError("beam search returns at most num_beams captions per image")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for manifests and cache keys."""
        return asdict(self)
