"""``report.html``: one self-contained page about a finished run, for a browser, offline.

Built from one streaming scan of the decisions table (statistics and samples together),
two of the duplicates table, and reads of the input row groups holding sampled images.
Plots are inline SVG, thumbnails ``data:`` URIs; the page loads nothing else and runs no
script (see :mod:`curation.audit.markup`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from curation.audit import plots
from curation.audit.diff import DIRECTIONS, diff_runs
from curation.audit.markup import Markup, document, tag
from curation.audit.samples import (
    BAND,
    Cluster,
    DecisionSamples,
    SampleCollector,
    duplicate_clusters,
    locate,
)
from curation.audit.stats import RunStats, SourceStats, run_stats
from curation.audit.tables import RunTables
from curation.audit.thumbnails import Thumbnail, input_thumbnails
from curation.audit.warnings import AuditWarning, compute_warnings, unusual_sources
from curation.reasons import Reason, TextOrigin

REPORT_NAME = "report.html"
#: Characters of a text shown on a card (the page stays small whatever the data).
TEXT_CHARS = 300
#: A text is shown up to this many lines (a flood of line breaks stays one card's height).
TEXT_LINES = 8
#: Keys and decision details are shown up to this many characters.
KEY_CHARS = 100
DETAIL_CHARS = 200
MAX_SOURCES = 50
MAX_INPUTS = 20
ORIGINS = (TextOrigin.WEB.value, TextOrigin.SYNTHETIC.value)
ORIGIN_LABELS = {
    TextOrigin.WEB.value: "web texts",
    TextOrigin.SYNTHETIC.value: "synthetic captions",
}
#: Settings shown at a glance (all settings are listed below them).
KEY_SETTINGS = (
    "threshold",
    "synthetic_threshold",
    "captions_per_image",
    "first_token",
    "sample",
    "top_p",
    "seed",
    "near_threshold",
    "phash_distance",
    "dedup_against",
    "device",
    "dtype",
)

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:18px 0 6px}table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#666}.warnings{background:#fff3e0;border:1px solid #ef6c00;padding:8px 16px}
.warnings li{margin:4px 0}.ok{background:#e8f5e9;border:1px solid #2e7d32;padding:8px 16px}
.cards{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.card{width:176px;border:1px solid #ddd;border-radius:4px;padding:6px;margin:0;background:#fafafa}
.card img,.noimg{display:block;max-width:128px;max-height:128px;margin:0 auto 4px}
.noimg{width:128px;height:64px;background:#eee;color:#666;font-size:11px;padding:4px;
overflow:hidden;box-sizing:border-box}
.text{word-wrap:break-word;overflow-wrap:anywhere;white-space:pre-wrap;max-height:12em;overflow:auto}
.meta,.key{font-size:12px;color:#555;overflow-wrap:anywhere}
.kept{color:#2e7d32;font-weight:600}.dropped{color:#c62828;font-weight:600}
.cluster{display:flex;gap:10px;align-items:flex-start;margin:8px 0;padding:6px;border:1px solid #eee}
.cluster .card{width:150px}.cluster .first{border-color:#2e7d32;border-width:2px}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plot{border:1px solid #eee;background:#fff}
tr.flag td{background:#ffebee}.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.plots figure{margin:0}nav a{margin-right:14px}details{margin:6px 0}summary{cursor:pointer}
"""


@dataclass
class ReportInputs:
    """What the page is rendered from."""

    tables: RunTables
    stats: RunStats
    samples: DecisionSamples
    clusters: list[Cluster]
    cluster_rows: dict[str, dict[str, Any]]
    thumbnails: dict[tuple[str, int], Thumbnail]
    warnings: list[AuditWarning]
    comparison: dict[str, Any] | None


def collect(run_dir: str, compare: str | None = None) -> ReportInputs:
    """Read everything the report shows from a run folder (and the run to compare with)."""
    tables = RunTables(run_dir)
    sampler = SampleCollector()
    stats = run_stats(tables, [sampler])
    samples = sampler.result()
    clusters = duplicate_clusters(tables)
    keys = {c.kept for c in clusters} | {r["key"] for c in clusters for r in c.removed}
    cluster_rows = locate(tables, keys)
    locations = {
        (row["source_file"], row["source_row"])
        for rows in _sample_groups(samples).values()
        for row in rows
    }
    locations |= {(row["source_file"], row["source_row"]) for row in cluster_rows.values()}
    config = tables.manifest().get("config", {})
    comparison = diff_runs(tables, RunTables(compare)) if compare else None
    return ReportInputs(
        tables=tables,
        stats=stats,
        samples=samples,
        clusters=clusters,
        cluster_rows=cluster_rows,
        thumbnails=input_thumbnails(sorted(locations), config),
        warnings=compute_warnings(stats),
        comparison=comparison,
    )


