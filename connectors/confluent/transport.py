"""Everything a stream worker needs from Kafka through librdkafka (confluent-kafka), built from one Config.

Found by the engine through the ``streamseq.transports`` entry point "confluent", which
``[kafka] client = "confluent"`` selects. The worker cannot tell it from the kafka-python
transport: the same ports, the same errors, the same messages on the topics.
"""
from __future__ import annotations

import contextlib
import os
import socket

from confluent_kafka import KafkaError, KafkaException

from streamseq.config import Config
from streamseq.errors import ConfigError

from ..common.errors import KafkaConnectorError
from ..common.topics import TopicSpec, changelog_spec
from .admin import ensure_topics
from .changelog import ConfluentChangelog
from .errors import describe, kafka_error
from .settings import ConfluentSettings
from .sink import ConfluentDeadLetterSink, ConfluentForecastSink, ConfluentProducerHandle
from .source import ConfluentSource


def settings_from_config(cfg: Config) -> ConfluentSettings:
    """The client settings of ``[kafka]``; delivery semantics come from ``[worker] exactly_once`` alone."""
    d = dict(cfg.kafka)
    if "exactly_once" in d:
        raise ConfigError("kafka.exactly_once", "no such key here: set [worker] exactly_once (one switch)")
    d.setdefault("group_id", "streamseq-worker")
    d["exactly_once"] = cfg.worker.exactly_once
    settings = ConfluentSettings.from_dict(d)
    if settings.exactly_once and not settings.transactional_id:
        # Stable per worker instance (pod / host name) so a restarted worker fences its old self.
        host = os.environ.get("HOSTNAME") or socket.gethostname()
        settings = settings.replace(transactional_id=f"{settings.group_id}-{host}")
    return settings


class ConfluentTransport:
    settings_class = ConfluentSettings

    def __init__(self, cfg: Config, settings: ConfluentSettings | None = None):
        self.cfg = cfg
        self.settings = settings or settings_from_config(cfg)
        self.part = None
        self.producer = None
        self.changelog = None
        self.forecast_sink = None
        self.dead_letter_sink = None
        # Largest changelog record worth sending: the producer's limit less room for the record's framing.
        self.max_record_bytes = self.settings.max_request_size - 1024

    settings_from_config = staticmethod(settings_from_config)

    def topic_specs(self) -> list[TopicSpec]:
        t = self.cfg.topics
        rf = t.replication_factor
        specs = [TopicSpec(name, t.partitions, rf) for name in t.observations]
        specs += [TopicSpec(t.forecasts, t.partitions, rf), TopicSpec(t.dead_letter, t.partitions, rf),
                  changelog_spec(t.changelog, t.partitions, rf)]
        return specs

    @contextlib.contextmanager
    def reaching_the_cluster(self):
        """Failing to reach the cluster while connecting becomes one KafkaConnectorError naming the servers;
        a client librdkafka refuses to build (a bad property value, a missing certificate) a ConfigError."""
        try:
            yield
        except KafkaException as e:
            err = kafka_error(e)
            if err is not None and err.code() == KafkaError._INVALID_ARG:
                raise ConfigError("kafka", f"settings librdkafka accepts ({describe(err)})") from e
            raise self._unreachable(describe(err)) from e
        except KafkaConnectorError as e:
            if not e.retriable:
                raise
            raise self._unreachable(str(e)) from e

    def _unreachable(self, why: str) -> KafkaConnectorError:
        return KafkaConnectorError(
            f"cannot reach Kafka at {self.settings.bootstrap_servers} "
            f"(tried for up to {self.settings.bootstrap_timeout_ms / 1000:g}s): {why}", retriable=True)

    def ensure_topics(self) -> dict[str, str]:
        with self.reaching_the_cluster():
            return ensure_topics(self.settings, self.topic_specs())

    def open(self) -> ConfluentTransport:
        with self.reaching_the_cluster():
            return self._open()

    def _open(self) -> ConfluentTransport:
        c, s = self.cfg, self.settings
        # A flush waits as long as one request may take; an outage beyond it is retried by the worker.
        self.producer = ConfluentProducerHandle(s, flush_timeout_s=max(1.0, s.request_timeout_ms / 1000))
        self.producer.producer.list_topics(timeout=s.bootstrap_timeout_ms / 1000)  # reachable at all?
        if c.topics.create:
            ensure_topics(s, self.topic_specs())
        i = c.input
        source = ConfluentSource(s, list(c.topics.observations), key_field=i.key_field or None,
                                 time_field=i.time_field, value_fields=list(i.value_fields), time_unit=i.time_unit,
                                 max_record_bytes=i.max_record_bytes, poll_timeout_ms=c.worker.poll_timeout_ms)
        self.forecast_sink = ConfluentForecastSink(self.producer, c.topics.forecasts)
        self.dead_letter_sink = ConfluentDeadLetterSink(self.producer, c.topics.dead_letter)
        self.changelog = ConfluentChangelog(self.producer, s, c.topics.changelog)
        self.part = source.build_part(source.list_parts()[0], None)
        return self

    # -- tools for people and services -------------------------------------------
    def feed(self, part, topic: str, *, value_fields: list[str], key_field: str = "key",
             time_field: str = "ts", max_records: int | None = None) -> int:
        from ..common.feed import feed

        with self.reaching_the_cluster():
            handle = ConfluentProducerHandle(self.settings.replace(exactly_once=False, transactional_id=None))
            handle.producer.list_topics(timeout=self.settings.bootstrap_timeout_ms / 1000)
        try:
            return feed(part, handle, topic, key_field=key_field, time_field=time_field,
                        value_fields=value_fields, max_records=max_records)
        finally:
            handle.close()

    def iter_forecasts(self, topic: str, **kw):
        from .forecasts import iter_forecasts

        with self.reaching_the_cluster():
            yield from iter_forecasts(self.settings, topic, **kw)
