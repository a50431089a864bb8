"""Recognising which columns of the input hold the image, the text, the key and the rest.

Recognised without configuration:

- ``img2dataset``: columns ``key``, ``caption``, ``status`` (+ ``error_message``) and the
  image bytes in ``jpg`` (or ``png``/``webp``, named after img2dataset's encode_format);
- ``hf_datasets``: a Hugging Face ``datasets`` Image column, a struct of ``bytes`` and
  ``path`` (a column named ``image`` is preferred), and a text column;
- ``mapped``: any other layout, with a binary image column and a text column found by name
  or given explicitly.

Explicit column names always override detection. Every file's schema is checked before any
work: the roles must agree across files; passthrough columns (every other column) are
unified: a column missing from some files is null there, types are widened (int32 and int64
-> int64, int and float -> float64, string and string view -> large string, timestamps to
the finest unit, null -> anything), and columns that cannot be unified (int64 in one file,
string in another) are refused with the files and the column named. Values are cast
safely: one the widened type cannot hold exactly (an int64 above 2**53 as float64, a
timestamp after 2262 in nanoseconds) is stored as null, with a note in its row's decision.
Column names must be distinct; a repeated passthrough column may be left out with
``--drop-column``. Hive partition folders (``lang=en/``) add string passthrough columns
(:mod:`curation.inputs`). Passthrough columns whose names clash with output columns
(img2dataset's own ``width``, ``height``, ``sha256``) keep their values under ``source_<name>``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

import pyarrow as pa

from curation.errors import InputError
from curation.footers import FooterSummary, read_footer, read_footers
from curation.inputs import InputFile
from curation.schemas import CLEAN_SCHEMA
from curation.storage import Location

IMG2DATASET_IMAGE_COLUMNS = ("jpg", "png", "webp")
IMAGE_COLUMNS = ("image", "img", "image_bytes", "jpg", "jpeg", "png", "webp", "bytes")
TEXT_COLUMNS = ("text", "caption", "alt", "alt_text", "alttext", "TEXT", "CAPTION", "ALT", "title")
#: Prefix of passthrough columns renamed because an output column has their name.
SOURCE_PREFIX = "source_"


class LayoutKind(StrEnum):
    """The input conventions a layout was recognised as."""

    IMG2DATASET = "img2dataset"
    HF_DATASETS = "hf_datasets"
    MAPPED = "mapped"


@dataclass(frozen=True)
class Layout:
    """Which input columns play which role, and the passthrough columns' unified schema."""

    kind: LayoutKind
    image_column: str
    text_column: str
    key_column: str | None
    status_column: str | None
    error_column: str | None
    image_is_struct: bool  # datasets Image struct {bytes, path}
    passthrough: pa.Schema  # every other column (input names), unified over all files
    renamed: tuple[tuple[str, str], ...] = ()  # (input name, output name) of clashing columns
    images_absent: bool = False  # the image column is all null (Arrow's null type)

    @property
    def roles(self) -> dict[str, Any]:
        """The role columns, for comparing files' layouts."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in {"passthrough", "renamed", "images_absent"}
        }

    def fits(self, other: Layout) -> bool:
        """True when a file of this layout can be read with ``other``'s roles: the same
        roles, or an image column of nulls only where ``other`` has images."""
        if not self.images_absent:
            return self.roles == other.roles
        loose = ("kind", "image_is_struct")
        return all(v == other.roles[k] for k, v in self.roles.items() if k not in loose)

    def columns(self, available: Sequence[str]) -> list[str]:
        """The columns a reader projects from a file that has ``available`` columns."""
        named = [self.image_column, self.text_column]
        named += [c for c in (self.key_column, self.status_column, self.error_column) if c]
        return named + [n for n in self.passthrough.names if n in available]

    def output_name(self, column: str) -> str:
        """The name a passthrough column has in the output tables."""
        return dict(self.renamed).get(column, column)

    def output_passthrough(self) -> pa.Schema:
        """The passthrough columns as the output tables carry them (renamed, nullable)."""
        return pa.schema(
            [f.with_name(self.output_name(f.name)).with_nullable(True) for f in self.passthrough]
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = dict(self.roles)
        data["passthrough"] = list(self.passthrough.names)
        data["renamed"] = dict(self.renamed)
        return data


def is_image_struct(type_: pa.DataType) -> bool:
    """A Hugging Face ``datasets`` Image column: struct of ``bytes`` and ``path``."""
    if not pa.types.is_struct(type_):
        return False
    names = {type_.field(i).name for i in range(type_.num_fields)}
    return {"bytes", "path"} <= names and is_binary(type_.field("bytes").type)


def is_binary(type_: pa.DataType) -> bool:
    """Bytes of any encoding Arrow has (dictionary-encoded included)."""
    if pa.types.is_dictionary(type_):
        return is_binary(type_.value_type)
    return (
        pa.types.is_binary(type_)
        or pa.types.is_large_binary(type_)
        or pa.types.is_fixed_size_binary(type_)
        or pa.types.is_binary_view(type_)
    )


def is_text(type_: pa.DataType) -> bool:
    """Strings of any encoding Arrow has (dictionary-encoded included), or all null."""
    if pa.types.is_dictionary(type_):
        return is_text(type_.value_type)
    return (
        pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_string_view(type_)
        or pa.types.is_null(type_)
    )


def is_key_type(type_: pa.DataType) -> bool:
    """Types a key column may have: text or integers (used as text)."""
    if pa.types.is_dictionary(type_):
        return is_key_type(type_.value_type)
    return is_text(type_) or pa.types.is_integer(type_)


def _keyable(type_: pa.DataType) -> bool:
    """A type a key column may have, bytes (read as UTF-8) included."""
    return is_key_type(type_) or is_binary(type_)


def _missing(path: str, names: list[str], role: str, column: str | None, option: str) -> InputError:
    what = f"{role} column {column!r} not found" if column else f"no {role} column recognised"
    return InputError(
        f"{path}: {what}; available columns: {', '.join(map(repr, names))} "
        f"(choose one with {option})"
    )


def _choose_image(path: str, types: dict[str, pa.DataType], names: list[str]) -> str:
    structs = [n for n in names if is_image_struct(types[n])]
    if structs:
        return "image" if "image" in structs else structs[0]
    found = next((c for c in IMAGE_COLUMNS if c in types and is_binary(types[c])), None)
    found = found or next((c for c in IMAGE_COLUMNS if c in types and is_null(types[c])), None)
    if found is not None:
        return found
    binaries = [n for n in names if is_binary(types[n])]
    if len(binaries) != 1:
        raise _missing(path, names, "image", None, "--image-column")
    return binaries[0]


def is_null(type_: pa.DataType) -> bool:
    """A column with no values at all (pandas writes an all-None column so)."""
    return pa.types.is_null(type_)


def _check_image_type(path: str, column: str, type_: pa.DataType) -> None:
    if not (is_image_struct(type_) or is_binary(type_) or is_null(type_)):
        raise InputError(
            f"{path}: image column {column!r} has type {type_}, expected binary "
            "bytes or a datasets Image struct {bytes, path}"
        )


def _is_img2dataset(types: dict[str, pa.DataType]) -> bool:
    """img2dataset's columns, its ``status`` text ("success", ...): a numeric status (an HTTP
    code of another scraper) is not img2dataset's and passes through."""
    return (
        {"key", "status", "caption"} <= set(types)
        and is_text(types["status"])
        and any(c in types and is_binary(types[c]) for c in IMG2DATASET_IMAGE_COLUMNS)
    )


