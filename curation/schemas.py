"""Arrow schemas of every output table, defined once.

``clean`` and ``synthetic`` may carry extra passthrough columns from the input after the
fixed ones; :func:`with_passthrough` builds such a schema.
"""

from __future__ import annotations

import pyarrow as pa

#: One row per (image, candidate text) and per input row rejected before scoring.
DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),  # the input pair's key
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("image_key", pa.string()),  # key of the image the text was scored against
        pa.field("text_origin", pa.string(), nullable=False),  # web | synthetic
        pa.field("caption_index", pa.int32()),  # synthetic captions: 0..K-1
        pa.field("text", pa.string()),
        pa.field("itm", pa.float32()),  # ITM match probability; null if not scored
        pa.field("itc", pa.float32()),  # ITC cosine; null if not scored
        pa.field("decision", pa.string(), nullable=False),  # kept | dropped
        pa.field("reason", pa.string(), nullable=False),  # curation.reasons.Reason
        pa.field("detail", pa.string()),  # free-text detail (error message, dup_of, ...)
        pa.field("threshold", pa.float32()),
    ]
)

#: Every column of a decision but the run it belongs to: what audits read of a decision.
DECISION_FIELDS: tuple[str, ...] = tuple(n for n in DECISIONS_SCHEMA.names if n != "run_id")

#: Kept web pairs.
CLEAN_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # the input pair's key
        pa.field("image_key", pa.string(), nullable=False),  # key of the image kept for it
        pa.field("image", pa.binary(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("itm", pa.float32(), nullable=False),
        pa.field("itc", pa.float32(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("sha256", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
    ]
)

#: Kept synthetic captions.
SYNTHETIC_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # the image's key
        pa.field("caption_index", pa.int32(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("itm", pa.float32(), nullable=False),
        pa.field("itc", pa.float32(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("sha256", pa.string()),
    ]
)

#: Every removed duplicate image (or identical pair) and what it duplicates.
DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("dup_of", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # exact | perceptual | near | previous-round
        pa.field(
            "similarity", pa.float32()
        ),  # cosine (near), 1 - hamming/64 (perceptual), 1.0 (exact)
    ]
)

#: images/: one row per scored unique image (the input of near-duplicate removal).
IMAGES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # the image's key (its representative pair)
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("kept_texts", pa.int32(), nullable=False),  # web + synthetic texts kept by ITM
        pa.field("best_itm", pa.float32(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),  # L2-normalised
    ]
)

#: index/ids.parquet: FAISS id -> key of the kept image.
INDEX_IDS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("run_id", pa.string()),
    ]
)


def with_passthrough(schema: pa.Schema, extra: pa.Schema | None) -> pa.Schema:
    """Append input passthrough columns to a fixed schema (fixed names win on clashes)."""
    if extra is None:
        return schema
    names = set(schema.names)
    fields = list(schema) + [f for f in extra if f.name not in names]
    return pa.schema(fields)


def run_schemas(passthrough: pa.Schema | None) -> dict[str, pa.Schema]:
    """The schema of every staged and final table of a run with these passthrough columns."""
    return {
        "decisions": DECISIONS_SCHEMA,
        "clean": with_passthrough(CLEAN_SCHEMA, passthrough),
        "synthetic": SYNTHETIC_SCHEMA,
        "duplicates": DUPLICATES_SCHEMA,
        "images": IMAGES_SCHEMA,
    }


def schema_to_text(schema: pa.Schema) -> str:
    """A schema as base64 text (Arrow IPC), for JSON listings."""
    import base64

    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_text(text: str) -> pa.Schema:
    """The schema :func:`schema_to_text` wrote."""
    import base64

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
