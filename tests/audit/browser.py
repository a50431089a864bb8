"""Debian's Chromium, headless and offline, driven by Playwright (never ``playwright install``).

:func:`ensure_chromium` installs the ``chromium`` apt package when ``/usr/bin/chromium`` is
missing and the tests run as root (as on CI); :func:`open_browser` launches it with a
fresh profile (``--user-data-dir``), every background network feature off, and Playwright's
offline mode.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> Path:
    """The Chromium executable, installed with apt-get when missing (root only; one test
    process installs it while the others wait)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
        )
    with open(Path(tempfile.gettempdir()) / "curation-tests-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not CHROMIUM.exists():
            _install_chromium()
    return CHROMIUM


def _install_chromium() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


@contextmanager
def open_browser() -> Iterator[object]:
    """A Playwright ``BrowserContext`` of Debian's Chromium in a fresh profile; closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(executable), args=FLAGS, offline=True
        )
        try:
            yield context
        finally:
            context.close()
