"""Batch size by device, the prefetching feeder, phase timing and CPU process settings."""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.batching import CPU_BATCH, MAX_BATCH, batch_size_for, bytes_per_image
from models.feeder import feeder_pool, prefetch
from models.host import ThreadTuner, reuse_freed_memory, threads_at_most
from models.loading import load_captioner, load_filter
from models.phases import measure_phases, phase


@pytest.fixture(scope="module")
def models(tiny_captioner_dir: Path, tiny_filter_dir: Path):
    return [
        load_captioner(str(tiny_captioner_dir), device="cpu"),
        load_filter(str(tiny_filter_dir), device="cpu"),
    ]


def test_batch_size_is_fixed_on_cpu_and_follows_memory_otherwise(models):
    configs = [m.model.config for m in models]
    cpu, fp32 = torch.device("cpu"), torch.float32
    assert batch_size_for(configs, fp32, cpu, 3) == CPU_BATCH
    need = max(bytes_per_image(c, fp32, 3) for c in configs)
    assert bytes_per_image(configs[0], fp32, 5) > bytes_per_image(configs[0], fp32, 1)
    assert bytes_per_image(configs[0], torch.bfloat16, 3) < bytes_per_image(configs[0], fp32, 3)
    sizes = [
        batch_size_for(configs, fp32, cpu, 3, free_bytes=int(need * n / 0.6))
        for n in (1, 300, 1000, 10**7)
    ]
    assert sizes == [1, 256, 512, MAX_BATCH]
    assert batch_size_for(configs, fp32, cpu, 3, free_bytes=0) == 1


def test_base_sized_models_get_hundreds_of_images_on_a_gpu(tiny_tokenizer):
    """BLIP-base in bf16: 512 images on an H100 (about 78 GiB free after loading), 1,024 on
    an H200 (about 139 GiB)."""
    from models.presets import blip_config

    config = blip_config("base", tiny_tokenizer)
    bf16, cuda = torch.bfloat16, torch.device("cuda")
    assert 40e6 < bytes_per_image(config, bf16, 3) < 90e6
    assert batch_size_for([config], bf16, cuda, 3, free_bytes=78 * 2**30) == 512
    assert batch_size_for([config], bf16, cuda, 1, free_bytes=139 * 2**30) == 1024


def test_prefetch_prepares_ahead_in_threads_and_keeps_order():
    batches = [[i * 10 + j for j in range(n)] for i, n in enumerate([3, 3, 2, 3])]
    started: list[int] = []
    lock = threading.Lock()

    def prepare(item: int) -> np.ndarray:
        with lock:
            started.append(item)
        time.sleep(0.01)
        return np.full((4, 4, 3), item % 256, dtype=np.uint8)

    seen = []
    for batch, pixels in prefetch(batches, prepare, (4, 4, 3), workers=3, depth=2):
        if not seen:  # while the first batch is held, the next one is prepared
            deadline = time.monotonic() + 2
            while 12 not in started and time.monotonic() < deadline:
                time.sleep(0.005)
            assert 12 in started
        seen.append(batch)
        assert pixels.dtype == torch.uint8 and pixels.shape == (len(batch), 4, 4, 3)
        assert pixels[:, 0, 0, 0].tolist() == [item % 256 for item in batch]
    assert seen == batches


def _pixels_with_pid(item: int) -> np.ndarray:
    """Pixels holding the item and the id of the process that made them."""
    pid = os.getpid()
    out = np.empty((2, 2, 3), dtype=np.uint8)
    out[..., 0], out[..., 1], out[..., 2] = item % 256, pid % 256, pid // 256 % 256
    return out


