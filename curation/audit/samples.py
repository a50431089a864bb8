"""Bounded samples of decisions and duplicate clusters, picked while streaming.

Every collector keeps at most a fixed number of rows, whatever the size of the run:
top-k selections are merged batch by batch with ``pyarrow.compute.select_k_unstable``
(ties broken by key, so samples are deterministic), and only selected rows become Python
objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.audit.tables import RunTables
from curation.reasons import Decision, DuplicateKind, Reason, TextOrigin
from curation.schemas import DECISION_FIELDS

#: Columns of a sampled decision.
SAMPLE_COLUMNS = DECISION_FIELDS
PER_SAMPLE = 6
PER_REASON = 4
#: Half-width of the ITM band "around the threshold", split into PER_SAMPLE slices per side.
BAND = 0.05
CLUSTERS_PER_KIND = 4
COPIES_PER_CLUSTER = 5


class TopK:
    """The ``k`` rows of a filtered stream that come first in a sort order."""

    def __init__(self, k: int, sort_keys: list[tuple[str, str]]) -> None:
        self.k = k
        self.sort_keys = [*sort_keys, ("key", "ascending")]
        self.best: pa.Table | None = None

    def offer(self, rows: pa.Table) -> None:
        if not len(rows):
            return
        pool = rows if self.best is None else pa.concat_tables([self.best, rows])
        if len(pool) > self.k:
            pool = pool.take(pc.select_k_unstable(pool, self.k, sort_keys=self.sort_keys))
        self.best = pool

    def rows(self) -> list[dict[str, Any]]:
        if self.best is None:
            return []
        order = pc.sort_indices(self.best, sort_keys=self.sort_keys)
        return self.best.take(order).to_pylist()


class BandSample:
    """Up to ``k`` rows spread over ``[low, high)``: the first rows met in each of k slices."""

    def __init__(self, low: float, high: float, k: int, ascending: bool) -> None:
        self.low, self.high, self.k, self.ascending = low, high, k, ascending
        self.slices: list[list[dict[str, Any]]] = [[] for _ in range(k)]

    def offer(self, rows: pa.Table) -> None:
        if not len(rows):
            return
        itm = rows.column("itm").to_numpy(zero_copy_only=False).astype(np.float64)
        index = np.floor((itm - self.low) / (self.high - self.low) * self.k).astype(np.int64)
        for slot in range(self.k):
            need = self.k - len(self.slices[slot])
            if need <= 0:
                continue
            hits = np.flatnonzero(index == slot)[:need]
            if len(hits):
                self.slices[slot].extend(rows.take(pa.array(hits)).to_pylist())

    def rows(self) -> list[dict[str, Any]]:
        """Round-robin over the slices, so the sample spans the band; sorted by ITM."""
        picked: list[dict[str, Any]] = []
        depth = 0
        while len(picked) < self.k and any(len(s) > depth for s in self.slices):
            picked += [s[depth] for s in self.slices if len(s) > depth][: self.k - len(picked)]
            depth += 1
        return sorted(picked, key=lambda r: (r["itm"], r["key"]), reverse=not self.ascending)


@dataclass
class OriginSamples:
    """Samples of one origin's scored texts."""

    above: BandSample  # kept, just above the threshold
    below: BandSample  # dropped as low_itm, just below
    lowest_keeps: TopK
    highest_drops: TopK


