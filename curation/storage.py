"""One storage layer for every read and write: local paths, ``file://``, ``s3://``, ``gs://``.

Everything the project reads or writes (inputs, staged tables, the model-output cache, final
tables, the index, the manifest, the report) goes through :class:`Location` here, which wraps
an `fsspec <https://filesystem-spec.readthedocs.io>`_ filesystem. fsspec is the one client
for each store: ``s3fs`` (botocore: the standard AWS variables, ``AWS_ENDPOINT_URL``
included), ``gcsfs`` (Google's default credentials, ``STORAGE_EMULATOR_HOST``), the local
disk. pyarrow reads and writes Parquet through fsspec file objects, and the Beam pipeline
writes through the same layer, so no second client (pyarrow's native S3, Beam's
FileSystems) has to be configured separately.

Writes are atomic per file: locally a temporary name and ``os.replace``; on object stores
an object appears whole when its upload completes. Listings are never cached, so what one
process writes another sees at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec

from curation.errors import InputError

#: Options per protocol: no directory-listing caches (several processes share a folder).
_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"use_listings_cache": False},
    "gs": {"use_listings_cache": False},
    "gcs": {"use_listings_cache": False},
}
_GLOB_MAGIC = "*?["


def is_url(path: str) -> bool:
    """True for ``scheme://...`` paths (remote or ``file://``)."""
    return "://" in path


def has_glob(path: str) -> bool:
    """True when ``path`` contains glob wildcards."""
    return any(ch in path for ch in _GLOB_MAGIC)


def is_hidden(relative: str) -> bool:
    """A relative path with a folder or file name starting with ``.`` or ``_``."""
    return any(part[:1] in "._" for part in relative.split("/"))


