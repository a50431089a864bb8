"""Finalize on the engine: decisions at the thresholds, previous-round and near-duplicate
removal, the final tables and the next round's index, with nothing global on the launcher.

Input: the staged rows of a pipeline (the same PCollections a run writes to ``_stage/``, or
read back from there by ``curation dedup`` and ``rethreshold``). Steps:

- decisions made again at the thresholds (:func:`curation.finalize.redecide`), and the kept
  texts of each image counted, which rank near duplicates;
- previous round: each batch of images queries the previous index, memory-mapped once per
  worker (:func:`curation.dedup.index_store.open_index`);
- near duplicates: the number of images fixes the cells' plan; training keys are chosen by
  their rank below the plan's bounds; coarse centroids are trained once, fine ones per
  coarse cell (:mod:`curation.dedup.cells`); every image is assigned to its ``nprobe``
  cells per batch, links are found per cell (:func:`curation.dedup.cell_links.cell_links`),
  and the greedy keep runs per connected component (:mod:`pipelines.components`);
- the final tables: kept rows of removed images become ``duplicate`` drops (only those rows
  are joined with their removal), clean and synthetic candidates are kept by the threshold
  unless their image was removed (a set of removed keys, 16 bytes each, goes to every
  worker); removed images join ``duplicates``;
- the index: below ``IVF_MIN_VECTORS`` images (previous rounds' included) it is built on
  one worker from the kept images' vectors (at most that many); above, the compressed index
  is trained once on a sample (or taken from the previous round), vectors are encoded per
  batch on the workers, and one worker merges the codes and writes the files (memory: the
  codes, about ``D`` bytes per vector, and the id table).

The final counts (per reason, per origin and decision, per duplicate kind) are computed
as data, exact under retries; they, the written shards, the index's ``index.json`` content
and a few ``error`` decisions make the step's listing, which the manifest commits.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.pvalue import AsSingleton, TaggedOutput

from curation.decide import Row, duplicate_row
from curation.dedup import cells as cell_plan
from curation.dedup.cell_links import cell_links
from curation.dedup.keep import near_rank
from curation.dedup.near import DEFAULT_NPROBE
from curation.finalize import (
    ERROR_EXAMPLES,
    KeySet,
    NearItem,
    Removal,
    decision_counts,
    duplicate_count,
    keeps_row,
    mark_duplicate,
    near_item,
    redecide,
)
from curation.reasons import Decision, DuplicateKind, Reason
from curation.storage import Location
from curation.thresholds import Thresholds
from pipelines.components import KeepPerComponent
from pipelines.write import WriteListing, WriteTable

BATCH = 4096
#: Images that train the compressed index at most (one worker holds them).
INDEX_TRAIN_CAP = 500_000
#: Shards that new index ids are counted in (each shard's ids are consecutive).
ID_SHARDS = 1024


@dataclass(frozen=True)
class FinalizeSettings:
    """What finalize needs besides the staged rows."""

    run_url: str
    generation: str
    run_id: str
    thresholds: Thresholds
    near_threshold: float
    dedup_against: str | None
    dimension: int
    schemas: dict[str, pa.Schema]
    seed: int = 0
    nprobe: int = DEFAULT_NPROBE

    def folder(self, name: str) -> str:
        return (Location(self.run_url) / name).url


# --- decisions and images ------------------------------------------------------------


def _kept_image(row: Row) -> Iterator[str]:
    if row["decision"] == Decision.KEPT.value and row["image_key"]:
        yield row["image_key"]


def _keyed_item(image: Row) -> tuple[str, NearItem]:
    """A staged image as it is shuffled: the embedding as float32 (4 bytes a dimension,
    not a list of Python floats), its kept texts counted after the join."""
    return image["key"], near_item(image, 0)


def _near_items_of(element: tuple[str, dict[str, list[Any]]]) -> Iterator[NearItem]:
    _, parts = element
    kept = parts["kept"][0] if parts["kept"] else 0
    for item in parts["image"]:
        yield replace(item, kept_texts=kept)


class PreviousRoundFn(beam.DoFn):
    """Images of a batch that duplicate an earlier round's (tagged ``removed``); the rest
    go on. The previous index is memory-mapped once per worker."""

    def __init__(self, folder: str, threshold: float) -> None:
        self._folder = folder
        self._threshold = threshold

    def setup(self) -> None:
        from curation.dedup.index_store import open_index

        self._index = open_index(self._folder)

    def process(self, batch: list[NearItem]) -> Iterator[Any]:
        from curation.dedup.index_store import keys_for_ids
        from curation.dedup.near import query_previous

        x = np.stack([item.vector for item in batch])
        matches = query_previous(self._index, x, self._threshold)
        names = keys_for_ids(self._folder, [i for _, i, _ in matches])
        hit = {row: (names[i], s) for row, i, s in matches}
        for row, item in enumerate(batch):
            if row in hit:
                dup_of, similarity = hit[row]
                removal = Removal(dup_of, similarity, DuplicateKind.PREVIOUS_ROUND)
                yield TaggedOutput("removed", (item.key, removal))
            else:
                yield item


# --- near duplicates -----------------------------------------------------------------


def _ranked(item: NearItem, seed: int) -> tuple[int, NearItem]:
    return cell_plan.sample_rank(item.key, seed), item


def _below(element: tuple[int, NearItem], plan: cell_plan.CellPlan, bound: str) -> bool:
    return plan.cells > 1 and element[0] < getattr(plan, bound)


def _train_coarse(rows: list[tuple[int, NearItem]], plan: cell_plan.CellPlan, seed: int) -> Any:
    if plan.cells == 1 or not rows:
        return None
    rows = sorted(rows, key=lambda r: r[0])
    return cell_plan.train_coarse(np.stack([r[1].vector for r in rows]), plan.coarse, seed)


def _home_coarse(
    batch: list[tuple[int, NearItem]], coarse: np.ndarray
) -> Iterator[tuple[int, tuple[int, np.ndarray]]]:
    homes = cell_plan.nearest_coarse(np.stack([r[1].vector for r in batch]), coarse)
    for (rank, item), home in zip(batch, homes.tolist(), strict=True):
        yield home, (rank, item.vector)


def _train_fine(
    element: tuple[int, Iterable[tuple[int, np.ndarray]]],
    sizes: dict[int, int],
    plan: cell_plan.CellPlan,
    coarse: np.ndarray,
    seed: int,
) -> Iterator[tuple[int, np.ndarray]]:
    j, rows = element
    rows = sorted(rows, key=lambda r: r[0])
    counts = cell_plan.fine_counts(
        np.array([sizes.get(i, 0) for i in range(coarse.shape[0])]), plan.cells
    )
    yield j, cell_plan.train_fine(np.stack([r[1] for r in rows]), int(counts[j]), seed + 1 + j)


def _assemble(
    fines: list[tuple[int, np.ndarray]], plan: cell_plan.CellPlan, coarse: Any, dimension: int
) -> cell_plan.Cells:
    if plan.cells == 1 or coarse is None:
        return cell_plan.Cells.single(dimension)
    by_cell = dict(fines)
    parts = [by_cell.get(j, coarse[j : j + 1]) for j in range(coarse.shape[0])]
    return cell_plan.Cells.from_parts(coarse, parts)


def _assign(
    batch: list[NearItem], cells: cell_plan.Cells, nprobe: int
) -> Iterator[tuple[int, tuple[str, np.ndarray, tuple[int, ...]]]]:
    probes = cells.assign(np.stack([item.vector for item in batch]), nprobe)
    for item, probe in zip(batch, probes.tolist(), strict=True):
        cells_of_item = tuple(probe)  # a few small ints, not an array's pickle
        for cell in cells_of_item:
            yield cell, (item.key, item.vector, cells_of_item)


def _cell_links(
    element: tuple[int, Iterable[tuple[str, np.ndarray, tuple[int, ...]]]], threshold: float
) -> Iterator[tuple[str, str, float]]:
    cell, entries = element
    entries = list(entries)
    keys = np.array([e[0] for e in entries])
    i, j, sims = cell_links(
        cell, keys, np.stack([e[1] for e in entries]), np.stack([e[2] for e in entries]), threshold
    )
    yield from zip(keys[i].tolist(), keys[j].tolist(), sims.tolist(), strict=True)


class NearDuplicates(beam.PTransform):
    """Images -> ``(key, Removal)`` of the near duplicates among them (greedy keep in
    :func:`~curation.dedup.keep.near_rank` order; equal to
    :func:`curation.dedup.near.find_near_duplicates` over all of them)."""

    def __init__(self, threshold: float, dimension: int, seed: int, nprobe: int) -> None:
        super().__init__()
        self._threshold = threshold
        self._dimension = dimension
        self._seed = seed
        self._nprobe = nprobe

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        seed = self._seed
        plan = AsSingleton(
            items
            | "CountImages" >> beam.combiners.Count.Globally()
            | "Plan" >> beam.Map(cell_plan.plan_cells)
        )
        ranked = items | "Rank" >> beam.Map(_ranked, seed=seed)
        sample = ranked | "Sample" >> beam.Filter(_below, plan=plan, bound="sample_limit")
        coarse = AsSingleton(
            sample
            | "CoarseSample" >> beam.Filter(_below, plan=plan, bound="coarse_limit")
            | "CoarseRows" >> beam.combiners.ToList()
            | "TrainCoarse" >> beam.Map(_train_coarse, plan=plan, seed=seed)
        )
        homes = (
            sample
            | "SampleBatches" >> beam.BatchElements(min_batch_size=BATCH, max_batch_size=BATCH)
            | "HomeCoarse" >> beam.FlatMap(_home_coarse, coarse=coarse)
        )
        sizes = AsSingleton(
            homes
            | "CoarseSizes" >> beam.combiners.Count.PerKey()
            | "SizeMap" >> beam.combiners.ToDict()
        )
        fines = (
            homes
            | "ByCoarse" >> beam.GroupByKey()
            | "TrainFine"
            >> beam.FlatMap(_train_fine, sizes=sizes, plan=plan, coarse=coarse, seed=seed)
            | "Fines" >> beam.combiners.ToList()
        )
        cells = AsSingleton(
            fines
            | "Cells" >> beam.Map(_assemble, plan=plan, coarse=coarse, dimension=self._dimension)
        )
        links = (
            items
            | "Batches" >> beam.BatchElements(min_batch_size=BATCH, max_batch_size=BATCH)
            | "Assign" >> beam.FlatMap(_assign, cells=cells, nprobe=self._nprobe)
            | "ByCell" >> beam.GroupByKey()
            | "CellLinks" >> beam.FlatMap(_cell_links, threshold=self._threshold)
        )
        ranks = items | "Ranks" >> beam.Map(lambda item: (item.key, near_rank(item.candidate())))
        return (
            {"links": links, "ranks": ranks}
            | "Keep" >> KeepPerComponent()
            | "Removals"
            >> beam.MapTuple(lambda key, kept: (key, Removal(kept[0], kept[1], DuplicateKind.NEAR)))
        )


# --- final tables --------------------------------------------------------------------


class MarkRemovedFn(beam.DoFn):
    """Kept decisions of removed images go to ``affected`` (to be joined with their
    removal); every other decision is final as it is."""

    def process(self, row: Row, removed: KeySet) -> Iterator[Any]:
        if row["decision"] == Decision.KEPT.value and row["image_key"] in removed:
            yield TaggedOutput("affected", (row["image_key"], row))
        else:
            yield row


def _annotate(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Row]:
    _, parts = element
    removal = parts["removal"][0]
    for row in parts["rows"]:
        yield mark_duplicate(row, removal)


def _kept_candidate(row: Row, threshold: float, column: str, removed: KeySet) -> bool:
    return keeps_row(row, threshold) and row[column] not in removed


def _error_example(row: Row) -> Iterator[tuple[str, Row]]:
    if row["reason"] == Reason.ERROR.value:
        example = {k: row[k] for k in ("key", "source_file", "source_row", "detail")}
        yield row["key"], example


# --- the index -------------------------------------------------------------------------


def _survivor(element: tuple[str, dict[str, list[Any]]]) -> Iterator[NearItem]:
    _, parts = element
    if not parts["removed"]:
        for item in parts["item"]:
            if item.kept_texts > 0:
                yield item


def _id_shard(item: NearItem) -> tuple[int, NearItem]:
    digest = hashlib.blake2b(item.key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % ID_SHARDS, item


def _offsets(counts: dict[int, int], first_id: int) -> dict[int, int]:
    offsets, at = {}, first_id
    for shard in range(ID_SHARDS):
        offsets[shard] = at
        at += counts.get(shard, 0)
    return offsets


def _with_ids(
    element: tuple[int, Iterable[NearItem]], offsets: dict[int, int]
) -> Iterator[tuple[int, NearItem]]:
    shard, items = element
    for position, item in enumerate(sorted(items, key=lambda it: it.key)):
        yield offsets[shard] + position, item


def _small_index(
    items: list[tuple[int, NearItem]], settings: FinalizeSettings, compressed: bool
) -> Iterator[dict[str, Any]]:
    """The exact index, built on one worker (at most ``IVF_MIN_VECTORS`` vectors)."""
    from curation.dedup.index_store import load_index, write_index

    if compressed:
        return
    items = sorted(items, key=lambda t: t[0])
    previous = load_index(settings.dedup_against) if settings.dedup_against else None
    vectors = (
        np.stack([it.vector for _, it in items])
        if items
        else np.zeros((0, settings.dimension), np.float32)
    )
    yield write_index(
        settings.folder("index"),
        [it.key for _, it in items],
        vectors,
        dimension=settings.dimension,
        sha256=[it.sha256 for _, it in items],
        run_id=settings.run_id,
        previous=previous,
        threshold=settings.near_threshold,
        generation=settings.generation,
        point=False,
    )


def _trained(sample: list[tuple[int, NearItem]], settings: FinalizeSettings, total: int) -> bytes:
    import faiss

    from curation.dedup.index_store import load_index, trained_index

    previous = load_index(settings.dedup_against) if settings.dedup_against else None
    rows = sorted(sample, key=lambda r: r[0])
    vectors = np.stack([r[1].vector for r in rows]) if rows else np.zeros((0, settings.dimension))
    return faiss.serialize_index(trained_index(previous, vectors, total)).tobytes()


class EncodeFn(beam.DoFn):
    """Codes of a batch of ``(id, image)`` for the compressed index, written as a part file
    under ``parts``; yields its URL. The merge reads the parts from storage, so no element
    holds every code (26 GB at 100M images)."""

    def __init__(self, parts: str) -> None:
        self._parts = parts

    def process(self, batch: list[tuple[int, NearItem]], trained: bytes | None) -> Iterator[str]:
        if trained is None:
            return
        from curation.dedup.compressed_index import encode_shard
        from curation.dedup.index_store import write_codes_part

        index = self._index(trained)
        vectors = np.stack([item.vector for _, item in batch])
        ids = np.array([i for i, _ in batch], dtype=np.int64)
        # named by first id, so that the merge adds parts in id order; unique per attempt
        part = Location(self._parts) / f"part-{ids.min():020d}-{uuid.uuid4().hex}.parquet"
        write_codes_part(
            part,
            ids,
            encode_shard(index, vectors),
            [item.key for _, item in batch],
            [item.sha256 for _, item in batch],
        )
        yield part.url

    def _index(self, trained: bytes) -> Any:
        import faiss

        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] is not trained:
            self._cached = (trained, faiss.deserialize_index(np.frombuffer(trained, np.uint8)))
        return self._cached[1]


def _merge(
    parts: list[str], trained: bytes | None, settings: FinalizeSettings
) -> Iterator[dict[str, Any]]:
    """The compressed index: every part's codes added in id order, then saved (once). The
    merging worker holds the index and its id table (about 360 bytes an image)."""
    if trained is None:
        return
    import faiss

    from curation.dedup.compressed_index import add_codes
    from curation.dedup.index_store import (
        PART_ROWS_SCHEMA,
        filled_index,
        id_rows,
        load_index,
        read_codes_part,
        save_index,
    )

    previous = load_index(settings.dedup_against) if settings.dedup_against else None
    index = filled_index(faiss.deserialize_index(np.frombuffer(trained, np.uint8)), previous)
    tables = [PART_ROWS_SCHEMA.empty_table()]
    for url in sorted(parts):
        ids, codes, rows = read_codes_part(Location(url))
        add_codes(index, codes, ids)
        tables.append(rows)
    rows = pa.concat_tables(tables).sort_by("id")
    yield save_index(
        settings.folder("index"),
        index,
        id_rows(rows["id"].to_numpy(), rows["key"], rows["sha256"], settings.run_id),
        previous=previous,
        run_id=settings.run_id,
        threshold=settings.near_threshold,
        generation=settings.generation,
        point=False,
    )


class BuildIndex(beam.PTransform):
    """The kept images -> the next round's index (its ``index.json`` content)."""

    def __init__(
        self,
        settings: FinalizeSettings,
        previous_count: int,
        first_id: int,
        compressed_before: bool,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._previous_count = previous_count
        self._first_id = first_id
        self._compressed_before = compressed_before

    def expand(self, survivors: beam.PCollection) -> beam.PCollection:
        from curation.dedup.compressed_index import train_size
        from curation.dedup.index_store import IVF_MIN_VECTORS

        settings = self._settings
        previous_count, compressed_before = self._previous_count, self._compressed_before
        count = AsSingleton(survivors | "CountKept" >> beam.combiners.Count.Globally())

        def compressed(n: int) -> bool:
            return compressed_before or previous_count + n >= IVF_MIN_VECTORS

        sharded = survivors | "IdShard" >> beam.Map(_id_shard)
        offsets = AsSingleton(
            sharded
            | "ShardSizes" >> beam.combiners.Count.PerKey()
            | "SizeMap" >> beam.combiners.ToDict()
            | "Offsets" >> beam.Map(_offsets, first_id=self._first_id)
        )
        with_ids = (
            sharded
            | "ByShard" >> beam.GroupByKey()
            | "Ids" >> beam.FlatMap(_with_ids, offsets=offsets)
        )
        small = (
            with_ids
            | "SmallOnly" >> beam.Filter(lambda _, n: not compressed(n), n=count)
            | "AllKept" >> beam.combiners.ToList()
            | "ExactIndex"
            >> beam.FlatMap(lambda items, n: _small_index(items, settings, compressed(n)), n=count)
        )
        seed = settings.seed
        # removed by the commit (index files its manifest does not list)
        parts = (Location(settings.folder("index")) / f"_parts-{settings.generation}").url
        trained = AsSingleton(
            with_ids
            | "TrainSample"
            >> beam.Filter(
                lambda item, n: (
                    compressed(n)
                    and cell_plan.sample_rank(item[1].key, seed)
                    < cell_plan.rank_limit(min(train_size(previous_count + n), INDEX_TRAIN_CAP), n)
                ),
                n=count,
            )
            | "SampleRanks"
            >> beam.Map(lambda item: (cell_plan.sample_rank(item[1].key, seed), item[1]))
            | "SampleRows" >> beam.combiners.ToList()
            | "Train"
            >> beam.Map(
                lambda rows, n: (
                    _trained(rows, settings, previous_count + n) if compressed(n) else None
                ),
                n=count,
            )
        )
        large = (
            with_ids
            | "KeptBatches" >> beam.BatchElements(min_batch_size=BATCH, max_batch_size=BATCH)
            | "Encode" >> beam.ParDo(EncodeFn(parts), trained=trained)
            | "AllParts" >> beam.combiners.ToList()
            | "Merge" >> beam.FlatMap(_merge, trained=trained, settings=settings)
        )
        return (small, large) | "IndexInfo" >> beam.Flatten()


# --- the whole step --------------------------------------------------------------------


class Finalize(beam.PTransform):
    """Staged rows -> the final tables' shards and the index; the listing goes to
    ``listing`` (a URL) for the launcher to commit."""

    def __init__(self, settings: FinalizeSettings, listing: str) -> None:
        super().__init__()
        self._settings = settings
        self._listing = listing

    def expand(self, stage: dict[str, beam.PCollection]) -> beam.PCollection:
        from curation.dedup.index_store import read_info

        s = self._settings
        decisions = stage["decisions"] | "Redecide" >> beam.Map(redecide, thresholds=s.thresholds)
        items = _near_items(stage["images"], decisions)
        previous = read_info(s.dedup_against) if s.dedup_against else None
        removed = _removals(items, s, previous)
        removed_set = AsSingleton(
            removed | "RemovedKeys" >> beam.Keys() | "Keys" >> beam.combiners.ToList()
            | "KeySet" >> beam.Map(KeySet)
        )  # fmt: skip
        final = {
            "decisions": _marked_decisions(decisions, removed, removed_set),
            "clean": stage["clean"] | "KeepClean" >> beam.Filter(
                _kept_candidate, threshold=s.thresholds.web, column="image_key",
                removed=removed_set,
            ),
            "synthetic": stage["synthetic"] | "KeepSynthetic" >> beam.Filter(
                _kept_candidate, threshold=s.thresholds.synthetic, column="key",
                removed=removed_set,
            ),
            "duplicates": (
                stage["duplicates"],
                removed | "RemovalRows" >> beam.MapTuple(
                    lambda key, r: duplicate_row(key, r.dup_of, r.kind, r.similarity)
                ),
            ) | "AllDuplicates" >> beam.Flatten(),
        }  # fmt: skip
        prefix = f"part-{s.generation}"
        shards = [
            rows
            | f"Write{name.title()}" >> WriteTable(name, s.folder(name), s.schemas[name], prefix)
            for name, rows in final.items()
        ]
        index = _next_index(items, removed, s, previous)
        entries = (
            *(shard_pc | f"Shard{i}" >> beam.Map(lambda e: ("shard", e)) for i, shard_pc in enumerate(shards)),
            index | "IndexEntry" >> beam.Map(lambda info: ("index", info)),
            *_summary(final["decisions"], final["duplicates"]),
        )  # fmt: skip
        return entries | "AllEntries" >> beam.Flatten() | "Listing" >> WriteListing(self._listing)


def _near_items(images: beam.PCollection, decisions: beam.PCollection) -> beam.PCollection:
    """The images with at least one kept text, as near-duplicate candidates."""
    kept = (
        decisions
        | "KeptImages" >> beam.FlatMap(_kept_image)
        | "KeptPerImage" >> beam.combiners.Count.PerElement()
    )
    return (
        {"image": images | "KeyImages" >> beam.Map(_keyed_item), "kept": kept}
        | "JoinKept" >> beam.CoGroupByKey()
        | "Items" >> beam.FlatMap(_near_items_of)
    )


def _removals(
    items: beam.PCollection, s: FinalizeSettings, previous: dict[str, Any] | None
) -> beam.PCollection:
    """(key, removal) of the images the previous round's index or a better copy removes."""
    if previous is not None and previous["count"]:
        split = (
            items
            | "PrevBatches" >> beam.BatchElements(min_batch_size=BATCH, max_batch_size=BATCH)
            | "PreviousRound"
            >> beam.ParDo(PreviousRoundFn(s.dedup_against, s.near_threshold)).with_outputs(
                "removed", main="remaining"
            )
        )
        remaining, removed_before = split.remaining, [split.removed]
    else:
        remaining, removed_before = items, []
    near = remaining | "Near" >> NearDuplicates(s.near_threshold, s.dimension, s.seed, s.nprobe)
    return (*removed_before, near) | "AllRemoved" >> beam.Flatten()


def _marked_decisions(
    decisions: beam.PCollection, removed: beam.PCollection, removed_set: AsSingleton
) -> beam.PCollection:
    """The decisions, those of removed images' kept texts changed to their removal reason."""
    marked = decisions | "Mark" >> beam.ParDo(MarkRemovedFn(), removed=removed_set).with_outputs(
        "affected", main="final"
    )
    annotated = (
        {"rows": marked.affected, "removal": removed}
        | "JoinRemovals" >> beam.CoGroupByKey()
        | "Annotate" >> beam.FlatMap(_annotate)
    )
    return (marked.final, annotated) | "AllDecisions" >> beam.Flatten()


def _next_index(
    items: beam.PCollection,
    removed: beam.PCollection,
    s: FinalizeSettings,
    previous: dict[str, Any] | None,
) -> beam.PCollection:
    """The index for the next round: the previous one's images and this round's survivors."""
    from curation.dedup.index_store import info_is_compressed

    survivors = (
        {"item": items | "KeyItems" >> beam.Map(lambda it: (it.key, it)), "removed": removed}
        | "JoinSurvivors" >> beam.CoGroupByKey()
        | "Survivors" >> beam.FlatMap(_survivor)
    )
    return survivors | "Index" >> BuildIndex(
        s,
        previous_count=int(previous["count"]) if previous is not None else 0,
        first_id=int(previous["max_id"]) + 1 if previous is not None else 0,
        compressed_before=previous is not None and info_is_compressed(previous),
    )


def _summary(
    decisions: beam.PCollection, duplicates: beam.PCollection
) -> tuple[beam.PCollection, beam.PCollection]:
    """The listing's counts per decision and duplicate kind, and its error examples."""
    counts = (
        (
            decisions | "DecisionCounts" >> beam.FlatMap(decision_counts),
            duplicates | "DuplicateCounts" >> beam.Map(duplicate_count),
        )
        | "AllCounts" >> beam.Flatten()
        | "CountEach" >> beam.combiners.Count.PerElement()
        | "Counts" >> beam.combiners.ToDict()
    )
    errors = (
        decisions
        | "Errors" >> beam.FlatMap(_error_example)
        | "ErrorExamples" >> beam.combiners.Top.Smallest(ERROR_EXAMPLES, key=lambda e: e[0])
    )
    return (
        errors | "ErrorEntry" >> beam.Map(lambda rows: ("errors", [r for _, r in rows])),
        counts | "CountsEntry" >> beam.Map(lambda c: ("counts", c)),
    )
