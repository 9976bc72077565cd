"""Kafka connectors on librdkafka (confluent-kafka): the ``confluent`` transport.

``[kafka] client = "confluent"`` picks it; it needs the optional extra
``pip install 'streamseq[confluent]'``. Observations in, forecasts / dead letters /
state out, exactly as connectors.kafka (kafka-python) does: the same decoding rules,
messages, errors and partitioning (murmur2 of the key), so the two can replace each
other on the same topics.
"""
try:
    import confluent_kafka  # noqa: F401
except ImportError as exc:  # the default install has no librdkafka
    from streamseq.errors import ConfigError

    raise ConfigError("kafka.client", "the confluent-kafka package for client = 'confluent' "
                                      "(pip install 'streamseq[confluent]'), or client = 'kafka-python'") from exc

from .admin import ensure_topics
from .changelog import ConfluentChangelog
from .forecasts import iter_forecasts, read_forecasts_frame
from .settings import ConfluentSettings
from .sink import ConfluentDeadLetterSink, ConfluentForecastSink, ConfluentProducerHandle
from .source import ConfluentPartition, ConfluentSource, TopicPartition
from .transport import ConfluentTransport

__all__ = [
    "ConfluentChangelog", "ConfluentDeadLetterSink", "ConfluentForecastSink", "ConfluentPartition",
    "ConfluentProducerHandle", "ConfluentSettings", "ConfluentSource", "ConfluentTransport", "TopicPartition",
    "ensure_topics", "iter_forecasts", "read_forecasts_frame",
]
