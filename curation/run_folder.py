"""The run folder: where each output lives, how a new state is published, the run lock.

```
manifest.json           the committed state: settings, counts, and the files of every table
decisions/ clean/ synthetic/ duplicates/   Parquet shards part-<generation>-NNNNN.parquet
index/                  <generation>.faiss, <generation>.ids.parquet, index.json (names them)
report/                 the audit report
_stage/                 staged tables of the last complete pipeline (stage.json lists them)
_cache/<fingerprint>/   model outputs (cache.json lists the compacted shards; j-*.parquet
                        journal files of interrupted runs)
_lock.json              held by the command writing into the run
```

Publishing is a commit: a command writes its new files under names that carry a fresh
generation id (never overwriting a committed file), then writes ``manifest.json``, which
lists them; that single atomic write switches readers from the previous complete state to
the new one. Afterwards (roll forward) ``index/index.json`` is pointed at the new index and
files of other generations are deleted. A command killed at any point leaves the previous
manifest and its files intact; the next command that takes the lock rolls forward what the
manifest says and deletes what no manifest lists (:meth:`RunFolder.repair`). Readers that
need a consistent snapshot while another command publishes read the files the manifest
lists (:meth:`RunFolder.table_files`); the plain folders hold exactly those files whenever no
command is publishing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from curation.errors import UsageError
from curation.shards import unreadable
from curation.storage import Location, absent
from curation.texts import listing

MANIFEST = "manifest.json"
FINAL_TABLES = ("decisions", "clean", "synthetic", "duplicates")
STAGE_TABLES = ("decisions", "clean", "synthetic", "duplicates", "images")
INDEX = "index"
INDEX_INFO = "index.json"
STAGE = "_stage"
STAGE_LISTING = "stage.json"
CACHE = "_cache"
LOCK = "_lock.json"
#: A lock whose heartbeat is older than this belongs to a command that is gone.
LOCK_STALE_SECONDS = 600.0
LOCK_HEARTBEAT_SECONDS = 60.0


def new_generation() -> str:
    """A fresh generation id: sortable by time, unique."""
    return f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}{uuid.uuid4().hex[:8]}"


class RunLockedError(UsageError):
    """Another command is writing into the run folder."""


@dataclass
class RunFolder:
    """Typed access to the parts of one run folder (local or object storage)."""

    root: Location

    @classmethod
    def at(cls, url: str) -> RunFolder:
        return cls(Location(url))

    @property
    def url(self) -> str:
        return self.root.url

    @property
    def manifest(self) -> Location:
        return self.root / MANIFEST

    def table(self, name: str) -> Location:
        return self.root / name

    @property
    def index(self) -> Location:
        return self.root / INDEX

    @property
    def report(self) -> Location:
        return self.root / "report"

    @property
    def stage(self) -> Location:
        return self.root / STAGE

    def stage_generation(self, generation: str) -> Location:
        return self.stage / generation

    def cache(self, fingerprint: str) -> Location:
        return self.root / CACHE / fingerprint

    def check_may_run_into(self, inputs: list[str]) -> None:
        """Raise :class:`UsageError` unless the folder is new, empty, or a run folder whose
        finished run read no file outside ``inputs`` (file URLs): a run replaces the files of
        its table and index folders, so neither a folder of other files nor the results of
        input this run does not read are ever replaced by mistake. Adding files to a
        finished run's input is allowed."""
        children = [c for c in self.root.children() if not c.name.startswith(".")]
        marks = {MANIFEST, STAGE, CACHE, LOCK}
        if children and not marks & {child.name for child in children}:
            raise UsageError(
                f"--out {self.url} holds other files ({listing(c.name for c in children)}) and "
                f"is not a run folder (no {MANIFEST}, {STAGE}/ or {CACHE}/); give a new or "
                "empty folder"
            )
        finished = self.read_manifest() if MANIFEST in {c.name for c in children} else None
        read = [str(i["path"]) for i in (finished or {}).get("inputs", [])]
        reading = set(inputs)
        dropped = [path for path in read if path not in reading]
        if dropped:
            raise UsageError(
                f"--out {self.url} holds a finished run whose input this run does not read "
                f"({listing(dropped, 2)}); a run would replace its results with those of "
                f"{listing(inputs, 2)}; give a new --out for this input, or delete the folder first"
            )

    def relative(self, location: Location | str) -> str:
        """A path below the run folder, as listings store it."""
        return self.root.relative(Location(location))

    def resolve(self, relative: str) -> Location:
        """The location of a path a listing stores."""
        return self.root / relative

    # --- committed state ---------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any] | None:
        """The committed manifest, None when the run has none yet."""
        if not self.manifest.is_file():
            return None
        data: dict[str, Any] = self.manifest.read_json()
        return data

    def table_files(self, name: str, manifest: dict[str, Any] | None = None) -> list[Location]:
        """The files of a final table in the committed state."""
        manifest = manifest if manifest is not None else self.read_manifest()
        if manifest is None:
            raise UsageError(f"{self.url} is not a finished run folder (no {MANIFEST})")
        files = manifest.get("tables", {}).get(name, {}).get("files")
        if files is None:
            raise UsageError(f"{self.url}: the manifest lists no table {name!r}")
        return [self.resolve(f) for f in files]

    def read_stage_listing(self) -> dict[str, Any]:
        """The listing of the last complete pipeline's staged tables."""
        listing = self.stage / STAGE_LISTING
        if not listing.is_file():
            raise UsageError(
                f"{self.url} has no complete staged tables ({STAGE}/{STAGE_LISTING}); "
                "run `curation run` into it first"
            )
        data: dict[str, Any] = listing.read_json()
        files = [self.resolve(f) for table in data["tables"].values() for f in table]
        if missing := absent(files):
            raise UsageError(
                f"{self.url}: the staged tables are incomplete: {STAGE}/{STAGE_LISTING} lists "
                f"{self.relative(missing[0])}, which is missing ({len(missing)} of "
                f"{len(files)} files missing)"
            )
        return data

    def check_staged(self, listing: dict[str, Any]) -> None:
        """Refuse staged tables of ``listing`` with a file that does not read whole (called
        after a failed read: every page of every file is read)."""
        for table in listing["tables"].values():
            for name in table:
                file = self.resolve(name)
                if problem := unreadable(file):
                    raise UsageError(
                        f"{self.url}: the staged tables are damaged: {self.relative(file)} "
                        f"{problem}; run `curation run` into it again to stage them anew"
                    )

    def stage_files(self, table: str, listing: dict[str, Any] | None = None) -> list[str]:
        """URLs of one staged table's shards."""
        listing = listing if listing is not None else self.read_stage_listing()
        return [self.resolve(f).url for f in listing["tables"].get(table, [])]

    # --- publishing ----------------------------------------------------------------------

    def publish(self, manifest: dict[str, Any]) -> None:
        """Commit ``manifest`` (whose ``tables`` and ``index`` name new files), then roll forward."""
        self.manifest.write_json(manifest)
        self.roll_forward(manifest)

    def roll_forward(self, manifest: dict[str, Any]) -> None:
        """Point ``index/index.json`` at the manifest's index and delete files of the final
        tables and the index that the manifest does not list."""
        index = manifest.get("index")
        if index:
            pointer = self.index / INDEX_INFO
            if not pointer.is_file() or pointer.read_json() != index:
                pointer.write_json(index)
        for name in FINAL_TABLES:
            listed = {
                self.resolve(f).url
                for f in manifest.get("tables", {}).get(name, {}).get("files", [])
            }
            for item in self.table(name).files(".parquet", hidden=True):
                if item.url not in listed:
                    item.remove()
        if index:
            listed = {(self.index / f).url for f in index.get("files", {}).values()}
            for item in self.index.children():
                if item.name != INDEX_INFO and item.url not in listed:
                    item.remove()

    def repair(self) -> list[str]:
        """Finish what a killed command left (call with the lock held); returns what it did."""
        done: list[str] = []
        manifest = self.read_manifest()
        if manifest is not None:
            self.roll_forward(manifest)
        listing_file = self.stage / STAGE_LISTING
        current = listing_file.read_json().get("generation") if listing_file.is_file() else None
        for child in self.stage.children():
            if child.name != STAGE_LISTING and child.name != current:
                child.remove()
                done.append(f"removed incomplete staged tables {child.url}")
        return done

    # --- the lock ------------------------------------------------------------------------

    def lock(self, command: str) -> RunLock:
        return RunLock(self.root / LOCK, command)

    def release_lock(self, token: str) -> None:
        """Release the lock held with ``token`` (by the detached job that holds it)."""
        release_detached(self.root / LOCK, token)


