"""Everything a stream worker needs from Kafka, built from one streamseq Config.

Found by the engine through the ``streamseq.transports`` entry point "kafka".
"""
from __future__ import annotations

import contextlib
import os
import socket

from kafka import errors as kerr

from streamseq.config import Config
from streamseq.errors import ConfigError

from .admin import TopicSpec, changelog_spec, ensure_topics
from .changelog import ChangelogStore
from .settings import KafkaSettings
from .sink import KafkaConnectorError, KafkaDeadLetterSink, KafkaForecastSink, KafkaProducerHandle
from .source import KafkaSource


def settings_from_config(cfg: Config) -> KafkaSettings:
    """The client settings of ``[kafka]``; delivery semantics come from ``[worker] exactly_once`` alone.

    ``client`` (which transport) and librdkafka's own properties (keys with a dot, the ``librdkafka``
    table: connectors.confluent) are not kafka-python's and are left out.
    """
    d = {k: v for k, v in cfg.kafka.items() if k not in ("client", "librdkafka") and "." not in str(k)}
    if "exactly_once" in d:
        raise ConfigError("kafka.exactly_once", "no such key here: set [worker] exactly_once (one switch)")
    d.setdefault("group_id", "streamseq-worker")
    d["exactly_once"] = cfg.worker.exactly_once
    settings = KafkaSettings.from_dict(d)
    if settings.exactly_once and not settings.transactional_id:
        # Stable per worker instance (pod / host name) so a restarted worker fences its old self.
        host = os.environ.get("HOSTNAME") or socket.gethostname()
        settings = settings.replace(transactional_id=f"{settings.group_id}-{host}")
    return settings


class KafkaTransport:
    settings_class = KafkaSettings
    settings_from_config = staticmethod(settings_from_config)

    def __init__(self, cfg: Config, settings: KafkaSettings | None = None):
        self.cfg = cfg
        self.settings = settings or settings_from_config(cfg)
        self.part = None
        self.producer = None
        self.changelog = None
        self.forecast_sink = None
        self.dead_letter_sink = None
        # Largest changelog record worth sending: the producer's limit less room for the record's framing.
        self.max_record_bytes = self.settings.max_request_size - 1024

    def topic_specs(self) -> list[TopicSpec]:
        t = self.cfg.topics
        rf = t.replication_factor
        specs = [TopicSpec(name, t.partitions, rf) for name in t.observations]
        specs += [TopicSpec(t.forecasts, t.partitions, rf), TopicSpec(t.dead_letter, t.partitions, rf),
                  changelog_spec(t.changelog, t.partitions, rf)]
        return specs

    @contextlib.contextmanager
    def reaching_the_cluster(self):
        """Client errors while connecting become one KafkaConnectorError that names the servers."""
        try:
            yield
        except kerr.KafkaError as e:
            raise KafkaConnectorError(
                f"cannot reach Kafka at {self.settings.bootstrap_servers} "
                f"(tried for up to {self.settings.bootstrap_timeout_ms / 1000:g}s): {type(e).__name__}: {e}",
                retriable=True) from e

    def ensure_topics(self) -> dict[str, str]:
        with self.reaching_the_cluster():
            return ensure_topics(self.settings, self.topic_specs())

    def open(self) -> KafkaTransport:
        with self.reaching_the_cluster():
            return self._open()

    def _open(self) -> KafkaTransport:
        c = self.cfg
        if c.topics.create:
            self.ensure_topics()
        i = c.input
        source = KafkaSource(self.settings, list(c.topics.observations), key_field=i.key_field or None,
                             time_field=i.time_field, value_fields=list(i.value_fields), time_unit=i.time_unit,
                             max_record_bytes=i.max_record_bytes, poll_timeout_ms=c.worker.poll_timeout_ms)
        # A flush waits as long as one request may take; an outage beyond it is retried by the worker.
        self.producer = KafkaProducerHandle(self.settings, flush_timeout_s=max(1.0, self.settings.request_timeout_ms / 1000))
        self.forecast_sink = KafkaForecastSink(self.producer, c.topics.forecasts)
        self.dead_letter_sink = KafkaDeadLetterSink(self.producer, c.topics.dead_letter)
        self.changelog = ChangelogStore(self.producer, self.settings, c.topics.changelog)
        self.part = source.build_part(source.list_parts()[0], None)
        return self

    # -- tools for people and services -------------------------------------------
    def feed(self, part, topic: str, *, value_fields: list[str], key_field: str = "key",
             time_field: str = "ts", max_records: int | None = None) -> int:
        from .feed import feed

        with self.reaching_the_cluster():
            handle = KafkaProducerHandle(self.settings.replace(exactly_once=False, transactional_id=None))
        try:
            return feed(part, handle, topic, key_field=key_field, time_field=time_field,
                        value_fields=value_fields, max_records=max_records)
        finally:
            handle.close()

    def iter_forecasts(self, topic: str, **kw):
        from .forecasts import iter_forecasts

        with self.reaching_the_cluster():
            yield from iter_forecasts(self.settings, topic, **kw)
