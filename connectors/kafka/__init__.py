"""Kafka connectors (kafka-python): observations in, forecasts / dead letters / state out.

A stream worker wires them like this::

    settings = KafkaSettings.from_dict(config["kafka"])
    ensure_topics(settings, [TopicSpec("obs", 8), TopicSpec("forecasts", 8), TopicSpec("dead", 1),
                             changelog_spec("state", 8)])
    part = KafkaSource(settings, ["obs"], key_field=None, time_field="ts",
                       value_fields=["temp"]).build_part("consumer", None)
    handle = KafkaProducerHandle(settings)          # one producer, shared
    forecasts = KafkaForecastSink(handle, "forecasts")
    dead = KafkaDeadLetterSink(handle, "dead")
    changelog = ChangelogStore(handle, settings, "state")
    part.set_rebalance_listener(on_assigned=..., on_revoked=...)  # restore / flush + commit
    while running:
        batch, letters = part.next_batch()          # waits at most poll_timeout_ms
        ...                                         # window, forecast, write sinks and changelog
        handle.commit(part.position_offsets(), part)  # flush, then offsets (transactional if exactly_once)
"""
from ..common.deadletter import dead_letter_json
from .admin import TopicMismatchError, TopicSpec, changelog_spec, ensure_topics
from .changelog import ChangelogStore, RestoreError
from .feed import feed, observation_messages
from .forecasts import iter_forecasts, read_forecasts_frame, read_forecasts_pandas
from .settings import KafkaSettings
from .sink import (
    CommitError,
    DeliveryError,
    KafkaConnectorError,
    KafkaDeadLetterSink,
    KafkaForecastSink,
    KafkaProducerHandle,
    ProducerFencedError,
)
from .source import JsonObservationDecoder, KafkaPartition, KafkaSource, parse_iso_times

__all__ = [
    "ChangelogStore",
    "CommitError",
    "DeliveryError",
    "JsonObservationDecoder",
    "KafkaConnectorError",
    "KafkaDeadLetterSink",
    "KafkaForecastSink",
    "KafkaPartition",
    "KafkaProducerHandle",
    "KafkaSettings",
    "KafkaSource",
    "ProducerFencedError",
    "RestoreError",
    "TopicMismatchError",
    "TopicSpec",
    "changelog_spec",
    "dead_letter_json",
    "ensure_topics",
    "feed",
    "iter_forecasts",
    "observation_messages",
    "parse_iso_times",
    "read_forecasts_frame",
    "read_forecasts_pandas",
]