def normalise(path: str) -> str:
    """A canonical spelling: local paths absolute (``file://`` stripped), URLs without a
    trailing slash."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    if not is_url(path):
        return os.path.abspath(os.path.expanduser(path))
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rstrip('/')}" if rest.rstrip("/") else path


class Location:
    """A file or folder on local disk or object storage.

    ``Location("s3://bucket/runs/r1") / "decisions"`` names a child; nothing is created
    until it is written. ``url`` is the canonical spelling (local paths absolute).
    """

    def __init__(self, url: str | Location) -> None:
        if isinstance(url, Location):
            url = url.url
        self.url = normalise(str(url))
        protocol = self.url.split("://", 1)[0] if is_url(self.url) else "file"
        self.is_local = protocol == "file"
        if self.is_local:  # a local name is a path as it is (fsspec reads "::" as a chain)
            self.fs, self.path = fsspec.filesystem("file"), self.url
        else:
            self.fs, self.path = fsspec.core.url_to_fs(self.url, **_OPTIONS.get(protocol, {}))

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, name: str) -> Location:
        return Location(self._join(name))

    def _join(self, name: str) -> str:
        if self.is_local:
            return os.path.join(self.url, name)
        return posixpath.join(self.url, name)

    @property
    def name(self) -> str:
        """The last component of the path."""
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        """The folder holding this location."""
        if self.is_local:
            return Location(os.path.dirname(self.url))
        scheme, rest = self.url.split("://", 1)
        return Location(f"{scheme}://{posixpath.dirname(rest)}")

    def url_of(self, path: str) -> str:
        """The URL of a path as this location's filesystem spells it (e.g. from a listing)."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def join_relative(self, path: str) -> Location:
        """The location of ``path`` relative to this folder, ``..`` resolved (a URL or an
        absolute local path is taken as it is)."""
        return Location(self.relative_url(path))

    def relative_url(self, path: str) -> str:
        """The URL :meth:`join_relative` names, found from the text alone: no filesystem is
        built for it, so a URL of another store or host is never contacted."""
        if is_url(path):
            return normalise(path)
        if self.is_local:
            return normalise(os.path.join(self.path, path))
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"

    def inside(self, other: Location) -> bool:
        """True when ``other`` lies in this folder, symbolic links resolved on local disk."""
        if self.is_local and other.is_local:
            try:
                folder, target = os.path.realpath(self.path), os.path.realpath(other.path)
            except (OSError, ValueError):  # a name no path can hold (a NUL byte)
                return False
            return target == folder or target.startswith(folder.rstrip("/") + "/")
        return self.contains(other) and "/../" not in other.url + "/"

    def is_regular_file(self) -> bool:
        """A file holding data (not a device, pipe or folder); on object stores, any object."""
        if not self.is_local:
            return self.is_file()
        try:
            return stat.S_ISREG(os.stat(self.path).st_mode)
        except OSError:
            return False

    def contains(self, other: Location) -> bool:
        """True when ``other`` is this location or lies below it."""
        return self.contains_url(other.url)

    def contains_url(self, url: str) -> bool:
        """:meth:`contains` for a canonical URL (:func:`normalise`) not yet a location."""
        return url == self.url or url.startswith(self.url.rstrip("/") + "/")

    def relative(self, other: Location) -> str:
        """``other``'s path below this folder (``other`` must lie below it)."""
        if not self.contains(other):
            raise ValueError(f"{other} is not inside {self}")
        return other.url[len(self.url) :].lstrip("/")

    # --- what is there -------------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def size(self) -> int | None:
        """Size in bytes of a file, None when it is not a file."""
        try:
            info = self.fs.info(self.path)
        except (FileNotFoundError, OSError):
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def files(self, suffix: str = "", *, hidden: bool = False) -> list[Location]:
        """Files holding data below this folder (recursively), sorted; names in folders
        starting with ``.`` or ``_`` are left out unless ``hidden``, and so are pipes,
        sockets and devices."""
        if not self.is_dir():
            return []
        found = []
        for path, info in sorted(self.fs.find(self.path, detail=True).items()):
            relative = path[len(self.path.rstrip("/")) + 1 :]
            if not hidden and is_hidden(relative) or info.get("type") != "file":
                continue
            if path.endswith(suffix):
                found.append(Location(self.url_of(path)))
        return found

    def children(self) -> list[Location]:
        """Direct children (files and folders), sorted; empty when not a folder."""
        if not self.is_dir():
            return []
        return [
            Location(self.url_of(p))
            for p in sorted(self.fs.ls(self.path, detail=False))
            if p.rstrip("/") != self.path.rstrip("/")
        ]

    def glob(self, pattern: str) -> list[Location]:
        """Files matching a glob pattern relative to this folder (``**`` spans folders)."""
        base = self.path.rstrip("/")
        matches = self.fs.glob(f"{base}/{pattern}" if pattern else base)
        return [Location(self.url_of(p)) for p in sorted(matches) if self.fs.isfile(p)]

    # --- reading -----------------------------------------------------------------------

    @contextmanager
    def open(self, mode: str = "rb") -> Iterator[IO[Any]]:
        """A file object of this file (``rb`` or ``wb``; writes are not atomic: see
        :meth:`write_with`)."""
        with self.fs.open(self.path, mode) as handle:
            yield handle

    def open_file(self) -> IO[Any]:
        """A binary file object to read, which the caller closes (for long-lived readers)."""
        return self.fs.open(self.path, "rb")

    def read_bytes(self, limit: int | None = None) -> bytes:
        """The file's bytes; with ``limit``, at most ``limit + 1`` bytes are read, so callers
        can tell a file over the limit without reading it all."""
        with self.open("rb") as handle:
            return handle.read() if limit is None else handle.read(limit + 1)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def local_path(self) -> str:
        """A local path holding this file, for libraries that only open local files (FAISS
        memory-maps them). Object-store files are copied once per machine into the
        temporary folder, named by URL and size."""
        if self.is_local:
            return self.path
        target = _local_copy_name(f"{self.url}:{self.size()}", self.name)
        if not os.path.exists(target):
            partial = f"{target}.{os.getpid()}.tmp"
            self._copy_to(partial)
            os.replace(partial, target)
        return target

    def local_folder(self) -> str:
        """A local folder holding this folder's files, for libraries that only read local
        folders (transformers' ``from_pretrained``). An object-store folder is copied once
        per machine into the temporary folder, named by URL and its files' names and sizes."""
        if self.is_local:
            return self.path
        base = self.path.rstrip("/")
        found = sorted(self.fs.find(base, detail=True).items())
        listing = "\n".join(f"{path[len(base) + 1 :]}:{info['size']}" for path, info in found)
        target = _local_copy_name(f"{self.url}\n{listing}", self.name)
        if os.path.isdir(target):
            return target
        partial = tempfile.mkdtemp(prefix=os.path.basename(target) + ".", suffix=".tmp")
        try:
            for path, _ in found:
                local = os.path.join(partial, *path[len(base) + 1 :].split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                Location(self.url_of(path))._copy_to(local)
            os.replace(partial, target)
        except OSError:
            if not os.path.isdir(target):  # not a copy by another process that won the race
                raise
        finally:
            if os.path.isdir(partial):
                shutil.rmtree(partial)
        return target

    def _copy_to(self, local: str) -> None:
        with self.open("rb") as source, open(local, "wb") as sink:
            while chunk := source.read(1 << 24):
                sink.write(chunk)

    def read_json(self) -> Any:
        return json.loads(self.read_text())

    # --- writing -----------------------------------------------------------------------

    def write_with(self, write: Callable[[IO[Any]], None]) -> None:
        """Write the file atomically through ``write(handle)``: readers see the old content
        or the new, never part of it."""
        if not self.is_local:
            self.fs.makedirs(self.parent.path, exist_ok=True)
            with self.fs.open(self.path, "wb") as handle:
                write(handle)
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        temporary = os.path.join(
            os.path.dirname(self.path), f".{os.path.basename(self.path)}.{uuid.uuid4().hex}.tmp"
        )
        try:
            with open(temporary, "wb") as handle:
                write(handle)
            os.replace(temporary, self.path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    @contextmanager
    def writing_folder(self) -> Iterator[str]:
        """A local folder for libraries that only write local folders (``save_pretrained``):
        this folder itself when it is local, else a temporary one whose files are copied
        here, each atomically, when the block ends without an error."""
        if self.is_local:
            os.makedirs(self.path, exist_ok=True)
            yield self.path
            return
        with tempfile.TemporaryDirectory(prefix="curation-") as local:
            yield local
            for root, _, names in os.walk(local):
                for name in sorted(names):
                    path = os.path.join(root, name)
                    target = self.join_relative(os.path.relpath(path, local).replace(os.sep, "/"))
                    with open(path, "rb") as source:
                        target.write_with(lambda handle, s=source: shutil.copyfileobj(s, handle))

    def write_bytes(self, data: bytes) -> None:
        self.write_with(lambda handle: handle.write(data))

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, data: Any) -> None:
        self.write_text(json.dumps(data, indent=2, default=str) + "\n")

    def create_exclusive(self, data: bytes) -> bool:
        """Create the file only if it does not exist; False when it already exists.

        Locally ``O_EXCL``; on object stores fsspec's exclusive ``create`` mode (S3's
        ``If-None-Match: *``, GCS's ``ifGenerationMatch=0``).
        """
        if self.is_local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as err:
            if "precondition" in str(err).lower() or "412" in str(err):
                return False
            raise
        return True

    def remove(self) -> None:
        """Delete this file or folder (recursively); nothing when it does not exist."""
        if not self.exists():
            return
        if self.is_dir():
            self.fs.rm(self.path, recursive=True)
        else:
            self.fs.rm_file(self.path)


#: Errors of the object-store clients that mean "no usable credentials" (botocore, google-auth).
_CREDENTIAL_ERRORS = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError", "RefreshError"}
)


