"""Observations from Kafka topics: a consumer-group source with one part, "consumer".

Messages are JSON objects decoded by ``connectors.common.decode.JsonObservationDecoder``
(the rules every client shares); a record that is not valid becomes a DeadLetter with a
reason and its topic, partition and offset; ``next_batch`` never raises on data.

Which partitions this worker reads is decided by the Kafka consumer group
(scale-out = more workers). The worker learns about changes through
``set_rebalance_listener`` and commits with ``commit`` (or through
``KafkaProducerHandle.commit`` inside a transaction).

Caveats on Tansu (the test broker): ``KafkaConsumer.end_offsets()`` is wrong
there (first offset of the last batch + 1), so ``lag()`` uses the highwater mark
returned with each fetch, and ``auto_offset_reset='latest'`` re-delivers old
records.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

try:  # kafka-python >= 3: listeners run on the client's IO thread
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
except ImportError:  # kafka-python 2.x: they run inside poll() on the caller's thread
    AsyncConsumerRebalanceListener = None
from kafka.errors import IllegalStateError, KafkaError
from kafka.structs import OffsetAndMetadata

from streamseq.ports import GroupPartition
from streamseq.records import DeadLetter, ObservationBatch

from ..common.decode import (  # noqa: F401 - re-exported: kafka-python's names of old
    MAX_TS_NS,
    MIN_TS_NS,
    TIME_UNITS,
    JsonObservationDecoder,
    parse_iso_times,
)
from ..common.source import TopicSource
from ..common.topics import kafka_partition, parse_position_key, partition_id, topic_index
from .settings import warn_if_pure_python_crc

log = logging.getLogger(__name__)


RebalanceCallback = Callable[[list[TopicPartition]], None]


class KafkaSource(TopicSource):
    """Keyed JSON observations from ``topics``, read by one consumer-group member.

    ``settings.group_id`` is required: committed group offsets are the resume
    position. ``build_part("consumer", resume_state)`` accepts the dict
    returned by ``KafkaPartition.snapshot()``; its offsets override the
    committed ones for partitions this member is assigned.
    """

    def build_part(self, name: str, resume_state: Any | None = None) -> KafkaPartition:
        self.check_part(name)
        return KafkaPartition(self, resume_state)


class KafkaPartition(GroupPartition):
    """The consumer-group member: ``next_batch`` waits at most ``poll_timeout_ms`` for data.

    Its wall time is that wait plus the CPU time to parse and decode at most
    ``max_poll_records`` records (measured on a loaded 2-core machine: ~50 ms
    for 500, ~250 ms for 5000); lower ``max_poll_records`` for a snappier loop.

    Positions: ``position_offsets()`` is the next offset after everything
    returned so far, per Kafka partition; ``commit(offsets)`` commits "next
    offset to read" values (Kafka's convention).

    ``ObservationBatch.partition`` holds a partition id: ``topic index << 20 |
    kafka partition`` (for a single topic, the Kafka partition number itself).
    ``origin(pid)`` -> (topic, partition), ``topic_partition(pid)`` -> TopicPartition.
    """

    partitioned_time = True  # event time advances per Kafka partition, not globally

    def __init__(self, source: KafkaSource, resume_state: dict[str, int] | None = None):
        self._source = source
        self._topics = source.topics
        self._topic_index = {t: i for i, t in enumerate(source.topics)}
        self._decoder = source.decoder()
        self._poll_timeout_ms = source.poll_timeout_ms
        self._resume = {_parse_tp(k): int(v) for k, v in (resume_state or {}).items()}
        self._positions: dict[TopicPartition, int] = {}
        self._on_assigned: RebalanceCallback | None = None
        self._on_revoked: RebalanceCallback | None = None
        self._on_lost: RebalanceCallback | None = None
        self._listener_error: BaseException | None = None
        warn_if_pure_python_crc()
        self._consumer = KafkaConsumer(**source.settings.consumer_kwargs())
        keep_completed_joins(self._consumer)
        self._consumer.subscribe(self._topics, listener=_make_listener(self))

    # --- reading ------------------------------------------------------------------

    def next_batch(self) -> tuple[ObservationBatch, list[DeadLetter]]:
        self._listener_error = None
        try:
            polled = self._consumer.poll(timeout_ms=self._poll_timeout_ms)
        except KafkaError as e:
            if self._listener_error is not None:  # a rebalance callback failed: surface its own error
                raise self._listener_error from e
            from .sink import KafkaConnectorError

            raise KafkaConnectorError(f"polling {', '.join(self._topics)} failed: {type(e).__name__}: {e}",
                                      retriable=bool(getattr(e, "retriable", False))) from e
        if not polled:
            return ObservationBatch.empty(len(self._source.value_fields)), []
        groups = []
        for tp in sorted(polled):
            records = polled[tp]
            if records:
                groups.append((self.partition_id(tp), records))
                self._positions[tp] = records[-1].offset + 1
        return self._decoder.decode(groups)

    def snapshot(self) -> dict[str, int]:
        """{"topic[p]": next offset} for every partition read so far (JSON-friendly)."""
        return {f"{tp.topic}[{tp.partition}]": off for tp, off in sorted(self._positions.items())}

    def position_offsets(self) -> dict[TopicPartition, int]:
        """Next offset after everything returned so far, per assigned partition that returned data."""
        return dict(self._positions)

    # --- offsets ------------------------------------------------------------------

    def commit(self, offsets: dict | None = None) -> None:
        """Commit group offsets: {tp: next offset to read, or (offset, metadata string)}; None:
        ``position_offsets()``.

        Blocking. May be called from inside an on_revoked callback.
        """
        offsets = self.position_offsets() if offsets is None else offsets
        if offsets:
            out = {}
            for tp, off in offsets.items():
                off, meta = off if isinstance(off, tuple) else (off, "")
                out[tp] = OffsetAndMetadata(int(off), meta or "", -1)
            self._consumer.commit(out)

    def committed(self, tp: TopicPartition) -> int | None:
        return self._consumer.committed(tp)

    def committed_metadata(self, tp: TopicPartition) -> tuple[int | None, str]:
        """(committed offset or None, the metadata string committed with it)."""
        oam = self._consumer.committed(tp, metadata=True)
        if oam is None:
            return None, ""
        return oam.offset, oam.metadata or ""

    def rewind_to_committed(self) -> None:
        """Read every assigned partition again from its committed offset (or the reset policy's
        start when nothing is committed): the worker replays what it could not checkpoint."""
        for tp in self.assignment():
            off = self._consumer.committed(tp)
            if off is None:
                if self._source.settings.auto_offset_reset == "latest":
                    self._consumer.seek_to_end(tp)
                else:
                    self._consumer.seek_to_beginning(tp)
                self._positions.pop(tp, None)
            else:
                self.seek(tp, off)

    def group_metadata(self):
        """ConsumerGroupMetadata for ``KafkaProducer.send_offsets_to_transaction`` (KIP-447 fencing)."""
        return self._consumer.group_metadata()

    # --- group membership ---------------------------------------------------------

    def set_rebalance_listener(
        self,
        on_assigned: RebalanceCallback,
        on_revoked: RebalanceCallback,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        """Callbacks for partitions gained and given up; they run while ``next_batch`` (or ``close``) runs.

        ``on_revoked`` runs before the partitions go to another member: flush,
        write state and ``commit`` there. ``on_lost`` (membership expired: commits
        would fail) defaults to ``on_revoked``, as in Kafka. They run on a helper
        thread while the consumer's IO loop keeps heartbeating, so they may block
        (commit, changelog restore); the thread that called ``next_batch`` waits
        for them. An exception in a callback is re-raised by ``next_batch``.
        """
        self._on_assigned, self._on_revoked, self._on_lost = on_assigned, on_revoked, on_lost

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._consumer.assignment())

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Next ``next_batch`` returns ``tp`` from ``offset``; ``position_offsets`` follows."""
        self._consumer.seek(tp, offset)
        self._positions[tp] = offset

    def highwater(self, tp: TopicPartition) -> int | None:
        """Offset after the last record of ``tp`` as of the latest fetch (None before one)."""
        try:
            return self._consumer.highwater(tp)
        except IllegalStateError:
            return None

    def lag(self) -> dict[TopicPartition, int | None]:
        """highwater - position per assigned partition (None while unknown).

        Not ``end_offsets()``: that is wrong on Tansu and costs a round trip.
        """
        out: dict[TopicPartition, int | None] = {}
        for tp in self.assignment():
            hw = self.highwater(tp)
            pos = self._positions.get(tp)
            if pos is None and hw is not None:
                try:
                    pos = self._consumer.position(tp, timeout_ms=100)
                except KafkaError:
                    pos = None
            out[tp] = None if hw is None or pos is None else max(hw - pos, 0)
        return out

    def close(self) -> None:
        """Leave the group (on_revoked runs first, as on a rebalance) and close the consumer."""
        self._consumer.close(autocommit=False)

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

    # --- rebalance plumbing (called by _RebalanceBridge on the IO loop) -----------

    def _assigned(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            if tp in self._resume:
                self.seek(tp, self._resume.pop(tp))
        if self._on_assigned is not None:
            self._on_assigned(tps)

    def _revoked(self, tps: list[TopicPartition], lost: bool) -> None:
        try:
            callback = (self._on_lost or self._on_revoked) if lost else self._on_revoked
            if callback is not None:
                callback(tps)
        finally:
            for tp in tps:
                self._positions.pop(tp, None)


def _make_listener(part: KafkaPartition):
    if AsyncConsumerRebalanceListener is None or not hasattr(part._consumer, "_net"):
        return _InlineListener(part)  # kafka-python 2.x: listeners already run on the polling thread
    return _RebalanceBridge(part)


class _InlineListener(ConsumerRebalanceListener):
    def __init__(self, part: KafkaPartition):
        self._part = part

    def _call(self, fn, tps) -> None:
        if tps:
            try:
                fn(sorted(tps))
            except BaseException as e:
                self._part._listener_error = e
                raise

    def on_partitions_assigned(self, assigned):
        self._call(self._part._assigned, assigned)

    def on_partitions_revoked(self, revoked):
        self._call(lambda tps: self._part._revoked(tps, lost=False), revoked)

    def on_partitions_lost(self, lost):
        self._call(lambda tps: self._part._revoked(tps, lost=True), lost)


class _RebalanceBridge(AsyncConsumerRebalanceListener or object):
    """Runs the partition's callbacks on a helper thread and awaits them without blocking the IO loop.

    kafka-python 3 calls rebalance listeners on its IO thread, where a blocking
    consumer call (commit, position) raises. Awaiting a helper thread keeps
    heartbeats going and lets the callbacks use the consumer normally.
    """

    def __init__(self, part: KafkaPartition):
        self._part = part

    async def on_partitions_assigned(self, assigned):
        await self._call(self._part._assigned, sorted(assigned))

    async def on_partitions_revoked(self, revoked):
        await self._call(lambda tps: self._part._revoked(tps, lost=False), sorted(revoked))

    async def on_partitions_lost(self, lost):
        await self._call(lambda tps: self._part._revoked(tps, lost=True), sorted(lost))

    async def _call(self, fn: Callable[[list[TopicPartition]], None], tps: list[TopicPartition]) -> None:
        if not tps:  # kafka-python reports an empty revocation before the first join
            return
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                fn(tps)
            except BaseException as e:  # noqa: BLE001 - re-raised below, then by next_batch
                errors.append(e)
            finally:
                done.set()

        threading.Thread(target=run, name="streamseq-rebalance", daemon=True).start()
        net = self._part._consumer._net  # kafka-python 3 event loop (private)
        while not done.is_set():
            await net.sleep(0.002)
        if errors:
            self._part._listener_error = errors[0]
            raise errors[0]


def keep_completed_joins(consumer: KafkaConsumer) -> bool:
    """Work around kafka-python 3.0.x discarding a group join that completed between two polls.

    ``join_group_async`` starts a NEW JoinGroup when the previous join task is
    done but nobody awaited its result (the poll that started it had timed
    out), throwing the assignment away. Each loss costs a full rebalance (~3 s
    on Tansu, more on Kafka), and members polled in turn can keep each other
    rebalancing for a long time. This keeps the result of a completed, unused join and
    hands it to the next attempt while the generation it belongs to is still
    current; the broker still validates that generation on every heartbeat and
    commit. Returns False (and changes nothing) on a kafka-python without
    these internals.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    names = ("_do_join_and_sync_async", "_on_join_complete_async", "_generation")
    if coordinator is None or not all(hasattr(coordinator, n) for n in names):
        return False
    join, complete = coordinator._do_join_and_sync_async, coordinator._on_join_complete_async
    unused: dict = {}

    async def join_and_sync():
        if unused and unused["generation"] is coordinator._generation:
            log.debug("using a completed group join that kafka-python would have discarded")
            return unused.pop("assignment")
        unused.clear()
        assignment = await join()
        unused.update(assignment=assignment, generation=coordinator._generation)
        return assignment

    async def on_join_complete(*args, **kwargs):
        unused.clear()
        return await complete(*args, **kwargs)

    coordinator._do_join_and_sync_async = join_and_sync
    coordinator._on_join_complete_async = on_join_complete
    return True


def _parse_tp(text: str | TopicPartition) -> TopicPartition:
    if isinstance(text, TopicPartition):
        return text
    return TopicPartition(*parse_position_key(text))
