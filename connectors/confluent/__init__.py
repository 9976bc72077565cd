"""Kafka connectors on librdkafka (confluent-kafka): the ``confluent`` transport.

``[kafka] client = "confluent"`` picks it; it needs the optional extra
``pip install 'streamseq[confluent]'``. Observations in, forecasts / dead letters /
state out, exactly as connectors.kafka (kafka-python) does: the same decoding rules,
messages, errors and partitioning (murmur2 of the key), so the two can replace each
other on the same topics.
"""
import confluent_kafka  # noqa: F401 - first: without the extra, plugins.load names it (MissingExtra)

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
