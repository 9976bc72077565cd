"""Topics and partition ids, the same for every Kafka client library.

A partition id (``ObservationBatch.partition``) is ``topic index << 20 | partition``:
stable across restarts for a fixed topic list, and for a single topic the Kafka
partition number itself.

>>> pid = partition_id(1, 3)
>>> topic_index(pid), kafka_partition(pid)
(1, 3)
>>> parse_position_key("obs[2]")
('obs', 2)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from streamseq.errors import ConfigError

_PID_TOPIC_SHIFT = 20
_PARTITION_MASK = (1 << _PID_TOPIC_SHIFT) - 1


@dataclass(frozen=True)
class TopicSpec:
    """A topic the pipeline needs; replication_factor -1 = the broker's default (Kafka >= 2.4)."""

    name: str
    partitions: int
    replication_factor: int = -1
    config: dict[str, str] = field(default_factory=dict)


def changelog_spec(name: str, partitions: int, replication_factor: int = -1) -> TopicSpec:
    """A compacted changelog topic; give it the source topic's partition count."""
    return TopicSpec(name, partitions, replication_factor, {"cleanup.policy": "compact"})


def partition_id(topic_index: int, partition: int) -> int:
    return (topic_index << _PID_TOPIC_SHIFT) | partition


def topic_index(pid: int) -> int:
    return pid >> _PID_TOPIC_SHIFT


def kafka_partition(pid: int) -> int:
    return pid & _PARTITION_MASK


def parse_position_key(text: str) -> tuple[str, int]:
    """'topic[3]' (the keys of a source snapshot) -> ('topic', 3)."""
    m = re.fullmatch(r"(.+)\[(\d+)\]", text)
    if m is None:
        raise ConfigError("resume_state", f"keys like 'topic[0]', got {text!r}")
    return m.group(1), int(m.group(2))


def fold_changelog(state: dict[str, bytes], key: bytes | None, value: bytes | None) -> None:
    """Apply one changelog record to ``state`` (latest value per key; a None value is a tombstone).

    Brokers may not have compacted the topic (Tansu never does; real Kafka leaves the head
    uncompacted), so a restore folds every record itself.
    """
    if key is None:
        return
    k = key.decode("utf-8", "replace")
    if value is None:
        state.pop(k, None)
    else:
        state[k] = value
