"""User-facing errors: one clear line saying what is wrong and how to fix it.

The CLIs catch :class:`GossipError` and print its message without a traceback. Anything else
that escapes is a bug.
"""

from __future__ import annotations


class GossipError(Exception):
    """An error a user can cause and fix (bad option, missing dataset, bad file)."""


class ConfigError(GossipError):
    """An option or configuration value is invalid."""


class DatasetNotFoundError(GossipError):
    """A dataset's files are not where they were looked for."""
