"""Screenshot of a run's report in the test suite's headless Chromium, for the README.

Usage: .venv/bin/python docs/screenshot.py RUN_DIR [docs/report.png]

Writes RUN_DIR/report.html with ``curation report`` and saves the top of the page (1280
pixels wide) as a PNG. The README's picture is of the demo run (``make demo``) after
``curation dedup demo-out/run --near-threshold 0.9``, which removes most images as near
duplicates and so shows a warning.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "audit"))

from browser import open_browser  # noqa: E402

from curation.audit.report import write_report  # noqa: E402

WIDTH, HEIGHT = 1280, 1700


def main() -> None:
    run = sys.argv[1]
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "report.png"
    report = Path(write_report(run)).resolve()
    with open_browser() as browser:
        page = browser.new_page()
        page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
        page.goto(report.as_uri())
        page.screenshot(path=str(target), clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
    print(target)


if __name__ == "__main__":
    main()