@dataclass
class DecisionSamples:
    """The sampled decisions of a run, for the report."""

    threshold: dict[str, float | None]
    origins: dict[str, OriginSamples] = field(default_factory=dict)
    unscored: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class SampleCollector:
    """Picks the report's decision samples in the same decisions scan as the statistics.

    The band around the threshold uses the threshold of the first scored row of each origin.
    """

    columns = SAMPLE_COLUMNS

    def __init__(self, k: int = PER_SAMPLE) -> None:
        self.k = k
        self.thresholds: dict[str, float | None] = {}
        self.origins: dict[str, OriginSamples] = {}
        self.unscored: dict[str, list[dict[str, Any]]] = {}

    def _origin(self, origin: str, threshold: float) -> OriginSamples:
        if origin not in self.origins:
            self.origins[origin] = OriginSamples(
                above=BandSample(threshold, threshold + BAND, self.k, ascending=True),
                below=BandSample(threshold - BAND, threshold, self.k, ascending=False),
                lowest_keeps=TopK(self.k, [("itm", "ascending")]),
                highest_drops=TopK(self.k, [("itm", "descending")]),
            )
        return self.origins[origin]

    def update(self, batch: pa.RecordBatch) -> None:
        table = pa.Table.from_batches([batch]).select(list(SAMPLE_COLUMNS))
        scored = table.filter(pc.is_valid(table.column("itm")))
        kept = pc.equal(scored.column("decision"), Decision.KEPT.value)
        low = pc.equal(scored.column("reason"), Reason.LOW_ITM.value)
        for origin in (TextOrigin.WEB.value, TextOrigin.SYNTHETIC.value):
            mine = pc.equal(scored.column("text_origin"), origin)
            if not pc.any(mine).as_py():
                continue
            if origin not in self.thresholds:
                self.thresholds[origin] = scored.filter(mine).column("threshold")[0].as_py()
            threshold = self.thresholds[origin]
            samples = self._origin(origin, threshold if threshold is not None else 0.5)
            kept_rows = scored.filter(pc.and_(mine, kept))
            samples.above.offer(kept_rows)
            samples.lowest_keeps.offer(kept_rows)
            samples.below.offer(scored.filter(pc.and_(mine, low)))
            samples.highest_drops.offer(scored.filter(pc.and_(mine, pc.invert(kept))))
        unscored = table.filter(
            pc.and_(
                pc.is_null(table.column("itm")),
                pc.equal(table.column("decision"), Decision.DROPPED.value),
            )
        )
        if len(unscored):
            reasons = unscored.column("reason")
            for reason in pc.unique(reasons).to_pylist():
                have = self.unscored.setdefault(reason, [])
                need = PER_REASON - len(have)
                if need > 0:
                    rows = unscored.filter(pc.equal(reasons, reason)).slice(0, need)
                    have.extend(rows.to_pylist())

    def result(self) -> DecisionSamples:
        return DecisionSamples(
            threshold=self.thresholds,
            origins=self.origins,
            unscored=dict(sorted(self.unscored.items())),
        )


@dataclass
class Cluster:
    """A kept image and the copies or near duplicates removed in its favour."""

    kept: str
    kind: str
    removed: list[dict[str, Any]]  # key, similarity
    total: int  # removed images of this kind in the cluster (may exceed the listing)


def duplicate_clusters(
    tables: RunTables,
    per_kind: int = CLUSTERS_PER_KIND,
    per_cluster: int = COPIES_PER_CLUSTER,
) -> list[Cluster]:
    """Clusters worth a look: per kind, those holding the least similar removed images.

    Two streaming passes over the duplicates table: pick the clusters (by their least
    similar member), then count them and keep their least similar members.
    """
    columns = ["key", "dup_of", "kind", "similarity"]
    picks: dict[str, pa.Table] = {}
    for batch in tables.batches("duplicates", columns):
        table = pa.Table.from_batches([batch])
        for kind in pc.unique(table.column("kind")).to_pylist():
            rows = table.filter(pc.equal(table.column("kind"), kind)).select(
                ["dup_of", "similarity"]
            )
            pool = rows if kind not in picks else pa.concat_tables([picks[kind], rows])
            pool = pool.group_by("dup_of", use_threads=False).aggregate([("similarity", "min")])
            pool = pool.rename_columns(["dup_of", "similarity"])
            order = [("similarity", "ascending"), ("dup_of", "ascending")]
            picks[kind] = pool.take(pc.select_k_unstable(pool, per_kind, sort_keys=order))
    clusters: dict[tuple[str, str], tuple[Cluster, TopK]] = {}
    rank = {kind.value: i for i, kind in enumerate(DuplicateKind)}
    for kind, table in sorted(picks.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])):
        for dup_of in table.column("dup_of").to_pylist():
            cluster = Cluster(dup_of, kind, [], 0)
            clusters[(dup_of, kind)] = (cluster, TopK(per_cluster, [("similarity", "ascending")]))
    if not clusters:
        return []
    wanted = pa.array(sorted({dup_of for dup_of, _ in clusters}), pa.string())
    for batch in tables.batches("duplicates", columns, where=pc.field("dup_of").isin(wanted)):
        table = pa.Table.from_batches([batch])
        for (dup_of, kind), (cluster, top) in clusters.items():
            mask = pc.and_(
                pc.equal(table.column("dup_of"), dup_of), pc.equal(table.column("kind"), kind)
            )
            rows = table.filter(mask)
            cluster.total += len(rows)
            top.offer(rows)
    out = []
    for cluster, top in clusters.values():
        cluster.removed = [{"key": r["key"], "similarity": r["similarity"]} for r in top.rows()]
        out.append(cluster)
    return out


def locate(tables: RunTables, keys: set[str]) -> dict[str, dict[str, Any]]:
    """Source file, row and web text of input keys (the first web decision of each key)."""
    if not keys:
        return {}
    found: dict[str, dict[str, Any]] = {}
    where = (pc.field("text_origin") == TextOrigin.WEB.value) & pc.field("key").isin(
        pa.array(sorted(keys), pa.string())
    )
    columns = ["key", "source_file", "source_row", "text", "decision", "reason", "itm"]
    for batch in tables.batches("decisions", columns, where=where):
        for row in batch.to_pylist():
            found.setdefault(row["key"], row)
    return found
