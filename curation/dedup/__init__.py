"""Image deduplication without models or Beam.

- :mod:`curation.dedup.copies`: copies before the models (sha256, perceptual hash).
- :mod:`curation.dedup.near`: near-duplicates after scoring (FAISS on image embeddings),
  within a run and against previous rounds.
- :mod:`curation.dedup.index_store`: the index folder that the next round dedups against.
- :mod:`curation.dedup.keep`: which image of a group is kept.
"""

from curation.dedup.copies import CopyLink, group_copies
from curation.dedup.index_store import PreviousIndex, load_index, write_index
from curation.dedup.keep import CopyCandidate, NearCandidate, choose_copy, choose_near
from curation.dedup.near import NearDuplicate, find_near_duplicates, query_previous

__all__ = [
    "CopyCandidate",
    "CopyLink",
    "NearCandidate",
    "NearDuplicate",
    "PreviousIndex",
    "choose_copy",
    "choose_near",
    "find_near_duplicates",
    "group_copies",
    "load_index",
    "query_previous",
    "write_index",
]
