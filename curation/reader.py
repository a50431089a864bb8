"""Reading input Parquet: resolving paths, recognising the layout, streaming pairs.

Recognised without configuration:

- ``img2dataset``: columns ``key``, ``caption``, ``status`` (+ ``error_message``) and the
  image bytes in ``jpg`` (or ``png``/``webp``, named after img2dataset's encode_format);
- ``hf_datasets``: a Hugging Face ``datasets`` Image column, a struct of ``bytes`` and
  ``path`` (a column named ``image`` is preferred), and a text column;
- ``mapped``: any other layout, with a binary image column and a text column found by name
  or given explicitly.

Explicit column names always override detection. Reading goes row group by row group and
projects only the needed columns, so memory follows the row-group size, not the input size.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from glob import glob
from pathlib import PurePath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from curation.errors import InputError
from curation.filesystems import filesystem_for, is_url, join
from curation.records import Pair

IMG2DATASET_IMAGE_COLUMNS = ("jpg", "png", "webp")
IMAGE_COLUMNS = ("image", "img", "image_bytes", "jpg", "jpeg", "png", "webp", "bytes")
TEXT_COLUMNS = ("text", "caption", "alt", "alt_text", "alttext", "TEXT", "CAPTION", "ALT", "title")
SUCCESS = "success"


@dataclass(frozen=True)
class Layout:
    """Which columns of the input hold the image, the text, the key and the passthrough."""

    kind: str  # img2dataset | hf_datasets | mapped
    image_column: str
    text_column: str
    key_column: str | None
    status_column: str | None
    error_column: str | None
    image_is_struct: bool  # datasets Image struct {bytes, path}
    passthrough: tuple[str, ...]  # every other column, carried to the outputs

    @property
    def columns(self) -> list[str]:
        """The columns a reader has to project."""
        named = [self.image_column, self.text_column]
        named += [c for c in (self.key_column, self.status_column, self.error_column) if c]
        return named + list(self.passthrough)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["passthrough"] = list(self.passthrough)
        return data


def resolve_inputs(spec: str | Sequence[str]) -> list[str]:
    """Expand a file, a glob or a folder (every ``*.parquet`` below it) into sorted paths.

    Accepts local paths and URLs that ``pyarrow.fs`` can open (``gs://``, ``s3://``, ...);
    a sequence is expanded entry by entry. Raises :class:`InputError` naming the entry that
    matches nothing.
    """
    entries = [spec] if isinstance(spec, str) else list(spec)
    if not entries:
        raise InputError("no input given")
    files: list[str] = []
    for entry in entries:
        found = _expand_url(entry) if is_url(entry) else _expand_local(entry)
        if not found:
            raise InputError(f"input {entry!r}: no such file, or no *.parquet file matches")
        files.extend(f for f in found if f not in files)
    return files


def _expand_local(entry: str) -> list[str]:
    if os.path.isfile(entry):
        return [entry]
    if os.path.isdir(entry):
        pattern = os.path.join(entry, "**", "*.parquet")
        return sorted(p for p in glob(pattern, recursive=True) if os.path.isfile(p))
    if glob_magic(entry):
        return sorted(p for p in glob(entry, recursive=True) if os.path.isfile(p))
    return []


def _expand_url(entry: str) -> list[str]:
    scheme, rest = entry.split("://", 1)
    prefix = scheme + "://"
    if not glob_magic(rest):
        filesystem, inner = filesystem_for(entry)
        info = filesystem.get_file_info(inner)
        if info.type == pafs.FileType.File:
            return [entry]
        if info.type != pafs.FileType.Directory:
            return []
        listing = filesystem.get_file_info(pafs.FileSelector(inner, recursive=True))
        return sorted(
            prefix + i.path
            for i in listing
            if i.type == pafs.FileType.File and i.path.endswith(".parquet")
        )
    base = _glob_base(rest)
    filesystem, inner_base = filesystem_for(prefix + base)
    pattern = inner_base.rstrip("/") + "/" + rest[len(base) :].lstrip("/")
    try:
        listing = filesystem.get_file_info(pafs.FileSelector(inner_base, recursive=True))
    except (FileNotFoundError, OSError):
        return []
    return sorted(
        prefix + i.path
        for i in listing
        if i.type == pafs.FileType.File and _glob_match(i.path, pattern)
    )


def _glob_match(path: str, pattern: str) -> bool:
    """Shell-style match where ``*`` stays within one folder and ``**/`` spans folders."""
    return re.fullmatch(_glob_regex(pattern), path) is not None


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            close = pattern.index("]", i + 2)
            body = pattern[i + 1 : close]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def glob_magic(path: str) -> bool:
    """True when ``path`` contains glob wildcards."""
    return any(ch in path for ch in "*?[")


def _glob_base(pattern: str) -> str:
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if glob_magic(part):
            return "/".join(parts[:i]) or "/"
    return posixpath.dirname(pattern)


def open_parquet(path: str) -> pq.ParquetFile:
    """Open a Parquet file (footer only); :class:`InputError` when missing or not Parquet."""
    filesystem, inner = filesystem_for(path)
    try:
        source = filesystem.open_input_file(inner)
    except (FileNotFoundError, OSError) as err:
        raise InputError(f"{path}: cannot open ({err})") from None
    try:
        return pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a Parquet file ({err})") from None


def _is_image_struct(type_: pa.DataType) -> bool:
    if not pa.types.is_struct(type_):
        return False
    names = {type_.field(i).name for i in range(type_.num_fields)}
    return {"bytes", "path"} <= names and _is_binary(type_.field("bytes").type)


def _is_binary(type_: pa.DataType) -> bool:
    return (
        pa.types.is_binary(type_)
        or pa.types.is_large_binary(type_)
        or pa.types.is_fixed_size_binary(type_)
        or pa.types.is_binary_view(type_)
    )


def _is_text(type_: pa.DataType) -> bool:
    return (
        pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_string_view(type_)
        or pa.types.is_null(type_)
    )


def detect_layout(
    path: str,
    image_column: str | None = None,
    text_column: str | None = None,
    key_column: str | None = None,
) -> Layout:
    """Recognise the layout of one Parquet file from its schema alone.

    Raises :class:`InputError` naming the file and the column (and listing the available
    columns) when a needed column is missing or has the wrong type.
    """
    schema = open_parquet(path).schema_arrow
    names = list(schema.names)
    types = {f.name: f.type for f in schema}

    def missing(role: str, column: str | None, option: str) -> InputError:
        what = f"{role} column {column!r} not found" if column else f"no {role} column recognised"
        return InputError(
            f"{path}: {what}; available columns: {', '.join(names)} (choose one with {option})"
        )

    def check_image_type(column: str) -> None:
        if not (_is_image_struct(types[column]) or _is_binary(types[column])):
            raise InputError(
                f"{path}: image column {column!r} has type {types[column]}, expected binary "
                "bytes or a datasets Image struct {bytes, path}"
            )

    for given, option in (
        (image_column, "--image-column"),
        (text_column, "--text-column"),
        (key_column, "--key-column"),
    ):
        if given is not None and given not in types:
            role = option[2:].split("-")[0]
            raise missing(role, given, option)

    is_img2dataset = {"key", "status", "caption"} <= set(names) and any(
        c in types and _is_binary(types[c]) for c in IMG2DATASET_IMAGE_COLUMNS
    )
    structs = [n for n in names if _is_image_struct(types[n])]
    if is_img2dataset:
        kind = "img2dataset"
        image = image_column or next(
            c for c in IMG2DATASET_IMAGE_COLUMNS if c in types and _is_binary(types[c])
        )
        text = text_column or "caption"
        key = key_column or "key"
        status, error = "status", ("error_message" if "error_message" in types else None)
    else:
        kind = "hf_datasets" if (image_column is None and structs) else "mapped"
        if image_column is not None:
            image = image_column
        elif structs:
            image = "image" if "image" in structs else structs[0]
        else:
            image = next((c for c in IMAGE_COLUMNS if c in types and _is_binary(types[c])), None)
            if image is None:
                binaries = [n for n in names if _is_binary(types[n])]
                if len(binaries) != 1:
                    raise missing("image", None, "--image-column")
                image = binaries[0]
        check_image_type(image)
        if _is_image_struct(types[image]):
            kind = "hf_datasets"
        text = text_column or next((c for c in TEXT_COLUMNS if c in types and c != image), None)
        if text is None:
            raise missing("text", None, "--text-column")
        key = key_column or ("key" if "key" in types and _is_text(types["key"]) else None)
        status = error = None

    check_image_type(image)
    if not _is_text(types[text]):
        raise InputError(f"{path}: text column {text!r} has type {types[text]}, expected string")
    used = {image, text, key, status, error}
    passthrough = tuple(n for n in names if n not in used)
    return Layout(
        kind=kind,
        image_column=image,
        text_column=text,
        key_column=key,
        status_column=status,
        error_column=error,
        image_is_struct=_is_image_struct(types[image]),
        passthrough=passthrough,
    )


def check_inputs(
    files: Sequence[str],
    image_column: str | None = None,
    text_column: str | None = None,
    key_column: str | None = None,
) -> Layout:
    """Validate every file's schema before work starts; return the layout they share.

    Raises :class:`InputError` when a file is unusable, when two files disagree on the
    layout, or when keys derived from file names would collide (no key column and two
    files with the same name in different folders).
    """
    if not files:
        raise InputError("no input files")
    first = detect_layout(files[0], image_column, text_column, key_column)
    for path in files[1:]:
        layout = detect_layout(path, image_column, text_column, key_column)
        if layout != first:
            diffs = [
                f"{f.name}: {getattr(first, f.name)!r} vs {getattr(layout, f.name)!r}"
                for f in fields(Layout)
                if getattr(first, f.name) != getattr(layout, f.name)
            ]
            raise InputError(
                f"{path}: layout differs from {files[0]} ({'; '.join(diffs)}); "
                "all input files must have the same columns"
            )
    if first.key_column is None:
        seen: dict[str, str] = {}
        for path in files:
            stem = file_stem(path)
            if stem in seen:
                raise InputError(
                    f"{path} and {seen[stem]} share the file name {stem!r}, so keys derived "
                    "from file name and row would collide; pass --key-column"
                )
            seen[stem] = path
    return first


def file_stem(path: str) -> str:
    """A file's name without folders and without the ``.parquet`` extension."""
    name = PurePath(path.split("://", 1)[-1]).name
    return name[: -len(".parquet")] if name.endswith(".parquet") else PurePath(name).stem


def make_key(source_file: str, row: int) -> str:
    """Stable key from the file name and the row within the file: ``part-00000_000123``."""
    return f"{file_stem(source_file)}_{row:06d}"


def row_groups(path: str) -> int:
    """Number of row groups (the unit of parallel reading)."""
    return open_parquet(path).num_row_groups


def read_row_group(path: str, layout: Layout, index: int) -> list[Pair]:
    """The pairs of one row group, rows numbered within the whole file."""
    parquet = open_parquet(path)
    return list(_row_group_pairs(parquet, path, layout, index, _first_row(parquet, index)))


def iter_pairs(path: str, layout: Layout) -> Iterator[Pair]:
    """Every pair of a file, reading one row group at a time."""
    parquet = open_parquet(path)
    first_row = 0
    for index in range(parquet.num_row_groups):
        yield from _row_group_pairs(parquet, path, layout, index, first_row)
        first_row += parquet.metadata.row_group(index).num_rows


def _first_row(parquet: pq.ParquetFile, index: int) -> int:
    return sum(parquet.metadata.row_group(i).num_rows for i in range(index))


def _row_group_pairs(
    parquet: pq.ParquetFile, path: str, layout: Layout, index: int, first_row: int
) -> Iterator[Pair]:
    table = parquet.read_row_group(index, columns=layout.columns)
    images = _image_values(table.column(layout.image_column), layout, path)
    texts = table.column(layout.text_column).to_pylist()
    n = table.num_rows
    keys = table.column(layout.key_column).to_pylist() if layout.key_column else [None] * n
    statuses = table.column(layout.status_column).to_pylist() if layout.status_column else None
    errors = table.column(layout.error_column).to_pylist() if layout.error_column else None
    extras = {name: table.column(name).to_pylist() for name in layout.passthrough}
    del table
    for i in range(n):
        row = first_row + i
        key = keys[i]
        yield Pair(
            key=str(key) if key is not None and key != "" else make_key(path, row),
            source_file=path,
            source_row=row,
            image=images[i],
            text=texts[i],
            status=statuses[i] if statuses is not None else None,
            error=errors[i] if errors is not None else None,
            extra={name: values[i] for name, values in extras.items()},
        )


def _image_values(column: pa.ChunkedArray, layout: Layout, path: str) -> list[bytes | None]:
    if not layout.image_is_struct:
        return column.to_pylist()
    values = column.combine_chunks()
    data = values.field("bytes").to_pylist()
    paths = values.field("path").to_pylist()
    valid = values.is_valid().to_pylist()
    folder = _parent(path)
    out: list[bytes | None] = []
    for ok, blob, relative in zip(valid, data, paths, strict=True):
        if not ok:
            out.append(None)
        elif blob is not None or not relative:
            out.append(blob)
        else:
            out.append(_read_side_file(folder, relative))
    return out


def _parent(path: str) -> str:
    return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def _read_side_file(folder: str, relative: str) -> bytes | None:
    """Bytes of an image stored beside the Parquet file, or None when it is not there."""
    if is_url(relative) or os.path.isabs(relative):
        return None
    filesystem, inner = filesystem_for(join(folder, relative))
    try:
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    except (FileNotFoundError, OSError):
        return None
