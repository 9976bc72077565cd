"""Observations from Kafka topics with librdkafka: a consumer-group source with one part, "consumer".

The same decoding rules as the kafka-python source (connectors.common.decode); a record
that is not valid becomes a dead letter with its topic, partition and offset.

Rebalancing is incremental (``cooperative-sticky``) unless ``partition.assignment.strategy``
says otherwise. librdkafka calls the rebalance callbacks from inside ``consume()``
(``next_batch``) and ``close()``, on the polling thread, so they may block (commit,
changelog restore). The worker's callbacks always see the WHOLE assignment: after an
incremental assignment or revocation this partition reports the partitions it now owns,
which is what the worker compares against to restore gained and forget moved keys.

Caveats on Tansu (the test broker): the high watermark librdkafka caches from each fetch
is right there (``lag()`` uses it), ListOffsets is not; offset metadata is not stored
(committed metadata reads back empty, for every client).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as WireTopicPartition

from streamseq.ports import GroupPartition
from streamseq.records import DeadLetter, ObservationBatch

from ..common.errors import CommitError, DeliveryError, KafkaConnectorError
from ..common.source import TopicSource
from ..common.topics import kafka_partition, parse_position_key, partition_id, topic_index
from .errors import describe, kafka_error, retriable
from .sink import wire_offsets

log = logging.getLogger(__name__)



class TopicPartition(NamedTuple):
    """A topic-partition as the worker sees it: hashable, ordered, no offset attached."""

    topic: str
    partition: int


RebalanceCallback = Callable[[list[TopicPartition]], None]


# Commit errors that mean this member is no longer in the group (librdkafka also times a session out
# itself when the coordinator stops answering); the group hands the partitions out again.
_MEMBERSHIP_LOST = {getattr(KafkaError, name) for name in (
    "UNKNOWN_MEMBER_ID", "ILLEGAL_GENERATION", "REBALANCE_IN_PROGRESS", "FENCED_INSTANCE_ID", "_ASSIGNMENT_LOST",
    "STALE_MEMBER_EPOCH") if hasattr(KafkaError, name)}


def _commit_error(err, what: str) -> KafkaConnectorError:
    """A lost membership means the work since the last commit cannot be committed by this member: records
    lost for this checkpoint (the worker rewinds to the last commit, as Kafka Streams does on a migrated
    task) rather than a failure; librdkafka rejoins on the next poll and the assignment restores."""
    if err is not None and err.code() in _MEMBERSHIP_LOST:
        return DeliveryError(f"{what}: group membership lost ({describe(err)}); rewinding to the last commit")
    return CommitError(f"{what}: {describe(err)}", retriable=retriable(err))


class ConfluentSource(TopicSource):
    """Keyed JSON observations from ``topics``, read by one consumer-group member (librdkafka).

    ``settings.group_id`` is required: committed group offsets are the resume position.
    ``build_part("consumer", resume_state)`` accepts ``ConfluentPartition.snapshot()``; its
    offsets override the committed ones for partitions this member is assigned.
    """

    def build_part(self, name: str, resume_state: Any | None = None) -> ConfluentPartition:
        self.check_part(name)
        return ConfluentPartition(self, resume_state)


class ConfluentPartition(GroupPartition):
    """The consumer-group member: ``next_batch`` returns what is ready, waiting at most
    ``poll_timeout_ms`` when nothing is, and at most ``max_poll_records`` records."""

    partitioned_time = True

    def __init__(self, source: ConfluentSource, resume_state: dict[str, int] | None = None):
        s = source.settings
        self._source = source
        self._topics = source.topics
        self._topic_index = {t: i for i, t in enumerate(source.topics)}
        self._decoder = source.decoder()
        self._width = len(source.value_fields)
        self._timeout_s = source.poll_timeout_ms / 1000
        self._batch = s.max_poll_records
        self._request_timeout_s = max(1.0, s.request_timeout_ms / 1000)
        self._cooperative = s.cooperative
        self._resume = {TopicPartition(*parse_position_key(k)): int(v) for k, v in (resume_state or {}).items()}
        self._owned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._on_assigned: RebalanceCallback | None = None
        self._on_revoked: RebalanceCallback | None = None
        self._on_lost: RebalanceCallback | None = None
        self._listener_error: BaseException | None = None
        self._closed = False
        self._consumer = Consumer(s.consumer_config(group=True))
        self._consumer.subscribe(self._topics, on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lose)

    # --- reading ------------------------------------------------------------------

    def next_batch(self) -> tuple[ObservationBatch, list[DeadLetter]]:
        self._listener_error = None
        consume = self._consumer.consume
        try:
            # What is ready now; only when nothing is, wait (consume(n, t) would wait for n records or t).
            messages = consume(self._batch, 0)
            if not messages:
                messages = consume(1, self._timeout_s)
                if messages and self._batch > 1:
                    messages += consume(self._batch - 1, 0)
        except KafkaException as e:
            if self._listener_error is not None:  # a rebalance callback failed: surface its own error
                raise self._listener_error from e
            err = kafka_error(e)
            raise KafkaConnectorError(f"polling {', '.join(self._topics)} failed: {describe(err)}",
                                      retriable=retriable(err)) from e
        if self._listener_error is not None:
            raise self._listener_error
        if not messages:
            return ObservationBatch.empty(self._width), []
        # Columns per partition, no Python object per record: a partition's records keep their order.
        if len(self._topics) == 1:
            topic = self._topics[0]
            tps = [(topic, m.partition()) if m.error() is None else None for m in messages]
        else:
            tps = [(m.topic(), m.partition()) if m.error() is None else None for m in messages]
        by_tp: dict[tuple[str, int], list] = {}
        for m, tp in zip(messages, tps):
            if tp is None:
                self._message_error(m)
                continue
            ms = by_tp.get(tp)
            if ms is None:
                ms = by_tp[tp] = []
            ms.append(m)
        groups = []
        for (topic, p), ms in sorted(by_tp.items()):
            tp = TopicPartition(topic, p)
            if tp not in self._owned:  # fetched before a revocation this member already handled
                continue
            offsets = [m.offset() for m in ms]
            groups.append((partition_id(self._topic_index[topic], p), topic, p, [m.key() for m in ms],
                           [m.value() for m in ms], offsets))
            self._positions[tp] = offsets[-1] + 1
        return self._decoder.decode_columns(groups)

    def _message_error(self, m) -> None:
        err = m.error()
        if err.fatal():
            raise KafkaConnectorError(f"consumer failed for good: {describe(err)}")
        log.warning("consuming %s[%s]: %s", m.topic(), m.partition(), describe(err))

    def snapshot(self) -> dict[str, int]:
        """{"topic[p]": next offset} for every partition read so far (JSON-friendly)."""
        return {f"{tp.topic}[{tp.partition}]": off for tp, off in sorted(self._positions.items())}

    def position_offsets(self) -> dict[TopicPartition, int]:
        return dict(self._positions)

    # --- offsets ------------------------------------------------------------------

    def commit(self, offsets: dict | None = None) -> None:
        """Commit group offsets {tp: next offset to read, or (offset, metadata string)}; None:
        ``position_offsets()``. Blocking; may be called from inside a rebalance callback."""
        offsets = self.position_offsets() if offsets is None else offsets
        if not offsets:
            return
        try:
            result = self._consumer.commit(offsets=wire_offsets(offsets), asynchronous=False)
        except KafkaException as e:
            err = kafka_error(e)
            if err is not None and err.code() == KafkaError._NO_OFFSET:
                return
            raise _commit_error(err, "offsets not committed") from e
        failed = [tp for tp in result or () if tp.error is not None]
        if failed:
            raise _commit_error(failed[0].error, f"offsets of {len(failed)} partition(s) not committed, first "
                                                 f"{failed[0].topic}[{failed[0].partition}]")

    def committed_metadata(self, tp: TopicPartition) -> tuple[int | None, str]:
        """(committed offset or None, the metadata string committed with it)."""
        try:
            got = self._consumer.committed([WireTopicPartition(tp.topic, tp.partition)],
                                           timeout=self._request_timeout_s)
        except KafkaException as e:
            err = kafka_error(e)
            raise KafkaConnectorError(f"committed offset of {tp.topic}[{tp.partition}] not read: {describe(err)}",
                                      retriable=retriable(err)) from e
        w = got[0]
        if w.error is not None:
            raise KafkaConnectorError(f"committed offset of {tp.topic}[{tp.partition}] not read: "
                                      f"{describe(w.error)}", retriable=retriable(w.error))
        return (None if w.offset < 0 else w.offset), (w.metadata or "")

    def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_metadata(tp)[0]

    def rewind_to_committed(self) -> None:
        """Read every owned partition again from its committed offset (or the reset policy's start
        when nothing is committed): the worker replays what it could not checkpoint."""
        for tp in self.assignment():
            off = self.committed(tp)
            if off is None:
                reset = OFFSET_END if self._source.settings.auto_offset_reset == "latest" else OFFSET_BEGINNING
                self._seek(tp, reset)
                self._positions.pop(tp, None)
            else:
                self.seek(tp, off)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Next ``next_batch`` returns ``tp`` from ``offset``; ``position_offsets`` follows."""
        self._seek(tp, offset)
        self._positions[tp] = offset

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(WireTopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as e:
            err = kafka_error(e)
            raise KafkaConnectorError(f"seek of {tp.topic}[{tp.partition}] failed: {describe(err)}",
                                      retriable=retriable(err)) from e

    def group_metadata(self):
        """The consumer group metadata ``send_offsets_to_transaction`` needs (KIP-447 fencing)."""
        return self._consumer.consumer_group_metadata()

    # --- group membership ---------------------------------------------------------

    def set_rebalance_listener(self, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback,
                               on_lost: RebalanceCallback | None = None) -> None:
        """Callbacks for the partitions owned after a change and those given up; they run while
        ``next_batch`` (or ``close``) runs, on its thread. ``on_lost`` (membership expired: commits
        would fail) defaults to ``on_revoked``, as in Kafka. An exception in a callback is re-raised
        by ``next_batch``."""
        self._on_assigned, self._on_revoked, self._on_lost = on_assigned, on_revoked, on_lost

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._owned)

    def lag(self) -> dict[TopicPartition, int | None]:
        """High watermark of the latest fetch - position, per owned partition (None while unknown)."""
        out: dict[TopicPartition, int | None] = {}
        for tp in self.assignment():
            wire = WireTopicPartition(tp.topic, tp.partition)
            try:
                _, high = self._consumer.get_watermark_offsets(wire, cached=True)
                pos = self._positions.get(tp)
                if pos is None:
                    pos = self._consumer.position([wire])[0].offset
            except KafkaException:
                high = pos = -1
            out[tp] = None if high is None or pos is None or high < 0 or pos < 0 else max(high - pos, 0)
        return out

    def close(self) -> None:
        """Leave the group (on_revoked runs first, as on a rebalance) and close the consumer."""
        if self._closed:
            return
        self._closed = True
        self._listener_error = None
        try:
            self._consumer.close()
        finally:
            if self._listener_error is not None:
                raise self._listener_error

    # --- partition ids ------------------------------------------------------------

    def partition_id(self, tp: TopicPartition) -> int:
        return partition_id(self._topic_index[tp.topic], tp.partition)

    def topic_partition(self, pid: int) -> TopicPartition:
        return TopicPartition(self._topics[topic_index(pid)], kafka_partition(pid))

    def kafka_partition(self, pid: int) -> int:
        return kafka_partition(pid)

    def origin(self, pid: int) -> tuple[str, int]:
        tp = self.topic_partition(pid)
        return tp.topic, tp.partition

    def label(self, tp: TopicPartition) -> tuple[str, int]:
        return tp.topic, tp.partition

    # --- rebalance callbacks (librdkafka calls them inside consume() and close()) ---

    def _assign(self, consumer, wire: list) -> None:
        tps = sorted(TopicPartition(w.topic, w.partition) for w in wire)
        # Start where a resume snapshot says; else librdkafka starts from the committed offset.
        start = [WireTopicPartition(tp.topic, tp.partition, self._resume.pop(tp)) if tp in self._resume
                 else WireTopicPartition(tp.topic, tp.partition) for tp in tps]
        if self._cooperative:
            consumer.incremental_assign(start)
            self._owned |= set(tps)
        else:
            consumer.assign(start)
            self._owned = set(tps)
        for w in start:
            if w.offset >= 0:
                self._positions[TopicPartition(w.topic, w.partition)] = w.offset
        self._call(self._on_assigned, sorted(self._owned), always=True)

    def _revoke(self, consumer, wire: list) -> None:
        self._give_up(consumer, wire, self._on_revoked)
        if self._cooperative and not self._closed:
            # Nothing else follows an incremental revocation: tell the worker what it owns now.
            self._call(self._on_assigned, sorted(self._owned), always=True)

    def _lose(self, consumer, wire: list) -> None:
        # The session is gone (librdkafka rejoins on the next poll); the next assignment tells the worker
        # what it owns then: reporting the empty set now would make it look ready with nothing to do.
        self._give_up(consumer, wire, self._on_lost or self._on_revoked)

    def _give_up(self, consumer, wire: list, callback: RebalanceCallback | None) -> None:
        tps = sorted(TopicPartition(w.topic, w.partition) for w in wire)
        try:
            self._call(callback, tps)  # while they are still ours: flush, state, commit
        finally:
            for tp in tps:
                self._positions.pop(tp, None)
            self._owned -= set(tps)
            if self._cooperative:
                consumer.incremental_unassign([WireTopicPartition(tp.topic, tp.partition) for tp in tps])
            else:
                consumer.unassign()

    def _call(self, callback: RebalanceCallback | None, tps: list[TopicPartition], always: bool = False) -> None:
        if callback is None or not (tps or always) or self._listener_error is not None:
            return
        try:
            callback(tps)
        except BaseException as e:  # noqa: BLE001 - re-raised by next_batch / close, on the caller's thread
            self._listener_error = e
