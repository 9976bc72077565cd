"""Creating the pipeline's topics with librdkafka's admin client: idempotent, strict about partition counts.

The changelog must be co-partitioned with the source topic, so a topic that exists
with another partition count is an error (TopicMismatchError), never silently accepted.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from ..common.errors import KafkaConnectorError, TopicMismatchError
from ..common.topics import TopicSpec, changelog_spec
from .errors import describe, kafka_error, retriable
from .settings import ConfluentSettings

log = logging.getLogger(__name__)

__all__ = ["TopicMismatchError", "TopicSpec", "changelog_spec", "ensure_topics", "topic_partition_counts"]


def ensure_topics(settings: ConfluentSettings, specs: list[TopicSpec], timeout_s: float = 30.0) -> dict[str, str]:
    """Create the missing topics; {name: "created" | "exists"}. Existing topics are never altered."""
    admin = AdminClient(settings.admin_config())
    reach_s = settings.bootstrap_timeout_ms / 1000
    try:
        existing = set(admin.list_topics(timeout=reach_s).topics)
    except KafkaException as e:
        err = kafka_error(e)
        raise KafkaConnectorError(f"cannot list topics: {describe(err)}", retriable=retriable(err)) from e
    result = {s.name: "exists" for s in specs if s.name in existing}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config)) for s in missing],
            request_timeout=timeout_s)
        for s in missing:
            try:
                futures[s.name].result(timeout_s)
                result[s.name] = "created"
            except KafkaException as e:
                err = kafka_error(e)
                if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # created meanwhile
                    result[s.name] = "exists"
                else:
                    raise KafkaConnectorError(f"cannot create topic {s.name!r}: {describe(err)}",
                                              retriable=retriable(err)) from e
    counts = _wait_for_partitions(admin, [s.name for s in specs], timeout_s)
    wrong = [f"{s.name!r} has {counts.get(s.name)} partitions, expected {s.partitions}"
             for s in specs if counts.get(s.name) != s.partitions]
    if wrong:
        raise TopicMismatchError("; ".join(wrong))
    for name, outcome in result.items():
        log.info("topic %s: %s", name, outcome)
    return result


def topic_partition_counts(admin: AdminClient, names: list[str], timeout_s: float = 10.0) -> dict[str, int]:
    topics = admin.list_topics(timeout=timeout_s).topics
    return {n: len(topics[n].partitions) for n in names if n in topics and topics[n].error is None}


def _wait_for_partitions(admin: AdminClient, names: list[str], timeout_s: float) -> dict[str, int]:
    """Partition counts once every topic shows up in the metadata (a new topic takes a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = topic_partition_counts(admin, names, timeout_s)
        if all(counts.get(n) for n in names) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)