def test_prefetch_in_processes_keeps_order_and_decodes_outside_the_caller():
    batches = [[i * 10 + j for j in range(n)] for i, n in enumerate([5, 4, 1, 5])]
    seen, makers = [], set()
    feeder = prefetch(batches, _pixels_with_pid, (2, 2, 3), workers=2, processes=True)
    for batch, pixels in feeder:
        seen.append(batch)
        assert pixels.shape == (len(batch), 2, 2, 3)
        assert pixels[:, 1, 1, 0].tolist() == [item % 256 for item in batch]
        makers |= {(int(p[1]), int(p[2])) for p in pixels[:, 0, 0].tolist()}
    assert seen == batches
    here = (os.getpid() % 256, os.getpid() // 256 % 256)
    assert makers and here not in makers
    bad = functools.partial(np.full, (2, 2, 3), dtype=np.uint8)  # a text is no pixel value
    feeder = prefetch([[1, 2], [3, "x"]], bad, (2, 2, 3), workers=2, processes=True)
    assert next(feeder)[1][1, 0, 0, 0] == 2
    with pytest.raises(ValueError):
        next(feeder)


def test_a_feeder_pool_serves_several_prefetches_with_the_same_processes():
    pool = feeder_pool(2, processes=True)
    try:
        makers = []
        for _ in range(2):
            seen = set()
            for batch, pixels in prefetch(
                [[1, 2, 3], [4, 5]], _pixels_with_pid, (2, 2, 3), pool=pool, workers=2
            ):
                assert pixels[:, 0, 0, 0].tolist() == batch
                seen |= {(int(p[1]), int(p[2])) for p in pixels[:, 0, 0].tolist()}
            makers.append(seen)
        assert (
            makers[1] <= makers[0]
            and (os.getpid() % 256, os.getpid() // 256 % 256) not in makers[0]
        )
    finally:
        pool.shutdown()


def test_prefetch_raises_the_error_of_its_batch():
    def prepare(item: int) -> np.ndarray:
        if item == 4:
            raise ValueError("bad image 4")
        return np.zeros((2, 2, 3), dtype=np.uint8)

    feeder = prefetch([[1, 2], [3, 4], [5]], prepare, (2, 2, 3), workers=2)
    assert next(feeder)[0] == [1, 2]
    with pytest.raises(ValueError, match="bad image 4"):
        next(feeder)


def test_phases_are_timed_only_while_measured():
    device = torch.device("cpu")
    with phase("vision", device):
        time.sleep(0.001)
    with measure_phases() as totals:
        for _ in range(2):
            with phase("vision", device):
                time.sleep(0.01)
        with phase("decoding", device):
            pass
    with phase("vision", device):
        time.sleep(0.02)
    assert set(totals) == {"vision", "decoding"}
    assert 0.02 <= totals["vision"] < 0.2


def test_threads_are_narrowed_for_small_work_and_restored():
    assert reuse_freed_memory() in (True, False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threads_at_most(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads_at_most(8):  # never raised
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_thread_tuner_keeps_the_faster_count_and_rechecks():
    tuner = ThreadTuner(recheck=4)
    used: list[int] = []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for _ in range(9):
            with tuner.run(units=2):
                used.append(torch.get_num_threads())
                time.sleep(0.002 if used[-1] == 1 else 0.02)  # one thread is faster here
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert used[:2] == [1, 2]  # each tried once
    assert used[2:] == [1, 1, 2, 1, 1, 1, 2]  # then the faster, the other every 4th call
    assert tuner.seconds_per_unit[1] < tuner.seconds_per_unit[2]


def test_cpu_decoding_steps_run_under_the_tuner(models):
    from curation.caption_settings import CaptionSettings
    from models.captioner import Captioner
    from models.decoding import DECODING_STEPS

    loaded = models[0]
    seen: list[int] = []
    hook = loaded.model.text_decoder.cls.register_forward_hook(
        lambda *_: seen.append(torch.get_num_threads())
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        calls = DECODING_STEPS.calls
        images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
        Captioner(loaded, CaptionSettings(captions_per_image=3)).caption(images, list("abcd"))
        assert DECODING_STEPS.calls - calls == len(seen) - 1  # every step but the prompt's
        assert set(DECODING_STEPS.seconds_per_unit) == {1, 2}
        assert torch.get_num_threads() == 2
    finally:
        hook.remove()
        torch.set_num_threads(threads)


def test_pixels_from_the_feeder_feed_the_model_as_numpy_does(models):
    from models.preprocess import pinned, pixel_values

    loaded = models[1]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    (_, pixels), *_ = prefetch([list(images)], lambda image: image, (32, 32, 3))
    expected = pixel_values(images, loaded)
    assert torch.equal(pixel_values(pixels, loaded), expected)
    assert torch.equal(pixel_values(pinned(images), loaded), expected)
    with pytest.raises(ValueError, match="uint8"):
        pixel_values(pixels.float(), loaded)


@pytest.fixture(scope="module")
def base_config_folder(tmp_path_factory, tiny_tokenizer) -> Path:
    """A folder with a BLIP-base-sized config (the weights are not read before the run)."""
    from safetensors.torch import save_file

    from models.presets import blip_config

    folder = tmp_path_factory.mktemp("base-config")
    blip_config("base", tiny_tokenizer).save_pretrained(folder)
    save_file({"placeholder": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


def test_a_dataflow_run_sizes_its_gpu_batches_from_the_accelerator_before_work(
    gcs_bucket, base_config_folder, tmp_path
) -> None:
    """The batch size is fixed when the job is built, from the models' configs and the memory
    of the GPU type the workers get: larger GPUs, larger batches; an unknown type, the
    fallback; no accelerator, the CPU size; an explicit size wins."""
    import fsspec
    from images import gradient, jpeg_bytes, write_pairs_parquet

    from curation.config import build_config
    from pipelines.runner import GPU_FALLBACK_BATCH, prepare

    local = tmp_path / "in.parquet"
    write_pairs_parquet(local, [{"key": "a", "image": jpeg_bytes(gradient(32, 32)), "text": "t"}])
    fs, path = fsspec.core.url_to_fs(f"{gcs_bucket}/batching/in.parquet")
    fs.put_file(str(local), path)

    def plan(accelerator: str | None, **extra):
        beam_args = [
            "--runner=DataflowRunner", "--project=test-project", "--region=us-central1",
            f"--temp_location={gcs_bucket}/tmp",
        ] + ([f"--dataflow_service_options=worker_accelerator=type:{accelerator};count:1"]
             if accelerator else [])  # fmt: skip
        return prepare(
            build_config(
                input=(f"{gcs_bucket}/batching/in.parquet",), out=f"{gcs_bucket}/batching/run",
                captioner=str(base_config_folder), filter=str(base_config_folder),
                dtype="bf16", beam_args=tuple(beam_args), **extra,
            )
        )  # fmt: skip

    l4, h100 = plan("nvidia-l4"), plan("nvidia-h100-80gb")
    assert l4.device == h100.device == "cuda"
    assert 64 <= l4.batch_size < h100.batch_size <= MAX_BATCH
    assert plan("nvidia-future-gpu").batch_size == GPU_FALLBACK_BATCH
    cpu = plan(None)
    assert (cpu.device, cpu.batch_size) == ("cpu", CPU_BATCH)
    assert plan("nvidia-l4", batch_size=16).batch_size == 16
