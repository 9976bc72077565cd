"""Reading the forecast topic with librdkafka, for services and notebooks::

    for f in iter_forecasts(settings, "forecasts", key="sensor-7"):   # a service, forever
        ...
    frame = read_forecasts_frame(settings, "forecasts")               # what is there now, long form

The same contract as connectors.kafka.forecasts: without ``group_id`` every partition is
read (assign, no commits); with one, the reader joins that group and commits what it has
yielded (at-least-once). ``stop_at_end`` ends once every partition has reported its end
(librdkafka's partition-EOF event, from the fetch's high watermark).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import polars as pl
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as WireTopicPartition

from streamseq.forecast_json import Forecast, ForecastDecodeError, decode_forecast, forecasts_to_frame

from .errors import describe, kafka_error
from .settings import ConfluentSettings

log = logging.getLogger(__name__)


def iter_forecasts(settings: ConfluentSettings, topic: str, *, from_beginning: bool = True, key: str | None = None,
                   group_id: str | None = None, max_idle_s: float | None = None, stop_at_end: bool = False,
                   poll_timeout_ms: int = 200) -> Iterator[Forecast]:
    """Forecasts in partition order (optionally of one ``key`` only).

    Ends after ``max_idle_s`` without a message (None: never), or with ``stop_at_end`` once
    every partition is read to its end. Messages that are not valid forecasts are logged and skipped.
    """
    wanted = key.encode("utf-8") if key is not None else None
    extra = {"enable.partition.eof": True, "auto.offset.reset": "earliest" if from_beginning else "latest"}
    at_end: set[int] = set()
    assigned: set[int] = set()
    if group_id is not None:
        consumer = Consumer(settings.replace(group_id=group_id).consumer_config(group=True, **extra))

        def on_assign(c, tps):
            assigned.update(t.partition for t in tps)

        def on_revoke(c, tps):
            for t in tps:
                assigned.discard(t.partition)
                at_end.discard(t.partition)

        consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        join_allowance = settings.session_timeout_ms / 1000  # a join can take half the session timeout (Tansu)
    else:
        consumer = Consumer(settings.consumer_config(group=False, **extra))
        meta = consumer.list_topics(topic, timeout=max(1.0, settings.request_timeout_ms / 1000)).topics.get(topic)
        parts = sorted(meta.partitions) if meta is not None and meta.error is None else []
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([WireTopicPartition(topic, p, start) for p in parts])
        assigned.update(parts)
        join_allowance = 0.0
    skipped = 0
    try:
        if group_id is None and not assigned:
            return  # the topic has no partitions (does not exist)
        last_data = time.monotonic()
        was_assigned = bool(assigned)
        while True:
            messages = consumer.consume(1000, poll_timeout_ms / 1000)
            now = time.monotonic()
            if not was_assigned and assigned:
                was_assigned, last_data = True, now
            done: dict[int, int] = {}
            for m in messages:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition())
                    else:
                        log.warning("reading %s: %s", topic, describe(err))
                    continue
                at_end.discard(m.partition())
                last_data = now
                done[m.partition()] = m.offset() + 1
                if wanted is not None and m.key() != wanted:
                    continue
                try:
                    forecast = decode_forecast(m.value())
                except ForecastDecodeError as e:
                    skipped += 1
                    log.warning("%s[%d]@%d: not a forecast, skipped: %s", topic, m.partition(), m.offset(), e)
                    continue
                yield forecast
            if done and group_id is not None:
                try:
                    consumer.commit(offsets=[WireTopicPartition(topic, p, off) for p, off in done.items()],
                                    asynchronous=False)
                except KafkaException as e:  # the group moved on: the next owner reads these again
                    log.warning("reading %s: offsets not committed: %s", topic, describe(kafka_error(e)))
            if stop_at_end and assigned and assigned <= at_end:
                return
            idle_limit = None if max_idle_s is None else max_idle_s + (0 if was_assigned else join_allowance)
            if idle_limit is not None and now - last_data > idle_limit:
                return
    finally:
        if skipped:
            log.warning("%s: %d message(s) were not forecasts", topic, skipped)
        consumer.close()


def read_forecasts_frame(settings: ConfluentSettings, topic: str, *, from_beginning: bool = True,
                         key: str | None = None, group_id: str | None = None, max_idle_s: float = 2.0,
                         stop_at_end: bool = True, dedupe: bool = True) -> pl.DataFrame:
    """The forecasts on ``topic`` now, long form (see forecasts_to_frame); ``dedupe`` keeps the last
    copy of each forecast id."""
    forecasts = list(iter_forecasts(settings, topic, from_beginning=from_beginning, key=key, group_id=group_id,
                                    max_idle_s=max_idle_s, stop_at_end=stop_at_end))
    if dedupe:
        forecasts = list({f.id: f for f in forecasts}.values())
    return forecasts_to_frame(forecasts)
