"""The model stages: pixels at each model's size, captions, then scores, via RunInference.

Handlers wrap the ML layer (``models/``) and return Beam's ``PredictionResult`` per input,
never mutating it. A batch that fails (out of memory, a bad tensor) is retried in halves down
to single images; an image that fails alone gets a :class:`Failure` as its result, which
becomes ``error`` decisions for its rows instead of failing the job.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)
from apache_beam.pvalue import TaggedOutput

from curation.config import RunConfig
from curation.decide import error_detail
from curation.model_cache import cache_key
from curation.reasons import Stage
from curation.records import GroupScores, ImageGroup, Pair
from curation.screen import ScreenSettings
from pipelines.guarded import ERRORS, NAMESPACE, GuardedDoFn, failure_rows


@dataclass(frozen=True)
class ModelInput:
    """An image group on its way through the models, with the pixels each model needs."""

    group: ImageGroup
    caption_pixels: np.ndarray | None  # H x W x 3 uint8 at the captioner's size
    filter_pixels: np.ndarray  # H x W x 3 uint8 at the filter's size
    captions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failure:
    """The result of an image the model failed on by itself."""

    detail: str


def _members(group: ImageGroup) -> Iterator[tuple[Pair, str | None]]:
    for member in group.members:
        yield member.hashed.pair, group.key


def share_cpu(workers: int) -> None:
    """Give each local worker process its share of the CPU cores for torch's thread pool.

    Without this every worker process would start one thread per core, and the processes
    would fight over the cores (each operation then waits on the others). An explicit
    ``OMP_NUM_THREADS`` in the environment wins.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    torch.set_num_threads(max(1, cores // max(1, workers)))


class PreparePixelsFn(GuardedDoFn):
    """Decodes a group's image at each model's input size."""

    stage = Stage.PIXELS

    def __init__(
        self,
        sizes: tuple[int | None, int],
        screen: ScreenSettings,
        run_id: str,
        threshold: float,
    ) -> None:
        super().__init__(run_id, threshold)
        self._caption_size, self._filter_size = sizes
        self._screen = screen

    def apply(self, group: ImageGroup) -> Iterator[tuple[str, ModelInput]]:
        filt = self._screen.decode(group.image, self._filter_size).pixels
        if self._caption_size is None:
            cap = None
        elif self._caption_size == self._filter_size:
            cap = filt
        else:
            cap = self._screen.decode(group.image, self._caption_size).pixels
        yield cache_key(group), ModelInput(group, cap, filt)

    def rows_of(self, group: ImageGroup) -> Iterable[tuple[Pair, str | None]]:
        return _members(group)


class BlipHandler(ModelHandler):
    """Fixed-size batches, model loading with the run's options, and batch bisection."""

    stage: Stage

    def __init__(self, config: RunConfig, batch_size: int) -> None:
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._config = config

    def _load(self, kind: str) -> Any:
        from transformers.utils import logging as hf_logging

        from models.loading import load_captioner, load_filter

        hf_logging.disable_progress_bar()  # the run reports its own progress
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

    @abstractmethod
    def infer(self, batch: Sequence[ModelInput], model: Any) -> list[Any]:
        """The model's result for every input of the batch."""

    def run_inference(
        self, batch: Sequence[ModelInput], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        results = self._bisect(list(batch), model)
        return [PredictionResult(item, result) for item, result in zip(batch, results, strict=True)]

    def _bisect(self, batch: list[ModelInput], model: Any) -> list[Any]:
        try:
            return self.infer(batch, model)
        except Exception as error:  # noqa: BLE001 - retried smaller, then recorded per image
            _free_accelerator_memory()
            if len(batch) == 1:
                return [Failure(error_detail(self.stage, error))]
            middle = len(batch) // 2
            return self._bisect(batch[:middle], model) + self._bisect(batch[middle:], model)


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class CaptionHandler(BlipHandler):
    """Writes K captions per image with the BLIP captioner (one vision pass per image)."""

    stage = Stage.CAPTION

    def load_model(self) -> Any:
        from models.captioner import Captioner

        return Captioner(self._load("captioner"), self._config.caption_settings())

    def infer(self, batch: Sequence[ModelInput], model: Any) -> list[Any]:
        from models.preprocess import pinned

        pixels = pinned(np.stack([item.caption_pixels for item in batch]))
        return [tuple(c) for c in model.caption(pixels, [item.group.key for item in batch])]

    def get_num_bytes(self, batch: Sequence[ModelInput]) -> int:
        return sum(item.caption_pixels.nbytes for item in batch if item.caption_pixels is not None)

    def get_metrics_namespace(self) -> str:
        return "curation_captioner"


class ScoreHandler(BlipHandler):
    """Scores every web text and caption of an image with the BLIP ITM filter, encoding it once."""

    stage = Stage.SCORE

    def load_model(self) -> Any:
        from models.scorer import Scorer

        return Scorer(self._load("filter"), first_token=self._config.first_token)

    def infer(self, batch: Sequence[ModelInput], model: Any) -> list[Any]:
        from models.preprocess import pinned

        pixels = pinned(np.stack([item.filter_pixels for item in batch]))
        texts = [list(item.group.texts) + list(item.captions) for item in batch]
        out = []
        for item, scores in zip(batch, model.score(pixels, texts), strict=True):
            n = len(item.group.texts)
            itm = tuple(float(x) for x in scores.itm)
            itc = tuple(float(x) for x in scores.itc)
            out.append(
                GroupScores(
                    captions=item.captions,
                    text_itm=itm[:n],
                    text_itc=itc[:n],
                    caption_itm=itm[n:],
                    caption_itc=itc[n:],
                    embedding=tuple(float(x) for x in scores.embedding),
                )
            )
        return out

    def get_num_bytes(self, batch: Sequence[ModelInput]) -> int:
        return sum(item.filter_pixels.nbytes for item in batch)

    def get_metrics_namespace(self) -> str:
        return "curation_filter"


class AfterModelFn(beam.DoFn):
    """Splits model results: failures become ``error`` rows, the rest goes on."""

    def __init__(self, run_id: str, threshold: float, scored: bool) -> None:
        self._run_id = run_id
        self._threshold = threshold
        self._scored = scored
        self._images = Metrics.counter(NAMESPACE, "images_scored")

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[Any]:
        key, result = element
        item: ModelInput = result.example
        if isinstance(result.inference, Failure):
            for row in failure_rows(
                _members(item.group), result.inference.detail, self._run_id, self._threshold
            ):
                yield TaggedOutput(ERRORS, row)
        elif self._scored:
            self._images.inc()
            yield item.group, result.inference
        else:
            yield key, replace(item, caption_pixels=None, captions=result.inference)


class CaptionAndScore(beam.PTransform):
    """Pixels, RunInference with the captioner (if K > 0), then the filter."""

    def __init__(
        self, config: RunConfig, sizes: tuple[int | None, int], batch_size: int, run_id: str
    ) -> None:
        super().__init__()
        self._config = config
        self._sizes = sizes
        self._batch_size = batch_size
        self._run_id = run_id

    def expand(self, groups: beam.PCollection) -> dict[str, beam.PCollection]:
        c, run_id = self._config, self._run_id
        prepared = groups | "Pixels" >> beam.ParDo(
            PreparePixelsFn(self._sizes, ScreenSettings.of(c), run_id, c.threshold)
        ).with_outputs(ERRORS, main="items")
        errors = [prepared[ERRORS]]
        items = prepared.items
        if c.captions_per_image > 0:
            items = self._model(items, "Caption", CaptionHandler(c, self._batch_size), errors)
        scored = self._model(items, "Score", ScoreHandler(c, self._batch_size), errors)
        return {"scored": scored, ERRORS: errors}

    def _model(
        self,
        items: beam.PCollection,
        name: str,
        handler: BlipHandler,
        errors: list[beam.PCollection],
    ) -> beam.PCollection:
        """RunInference with ``handler``; failures join ``errors``, the results go on."""
        scored = isinstance(handler, ScoreHandler)
        results = (
            items
            | name >> RunInference(KeyedModelHandler(handler))
            | f"After{name}"
            >> beam.ParDo(
                AfterModelFn(self._run_id, self._config.threshold, scored=scored)
            ).with_outputs(ERRORS, main="results")
        )
        errors.append(results[ERRORS])
        return results.results
