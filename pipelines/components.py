"""The greedy keep over a sparse link graph, on the engine: components once, keep per component.

Both dedup steps (copies before the models, near duplicates after) end the same way: links
between keys above a similarity, and the greedy keep in rank order
(:mod:`curation.dedup.components`), which only depends on the links and the ranks of the
linked keys. The edge list (keys and weights only) is labelled by connected component once,
on one worker: memory O(links), independent of the number of unlinked keys. Then each
component's links and its keys' ranks meet under the component's label, and the keep runs
per component, which gives exactly the single-machine result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from curation.dedup.components import edge_components, greedy_keep

Link = tuple[str, str, float]


def _label(links: list[Link]) -> Iterator[Any]:
    if not links:
        return
    a = [link[0] for link in links]
    b = [link[1] for link in links]
    labels = edge_components(a, b).tolist()
    seen: set[str] = set()
    for link, label in zip(links, labels, strict=True):
        yield TaggedOutput("edges", (label, link))
        for key in link[:2]:
            if key not in seen:
                seen.add(key)
                yield TaggedOutput("nodes", (key, label))


def _label_rank(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[int, tuple[str, Any]]]:
    key, parts = element
    for label in parts["label"]:
        yield label, (key, parts["rank"][0])


def _keep(element: tuple[int, dict[str, list[Any]]]) -> Iterable[tuple[str, tuple[str, float]]]:
    _, parts = element
    edges = parts["edges"]
    ranks = dict(parts["ranks"])
    a = [e[0] for e in edges]
    b = [e[1] for e in edges]
    return greedy_keep(ranks, a, b, [e[2] for e in edges]).items()


class KeepPerComponent(beam.PTransform):
    """``{"links": (a, b, weight), "ranks": (key, sort key)}`` -> removed keys as
    ``(key, (kept key it duplicates, weight))``; ranks are best first, all distinct."""

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        labelled = (
            inputs["links"]
            | "AllLinks" >> beam.combiners.ToList()
            | "Components" >> beam.FlatMap(_label).with_outputs("edges", "nodes")
        )
        node_ranks = (
            {"label": labelled.nodes, "rank": inputs["ranks"]}
            | "RankOfLinked" >> beam.CoGroupByKey()
            | "ByComponent" >> beam.FlatMap(_label_rank)
        )
        return (
            {"edges": labelled.edges, "ranks": node_ranks}
            | "Component" >> beam.CoGroupByKey()
            | "Keep" >> beam.FlatMap(_keep)
        )