@dataclass(frozen=True)
class _Roles:
    """The column of each role in one file."""

    kind: LayoutKind
    image: str
    text: str
    key: str | None
    status: str | None = None
    error: str | None = None


def _img2dataset_roles(
    types: dict[str, pa.DataType], image: str | None, text: str | None, key: str | None
) -> _Roles:
    """img2dataset's own columns, where not given."""
    return _Roles(
        kind=LayoutKind.IMG2DATASET,
        image=image
        or next(c for c in IMG2DATASET_IMAGE_COLUMNS if c in types and is_binary(types[c])),
        text=text or "caption",
        key=key or "key",
        status="status",
        error="error_message" if "error_message" in types else None,
    )


def _found_roles(
    path: str,
    types: dict[str, pa.DataType],
    names: list[str],
    image: str | None,
    text: str | None,
    key: str | None,
) -> _Roles:
    """The columns found by name and type (a datasets Image struct or image bytes)."""
    image = image or _choose_image(path, types, names)
    _check_image_type(path, image, types[image])
    text = text or next((c for c in TEXT_COLUMNS if c in types and c != image), None)
    if text is None:
        raise _missing(path, names, "text", None, "--text-column")
    return _Roles(
        kind=LayoutKind.HF_DATASETS if is_image_struct(types[image]) else LayoutKind.MAPPED,
        image=image,
        text=text,
        key=key or ("key" if "key" in types and _keyable(types["key"]) else None),
    )


