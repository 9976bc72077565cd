"""Forecast and dead-letter sinks on a topic, for either Kafka client: they only need a producer
handle that sends (keyed by series key, or with an explicit key) and flushes."""
from __future__ import annotations

from typing import Protocol

from streamseq.forecast_json import encode_forecasts
from streamseq.ports import DeadLetterSink, ForecastSink
from streamseq.records import DeadLetter, ForecastBatch

from .deadletter import bounded_key, dead_letter_json


class TopicProducer(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None: ...
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