def credentials_problem(error: BaseException) -> str | None:
    """A one-line explanation when ``error`` (or what caused it) is an object store's
    client finding no usable credentials; None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ in _CREDENTIAL_ERRORS:
            message = " ".join(str(current).split())
            return (
                f"object storage refused the credentials ({message}); set the AWS variables "
                "for s3:// or Google's default credentials for gs://"
            )
        current = current.__cause__ or current.__context__
    return None


def absent(files: list[Location]) -> list[Location]:
    """Those of ``files`` that are not there, in order, listing each folder once."""
    present: dict[Location, set[Location]] = {}
    for folder in dict.fromkeys(f.parent for f in files):
        present[folder] = set(folder.children())
    return [f for f in files if f not in present[f.parent]]


def _local_copy_name(identity: str, name: str) -> str:
    """Where the local copy of an object-store file or folder with ``identity`` lives."""
    tag = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"curation-{tag}-{name}")


def check_writable_folder(location: Location, what: str) -> None:
    """Raise :class:`InputError` when ``location`` cannot be a folder to write in: it is a
    file, lies under a file, or cannot be written."""
    if not location.is_local:
        bucket = location.path.split("/", 1)[0]
        if not location.fs.exists(bucket):
            raise InputError(
                f"{what} {location.url!r}: bucket {bucket!r} does not exist (a misspelt name "
                "would otherwise create a new bucket); create it first"
            )
    probe = location
    while True:
        if probe.is_file():
            raise InputError(f"{what} {location.url!r} is not a folder: {probe.url!r} is a file")
        parent = probe.parent
        if parent == probe or probe.exists():
            break
        probe = parent
    test = location / f"._write_test_{uuid.uuid4().hex}"
    try:
        test.write_bytes(b"")
        test.remove()
    except (PermissionError, OSError) as err:
        raise InputError(f"{what} {location.url!r} cannot be written: {err}") from None