def _check_role_types(path: str, roles: _Roles, types: dict[str, pa.DataType]) -> None:
    _check_image_type(path, roles.image, types[roles.image])
    # bytes are read as UTF-8 text too: writers such as older Spark store strings so
    for role, column, fits, expected in (
        ("text", roles.text, is_text, "string"),
        ("key", roles.key, is_key_type, "string or integer"),
        ("error", roles.error, is_text, "string"),
    ):
        if column is not None and not (fits(types[column]) or is_binary(types[column])):
            raise InputError(
                f"{path}: {role} column {column!r} has type {types[column]}, expected {expected}"
            )


def detect_layout(
    location: Location,
    image_column: str | None = None,
    text_column: str | None = None,
    key_column: str | None = None,
    schema: pa.Schema | None = None,
) -> Layout:
    """Recognise the layout of one Parquet file from its schema alone.

    Raises :class:`InputError` naming the file and the column (and listing the available
    columns) when a needed column is missing or has the wrong type.
    """
    path = location.url
    schema = schema if schema is not None else read_footer(location).schema
    names = list(schema.names)
    types = {f.name: f.type for f in schema}
    repeated = {name: n for name, n in Counter(names).items() if n > 1}
    for given, option in (
        (image_column, "--image-column"),
        (text_column, "--text-column"),
        (key_column, "--key-column"),
    ):
        if given is not None and given not in types:
            raise _missing(path, names, option[2:].split("-")[0], given, option)
    roles = (
        _img2dataset_roles(types, image_column, text_column, key_column)
        if _is_img2dataset(types)
        else _found_roles(path, types, names, image_column, text_column, key_column)
    )
    named = {
        "image": roles.image, "text": roles.text, "key": roles.key, "status": roles.status,
        "error": roles.error,
    }  # fmt: skip
    taken: dict[str, str] = {}
    for role, column in named.items():
        if column is not None and (other := taken.setdefault(column, role)) != role:
            raise InputError(
                f"{path}: column {column!r} cannot be both the {other} and the {role} column"
            )
    used = set(named.values())
    for name, count in sorted(repeated.items()):
        if name in used or name in (image_column, text_column, key_column):
            raise InputError(
                f"{path}: column {name!r} appears {count} times; a column that "
                "plays a role must have a name of its own (rename the others in the input)"
            )
    _check_role_types(path, roles, types)
    return Layout(
        kind=roles.kind,
        image_column=roles.image,
        text_column=roles.text,
        key_column=roles.key,
        status_column=roles.status,
        error_column=roles.error,
        image_is_struct=is_image_struct(types[roles.image]),
        passthrough=pa.schema([f for f in schema if f.name not in used]),
        images_absent=is_null(types[roles.image]),
    )