def _sample_groups(samples: DecisionSamples) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for origin, picked in samples.origins.items():
        groups[f"{origin}:above"] = picked.above.rows()
        groups[f"{origin}:below"] = picked.below.rows()
        groups[f"{origin}:lowest_keeps"] = picked.lowest_keeps.rows()
        groups[f"{origin}:highest_drops"] = picked.highest_drops.rows()
    for reason, rows in samples.unscored.items():
        groups[f"unscored:{reason}"] = rows
    return groups


def _number(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _clip(text: object, chars: int = TEXT_CHARS) -> str:
    """``text`` cut to ``chars`` characters and :data:`TEXT_LINES` lines, "…" where cut."""
    if text is None:
        return ""
    text = str(text)
    clipped = text[:chars]
    lines = clipped.split("\n", TEXT_LINES)
    if len(lines) > TEXT_LINES:
        clipped = "\n".join(lines[:TEXT_LINES])
    return clipped if clipped == text else clipped + "…"


def _data(value: object, chars: int) -> Markup:
    """A value from the data, clipped and isolated (``<bdi>``): its bidirectional characters
    cannot reorder the page's own words around it."""
    return tag("bdi", _clip(value, chars))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> Markup:
    head = tag(
        "tr", [tag("th", h, class_="n" if i in numeric else None) for i, h in enumerate(header)]
    )
    body = [
        tag(
            "tr",
            [tag("td", cell, class_="n" if i in numeric else None) for i, cell in enumerate(row)],
        )
        for row in rows
    ]
    return tag("table", head, body)


def _image(thumb: Thumbnail | None, alt: str) -> Markup:
    if thumb is not None and thumb.uri:
        return tag("img", src=thumb.uri, alt=alt)
    return tag("div", (thumb.note if thumb else "image not available"), class_="noimg")


def _where(source_file: str, source_row: int) -> Markup:
    """The input file's name and row, the full path as a tooltip."""
    name = source_file.rstrip("/").rsplit("/", 1)[-1]
    return tag("span", _data(name, KEY_CHARS), f" row {source_row}", title=source_file)


def _card(row: Mapping[str, Any], thumbs: Mapping[tuple[str, int], Thumbnail]) -> Markup:
    thumb = thumbs.get((row["source_file"], row["source_row"]))
    caption = (
        f" caption {row['caption_index']}"
        if row["text_origin"] == TextOrigin.SYNTHETIC.value
        else ""
    )
    scores = (
        f"ITM {_number(row['itm'])} · ITC {_number(row['itc'])} · "
        if row.get("itm") is not None
        else ""
    )
    reason = f" {row['reason']}" if row["reason"] != row["decision"] else ""
    return tag(
        "figure",
        _image(thumb, f"image of {_clip(row['key'], KEY_CHARS)}"),
        tag(
            "figcaption",
            tag("div", _clip(row.get("text")), class_="text"),
            tag(
                "div",
                scores,
                tag("span", row["decision"], class_=row["decision"]),
                reason,
                (" · ", _data(row["detail"], DETAIL_CHARS)) if row.get("detail") else "",
                class_="meta",
            ),
            tag("div", _data(row["key"], KEY_CHARS), f"{caption} · ",
                _where(row["source_file"], row["source_row"]), class_="key"),
        ),
        class_="card",
    )  # fmt: skip


def _cards(
    rows: Sequence[Mapping[str, Any]], thumbs: Mapping[tuple[str, int], Thumbnail]
) -> Markup:
    if not rows:
        return tag("p", "no such text in this run", class_="muted")
    return tag("div", [_card(row, thumbs) for row in rows], class_="cards")


def _warnings(warnings: Sequence[AuditWarning]) -> Markup:
    if not warnings:
        return tag(
            "div", "No warnings: no reason, source or score share looks unusual.", class_="ok"
        )
    return tag(
        "div",
        tag("strong", f"{len(warnings)} warning(s)"),
        tag("ul", [tag("li", w.message, data_code=w.code) for w in warnings]),
        class_="warnings",
        id="warnings",
    )


def _glance(data: ReportInputs) -> Markup:
    stats, manifest = data.stats, data.tables.manifest()
    tables = manifest.get("tables", {})
    web, syn = stats.origin(TextOrigin.WEB.value), stats.origin(TextOrigin.SYNTHETIC.value)
    overview = [
        ("input rows", _number(stats.input_rows)),
        ("unique images scored", _number(stats.images)),
        ("web texts kept", f"{web.kept:,} of {web.rows:,} ({_share(web.kept, web.rows)})"),
        ("synthetic captions kept", f"{syn.kept:,} of {syn.rows:,} ({_share(syn.kept, syn.rows)})"),
    ]
    for kind, n in sorted(stats.duplicates.items()):
        overview.append((f"images removed: {kind} duplicates", _number(n)))
    index = manifest.get("index", {})
    if index:
        overview.append(("images this round added to the index", _number(index.get("added"))))
        overview.append(("images in the index (all rounds)", _number(index.get("count"))))
    for name, info in tables.items():
        overview.append((f"rows in {name}/", _number(info.get("rows"))))
    reasons = [r.value for r in Reason]
    seen = set(web.reasons) | set(syn.reasons)
    reasons += sorted(seen - set(reasons))
    reason_rows = [
        (reason, _number(web.reasons.get(reason, 0)), _number(syn.reasons.get(reason, 0)))
        for reason in reasons
        if reason in seen
    ]
    return Markup(
        tag("h2", "The run at a glance", id="glance")
        + tag(
            "div",
            tag("div", tag("h3", "Counts"), _table(["", "value"], overview, {1})),
            tag(
                "div",
                tag("h3", "Decisions per reason"),
                _table(["reason", "web texts", "synthetic captions"], reason_rows, {1, 2}),
            ),
            _manifest_sections(manifest),
            class_="row",
        )
    )


def _manifest_sections(manifest: Mapping[str, Any]) -> list[Markup]:
    if not manifest:
        return [tag("p", "This run folder has no manifest.json.", class_="muted")]
    config = manifest.get("config", {})
    models = [
        (
            name,
            info.get("name"),
            info.get("revision") or "",
            (info.get("commit") or info.get("sha256") or "")[:16],
        )
        for name, info in manifest.get("models", {}).items()
        if isinstance(info, Mapping)
    ]
    settings = [(k, _plain(config[k])) for k in KEY_SETTINGS if k in config]
    inputs = manifest.get("inputs", [])
    input_rows = [(i.get("path"), _number(i.get("bytes"))) for i in inputs[:MAX_INPUTS]]
    timings = [(k, f"{v:.1f} s") for k, v in manifest.get("timings", {}).items()]
    settings_box = [
        tag("h3", "Models and settings"),
        _table(["model", "name", "revision", "identity"], models, set()),
        _table(["setting", "value"], settings, set()),
        tag(
            "details",
            tag("summary", "all settings"),
            _table(["setting", "value"], [(k, _plain(v)) for k, v in config.items()], set()),
        ),
    ]
    inputs_box = [
        tag("h3", f"Inputs ({len(inputs)} file(s))"),
        _table(["file", "bytes"], input_rows, {1}),
    ]
    if len(inputs) > MAX_INPUTS:
        inputs_box.append(
            tag("p", f"… {len(inputs) - MAX_INPUTS} more in manifest.json", class_="muted")
        )
    about = [
        (k, _plain(manifest[k]))
        for k in (
            "run_id",
            "created_at",
            "rows",
            "runner",
            "device",
            "layout",
            "python",
            "platform",
        )
        if k in manifest
    ]
    packages = [(k, v or "not installed") for k, v in manifest.get("packages", {}).items()]
    inputs_box += [
        tag("h3", "Timings"),
        _table(["step", "time"], timings, {1}),
        tag(
            "details",
            tag("summary", "run and package versions"),
            _table(["", "value"], about + packages, set()),
        ),
    ]
    return [tag("div", settings_box), tag("div", inputs_box)]


def _plain(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def _scores_section(stats: RunStats) -> Markup:
    hists = []
    curves, markers = {}, {}
    for origin in ORIGINS:
        data = stats.origin(origin)
        if not data.scored:
            continue
        kept, dropped = data.histogram()
        hists.append(
            tag(
                "figure",
                plots.histogram(kept, dropped, data.threshold, ORIGIN_LABELS[origin]),
                tag(
                    "figcaption",
                    f"{ORIGIN_LABELS[origin]}: {data.scored:,} scored; green kept, red dropped "
                    f"({data.below_threshold:,} below the threshold)",
                ),
            )
        )
        curves[origin] = data.sweep()
        if data.threshold is not None:
            markers[origin] = (data.threshold, data.share_passing)
    if not hists:
        return Markup(tag("h2", "ITM scores", id="scores") + tag("p", "No text was scored."))
    sweep = tag(
        "figure",
        plots.sweep(curves, markers),
        tag("figcaption", "Share of scored texts whose ITM is at least the threshold; dots: "
            "the run's thresholds"),
    )  # fmt: skip
    return Markup(
        tag("h2", "ITM scores", id="scores")
        + tag("div", hists, class_="plots")
        + tag("h3", "Threshold sweep")
        + tag("div", sweep, class_="plots")
    )


def _samples_section(data: ReportInputs) -> Markup:
    groups = _sample_groups(data.samples)
    parts = [tag("h2", "Samples", id="samples")]
    for origin in ORIGINS:
        if origin not in data.samples.origins:
            continue
        label = ORIGIN_LABELS[origin]
        threshold = data.samples.threshold.get(origin)
        parts += [
            tag(
                "h3",
                f"{label}: kept just above the threshold {_number(threshold, 3)} (up to +{BAND:g})",
            ),
            _cards(groups[f"{origin}:above"], data.thumbnails),
            tag("h3", f"{label}: dropped just below the threshold (down to -{BAND:g})"),
            _cards(groups[f"{origin}:below"], data.thumbnails),
            tag("h3", f"{label}: highest-scored drops"),
            _cards(groups[f"{origin}:highest_drops"], data.thumbnails),
            tag("h3", f"{label}: lowest-scored keeps"),
            _cards(groups[f"{origin}:lowest_keeps"], data.thumbnails),
        ]
    parts.append(tag("h3", "Dropped without a score, per reason"))
    if not data.samples.unscored:
        parts.append(tag("p", "none", class_="muted"))
    for reason, rows in data.samples.unscored.items():
        parts += [tag("h3", reason), _cards(rows, data.thumbnails)]
    return Markup("".join(parts))


def _cluster_card(key: str, data: ReportInputs, note: str, first: bool = False) -> Markup:
    row = data.cluster_rows.get(key)
    if row is None:
        thumb = Thumbnail(None, "not in this run (an earlier round)")
        where, text = "", ""
    else:
        thumb = data.thumbnails.get((row["source_file"], row["source_row"]))
        where, text = _where(row["source_file"], row["source_row"]), row["text"]
    return tag(
        "figure",
        _image(thumb, f"image of {_clip(key, KEY_CHARS)}"),
        tag(
            "figcaption",
            tag("div", note, class_="meta"),
            tag("div", _clip(text), class_="text"),
            tag("div", _data(key, KEY_CHARS), " · " if where else "", where, class_="key"),
        ),
        class_="card first" if first else "card",
    )


def _duplicates_section(data: ReportInputs) -> Markup:
    parts = [tag("h2", "Duplicate clusters", id="duplicates")]
    if not data.clusters:
        return Markup(parts[0] + tag("p", "No image was removed as a duplicate.", class_="muted"))
    parts.append(
        tag(
            "p",
            "Per kind, the clusters holding the least similar removed images: the kept image "
            "(green frame) beside what was removed as its copy or near duplicate.",
            class_="muted",
        )
    )
    for cluster in data.clusters:
        cards = [_cluster_card(cluster.kept, data, "kept", first=True)]
        for removed in cluster.removed:
            similarity = removed["similarity"]
            note = f"removed: {cluster.kind}" + (
                f", similarity {similarity:.4f}" if similarity is not None else ""
            )
            cards.append(_cluster_card(removed["key"], data, note))
        more = cluster.total - len(cluster.removed)
        if more > 0:
            cards.append(tag("p", f"… {more} more", class_="muted"))
        parts.append(tag("div", tag("strong", cluster.kind), cards, class_="cluster"))
    return Markup("".join(parts))


def _sources_section(stats: RunStats) -> Markup:
    flagged = unusual_sources(stats)
    ordered = sorted(stats.sources, key=lambda s: (s.source not in flagged, -s.drop_rate, s.source))
    shown = ordered[:MAX_SOURCES]

    def row(s: SourceStats) -> Markup:
        cells = [s.source, _number(s.rows), _number(s.kept), _number(s.dropped),
                 _share(s.dropped, s.rows), s.top_drop_reason or "-"]  # fmt: skip
        return tag(
            "tr",
            [tag("td", c, class_="n" if 1 <= i <= 4 else None) for i, c in enumerate(cells)],
            class_="flag" if s.source in flagged else None,
        )

    header = ["input file", "rows", "kept", "dropped", "drop rate", "most common drop"]
    head = tag(
        "tr", [tag("th", h, class_="n" if 1 <= i <= 4 else None) for i, h in enumerate(header)]
    )
    parts = [
        tag("h2", "Per input file", id="sources"),
        tag("p", "Web texts per input file; files whose drop rate stands out are first, "
            "highlighted.", class_="muted"),
        tag("table", head, [row(s) for s in shown]),
    ]  # fmt: skip
    if len(ordered) > MAX_SOURCES:
        parts.append(tag("p", f"… {len(ordered) - MAX_SOURCES} more files", class_="muted"))
    return Markup("".join(parts))


def _comparison_section(diff: dict[str, Any]) -> Markup:
    parts = [
        tag("h2", "Compared with another run", id="compare"),
        tag("p", "A: ", tag("code", diff["a"]), " (this run) · B: ", tag("code", diff["b"])),
    ]
    for origin, reasons in diff["counts"].items():
        rows = [(r, _number(a), _number(b), f"{b - a:+,}") for r, (a, b) in reasons.items()]
        parts += [
            tag("h3", f"{ORIGIN_LABELS.get(origin, origin)} per reason"),
            _table(["reason", "A", "B", "B - A"], rows, {1, 2, 3}),
        ]
    for origin, change in diff["changes"].items():
        label = ORIGIN_LABELS.get(origin, origin)
        counts = [(name.replace("_", " "), _number(change[name])) for name in DIRECTIONS]
        parts += [tag("h3", f"{label}: changed decisions"), _table(["", "texts"], counts, {1})]
        moves = [(m["from"], m["to"], _number(m["count"])) for m in change["reasons"]]
        if moves:
            parts.append(_table(["reason in A", "reason in B", "texts"], moves, {2}))
        for name in DIRECTIONS:
            listing = change["listing"][name]
            if not listing:
                continue
            rows = [
                (
                    _clip(r["key"], KEY_CHARS) if origin == TextOrigin.WEB.value else
                    f"{_clip(r['image_key'], KEY_CHARS)} caption {r['caption_index']}",
                    r.get("reason_a") or "-", r.get("reason_b") or "-",
                    _number(r.get("itm_a")), _number(r.get("itm_b")),
                )
                for r in listing
            ]  # fmt: skip
            parts.append(
                tag(
                    "details",
                    tag(
                        "summary",
                        f"{name.replace('_', ' ')}: first {len(listing)} of {change[name]:,}",
                    ),
                    _table(["text", "reason in A", "reason in B", "ITM A", "ITM B"], rows, {3, 4}),
                )
            )
    return Markup("".join(parts))


def render_report(data: ReportInputs) -> str:
    """The report page as HTML."""
    manifest = data.tables.manifest()
    nav = tag(
        "nav",
        [
            tag("a", label, href=f"#{anchor}")
            for anchor, label in (
                ("glance", "at a glance"), ("scores", "scores"), ("samples", "samples"),
                ("duplicates", "duplicates"), ("sources", "input files"),
            )
        ],
    )  # fmt: skip
    body = [
        tag("h1", "CapFilt run report"),
        tag(
            "p",
            tag("code", data.tables.path),
            f" · run {manifest.get('run_id', '-')} · created {manifest.get('created_at', '-')}",
            class_="muted",
        ),
        _warnings(data.warnings),
        nav,
        _glance(data),
        _scores_section(data.stats),
        _samples_section(data),
        _duplicates_section(data),
        _sources_section(data.stats),
    ]
    if data.comparison is not None:
        body.append(_comparison_section(data.comparison))
    return document(f"CapFilt run report: {data.tables.path}", Markup("".join(body)), CSS)


def write_report(run_dir: str, compare: str | None = None) -> str:
    """Write ``report.html`` into the run folder; returns its path."""
    data = collect(run_dir, compare)
    return data.tables.write_text(REPORT_NAME, render_report(data))
