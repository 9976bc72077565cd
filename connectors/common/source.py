"""What both clients' consumer-group sources share: the settings they are built from, checked once,
and the decoder of their messages. Each client's source adds ``build_part`` (its group member)."""
from __future__ import annotations

from streamseq.errors import ConfigError
from streamseq.ports import Source

from .decode import TIME_UNITS, JsonObservationDecoder

PART_NAME = "consumer"


class TopicSource(Source):
    """Keyed JSON observations from ``topics``, read by one consumer-group member."""

    def __init__(self, settings, topics: list[str], *, key_field: str | None, time_field: str,
                 value_fields: list[str], time_unit: str = "ms", max_record_bytes: int = 1_000_000,
                 poll_timeout_ms: int = 100):
        if not settings.group_id:
            raise ConfigError("kafka.group_id", "a consumer group id for the stream workers")
        if not topics:
            raise ConfigError("kafka.topics", "at least one topic")
        if time_unit not in TIME_UNITS:
            raise ConfigError("time_unit", f"one of {sorted(TIME_UNITS)}, got {time_unit!r}")
        if not value_fields:
            raise ConfigError("value_fields", "at least one numeric field")
        self.settings = settings
        self.topics = list(topics)
        self.key_field = key_field
        self.time_field = time_field
        self.value_fields = list(value_fields)
        self.time_unit = time_unit
        self.max_record_bytes = max_record_bytes
        self.poll_timeout_ms = poll_timeout_ms

    def list_parts(self) -> list[str]:
        return [PART_NAME]

    def check_part(self, name: str) -> None:
        if name != PART_NAME:
            raise ValueError(f"{type(self).__name__} has one part, {PART_NAME!r}; got {name!r}")

    def decoder(self) -> JsonObservationDecoder:
        return JsonObservationDecoder(self.key_field, self.time_field, self.value_fields, self.time_unit,
                                      self.max_record_bytes)
