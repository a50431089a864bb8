"""Errors that stop a command before work starts (exit code 2)."""

from __future__ import annotations


class UsageError(Exception):
    """Unusable input or configuration: names the offending file, column or key.

    The CLI turns it into exit code 2 with the message, never a traceback.
    """

    exit_code = 2


class InputError(UsageError):
    """An input file is missing, unreadable, not Parquet, or lacks a needed column."""


class ConfigError(UsageError):
    """A configuration key or value is invalid."""


#: Exit code of a command that finished but whose data check failed (too many errors or
#: unusable rows).
DATA_CHECK_FAILED = 3
