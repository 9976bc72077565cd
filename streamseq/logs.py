"""Structured logging: JSON lines when stderr is not a terminal, plain text when it is.

Secrets never reach a log line: every record is passed through a redactor
that replaces the configured secret values (e.g. the SASL password).
"""
from __future__ import annotations

import json
import logging
import sys
import time

_SECRETS: set[str] = set()
_EXTRA_FIELDS = ("key", "topic", "partition", "offset", "model", "version", "keys", "duration_s", "records")


def add_secret(value: str | None) -> None:
    if value and len(value) >= 3:
        _SECRETS.add(str(value))


def redact(text: str) -> str:
    for s in _SECRETS:
        if s in text:
            text = text.replace(s, "***")
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for f in _EXTRA_FIELDS:
            if hasattr(record, f):
                out[f] = getattr(record, f)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = " ".join(f"{f}={getattr(record, f)}" for f in _EXTRA_FIELDS if hasattr(record, f))
        return redact(base + (" " + extra if extra else ""))


def setup(level: str = "INFO", fmt: str = "auto", stream=None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not getattr(stream, "isatty", lambda: False)())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # kafka-python logs every failed connection attempt; the worker and the tools say what matters in one
    # line (an unreachable broker, an outage ridden out), so its own lines show only with -v.
    logging.getLogger("kafka").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)
