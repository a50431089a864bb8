"""Local paths and remote URLs (gs://, s3://, hdfs://) behind one ``pyarrow.fs`` interface."""

from __future__ import annotations

import os.path
import posixpath

from pyarrow import fs as pafs


def is_url(path: str) -> bool:
    """True for ``scheme://...`` paths (remote or ``file://``)."""
    return "://" in path


def filesystem_for(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``path`` and the path as that filesystem spells it."""
    if is_url(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def join(base: str, name: str) -> str:
    """Join a relative name to a local path or URL."""
    if is_url(base):
        return posixpath.join(base, name)
    return os.path.join(base, name)


def file_size(path: str) -> int | None:
    """Size in bytes, or None when the file does not exist."""
    fs, inner = filesystem_for(path)
    info = fs.get_file_info(inner)
    return info.size if info.type == pafs.FileType.File else None
