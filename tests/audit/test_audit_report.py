"""``curation report``: the page in a real headless Chromium, its safety, and its numbers."""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from audit_data import (
    PAYLOAD_FILE,
    PAYLOAD_TEXTS,
    AuditRuns,
    assert_refused_damaged,
    damaged_copy,
    decision,
    write_run,
)
from browser import open_browser
from click.testing import CliRunner

from app.cli import main
from curation.audit.report import REPORT_NAME, write_report
from curation.audit.stats import run_stats
from curation.audit.tables import RunTables


@pytest.fixture(scope="module")
def report(audit_runs: AuditRuns) -> Path:
    result = CliRunner().invoke(main, ["report", str(audit_runs.a), "--compare", str(audit_runs.b)])
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip())
    assert path == audit_runs.a / REPORT_NAME and path.is_file()
    return path


class _Elements(HTMLParser):
    """Every start tag and its attributes, as the HTML parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def test_page_in_headless_chromium_shows_plots_and_thumbnails_and_runs_no_payload(
    report: Path, audit_runs: AuditRuns, tmp_path: Path
) -> None:
    errors: list[str] = []
    requests: list[str] = []
    with open_browser() as browser:
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("request", lambda r: requests.append(r.url))
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        dom = page.evaluate(
            """() => {
              const images = [...document.images];
              const bars = [...document.querySelectorAll('svg.histogram rect')];
              const lines = [...document.querySelectorAll('svg.sweep polyline')];
              return {
                pwned: window.__pwned === undefined ? null : String(window.__pwned),
                scripts: document.querySelectorAll('script').length,
                injected: document.getElementById('injected') !== null,
                frames: document.querySelectorAll('iframe').length,
                handlers: [...document.querySelectorAll('*')].flatMap(
                  e => [...e.attributes].map(a => a.name)).filter(n => n.startsWith('on')),
                images: images.length,
                loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
                sources: images.map(i => i.src.slice(0, 23)),
                widest: Math.max(...images.map(i => i.naturalWidth)),
                histograms: document.querySelectorAll('svg.histogram').length,
                bars: bars.filter(b => b.getBoundingClientRect().height > 0).length,
                sweeps: lines.filter(l => l.getBoundingClientRect().width > 100).length,
                text: document.body.innerText,
                bodyShown: getComputedStyle(document.body).display !== 'none',
                warnings: [...document.querySelectorAll('#warnings li')].map(li => li.textContent),
                compare: document.getElementById('compare') !== null,
                glance: document.getElementById('glance').parentElement.innerText,
                clusters: [...document.querySelectorAll('.cluster')].map(
                  c => [c.querySelectorAll('img').length, c.innerText]),
                fileRows: [...document.querySelectorAll('#sources ~ table tr')].map(
                  r => r.innerText),
              };
            }"""
        )
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert errors == []
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
    assert dom["pwned"] is None and dom["scripts"] == 0 and not dom["injected"]
    assert dom["frames"] == 0 and dom["handlers"] == [] and dom["bodyShown"]
    assert dom["images"] >= 10 and dom["loaded"] == dom["images"]
    assert set(dom["sources"]) == {"data:image/jpeg;base64,"} and dom["widest"] <= 128
    assert dom["histograms"] == 2 and dom["bars"] > 0 and dom["sweeps"] == 2
    for payload in PAYLOAD_TEXTS[:4]:
        assert payload in dom["text"]  # shown as text, not run
    assert any(PAYLOAD_FILE in w for w in dom["warnings"])
    assert any("undecodable" in w for w in dom["warnings"])
    assert dom["compare"]
    # the run at a glance: models, settings, inputs and timings from the manifest
    manifest = json.loads((audit_runs.a / "manifest.json").read_text())
    for model in manifest["models"].values():
        assert model["name"] in dom["glance"]
    assert all(i["path"] in dom["glance"] for i in manifest["inputs"])
    assert "Timings" in dom["glance"] and f"{manifest['config']['threshold']}" in dom["glance"]
    # duplicate clusters: the kept image beside its removed copies, with their similarity
    assert dom["clusters"] and all(n >= 2 for n, _ in dom["clusters"])
    assert any("similarity" in text for _, text in dom["clusters"])
    # per input file: both files, with their rows
    for path in audit_runs.inputs:
        assert any(path.name in row for row in dom["fileRows"]), dom["fileRows"]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_html_is_self_contained_and_locked_down(report: Path) -> None:
    source = report.read_text()
    parser = _Elements()
    parser.feed(source)
    names = [name for name, _ in parser.tags]
    assert "script" not in names and "iframe" not in names and "link" not in names
    assert not [a for _, attrs in parser.tags for a in attrs if a.startswith("on")]
    csp = next(
        attrs["content"]
        for name, attrs in parser.tags
        if name == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in csp and "script-src 'none'" in csp and "img-src data:" in csp
    assert "unsafe-inline" not in csp
    assert all(
        attrs["src"].startswith("data:image/jpeg;base64,") for n, attrs in parser.tags if n == "img"
    )
    urls = set(re.findall(r"https?://[^\s\"'<>]+", source))
    assert urls <= {
        "http://www.w3.org/2000/svg",
        "https://example.com/",
        "https://example.com/x.png",
    }
    # the remote URLs exist only inside escaped payload text, never as an attribute
    assert not [v for _, attrs in parser.tags for v in attrs.values() if v and "example.com" in v]
    assert len(source) < 2_000_000


def test_numbers_match_the_tables(audit_runs: AuditRuns) -> None:
    decisions = pq.read_table(audit_runs.b / "decisions").to_pylist()
    stats = run_stats(RunTables(str(audit_runs.b)))
    for origin in ("web", "synthetic"):
        rows = [d for d in decisions if d["text_origin"] == origin]
        data = stats.origin(origin)
        assert dict(data.reasons) == dict(Counter(d["reason"] for d in rows))
        scored = [d for d in rows if d["itm"] is not None]
        assert data.scored == len(scored)
        kept, dropped = data.histogram()
        assert kept.sum() == sum(d["decision"] == "kept" for d in scored)
        assert kept.sum() + dropped.sum() == len(scored)
        for threshold, share in data.sweep():
            expected = sum(d["itm"] >= threshold for d in scored) / len(scored)
            assert share == pytest.approx(expected, abs=1e-9), threshold
        assert data.threshold == pytest.approx(audit_runs.threshold_b)
    images = {d["image_key"] for d in decisions if d["itm"] is not None}
    assert stats.images == len(images)
    per_source = Counter(d["source_file"] for d in decisions if d["text_origin"] == "web")
    assert {s.source: s.rows for s in stats.sources} == dict(per_source)
    duplicates = Counter(r["kind"] for r in pq.read_table(audit_runs.b / "duplicates").to_pylist())
    assert stats.duplicates == dict(duplicates) and duplicates["near"] >= 1


def test_report_without_inputs_still_renders(audit_runs: AuditRuns, tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa

    run = tmp_path / "moved"
    shutil.copytree(audit_runs.a, run)
    manifest = json.loads((run / "manifest.json").read_text())
    [name] = manifest["tables"]["decisions"]["files"]
    decisions = pq.read_table(run / name)
    gone = pa.array([str(tmp_path / "gone.parquet")] * len(decisions), pa.string())
    decisions = decisions.set_column(
        decisions.schema.get_field_index("source_file"), "source_file", gone
    )
    pq.write_table(decisions, run / name)
    html = Path(write_report(str(run))).read_text()
    assert "input not readable" in html and "<img" not in html


def test_report_of_a_folder_that_is_not_a_run_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a finished run folder" in result.output


@pytest.mark.parametrize(
    ("table", "damage"),
    [("decisions", "missing"), ("clean", "missing"), ("duplicates", "truncated"),
     ("decisions", "pages")],
)  # fmt: skip
def test_report_of_an_incomplete_or_damaged_run_exits_2_with_one_line(
    table: str, damage: str, audit_runs: AuditRuns, tmp_path: Path
) -> None:
    run, name = damaged_copy(audit_runs.a, tmp_path, table, damage)
    result = CliRunner().invoke(main, ["report", str(run)])
    assert_refused_damaged(result, run, name, table, damage)


def test_long_keys_line_floods_and_bidi_overrides_stay_inside_their_card(tmp_path: Path) -> None:
    """Keys and details are clipped, texts by characters and lines, and every value from the
    data is isolated: the page stays small, no card grows past a few hundred pixels, and a
    right-to-left override in a key cannot reorder the page's own words after it."""
    long_key = "k" * 200_000
    rows = [decision(f"{long_key}{i}", "kept", itm=0.9, row=i) for i in range(20)]
    rows += [
        {**decision("abc\u202etxt.exe", "low_itm", itm=0.1, row=20), "detail": "x\u202ey " * 500},
        decision("floods", "kept", itm=0.8, row=21, text="\n" * 299 + "end"),
    ]
    for row in rows[:20]:
        row["detail"] = f"key {row['key']!r} already used"
    write_run(tmp_path, rows)
    page = Path(write_report(str(tmp_path)))
    assert page.stat().st_size < 1_000_000
    with open_browser() as browser:
        view = browser.new_page()
        view.set_viewport_size({"width": 1280, "height": 900})
        view.goto(page.as_uri())
        dom = view.evaluate(
            """() => ({
              heights: [...document.querySelectorAll('figure.card')].map(
                c => c.getBoundingClientRect().height),
              isolated: [...document.querySelectorAll('.key')].filter(
                k => k.textContent.includes('\\u202e')).map(k => [
                  [...k.querySelectorAll('bdi')].some(b => b.textContent === 'abc\\u202etxt.exe'),
                  [...k.childNodes].some(n => n.nodeType === 3 && n.textContent.includes(' · ')),
                ]),
            })"""
        )
    assert dom["heights"] and max(dom["heights"]) < 500, dom["heights"]
    assert dom["isolated"] and all(bdi and after for bdi, after in dom["isolated"])
