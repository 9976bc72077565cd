"""Observations from Kafka topics: a consumer-group source with one part, "consumer".

Messages are JSON objects, e.g. ``{"key": "s1", "ts": "2024-01-01T00:00:00Z", "temp": 21.5}``.
The series key is the message key (``key_field=None``) or a field; the event time
is an RFC 3339 / ISO 8601 string (no offset = UTC) or an epoch number in
``time_unit``; value fields are JSON numbers (a number sent as a string is a dead letter).
Anything else becomes a DeadLetter with a reason and its topic, partition and
offset; ``next_batch`` never raises on data.

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
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

try:  # kafka-python >= 3: listeners run on the client's IO thread
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
except ImportError:  # kafka-python 2.x: they run inside poll() on the caller's thread
    AsyncConsumerRebalanceListener = None
from kafka.errors import IllegalStateError, KafkaError
from kafka.structs import OffsetAndMetadata

from streamseq.errors import ConfigError
from streamseq.ports import GroupPartition, Source
from streamseq.records import MAX_ABS_VALUE, MAX_KEY_BYTES, DeadLetter, ObservationBatch, key_fault

from .settings import KafkaSettings, warn_if_pure_python_crc

log = logging.getLogger(__name__)

PART_NAME = "consumer"
TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
MIN_TS_NS = 0  # 1970-01-01
MAX_TS_NS = int(datetime(2201, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000_000  # exclusive: end of 2200
_PID_TOPIC_SHIFT = 20  # partition id = topic index << 20 | partition (stable across restarts)

RebalanceCallback = Callable[[list[TopicPartition]], None]


class KafkaSource(Source):
    """Keyed JSON observations from ``topics``, read by one consumer-group member.

    ``settings.group_id`` is required: committed group offsets are the resume
    position. ``build_part("consumer", resume_state)`` accepts the dict
    returned by ``KafkaPartition.snapshot()``; its offsets override the
    committed ones for partitions this member is assigned.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topics: list[str],
        *,
        key_field: str | None,
        time_field: str,
        value_fields: list[str],
        time_unit: str = "ms",
        max_record_bytes: int = 1_000_000,
        poll_timeout_ms: int = 100,
    ):
        if not settings.group_id:
            raise ConfigError("kafka.group_id", "a consumer group id for the stream workers")
        if not topics:
            raise ConfigError("kafka.topics", "at least one topic")
        if time_unit not in TIME_UNITS:
            raise ConfigError("time_unit", f"one of {sorted(TIME_UNITS)}, got {time_unit!r}")
        if not value_fields:
            raise ConfigError("value_fields", "at least one numeric field")
        self.settings = settings
        self.topics = list(topics)
        self.key_field = key_field
        self.time_field = time_field
        self.value_fields = list(value_fields)
        self.time_unit = time_unit
        self.max_record_bytes = max_record_bytes
        self.poll_timeout_ms = poll_timeout_ms

    def list_parts(self) -> list[str]:
        return [PART_NAME]

    def build_part(self, name: str, resume_state: Any | None = None) -> KafkaPartition:
        if name != PART_NAME:
            raise ValueError(f"KafkaSource has one part, {PART_NAME!r}; got {name!r}")
        return KafkaPartition(self, resume_state)

    def decoder(self) -> JsonObservationDecoder:
        return JsonObservationDecoder(
            self.key_field, self.time_field, self.value_fields, self.time_unit, self.max_record_bytes
        )


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
        return (self._topic_index[tp.topic] << _PID_TOPIC_SHIFT) | tp.partition

    def topic_partition(self, pid: int) -> TopicPartition:
        return TopicPartition(self._topics[pid >> _PID_TOPIC_SHIFT], pid & ((1 << _PID_TOPIC_SHIFT) - 1))

    def kafka_partition(self, pid: int) -> int:
        return pid & ((1 << _PID_TOPIC_SHIFT) - 1)

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
    m = re.fullmatch(r"(.+)\[(\d+)\]", text)
    if m is None:
        raise ConfigError("resume_state", f"keys like 'topic[0]', got {text!r}")
    return TopicPartition(m.group(1), int(m.group(2)))


