"""The local runner's worker process: Beam's SDK harness with its start-up chatter left out.

``curation run --workers N`` starts N of these (``python -m pipelines.worker``). They are
Beam's own harness (``apache_beam.runners.worker.sdk_worker_main``); only what reaches the
terminal differs: warnings and errors, without Beam's and FAISS's informational start-up
lines and the optional-GCP notice.
"""

from __future__ import annotations

import logging
import sys

_NOISE = ("apitools not found", "semi_persistent_directory")


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not any(
            part in record.getMessage() for part in _NOISE
        )


def main() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Quiet())
    logging.getLogger().addHandler(handler)
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
