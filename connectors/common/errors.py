"""The Kafka connectors' errors, the same for every client library.

The worker's checkpoint reads only the class and the ``retriable`` flag, so both
transports (kafka-python, confluent-kafka) raise these and nothing client-specific.
"""
from __future__ import annotations

from streamseq.errors import StreamseqError


class KafkaConnectorError(StreamseqError):
    """Root of the Kafka connectors' errors. ``retriable``: the same call may succeed later
    (the broker is unreachable or busy); otherwise nothing is gained by trying it again."""

    retriable = False

    def __init__(self, message: str, *, retriable: bool = False):
        super().__init__(message)
        self.retriable = retriable


class DeliveryError(KafkaConnectorError):
    """Records could not be delivered. Retriable: still queued, not yet acknowledged (flush again);
    otherwise records were lost: abort and replay from the last commit."""


class CommitError(KafkaConnectorError):
    """Offsets could not be committed. Retriable: the broker or coordinator is unreachable;
    otherwise the group rebalanced and these partitions moved."""


class ProducerFencedError(KafkaConnectorError):
    """Another producer with this transactional_id is active: this worker must stop, committing nothing."""


class TopicMismatchError(KafkaConnectorError):
    """A topic exists with a partition count other than the one required."""


class RestoreError(KafkaConnectorError):
    """A changelog could not be read back completely in time."""


__all__ = ["CommitError", "DeliveryError", "KafkaConnectorError", "ProducerFencedError", "RestoreError",
           "TopicMismatchError"]
