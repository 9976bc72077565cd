"""Feeding a topic from any SourcePartition (a file replay, a MemoryPartition): demos, load tests.

Each observation becomes one JSON message keyed by its series key, so one key
always lands in one partition and keeps its order there::

    {"key": "s1", "ts": "2024-01-01T00:00:00Z", "temp": 21.5}

which a Kafka source with ``key_field="key", time_field="ts", value_fields=["temp"]``
reads back (``time_format="iso"`` keeps nanoseconds; a unit such as "ms" gives
epoch integers instead). Pacing (replay speed) is the source's business.
"""
from __future__ import annotations

import numpy as np
import orjson

from streamseq.clock import SystemClock
from streamseq.errors import ConfigError
from streamseq.ports import DeadLetterSink, SourcePartition

from .decode import TIME_UNITS


def feed(
    part: SourcePartition,
    producer,
    topic: str,
    *,
    key_field: str = "key",
    time_field: str = "ts",
    value_fields: list[str],
    time_format: str = "iso",
    max_records: int | None = None,
    max_idle_s: float = 10.0,
    dead_letters: DeadLetterSink | None = None,
    clock=None,
) -> int:
    """Produce every observation of ``part`` to ``topic`` in order; returns the number produced.

    ``producer``: anything with ``send(topic, value, key=...)`` and ``flush()``: either transport's
    producer handle, or a kafka-python KafkaProducer (flushed at the end).
    Stops when the part is exhausted, after ``max_records``, or after
    ``max_idle_s`` of empty batches (a paced or live source).
    """
    if time_format != "iso" and time_format not in TIME_UNITS:
        raise ConfigError("time_format", f"'iso' or one of {sorted(TIME_UNITS)}, got {time_format!r}")
    clock = clock or SystemClock()
    sent = 0
    idle_since = None
    while not part.exhausted and (max_records is None or sent < max_records):
        batch, letters = part.next_batch()
        if letters and dead_letters is not None:
            dead_letters.write(letters)
        if len(batch) == 0:
            now = clock.monotonic()
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since > max_idle_s:
                break
            clock.sleep(0.01)
            continue
        idle_since = None
        if batch.values.shape[1] != len(value_fields):
            raise ConfigError("value_fields", f"{batch.values.shape[1]} names (one per value column), "
                                              f"got {value_fields}")
        if max_records is not None:
            batch = batch.take(np.arange(min(len(batch), max_records - sent)))
        for key, value in observation_messages(batch.keys, batch.ts, batch.values, key_field=key_field,
                                               time_field=time_field, value_fields=value_fields,
                                               time_format=time_format):
            producer.send(topic, value, key=key)
        sent += len(batch)
    producer.flush()
    return sent


def observation_messages(keys: np.ndarray, ts: np.ndarray, values: np.ndarray, *, key_field: str = "key",
                         time_field: str = "ts", value_fields: list[str], time_format: str = "iso"
                         ) -> list[tuple[bytes, bytes]]:
    """(message key, JSON value) per observation; non-finite values become null.

    >>> observation_messages(np.array(["s1"], dtype=object), np.array([1500000000]), np.array([[2.5]]),
    ...                      value_fields=["temp"])
    [(b's1', b'{"key":"s1","ts":"1970-01-01T00:00:01.500Z","temp":2.5}')]
    """
    if time_format == "iso":
        times = _iso_strings(np.asarray(ts, dtype=np.int64)).tolist()
    else:
        times = (np.asarray(ts, dtype=np.int64) // TIME_UNITS[time_format]).tolist()
    rows = np.asarray(values, dtype=np.float64)
    if not np.isfinite(rows).all():
        rows = rows.astype(object)
        rows[~np.isfinite(np.asarray(values, dtype=np.float64))] = None
    out = []
    dumps = orjson.dumps
    for k, t, row in zip(keys.tolist(), times, rows.tolist()):
        k = str(k)
        message = {key_field: k, time_field: t}
        message.update(zip(value_fields, row))
        out.append((k.encode("utf-8"), dumps(message)))
    return out


def _iso_strings(ts: np.ndarray) -> np.ndarray:
    """RFC 3339 UTC strings with the coarsest unit that is exact (s, ms, us or ns)."""
    unit = "ns"
    for coarse, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if (ts % size == 0).all():
            unit = coarse
            break
    return np.datetime_as_string(ts.astype("datetime64[ns]"), unit=unit, timezone="UTC")
