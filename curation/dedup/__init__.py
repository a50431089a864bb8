"""Image deduplication without models or Beam.

- :mod:`curation.dedup.copies`: copies before the models (sha256, perceptual hash);
  :mod:`curation.dedup.copy_buckets`: its perceptual links per multi-hash bucket.
- :mod:`curation.dedup.near`: near-duplicates after scoring (FAISS on image embeddings),
  within a run and against previous rounds; :mod:`curation.dedup.cells` (the two-level
  quantizer) and :mod:`curation.dedup.cell_links` (links per cell) are its steps.
- :mod:`curation.dedup.components`: connected components of links and the greedy keep
  per component (:mod:`curation.dedup.leaders`).
- :mod:`curation.dedup.index_store`: the index folder that the next round dedups against;
  :mod:`curation.dedup.compressed_index`: its compressed layout for large rounds.
- :mod:`curation.dedup.keep`: which image of a group is kept.

Every module's docstring says which of its functions run per element, per key or once,
and their memory bound, for the distributed stages that call them.
"""

from curation.dedup.copies import CopyLink, group_copies
from curation.dedup.index_store import PreviousIndex, load_index, write_index
from curation.dedup.keep import CopyCandidate, NearCandidate, choose_copy
from curation.dedup.near import NearDuplicate, find_near_duplicates, query_previous

__all__ = [
    "CopyCandidate",
    "CopyLink",
    "NearCandidate",
    "NearDuplicate",
    "PreviousIndex",
    "choose_copy",
    "find_near_duplicates",
    "group_copies",
    "load_index",
    "query_previous",
    "write_index",
]