# --- decoding ---------------------------------------------------------------------

_ISO_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?))?\s*(Z|z|[+-]\d{2}:?\d{2})?"
)


class JsonObservationDecoder:
    """Kafka records -> (ObservationBatch, dead letters): one orjson.loads per record, arrays at the end."""

    def __init__(self, key_field: str | None, time_field: str, value_fields: list[str],
                 time_unit: str = "ms", max_record_bytes: int = 1_000_000):
        self.key_field = key_field
        self.time_field = time_field
        self.value_fields = list(value_fields)
        self.unit_ns = TIME_UNITS[time_unit]
        self.max_record_bytes = max_record_bytes

    def decode(self, groups: Iterable[tuple[int, list]]) -> tuple[ObservationBatch, list[DeadLetter]]:
        """``groups``: (partition id, records in offset order) per Kafka partition."""
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        key_field, time_field, fields = self.key_field, self.time_field, self.value_fields
        max_bytes = self.max_record_bytes
        get_values, single = itemgetter(*fields), len(fields) == 1
        letters: list[DeadLetter] = []
        keys: list[str] = []
        flat: list[float] = []
        offsets: list[int] = []
        rows: list = []  # the records kept, for dead letters found after vectorised checks
        pids: list[int] = []
        counts: list[int] = []
        iso_idx: list[int] = []
        iso_str: list[str] = []
        int_idx: list[int] = []
        int_val: list[int] = []
        float_idx: list[int] = []
        float_val: list[float] = []

        def dead(r, reason: str, key: str | None = None) -> None:
            if key is None and r.key is not None and len(r.key) <= MAX_KEY_BYTES:
                key = r.key.decode("utf-8", "replace")
            letters.append(DeadLetter(reason, r.topic, r.partition, r.offset, r.value, key))

        for pid, records in groups:
            start = len(keys)
            for r in records:
                v = r.value
                if v is None:
                    dead(r, "empty_value: null message value")
                    continue
                if len(v) > max_bytes:
                    dead(r, f"too_large: {len(v)} bytes > max_record_bytes {max_bytes}")
                    continue
                if v[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark some producers write
                    v = v[3:]
                try:
                    obj = loads(v)
                except JSONDecodeError as e:
                    code = "invalid_utf8" if "UTF-8" in str(e) else "not_json"
                    dead(r, f"{code}: {e}")
                    continue
                if type(obj) is not dict:
                    dead(r, f"not_object: JSON {type(obj).__name__}, expected an object")
                    continue
                if key_field is None:
                    k = r.key
                    if k is None:
                        dead(r, "missing_key: message has no key")
                        continue
                    try:
                        k = k.decode("utf-8")
                    except UnicodeDecodeError:
                        dead(r, "invalid_key: message key is not UTF-8")
                        continue
                else:
                    k = obj.get(key_field)
                    if type(k) is not str:
                        if k is None:
                            dead(r, f"missing_key: no field {key_field!r}")
                            continue
                        if type(k) is not int:
                            dead(r, f"invalid_key: field {key_field!r} is {type(k).__name__}")
                            continue
                        k = str(k)
                if not k or len(k) * 4 > MAX_KEY_BYTES or k.isspace():
                    fault = key_fault(k)
                    if fault is not None:
                        dead(r, f"{fault[0]}: {fault[1]}", k if fault[0] == "missing_key" else None)
                        continue
                t = obj.get(time_field)
                tt = type(t)
                if tt is not str and tt is not int and tt is not float:
                    if t is None:
                        dead(r, f"missing_time: no field {time_field!r}", k)
                    else:
                        dead(r, f"bad_time: field {time_field!r} is {tt.__name__}", k)
                    continue
                try:
                    row = get_values(obj)
                except KeyError as e:
                    dead(r, f"missing_value: no field {e.args[0]!r}", k)
                    continue
                if single:
                    row = (row,)
                for x in row:
                    if type(x) is not float and type(x) is not int:
                        row = _coerce_row(row, fields)
                        break
                if type(row) is str:
                    dead(r, row, k)
                    continue
                n = len(keys)
                if tt is str:
                    iso_idx.append(n)
                    iso_str.append(t)
                elif tt is int:
                    int_idx.append(n)
                    int_val.append(t)
                else:
                    float_idx.append(n)
                    float_val.append(t)
                keys.append(k)
                flat.extend(row)
                offsets.append(r.offset)
                rows.append(r)
            pids.append(pid)
            counts.append(len(keys) - start)

        n, width = len(keys), len(fields)
        if n == 0:
            return ObservationBatch.empty(width), letters
        values = np.array(flat, dtype=np.float64).reshape(n, width)
        ts = np.zeros(n, dtype=np.int64)
        time_ok = np.zeros(n, dtype=bool)
        if iso_idx:
            parsed, ok = parse_iso_times(iso_str)
            ts[iso_idx], time_ok[iso_idx] = parsed, ok
        if int_idx:
            parsed, ok = self._epoch_ints(int_val)
            ts[int_idx], time_ok[int_idx] = parsed, ok
        if float_idx:
            parsed, ok = self._epoch_floats(float_val)
            ts[float_idx], time_ok[float_idx] = parsed, ok
        in_range = time_ok & (ts >= MIN_TS_NS) & (ts < MAX_TS_NS)
        finite = np.isfinite(values).all(axis=1)
        bounded = (np.abs(values) <= MAX_ABS_VALUE).all(axis=1)
        keep = in_range & finite & bounded
        key_array = np.empty(n, dtype=object)
        key_array[:] = keys
        batch = ObservationBatch(
            keys=key_array,
            ts=ts,
            values=values,
            partition=np.repeat(np.array(pids, dtype=np.int32), counts),
            offset=np.array(offsets, dtype=np.int64),
        )
        if keep.all():
            return batch, letters
        for i in np.flatnonzero(~keep):
            r = rows[i]
            if not time_ok[i]:
                dead(r, f"bad_time: cannot read {self.time_field!r} as a time", keys[i])
            elif not in_range[i]:
                dead(r, f"time_out_of_range: {self.time_field!r} outside years 1970..2200", keys[i])
            elif not finite[i]:
                bad = [f for f, x in zip(self.value_fields, values[i]) if not np.isfinite(x)]
                dead(r, f"non_finite: {', '.join(bad)}", keys[i])
            else:
                bad = [f for f, x in zip(self.value_fields, values[i]) if abs(x) > MAX_ABS_VALUE]
                dead(r, f"value_out_of_range: {', '.join(bad)} beyond ±{MAX_ABS_VALUE:g}", keys[i])
        return batch.take(np.flatnonzero(keep)), letters

    # Epoch numbers always read as times; one outside 1970..2200 maps to -1 ns, which the range check rejects.

    def _epoch_ints(self, vals: list[int]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = MIN_TS_NS // self.unit_ns, MAX_TS_NS // self.unit_ns
        try:
            raw = np.array(vals, dtype=np.int64)
            fits = (raw >= lo) & (raw < hi)
        except OverflowError:  # beyond int64: certainly out of range, find which one by one
            fits = np.array([lo <= v < hi for v in vals], dtype=bool)
            raw = np.array([v if f else 0 for v, f in zip(vals, fits)], dtype=np.int64)
        return np.where(fits, raw * self.unit_ns, -1), np.ones(len(vals), dtype=bool)

    def _epoch_floats(self, vals: list[float]) -> tuple[np.ndarray, np.ndarray]:
        raw = np.array(vals, dtype=np.float64)
        fits = np.isfinite(raw) & (raw * self.unit_ns >= MIN_TS_NS) & (raw * self.unit_ns < MAX_TS_NS)
        raw = np.where(fits, raw, 0.0)
        whole = np.floor(raw)  # whole units exactly, then the fraction: no 256 ns float steps at 1.7e18
        ns = whole.astype(np.int64) * self.unit_ns + np.round((raw - whole) * self.unit_ns).astype(np.int64)
        return np.where(fits, ns, -1), np.ones(len(vals), dtype=bool)


def _coerce_row(row: list, fields: list[str]) -> list[float] | str:
    """Slow path for a row with a non-number: the dead-letter reason (strings are never numbers)."""
    out = []
    for f, x in zip(fields, row):
        tx = type(x)
        if tx is float or tx is int:
            out.append(x)
        elif x is None:
            return f"missing_value: no field {f!r}"
        elif tx is str:
            # A number sent as a string is a producer bug: dead-letter it rather than guess.
            try:
                as_float = float(x)
            except ValueError:
                return f"non_numeric: field {f!r} is {x[:40]!r}"
            if not np.isfinite(as_float):
                return f"non_finite: field {f!r} is {x[:40]!r}"
            return f"non_numeric: field {f!r} is the string {x[:40]!r}, not a JSON number"
        else:
            return f"non_numeric: field {f!r} is {tx.__name__}"
    return out


def parse_iso_times(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 / RFC 3339 strings -> (int64 ns, ok mask); no offset means UTC; 9 fraction digits kept.

    Years far outside 1970..2200 parse to a time before 1970, so range checks reject them.

    >>> ns, ok = parse_iso_times(["1970-01-01T00:00:01.5Z", "1970-01-01 02:00:00+02:00", "soon"])
    >>> ns.tolist(), ok.tolist()
    ([1500000000, 0, 0], [True, True, False])
    """
    n = len(texts)
    ns = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return ns, ok
    arr = np.array(texts)
    fast = np.strings.endswith(arr, "Z") & (np.strings.slice(arr, 4, 5) == "-") & \
        ((np.strings.slice(arr, 10, 11) == "T") | (np.strings.str_len(arr) == 11))
    if fast.any():
        try:  # RFC 3339 in UTC, the usual case: numpy parses them all in C
            subset = arr[fast]
            years = np.strings.slice(subset, 0, 4).astype(np.int64)
            if years.min() < 1969 or years.max() > 2201:  # datetime64[ns] wraps outside 1678..2262
                raise ValueError("year outside 1969..2201")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = np.strings.slice(subset, 0, -1).astype("datetime64[ns]").view(np.int64)
        except ValueError:
            fast[:] = False
        else:
            ns[fast] = parsed
            ok[fast] = parsed != np.iinfo(np.int64).min  # NaT
            if fast.all():
                return np.where(ok, ns, 0), ok
    rest = np.flatnonzero(~fast)
    rest_ns, rest_ok = _parse_iso_slow([texts[i] for i in rest])
    ns[rest], ok[rest] = rest_ns, rest_ok
    return np.where(ok, ns, 0), ok


def _parse_iso_slow(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One regex per string: offsets, date-only, space separator, odd years; then one numpy parse."""
    n = len(texts)
    naive = [""] * n
    offsets = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    match = _ISO_TIME.fullmatch
    for i, s in enumerate(texts):
        m = match(s)
        if m is None:
            ok[i] = False
            naive[i] = "NaT"
            continue
        date, clock, tz = m.groups()
        if not 1969 <= int(date[:4]) <= 2201:  # datetime64[ns] wraps silently outside 1678..2262
            naive[i] = "1900-01-01"  # parses, and fails the 1970..2200 range check as it should
            continue
        naive[i] = f"{date}T{clock}" if clock else date
        if tz is not None and tz not in ("Z", "z"):
            sign = 1 if tz[0] == "+" else -1
            offsets[i] = sign * (int(tz[1:3]) * 3600 + int(tz[-2:]) * 60) * 1_000_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = np.array(naive, dtype="datetime64[ns]").view(np.int64)
        except ValueError:  # an impossible date somewhere (month 13): find it one by one
            parsed = np.zeros(n, dtype=np.int64)
            for i, s in enumerate(naive):
                try:
                    parsed[i] = np.datetime64(s, "ns").view(np.int64)
                except ValueError:
                    ok[i] = False
    ok &= parsed != np.iinfo(np.int64).min  # NaT
    return np.where(ok, parsed - offsets, 0), ok
