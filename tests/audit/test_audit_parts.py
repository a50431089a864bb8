"""The audit's building blocks: escaping, thumbnails, bounded samples, big-run rendering."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from audit_data import decision, write_run
from images import jpeg_bytes, write_pairs_parquet
from PIL import Image

from curation.audit.markup import Markup, document, escape, tag
from curation.audit.report import MAX_SOURCES, write_report
from curation.audit.samples import (
    BAND,
    CLUSTERS_PER_KIND,
    COPIES_PER_CLUSTER,
    PER_REASON,
    PER_SAMPLE,
    SampleCollector,
    duplicate_clusters,
)
from curation.audit.stats import scan_decisions
from curation.audit.tables import RunTables
from curation.audit.thumbnails import THUMB_SIDE, input_thumbnails, thumbnail_uri


def test_tag_escapes_text_and_attributes_and_refuses_unsafe_urls() -> None:
    out = tag("a", '<b>"x"</b>', title='" onmouseover="alert(1)', href="javascript:alert(1)")
    assert (
        out == '<a title="&quot; onmouseover=&quot;alert(1)">&lt;b&gt;&quot;x&quot;&lt;/b&gt;</a>'
    )
    assert tag("img", src="https://example.com/x.png") == "<img/>"
    assert tag("img", src="data:image/jpeg;base64,AAAA").startswith('<img src="data:image/jpeg')
    assert tag("p", Markup("<i>ok</i>"), "<i>no</i>") == "<p><i>ok</i>&lt;i&gt;no&lt;/i&gt;</p>"
    assert escape(None) == "" and tag("td", 3) == "<td>3</td>"


def test_document_allows_exactly_its_own_style_sheet() -> None:
    css = "body{color:red}"
    page = document("<t>", Markup("<p>x</p>"), css)
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in html.unescape(page)
    assert f"<style>{css}</style>" in page
    assert "<title>&lt;t&gt;</title>" in page


def _decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_thumbnail_keeps_the_aspect_ratio_and_reports_bad_images() -> None:
    wide = np.zeros((150, 300, 3), np.uint8)
    wide[:, :150] = (255, 0, 0)
    thumb = thumbnail_uri(jpeg_bytes(wide))
    image = _decoded(thumb.uri)
    assert image.size == (THUMB_SIDE, THUMB_SIDE // 2)
    assert image.getpixel((10, 30))[0] > 200 and image.getpixel((110, 30))[0] < 60
    bad = thumbnail_uri(b"not an image")
    assert bad.uri is None and bad.note.startswith("undecodable")


def test_input_thumbnails_read_the_named_rows(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    rows = [
        {"key": f"k{i}", "image": jpeg_bytes(np.full((40, 60, 3), c, np.uint8)), "text": "t"}
        for i, c in enumerate(colours)
    ]
    path = tmp_path / "in.parquet"
    write_pairs_parquet(path, rows, row_group_size=2)
    found = input_thumbnails([(str(path), 4), (str(path), 1), (str(path), 9)], {})
    assert _decoded(found[(str(path), 4)].uri).getpixel((5, 5))[0] < 60  # cyan: no red
    assert _decoded(found[(str(path), 1)].uri).getpixel((5, 5))[1] > 200  # green
    assert found[(str(path), 9)].uri is None
    gone = input_thumbnails([(str(tmp_path / "gone.parquet"), 0)], {})
    assert gone[(str(tmp_path / "gone.parquet"), 0)].note.startswith("input not readable")


def test_input_thumbnails_decode_under_the_runs_image_settings(tmp_path: Path) -> None:
    ppm = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), (0, 0, 255), np.uint8)).save(ppm, format="PPM")
    path = write_pairs_parquet(tmp_path / "in.parquet", [{"image": ppm.getvalue(), "text": "t"}])
    default = input_thumbnails([(str(path), 0)], {})[(str(path), 0)]
    assert default.uri is None and default.note.startswith("unsupported_format")
    config = {"image_formats": ["JPEG", "PNG", "PPM"]}  # as the run's manifest records it
    accepted = input_thumbnails([(str(path), 0)], config)[(str(path), 0)]
    assert _decoded(accepted.uri).getpixel((5, 5))[2] > 200


def _scored_run(folder: Path, n: int = 5000) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i, itm in enumerate(rng.uniform(0, 1, n)):
        reason = "kept" if itm >= 0.5 else "low_itm"
        if i % 50 == 0 and reason == "kept":
            reason = "duplicate"
        origin = "web" if i % 2 else "synthetic"
        rows.append(
            decision(f"k{i:05d}", reason, origin=origin, itm=float(np.float32(itm)),
                     source=f"part-{i // 2 % 70}.parquet", row=i,
                     caption_index=0 if origin == "synthetic" else None)
        )  # fmt: skip
    rows += [decision(f"u{i}", "undecodable", source="part-0.parquet") for i in range(30)]
    rows += [decision(f"m{i}", "missing_image", source="part-1.parquet") for i in range(2)]
    write_run(folder, rows, _clusters())
    return rows


def _clusters() -> list[dict]:
    dups = []
    for c in range(12):
        for m in range(8):
            dups.append(
                {"key": f"c{c}m{m}", "dup_of": f"c{c}", "kind": "near" if c % 2 else "exact",
                 "similarity": 1.0 if c % 2 == 0 else 0.9 + c / 1000 + m / 10000}
            )  # fmt: skip
    return dups


def test_samples_are_bounded_and_pick_the_right_rows(tmp_path: Path) -> None:
    rows = _scored_run(tmp_path)
    collector = SampleCollector()
    scan_decisions(RunTables(str(tmp_path)), [collector])
    samples = collector.result()
    for origin in ("web", "synthetic"):
        mine = [r for r in rows if r["text_origin"] == origin]
        picked = samples.origins[origin]
        above, below = picked.above.rows(), picked.below.rows()
        assert len(above) == len(below) == PER_SAMPLE
        assert all(0.5 <= r["itm"] < 0.5 + BAND and r["decision"] == "kept" for r in above)
        assert all(0.5 - BAND <= r["itm"] < 0.5 and r["reason"] == "low_itm" for r in below)
        slices = {int((r["itm"] - 0.5) / BAND * PER_SAMPLE) for r in above}
        assert len(slices) == PER_SAMPLE  # spread over the band, one per slice
        kept = sorted((r for r in mine if r["decision"] == "kept"), key=lambda r: r["itm"])
        assert [r["key"] for r in picked.lowest_keeps.rows()] == [
            r["key"] for r in kept[:PER_SAMPLE]
        ]
        drops = sorted((r for r in mine if r["decision"] == "dropped" and r["itm"] is not None),
                       key=lambda r: -r["itm"])  # fmt: skip
        assert [r["key"] for r in picked.highest_drops.rows()] == [
            r["key"] for r in drops[:PER_SAMPLE]
        ]
    assert {k: len(v) for k, v in samples.unscored.items()} == {
        "missing_image": 2,
        "undecodable": PER_REASON,
    }


def test_duplicate_clusters_hold_the_least_similar_members(tmp_path: Path) -> None:
    _scored_run(tmp_path)
    clusters = duplicate_clusters(RunTables(str(tmp_path)))
    near = [c for c in clusters if c.kind == "near"]
    exact = [c for c in clusters if c.kind == "exact"]
    assert [c.kept for c in near] == ["c1", "c3", "c5", "c7"]  # lowest similarities first
    assert len(exact) == CLUSTERS_PER_KIND and [c.kind for c in clusters[:4]] == ["exact"] * 4
    for cluster in clusters:
        assert cluster.total == 8 and len(cluster.removed) == COPIES_PER_CLUSTER
    assert [r["key"] for r in near[0].removed] == [f"c1m{m}" for m in range(COPIES_PER_CLUSTER)]


def test_report_of_a_run_without_inputs_is_bounded(tmp_path: Path) -> None:
    _scored_run(tmp_path)
    html = Path(write_report(str(tmp_path))).read_text()
    assert len(html) < 400_000
    assert f"… {70 - MAX_SOURCES} more files" in html
    assert html.count('class="card"') + html.count(
        'class="card first"'
    ) <= 4 * 2 * PER_SAMPLE + 2 * PER_REASON + 8 * (1 + COPIES_PER_CLUSTER)
    assert re.search(r"unique images scored</td><td class=\"n\">[0-9,]+<", html)


def test_tables_read_projected_columns_and_check_them(tmp_path: Path) -> None:
    import pytest

    from curation.errors import UsageError

    write_run(tmp_path, [decision("a", "kept", itm=0.9)])
    tables = RunTables(str(tmp_path))
    (batch,) = [b for b in tables.batches("decisions", ["key", "itm"]) if b.num_rows]
    assert batch.schema.names == ["key", "itm"] and batch.num_rows == 1
    assert list(tables.batches("clean", ["key"])) == []  # absent table: nothing
    with pytest.raises(UsageError, match="nope"):
        list(tables.batches("decisions", ["nope"]))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "decisions" / "part-00009.parquet")
    again = RunTables(str(tmp_path))  # a file the manifest does not list is not read
    assert sum(b.num_rows for b in again.batches("decisions", ["key"])) == 1


def test_tables_refuse_missing_and_unreadable_listed_files(tmp_path: Path) -> None:
    import pytest

    from curation.errors import UsageError

    rows = [decision(k, "kept", itm=0.9) for k in "abcd"]
    write_run(tmp_path, rows, [{"key": "b", "dup_of": "a", "kind": "exact", "similarity": 1.0}])
    second = tmp_path / "decisions" / "part-00001.parquet"
    second.write_bytes(second.read_bytes()[:10])  # the scan, not the opening, finds it
    tables = RunTables(str(tmp_path))
    with pytest.raises(UsageError, match="is damaged: decisions/part-00001.parquet is not rea"):
        list(tables.batches("decisions", ["key"]))
    second.unlink()
    (tmp_path / "decisions" / "part-00000.parquet").unlink()
    (tmp_path / "duplicates" / "part-00001.parquet").unlink()
    with pytest.raises(UsageError) as err:
        RunTables(str(tmp_path))
    assert str(err.value) == (
        f"run folder {tmp_path} is incomplete: manifest.json lists decisions/part-00000.parquet "
        "and 2 more, which are missing (2 of 2 decisions files, 1 of 2 duplicates files)"
    )


def test_an_empty_run_renders_diffs_and_does_not_warn(tmp_path: Path) -> None:
    from curation.audit.diff import diff_runs
    from curation.audit.warnings import run_warnings

    write_run(tmp_path, [])
    page = Path(write_report(str(tmp_path))).read_text()
    assert "No text was scored." in page and "No image was removed as a duplicate." in page
    assert run_warnings(str(tmp_path)) == []
    diff = diff_runs(RunTables(str(tmp_path)), RunTables(str(tmp_path)))
    assert diff["changes"]["web"]["kept_to_dropped"] == 0 and diff["counts"]["web"] == {}
