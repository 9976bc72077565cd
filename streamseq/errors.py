"""One root exception; messages name what is wrong and where."""
from __future__ import annotations


class StreamseqError(Exception):
    """Root of every error streamseq raises on purpose."""


class UsageError(StreamseqError):
    """The command cannot run as asked (a setting, an input, an argument): exit code 2."""


class ConfigError(UsageError):
    """A setting is missing or invalid; the message names the key and what was expected."""

    def __init__(self, key: str, expected: str):
        self.key = key
        self.expected = expected
        super().__init__(f"{key}: expected {expected}")


class InputError(UsageError):
    """An input file or column cannot be used (raised before any work starts)."""


class ArtifactError(StreamseqError):
    """A model artifact is corrupt, truncated, foreign or unsafe; the model in service is kept."""
