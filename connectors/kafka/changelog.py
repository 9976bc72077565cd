"""Per-key state on a compacted changelog topic, co-partitioned with the source topic.

The state of a key goes to the SAME partition number its observations came
from, so a worker that is assigned source partition p restores its keys by
reading changelog partition p (the Kafka Streams way). The changelog topic
must therefore have as many partitions as the source topic (``ensure_topics``
with ``changelog_spec``) and ``cleanup.policy=compact``.

``restore`` reads from the beginning and keeps the latest value per key,
dropping tombstoned keys itself: Tansu accepts ``cleanup.policy=compact`` but
never compacts, and on real Kafka the uncompacted head needs the same care.
It stops when each partition's position reaches the highwater mark seen in a
fetch (``end_offsets()`` is wrong on Tansu). It never returns a partial state:
below a known highwater with nothing arriving for ``idle_s`` (a read_committed
reader held back by another producer's open transaction, or a slow broker) it
raises a retriable RestoreError, and the worker tries again within its outage
budget (an open transaction ends when its timeout aborts it).

With ``exactly_once`` the restore reads ``read_committed``. Real Kafka then
hides states written by aborted transactions; Tansu does not (it reports no
aborted transactions), so there a restore can return the state a killed worker
wrote in its last, aborted checkpoint: state may be ahead of the committed
offsets, which is why each state carries its own source position.
"""
from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer, TopicPartition

from ..common.errors import RestoreError
from ..common.sinks import ChangelogWriter
from ..common.topics import fold_changelog

log = logging.getLogger(__name__)

__all__ = ["ChangelogStore", "RestoreError"]


class ChangelogStore(ChangelogWriter):
    """Write per-key state to, and restore it from, a compacted changelog topic (kafka-python).
    ``ChangelogStore(handle: KafkaProducerHandle, settings: KafkaSettings, topic, *, restore_timeout_s,
    idle_s, restore_fetch_bytes)``."""

    def restore(self, partitions: list[int]) -> dict[str, bytes]:
        """Latest state per key of the given changelog partitions (tombstoned keys left out)."""
        if not partitions:
            return {}
        consumer = KafkaConsumer(**self._restore_kwargs())
        try:
            return self._read_all(consumer, [TopicPartition(self.topic, int(p)) for p in sorted(set(partitions))])
        finally:
            consumer.close(autocommit=False)

    def _restore_kwargs(self) -> dict:
        kw = self.settings.consumer_kwargs(group=False)
        kw.update(
            auto_offset_reset="earliest",
            max_poll_records=max(self.settings.max_poll_records, 10_000),
            max_partition_fetch_bytes=max(self.settings.max_partition_fetch_bytes, self.restore_fetch_bytes),
            fetch_max_bytes=max(self.settings.fetch_max_bytes, self.restore_fetch_bytes),
            fetch_max_wait_ms=100,  # an empty partition answers quickly
        )
        return kw

    def _read_all(self, consumer: KafkaConsumer, tps: list[TopicPartition]) -> dict[str, bytes]:
        known = consumer.partitions_for_topic(self.topic)
        missing = [tp.partition for tp in tps if not known or tp.partition not in known]
        if missing:
            raise RestoreError(
                f"changelog topic {self.topic!r} has no partition(s) {missing} "
                f"(has {sorted(known) if known else 'none'}); create it co-partitioned with the source"
            )
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        state: dict[str, bytes] = {}
        pending = set(tps)
        start = last_progress = time.monotonic()
        records_read = 0
        while pending:
            polled = consumer.poll(timeout_ms=100)
            now = time.monotonic()
            for records in polled.values():
                records_read += len(records)
                for r in records:
                    fold_changelog(state, r.key, r.value)
            if polled:
                last_progress = now
            highwater = {tp: consumer.highwater(tp) for tp in pending}
            for tp, hw in highwater.items():
                if hw is not None and consumer.position(tp, timeout_ms=1000) >= hw:
                    pending.discard(tp)
            if not pending:
                break
            # Below a known highwater with nothing arriving: a read_committed reader blocked by an open
            # transaction of another producer. An unknown highwater (no fetch answered yet) is never "caught up".
            if all(hw is not None for hw in highwater.values()) and now - last_progress > self.idle_s:
                raise RestoreError(
                    f"changelog {self.topic!r}: nothing readable for {self.idle_s:g}s below the highwater of "
                    f"partitions {sorted(tp.partition for tp in pending)} (an open transaction of another "
                    f"producer, or a slow broker); not restoring a partial state", retriable=True)
            if now - start > self.restore_timeout_s:
                raise RestoreError(
                    f"changelog {self.topic!r}: not caught up after {self.restore_timeout_s}s "
                    f"({records_read} records read; behind on {sorted(tp.partition for tp in pending)})",
                    retriable=True)
        log.info("changelog %s: restored %d keys from %d records of partitions %s in %.2fs",
                 self.topic, len(state), records_read, [tp.partition for tp in tps], time.monotonic() - start)
        return state