def check_inputs(
    files: Sequence[InputFile],
    image_column: str | None = None,
    text_column: str | None = None,
    key_column: str | None = None,
    drop_columns: Sequence[str] = (),
    footers: Mapping[str, FooterSummary] | None = None,
) -> Layout:
    """Validate every file's schema before work starts; return the layout they share.

    ``drop_columns`` are passthrough columns left out of the outputs; ``footers`` (by URL)
    are read here when not given (:func:`~curation.footers.read_footers`). Raises :class:`InputError` when a file is unusable, when two files give columns
    different roles, when a passthrough column's types cannot be unified, or when keys
    derived from file paths would collide.
    """
    from curation.inputs import check_key_prefixes

    if not files:
        raise InputError("no input files")
    footers = footers if footers is not None else read_footers(files)
    detected = [
        _with_partitions(
            detect_layout(
                f.location, image_column, text_column, key_column, schema=footers[f.url].schema
            ),
            f,
        )
        for f in files
    ]
    _check_drops(detected, drop_columns)
    layouts = [_without(layout, drop_columns) for layout in detected]
    for item, layout in zip(files, layouts, strict=True):
        for name, count in sorted(Counter(layout.passthrough.names).items()):
            if count > 1:
                raise InputError(
                    f"{item.url}: column {name!r} appears {count} times; rename the others "
                    f"in the input, or leave them out with --drop-column {name!r}"
                )
    first_at = next((i for i, layout in enumerate(layouts) if not layout.images_absent), 0)
    first = layouts[first_at]
    for item, layout in zip(files, layouts, strict=True):
        if not layout.fits(first):
            diffs = [
                f"{name}: {value!r} vs {layout.roles[name]!r}"
                for name, value in first.roles.items()
                if layout.roles[name] != value
            ]
            raise InputError(
                f"{item.url}: columns play other roles than in {files[first_at].url} "
                f"({'; '.join(diffs)}); all input files must have the same layout"
            )
    passthrough = unify_passthrough(files, layouts)
    if first.key_column is None:
        check_key_prefixes(files)
    fixed = set(CLEAN_SCHEMA.names)
    renamed = []
    for name in passthrough.names:
        if name in fixed:
            target = SOURCE_PREFIX + name
            while target in fixed or target in passthrough.names:
                target = SOURCE_PREFIX + target
            renamed.append((name, target))
    return Layout(
        **{**first.roles, "passthrough": passthrough, "renamed": tuple(renamed)}  # type: ignore[arg-type]
    )


def _with_partitions(layout: Layout, item: InputFile) -> Layout:
    """``layout`` with ``item``'s Hive partition columns (strings) that the file lacks."""
    taken = set(layout.passthrough.names) | {v for k, v in layout.roles.items() if "column" in k}
    added = [pa.field(name, pa.string()) for name in item.partitions if name not in taken]
    return replace(layout, passthrough=pa.schema([*layout.passthrough, *added]))


def _check_drops(layouts: Sequence[Layout], drop: Sequence[str]) -> None:
    """Refuse a ``--drop-column`` that names no passthrough column of any file: a misspelt
    name would otherwise leave the column it meant in the outputs."""
    present = {name for layout in layouts for name in layout.passthrough.names}
    roles = {
        column
        for layout in layouts
        for role, column in layout.roles.items()
        if role.endswith("_column") and column
    }
    for name in drop:
        if name in roles:
            raise InputError(
                f"--drop-column {name!r}: the column plays a role; it cannot be left out"
            )
        if name not in present:
            raise InputError(
                f"--drop-column {name!r}: no input file has this column; the others are "
                f"{', '.join(map(repr, sorted(present))) or 'none'}"
            )


def _without(layout: Layout, drop: Sequence[str]) -> Layout:
    kept = [f for f in layout.passthrough if f.name not in drop]
    return replace(layout, passthrough=pa.schema(kept))


def _plain(field: pa.Field) -> pa.Field:
    """A field as the type its values have: dictionary-encoded as its value type
    (dictionaries differ between files), string and binary views as large strings and
    bytes (Arrow does not combine a view with its plain type)."""
    type_ = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    if pa.types.is_string_view(type_):
        type_ = pa.large_string()
    elif pa.types.is_binary_view(type_):
        type_ = pa.large_binary()
    return field.with_type(type_)


def unify_passthrough(files: Sequence[InputFile], layouts: Sequence[Layout]) -> pa.Schema:
    """One schema for the passthrough columns of every file (see the module docstring)."""
    order: list[str] = []
    for layout in layouts:
        order += [n for n in layout.passthrough.names if n not in order]
    fields_out = []
    for name in order:
        owners = [
            (f.url, _plain(layout.passthrough.field(name)))
            for f, layout in zip(files, layouts, strict=True)
            if name in layout.passthrough.names
        ]
        try:
            unified = pa.unify_schemas(
                [pa.schema([field]) for _, field in owners], promote_options="permissive"
            ).field(name)
        except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
            kinds = {}
            for url, field in owners:
                kinds.setdefault(str(field.type), url)
            listing = "; ".join(f"{t} in {url}" for t, url in kinds.items())
            raise InputError(
                f"passthrough column {name!r} has types that cannot be combined ({listing}); "
                "convert it in the input, or leave it out with --drop-column"
            ) from None
        fields_out.append(unified.with_nullable(True))
    return pa.schema(fields_out)
