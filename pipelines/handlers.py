"""RunInference model handlers that wrap the ML layer (``models/``).

Each handler loads its model once per worker process (RunInference shares it across the
process's threads) and runs fixed-size batches: ``min_batch_size == max_batch_size``.
Elements are :class:`ModelInput` objects; RunInference is applied through
``KeyedModelHandler`` so every result stays keyed by its image's cache key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from curation.config import RunConfig
from curation.records import GroupScores, ImageGroup


@dataclass
class ModelInput:
    """An image group on its way through the models, with the pixels each model needs."""

    group: ImageGroup
    caption_pixels: np.ndarray | None  # H x W x 3 uint8 at the captioner's size
    filter_pixels: np.ndarray  # H x W x 3 uint8 at the filter's size
    captions: list[str] = field(default_factory=list)


def share_cpu(workers: int) -> None:
    """Give each local worker process its share of the CPU cores for torch's thread pool.

    Without this every worker process would start one thread per core, and the processes
    would fight over the cores (each operation then waits on the others). An explicit
    ``OMP_NUM_THREADS`` in the environment wins.
    """
    import os

    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    torch.set_num_threads(max(1, cores // max(1, workers)))


class BlipHandler(ModelHandler):
    """Fixed-size batches of a run's config, and model loading with the run's options."""

    def __init__(self, config: RunConfig):
        super().__init__(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
        self._config = config

    def _load(self, kind: str) -> Any:
        """The run's captioner (``kind="captioner"``) or filter, loaded by the models layer."""
        from transformers.utils import logging as hf_logging

        from models.loading import load_captioner, load_filter

        hf_logging.disable_progress_bar()  # the run's own progress line reports instead
        c = self._config
        share_cpu(c.workers)
        load = load_captioner if kind == "captioner" else load_filter
        return load(
            getattr(c, kind),
            revision=getattr(c, f"{kind}_revision"),
            device=c.device,
            dtype=c.dtype,
            allow_pickle=c.allow_pickle,
        )


class CaptionHandler(BlipHandler):
    """Writes K captions per image with the BLIP captioner (one vision pass per image)."""

    def load_model(self) -> Any:
        from models.captioner import Captioner

        return Captioner(self._load("captioner"), self._config.caption_settings())

    def run_inference(
        self, batch: Sequence[ModelInput], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[ModelInput]:
        pixels = np.stack([item.caption_pixels for item in batch])
        captions = model.caption(pixels, [item.group.key for item in batch])
        for item, texts in zip(batch, captions, strict=True):
            item.captions = list(texts)
        return batch

    def get_num_bytes(self, batch: Sequence[ModelInput]) -> int:
        return sum(item.caption_pixels.nbytes for item in batch)

    def get_metrics_namespace(self) -> str:
        return "curation_captioner"


class ScoreHandler(BlipHandler):
    """Scores every web text and caption of an image with the BLIP ITM filter, encoding it once."""

    def load_model(self) -> Any:
        from models.scorer import Scorer

        return Scorer(self._load("filter"), first_token=self._config.first_token)

    def run_inference(
        self, batch: Sequence[ModelInput], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[tuple[ImageGroup, GroupScores]]:
        pixels = np.stack([item.filter_pixels for item in batch])
        texts = [list(item.group.texts) + list(item.captions) for item in batch]
        results = model.score(pixels, texts)
        out = []
        for item, scores in zip(batch, results, strict=True):
            n = len(item.group.texts)
            itm = [float(x) for x in scores.itm]
            itc = [float(x) for x in scores.itc]
            out.append(
                (
                    item.group,
                    GroupScores(
                        captions=list(item.captions),
                        text_itm=itm[:n],
                        text_itc=itc[:n],
                        caption_itm=itm[n:],
                        caption_itc=itc[n:],
                        embedding=[float(x) for x in scores.embedding],
                    ),
                )
            )
        return out

    def get_num_bytes(self, batch: Sequence[ModelInput]) -> int:
        return sum(item.filter_pixels.nbytes for item in batch)

    def get_metrics_namespace(self) -> str:
        return "curation_filter"
