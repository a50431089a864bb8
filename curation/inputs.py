"""Resolving what the user named as input into Parquet files, each with its key prefix.

An entry is a file, a folder (every ``*.parquet`` below it) or a glob (``*`` within a
folder, ``**`` across folders), on local disk or object storage. Below a folder or a glob,
folders and files whose names start with ``.`` or ``_`` are left out, as pyarrow and Hugging
Face ``datasets`` do (a run folder's ``_cache`` and ``_stage`` are never input). An entry that
exists is taken as it is, so a folder whose name holds glob characters (``data[1]``) works.

Rows without a key column are keyed ``<prefix>_<row>``, where the prefix is the file's path
below the entry's root without ``.parquet``: a file's own name for a file entry, the path
below the folder for a folder (``train/0000`` for Hugging Face's converted
``default/train/0000.parquet`` given the ``default`` folder), the path below the glob's
fixed part for a glob.

Folders below the entry's root named ``name=value`` are Hive partitions (Spark, pyarrow's
``write_dataset``, Dask and Hive write them so, leaving the column out of the files): each
gives its file's rows a string column ``name`` with ``value`` (percent-escapes decoded,
``__HIVE_DEFAULT_PARTITION__`` as null), unless the file has a column of that name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from curation.errors import InputError
from curation.storage import Location, has_glob, is_hidden

PARQUET = ".parquet"
#: The value Hive and Spark give a partition folder for a null value.
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_PARTITION = re.compile(r"([^=]+)=(.*)")


@dataclass(frozen=True)
class InputFile:
    """One input Parquet file and the prefix of the keys derived for its rows."""

    location: Location
    key_prefix: str

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def partitions(self) -> dict[str, str | None]:
        """The Hive partition values of the folders below the entry's root, by column name
        (the deepest folder wins when a name repeats)."""
        values: dict[str, str | None] = {}
        for folder in self.key_prefix.split("/")[:-1]:
            if match := _PARTITION.fullmatch(folder):
                value = unquote(match[2])
                values[unquote(match[1])] = None if value == HIVE_NULL else value
        return values


def resolve_inputs(
    spec: str | Sequence[str], *, exclude: Location | None = None
) -> list[InputFile]:
    """Expand the input entries into files, in order, without repeats.

    ``exclude`` (the run's own output folder) is never input. Raises :class:`InputError`
    naming an entry that matches nothing, or two files whose derived key prefixes collide.
    """
    entries = [spec] if isinstance(spec, str) else list(spec)
    if not entries:
        raise InputError("no input given")
    files: list[InputFile] = []
    seen: set[str] = set()
    for entry in entries:
        try:
            found = _expand(entry)
        except OSError as err:
            raise InputError(f"input {entry!r}: cannot be listed ({err})") from None
        if exclude is not None:
            kept = [f for f in found if not exclude.contains(f.location)]
            if found and not kept:
                raise InputError(
                    f"input {entry!r}: lies inside the output folder {exclude.url}, whose "
                    "files are never input; write the run elsewhere"
                )
            found = kept
        if not found:
            raise InputError(f"input {entry!r}: no such file, or no *.parquet file matches")
        for item in found:
            _check_name(item.location)
            if item.url not in seen:
                seen.add(item.url)
                files.append(item)
    return files


def _check_name(location: Location) -> None:
    """Raise :class:`InputError` for a file name that is not valid UTF-8 (a Latin-1 name
    from an old system): every output records the name as text."""
    try:
        location.url.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(location.url).decode("utf-8", "backslashreplace")
        raise InputError(
            f"input file {shown}: its name is not valid UTF-8; rename it (e.g. with convmv)"
        ) from None


def check_key_prefixes(files: Sequence[InputFile]) -> None:
    """Raise :class:`InputError` when two files would give the same derived keys."""
    owner: dict[str, str] = {}
    for item in files:
        other = owner.setdefault(item.key_prefix, item.url)
        if other != item.url:
            raise InputError(
                f"{item.url} and {other} both give keys '{item.key_prefix}_<row>'; "
                "pass --key-column, or give their common folder as input"
            )


def _prefix(root: Location, file: Location) -> str:
    relative = root.relative(file) if root.contains(file) and root != file else file.name
    return relative[: -len(PARQUET)] if relative.endswith(PARQUET) else relative


def _expand(entry: str) -> list[InputFile]:
    location = Location(entry)
    if location.is_file():
        return [InputFile(location, _prefix(location.parent, location))]
    if location.is_dir():
        return [InputFile(f, _prefix(location, f)) for f in location.files(PARQUET)]
    if location.exists():
        raise InputError(f"input {entry!r}: not a regular file (a pipe, socket or device)")
    if not has_glob(entry):
        return []
    base = Location(_glob_base(entry))
    pattern = Location(entry).url[len(base.url) :].lstrip("/")
    return [
        InputFile(f, _prefix(base, f))
        for f in base.glob(pattern)
        if not is_hidden(base.relative(f))
    ]


def _glob_base(entry: str) -> str:
    """The longest leading part of a glob without wildcards (a folder)."""
    scheme, sep, rest = entry.partition("://")
    if not sep:
        scheme, rest = "", entry
    parts = rest.split("/")
    fixed: list[str] = []
    for part in parts:
        if has_glob(part):
            break
        fixed.append(part)
    base = "/".join(fixed) or ("/" if rest.startswith("/") else ".")
    return f"{scheme}://{base}" if sep else base
