"""Per-key state on a compacted changelog topic, co-partitioned with the source topic (librdkafka).

The same contract as connectors.kafka.changelog: the state of a key goes to the
partition number its observations came from; ``restore`` reads the given partitions
from the beginning and keeps the latest value per key, honouring tombstones itself
(Tansu never compacts; real Kafka leaves the head uncompacted). It stops at each
partition's end as librdkafka sees it in its fetches (a partition-EOF event) — never
ListOffsets, which is wrong on Tansu. Reading ``read_committed`` that end is the last
stable offset, so it is compared with the high watermark a read_uncommitted fetch
reports. It never returns a partial state: below a known high watermark with nothing
arriving for ``idle_s`` (another producer's open transaction, or a slow broker) it
raises a retriable RestoreError, and the worker tries again within its outage budget.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as WireTopicPartition

from ..common.errors import RestoreError
from ..common.sinks import ChangelogWriter
from ..common.topics import fold_changelog
from .errors import describe, kafka_error, retriable

log = logging.getLogger(__name__)


class ConfluentChangelog(ChangelogWriter):
    """Write per-key state to, and restore it from, a compacted changelog topic (librdkafka).
    ``ConfluentChangelog(handle: ConfluentProducerHandle, settings: ConfluentSettings, topic, *,
    restore_timeout_s, idle_s, restore_fetch_bytes)``."""

    def restore(self, partitions: list[int]) -> dict[str, bytes]:
        """Latest state per key of the given changelog partitions (tombstoned keys left out)."""
        if not partitions:
            return {}
        s = self.settings
        consumer = Consumer(s.consumer_config(group=False, **self._reader_config()))
        try:
            return self._read_all(consumer, sorted({int(p) for p in partitions}))
        except KafkaException as e:
            err = kafka_error(e)
            raise RestoreError(f"changelog {self.topic!r} not read: {describe(err)}", retriable=retriable(err)) from e
        finally:
            consumer.close()

    def _reader_config(self, **extra) -> dict:
        s = self.settings
        return {"auto.offset.reset": "earliest", "enable.partition.eof": True,
                "max.partition.fetch.bytes": max(s.max_partition_fetch_bytes, self.restore_fetch_bytes),
                "fetch.max.bytes": max(s.fetch_max_bytes, self.restore_fetch_bytes), "fetch.wait.max.ms": 100,
                **extra}

    def _read_all(self, consumer: Consumer, partitions: list[int]) -> dict[str, bytes]:
        timeout = max(1.0, self.settings.request_timeout_ms / 1000)
        meta = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        known = set(meta.partitions) if meta is not None and meta.error is None else set()
        missing = [p for p in partitions if p not in known]
        if missing:
            raise RestoreError(f"changelog topic {self.topic!r} has no partition(s) {missing} "
                               f"(has {sorted(known) if known else 'none'}); create it co-partitioned with the source")
        consumer.assign([WireTopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        committed_only = self.settings.effective_isolation_level == "read_committed"
        state: dict[str, bytes] = {}
        ends: dict[int, int] = {}  # partition -> offset of its end-of-partition event, while nothing came after it
        checked: tuple | None = None  # the ends last compared with the uncommitted high watermarks
        behind: list[int] = []  # partitions whose end is below what a read_uncommitted fetch sees
        start = last_progress = time.monotonic()
        records_read = 0
        while True:
            messages = consumer.consume(10_000, 0.1)
            now = time.monotonic()
            for m in messages:
                err = m.error()
                if err is None:
                    fold_changelog(state, m.key(), m.value())
                    records_read += 1
                    ends.pop(m.partition(), None)
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends[m.partition()] = m.offset()
                else:
                    raise KafkaException(err)
            if messages:
                last_progress = now
            if len(ends) == len(partitions):
                if not committed_only:
                    break
                # read_committed: librdkafka's end is the last stable offset, which stops before another
                # producer's open transaction. Compare with the high watermark; never restore a partial state.
                snapshot = tuple(sorted(ends.items()))
                if snapshot != checked:
                    checked = snapshot
                    highs = self._uncommitted_highs(ends, timeout)
                    behind = sorted(p for p, off in ends.items() if off < highs.get(p, off))
                if not behind:
                    break
                pending = behind
            else:
                pending = sorted(set(partitions) - set(ends))
                if not all(h is not None and h >= 0 for h in
                           (consumer.get_watermark_offsets(WireTopicPartition(self.topic, p), cached=True)[1]
                            for p in pending)):
                    pending = []  # an unknown watermark (no fetch answered yet) is never "stuck"
            # Below a known high watermark with nothing arriving: held back by another producer's open
            # transaction, or a slow broker.
            if pending and now - last_progress > self.idle_s:
                raise RestoreError(
                    f"changelog {self.topic!r}: nothing readable for {self.idle_s:g}s below the high watermark of "
                    f"partitions {pending} (an open transaction of another producer, or a slow broker); "
                    f"not restoring a partial state", retriable=True)
            if now - start > self.restore_timeout_s:
                raise RestoreError(f"changelog {self.topic!r}: not caught up after {self.restore_timeout_s}s "
                                   f"({records_read} records read; behind on "
                                   f"{sorted(set(partitions) - set(ends)) or behind})", retriable=True)
        log.info("changelog %s: restored %d keys from %d records of partitions %s in %.2fs",
                 self.topic, len(state), records_read, partitions, time.monotonic() - start)
        return state

    def _uncommitted_highs(self, ends: dict[int, int], timeout: float) -> dict[int, int]:
        """The high watermark of each partition as a read_uncommitted fetch from its end reports it
        (ListOffsets is wrong on Tansu; a read_committed librdkafka reports the last stable offset)."""
        probe = Consumer(self.settings.consumer_config(group=False, **self._reader_config(
            **{"isolation.level": "read_uncommitted"})))
        try:
            probe.assign([WireTopicPartition(self.topic, p, off) for p, off in ends.items()])
            highs: dict[int, int] = {}
            deadline = time.monotonic() + timeout
            while len(highs) < len(ends) and time.monotonic() < deadline:
                for m in probe.consume(100, 0.1):
                    err = m.error()
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    high = probe.get_watermark_offsets(WireTopicPartition(self.topic, m.partition()), cached=True)[1]
                    if high is not None and high >= 0:
                        highs[m.partition()] = max(high, m.offset() + (err is None))
            if len(highs) < len(ends):
                raise RestoreError(f"changelog {self.topic!r}: high watermarks of partitions "
                                   f"{sorted(set(ends) - set(highs))} not fetched within {timeout:g}s", retriable=True)
            return highs
        finally:
            probe.close()
