"""What the Kafka transports share, whatever the client library: decoding rules, the dead-letter
message, errors, settings, topics and partition ids, feeding a topic."""
from .deadletter import bounded_key, dead_letter_json
from .decode import JsonObservationDecoder, parse_iso_times
from .errors import (
    CommitError,
    DeliveryError,
    KafkaConnectorError,
    ProducerFencedError,
    RestoreError,
    TopicMismatchError,
)
from .feed import feed, observation_messages
from .settings import KafkaClientSettings
from .topics import TopicSpec, changelog_spec, fold_changelog

__all__ = [
    "CommitError", "DeliveryError", "JsonObservationDecoder", "KafkaClientSettings", "KafkaConnectorError",
    "ProducerFencedError", "RestoreError", "TopicMismatchError", "TopicSpec", "bounded_key", "changelog_spec",
    "dead_letter_json", "feed", "fold_changelog", "observation_messages", "parse_iso_times",
]
