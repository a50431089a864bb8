"""Two real runs of the hostile dataset of :mod:`audit_data`, shared by the audit tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from audit_data import PAYLOAD_FILE, AuditRuns, main_rows, payload_rows
from images import write_pairs_parquet
from runs import stage_table


def _closest_pair_threshold(run: Path) -> float:
    """A near-duplicate threshold just below the cosine of the two most similar images."""
    images = stage_table(run, "images").column("embedding").to_pylist()
    vectors = np.asarray(images, dtype=np.float32)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1.0)
    return float(similarity.max()) - 1e-4


@pytest.fixture(scope="session")
def audit_runs(tmp_path_factory, tiny_captioner_dir, distinct_filter_dir) -> AuditRuns:
    from curation.config import RepublishSettings, build_config
    from pipelines.publish import republish
    from pipelines.runner import run_pipeline

    folder = tmp_path_factory.mktemp("audit")
    inputs = folder / "input"
    inputs.mkdir()
    main_input = inputs / "pairs.parquet"
    payload_input = inputs / PAYLOAD_FILE
    write_pairs_parquet(main_input, main_rows(), row_group_size=4)
    write_pairs_parquet(payload_input, payload_rows(), row_group_size=3)

    def run(out: Path, threshold: float) -> Path:
        config = build_config(
            input=str(inputs), out=str(out), captioner=str(tiny_captioner_dir),
            filter=str(distinct_filter_dir), captions_per_image=2, batch_size=4,
            threshold=threshold, progress=False,
        )  # fmt: skip
        run_pipeline(config)
        return out

    a = run(folder / "run-a", 0.0)
    near = _closest_pair_threshold(a)
    republish(str(a), "dedup", RepublishSettings(near_threshold=near))
    scores = pq.read_table(a / "decisions", columns=["itm"]).column("itm").drop_null()
    threshold_b = float(np.median(scores.to_numpy()))
    b = run(folder / "run-b", threshold_b)
    republish(str(b), "dedup", RepublishSettings(near_threshold=near))
    return AuditRuns(a, b, (main_input, payload_input), threshold_b, near)
