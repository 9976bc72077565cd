"""Forecast, dead-letter and changelog writers on a topic, for either Kafka client: they only need a
producer handle that sends (keyed by series key, or with an explicit key and partition) and flushes."""
from __future__ import annotations

from typing import Protocol

from streamseq.forecast_json import encode_forecasts
from streamseq.ports import DeadLetterSink, ForecastSink
from streamseq.records import DeadLetter, ForecastBatch

from .deadletter import bounded_key, dead_letter_json


class TopicProducer(Protocol):
    def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None): ...
    def send_keyed(self, topic: str, records) -> None: ...
    def flush(self) -> None: ...


class TopicForecastSink(ForecastSink):
    """Forecasts as ``streamseq.forecast/v1`` JSON, message key = series key (one key, one partition)."""

    def __init__(self, handle: TopicProducer, topic: str):
        self.handle = handle
        self.topic = topic

    def write(self, batch: ForecastBatch) -> None:
        self.handle.send_keyed(self.topic, encode_forecasts(batch))

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.flush()  # the handle is shared: the worker closes it


class TopicDeadLetterSink(DeadLetterSink):
    """Dead letters as JSON (reason + source position + original payload); message key = original key."""

    def __init__(self, handle: TopicProducer, topic: str, *, max_payload_bytes: int = 262_144):
        self.handle = handle
        self.topic = topic
        self.max_payload_bytes = max_payload_bytes

    def write(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            key = bounded_key(letter.key)
            key = key.encode("utf-8", "surrogatepass") if key is not None else None
            self.handle.send(self.topic, dead_letter_json(letter, self.max_payload_bytes), key=key)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.flush()


class ChangelogWriter:
    """The write side of a changelog topic (per-key state, keyed by series key, written to the changelog
    partition co-partitioned with the key's source partition); each client adds its own ``restore``."""

    def __init__(self, handle: TopicProducer, settings, topic: str, *, restore_timeout_s: float = 300.0,
                 idle_s: float = 20.0, restore_fetch_bytes: int = 16 * 1024 * 1024):
        self.handle = handle
        self.settings = settings
        self.topic = topic
        self.restore_timeout_s = restore_timeout_s
        self.idle_s = idle_s
        self.restore_fetch_bytes = restore_fetch_bytes

    def write(self, key: str, partition: int, value: bytes | None) -> None:
        """Queue the state of ``key`` for changelog ``partition``; None is a tombstone (delete)."""
        self.handle.send(self.topic, value, key=key.encode("utf-8"), partition=int(partition))

    def flush(self) -> None:
        self.handle.flush()
