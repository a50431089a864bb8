"""The Beam pipeline: transforms, model handlers, runner and the ``curation run`` command."""

import logging


class _QuietOptionalGcp(logging.Filter):
    """Drops Beam's import-time notice that the optional GCP client libraries are absent."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


# Every module of this package imports Beam after this runs.
logging.getLogger().addFilter(_QuietOptionalGcp())
