"""Reading the forecast topic, for services and notebooks::

    for f in iter_forecasts(settings, "forecasts", key="sensor-7"):   # a service, forever
        ...
    frame = read_forecasts_frame(settings, "forecasts")               # what is there now, long form

Without ``group_id`` every partition is read (assign, no commits); with one,
the reader joins that consumer group and commits what it has yielded
(at-least-once), so a restarted service continues where it stopped.

On Tansu (the test broker) ``from_beginning=False`` is approximate: its end
offsets are wrong, so older records may show up.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import polars as pl
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streamseq.forecast_json import Forecast, ForecastDecodeError, decode_forecast, forecasts_to_frame

from .settings import KafkaSettings

log = logging.getLogger(__name__)


def iter_forecasts(
    settings: KafkaSettings,
    topic: str,
    *,
    from_beginning: bool = True,
    key: str | None = None,
    group_id: str | None = None,
    max_idle_s: float | None = None,
    stop_at_end: bool = False,
    poll_timeout_ms: int = 200,
) -> Iterator[Forecast]:
    """Forecasts in partition order (optionally of one ``key`` only).

    Ends after ``max_idle_s`` without a message (None: never), or with
    ``stop_at_end`` once every partition is read up to its highwater mark.
    Messages that are not valid forecasts are logged and skipped.
    """
    wanted = key.encode("utf-8") if key is not None else None
    if group_id is not None:
        reset = "earliest" if from_beginning else "latest"
        consumer = KafkaConsumer(**settings.replace(group_id=group_id, auto_offset_reset=reset).consumer_kwargs())
        consumer.subscribe([topic])
        # a group join can take about half the session timeout (Tansu); it does not count as idle
        join_allowance = settings.session_timeout_ms / 1000
    else:
        consumer = KafkaConsumer(**settings.consumer_kwargs(group=False))
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*tps)
        join_allowance = 0.0
    skipped = 0
    try:
        last_data = time.monotonic()
        assigned = False
        while True:
            polled = consumer.poll(timeout_ms=poll_timeout_ms)
            now = time.monotonic()
            if not assigned and consumer.assignment():
                assigned, last_data = True, now
            for records in polled.values():
                for r in records:
                    if wanted is not None and r.key != wanted:
                        continue
                    try:
                        forecast = decode_forecast(r.value)
                    except ForecastDecodeError as e:
                        skipped += 1
                        log.warning("%s[%d]@%d: not a forecast, skipped: %s", r.topic, r.partition, r.offset, e)
                        continue
                    yield forecast
            if polled:
                last_data = now
                if group_id is not None:
                    consumer.commit({tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1)
                                     for tp, recs in polled.items() if recs})
            if stop_at_end and assigned and _caught_up(consumer):
                return
            if not assigned and group_id is None:
                return  # the topic has no partitions (does not exist)
            idle_limit = None if max_idle_s is None else max_idle_s + (0 if assigned else join_allowance)
            if idle_limit is not None and now - last_data > idle_limit:
                return
    finally:
        if skipped:
            log.warning("%s: %d message(s) were not forecasts", topic, skipped)
        consumer.close(autocommit=False)


def _caught_up(consumer: KafkaConsumer) -> bool:
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        if hw is None or consumer.position(tp) < hw:
            return False
    return True


def read_forecasts_frame(
    settings: KafkaSettings,
    topic: str,
    *,
    from_beginning: bool = True,
    key: str | None = None,
    group_id: str | None = None,
    max_idle_s: float = 2.0,
    stop_at_end: bool = True,
    dedupe: bool = True,
) -> pl.DataFrame:
    """The forecasts on ``topic`` now, long form (see forecasts_to_frame).

    ``dedupe`` keeps the last copy of each forecast id (redeliveries after a
    crash; aborted transactions on brokers that still show them).
    """
    forecasts = list(iter_forecasts(settings, topic, from_beginning=from_beginning, key=key,
                                    group_id=group_id, max_idle_s=max_idle_s, stop_at_end=stop_at_end))
    if dedupe:
        forecasts = list({f.id: f for f in forecasts}.values())
    return forecasts_to_frame(forecasts)


def read_forecasts_pandas(settings: KafkaSettings, topic: str, **kw):
    """The same as read_forecasts_frame, as a pandas DataFrame (for services built on pandas)."""
    return read_forecasts_frame(settings, topic, **kw).to_pandas()