class RunLock:
    """Held by the one command writing into a run folder; a second one is refused.

    The lock file records its owner and a heartbeat refreshed every minute by a background
    thread. A lock whose owner is a process of this machine that no longer exists, or whose
    heartbeat stopped more than :data:`LOCK_STALE_SECONDS` ago, belongs to a killed command
    and is taken over.

    A *detached* lock is handed to a job that outlives the command which submitted it
    (``curation run --detach``): it has no heartbeat, the job releases it when it commits
    (:func:`release_detached`), and only a person can clear it if the job dies.
    """

    def __init__(self, location: Location, command: str) -> None:
        self.location = location
        self.command = command
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, detached: bool = False) -> dict[str, Any]:
        return {
            "token": self.token,
            "command": self.command,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "detached": detached,
        }

    def acquire(self, detached: bool = False) -> list[str]:
        """Take the lock (returns notes, e.g. a stale lock taken over) or raise RunLockedError.

        ``detached``: the lock is for a job that releases it itself (no heartbeat here)."""
        import json

        notes: list[str] = []
        for _ in range(2):
            if self.location.create_exclusive(json.dumps(self._record(detached)).encode()):
                if not detached:
                    self._start_heartbeat()
                return notes
            holder = self._read_holder()
            if holder is None:
                continue
            if holder.get("detached"):
                raise RunLockedError(
                    f"{self.location.parent.url} is in use by a detached job "
                    f"({holder.get('command')!r}, submitted {_ago(holder)} from "
                    f"{holder.get('host')}); wait for it to finish, or delete "
                    f"{self.location.url} if the job failed or was cancelled"
                )
            if not _is_stale(holder):
                raise RunLockedError(
                    f"{self.location.parent.url} is in use by another command "
                    f"({holder.get('command')!r}, pid {holder.get('pid')} on {holder.get('host')}, "
                    f"last seen {_ago(holder)}); "
                    f"wait for it to finish, or delete {self.location.url} if it was killed"
                )
            notes.append(
                f"took over the lock of a killed command ({holder.get('command')!r}, "
                f"pid {holder.get('pid')} on {holder.get('host')})"
            )
            self.location.remove()
        raise RunLockedError(f"could not take the lock {self.location.url}; try again")

    def _read_holder(self) -> dict[str, Any] | None:
        try:
            holder: dict[str, Any] = self.location.read_json()
            return holder
        except (FileNotFoundError, ValueError):
            return None

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(LOCK_HEARTBEAT_SECONDS):
                self.location.write_json(self._record())

        self._thread = threading.Thread(target=beat, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        release_detached(self.location, self.token)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def release_detached(location: Location, token: str) -> None:
    """Remove the lock file at ``location`` if ``token`` still holds it."""
    try:
        holder = location.read_json()
    except (FileNotFoundError, ValueError):
        return
    if holder.get("token") == token:
        location.remove()


def _ago(holder: dict[str, Any]) -> str:
    return f"{time.time() - float(holder.get('heartbeat', 0)):.0f} s ago"


def _is_stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            pass
    return time.time() - float(holder.get("heartbeat", 0)) > LOCK_STALE_SECONDS
