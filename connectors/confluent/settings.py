"""confluent-kafka (librdkafka) settings: the shared Kafka keys, turned into librdkafka properties.

The keys that mean the same for every client keep their names (``bootstrap_servers``,
``group_id``, ``linger_ms``, ``max_request_size`` ...: connectors.common.settings);
librdkafka's own properties pass through, as a ``librdkafka`` table or as keys with a
dot, and are checked by librdkafka itself when the settings are built::

    [kafka]
    client = "confluent"
    bootstrap_servers = "kafka:9092"
    linger_ms = 10
    "compression.type" = "lz4"                 # a librdkafka property
    librdkafka = {"queue.buffering.max.kbytes" = 1048576}

A property the transport sets from a shared key, or owns (auto-commit, the partitioner...),
cannot be passed through: the error names the key to set instead.

>>> s = ConfluentSettings.from_dict({"client": "confluent", "linger_ms": 10, "compression.type": "lz4"})
>>> s.producer_config()["linger.ms"], s.producer_config()["compression.type"], s.producer_config()["partitioner"]
(10, 'lz4', 'murmur2_random')
>>> ConfluentSettings.from_dict({"librdkafka": {"linger.ms": 3}})
Traceback (most recent call last):
...
streamseq.errors.ConfigError: kafka.librdkafka.linger.ms: expected [kafka] linger_ms instead (the transport sets linger.ms from it)
>>> ConfluentSettings.from_dict({"compresion.type": "lz4"})
Traceback (most recent call last):
...
streamseq.errors.ConfigError: kafka.compresion.type: expected a librdkafka property (No such configuration property: "compresion.type")
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

from streamseq.errors import ConfigError

from ..common.settings import KafkaClientSettings

CLIENT = "confluent"
COOPERATIVE = "cooperative-sticky"

# librdkafka properties the transport sets from a shared key: {property: the key to set instead}.
_FROM_SHARED_KEYS = {
    "bootstrap.servers": "bootstrap_servers", "metadata.broker.list": "bootstrap_servers",
    "security.protocol": "security_protocol", "sasl.mechanism": "sasl_mechanism", "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username", "sasl.password": "sasl_password", "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile", "ssl.key.location": "ssl_keyfile", "client.id": "client_id",
    "group.id": "group_id", "session.timeout.ms": "session_timeout_ms",
    "heartbeat.interval.ms": "heartbeat_interval_ms", "max.poll.interval.ms": "max_poll_interval_ms",
    "fetch.max.bytes": "fetch_max_bytes", "max.partition.fetch.bytes": "max_partition_fetch_bytes",
    "auto.offset.reset": "auto_offset_reset", "check.crcs": "check_crcs", "linger.ms": "linger_ms",
    "queue.buffering.max.ms": "linger_ms", "batch.size": "batch_size", "acks": "acks",
    "request.required.acks": "acks", "transactional.id": "transactional_id",
    "transaction.timeout.ms": "transaction_timeout_ms", "isolation.level": "isolation_level",
    "socket.timeout.ms": "request_timeout_ms", "message.max.bytes": "max_request_size",
}
# Properties the transport's semantics depend on (commits, delivery reports, partitioning).
_OWNED = {"enable.auto.commit", "enable.auto.offset.store", "enable.idempotence", "partitioner",
          "enable.partition.eof", "delivery.report.only.error", "logger", "error_cb", "on_delivery",
          "stats_cb", "throttle_cb", "oauth_cb"}
_OFFSET_RESETS = {"earliest": "earliest", "latest": "latest", "none": "error"}


@dataclass(repr=False)
class ConfluentSettings(KafkaClientSettings):
    """The shared Kafka settings with librdkafka's defaults for batching, plus librdkafka passthrough."""

    client_id: str | None = None  # None: librdkafka's 'rdkafka'
    linger_ms: int = 5  # librdkafka's default
    batch_size: int = 1_000_000  # librdkafka's default: one MessageSet per partition and request
    client: str = CLIENT  # [kafka] client: picks this transport
    librdkafka: dict[str, Any] = field(default_factory=dict)  # passed to every client (keys with dots land here)

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "kafka") -> ConfluentSettings:
        """Build from ``[kafka]``: keys with a dot and the ``librdkafka`` table are librdkafka properties,
        validated by librdkafka; any other unknown key is a ConfigError naming it."""
        d = dict(d)
        table = d.pop("librdkafka", None) or {}
        if not isinstance(table, dict):
            raise ConfigError(f"{prefix}.librdkafka", f"a table of librdkafka properties, got {table!r}")
        passthrough = {str(k): (v, f"{prefix}.librdkafka.{k}") for k, v in table.items()}
        for key in [k for k in d if "." in str(k)]:
            passthrough[str(key)] = (d.pop(key), f"{prefix}.{key}")
        for prop, (value, where) in passthrough.items():
            _check_passthrough(prop, value, where)
        _probe({p: v for p, (v, _) in passthrough.items()}, {p: w for p, (_, w) in passthrough.items()})
        d["librdkafka"] = {p: v for p, (v, _) in passthrough.items()}
        return super().from_dict(d, prefix)

    def validate(self, prefix: str = "kafka") -> None:
        super().validate(prefix)
        if self.client != CLIENT:
            raise ConfigError(f"{prefix}.client", f"{CLIENT!r} for this transport, got {self.client!r}")

    # --- librdkafka configuration dicts -------------------------------------------

    @property
    def cooperative(self) -> bool:
        """Incremental (cooperative) rebalancing: the default; eager when the assignors say so."""
        return self.librdkafka.get("partition.assignment.strategy", COOPERATIVE) == COOPERATIVE

    def _common(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(s.strip() for s in self.bootstrap_servers.split(",") if s.strip()),
            "security.protocol": self.security_protocol.lower(),
            "socket.timeout.ms": self.request_timeout_ms,  # kafka-python's request_timeout_ms
            "logger": LIBRDKAFKA_LOG,
        }
        if self.client_id is not None:
            conf["client.id"] = self.client_id
        if self.sasl_mechanism is not None:
            conf.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                         "sasl.password": self.sasl_password})
        for key, prop in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                          ("ssl_keyfile", "ssl.key.location")):
            if getattr(self, key) is not None:
                conf[prop] = getattr(self, key)
        return conf

    def consumer_config(self, *, group: bool = True, **extra: Any) -> dict[str, Any]:
        """Consumer(config). Auto-commit and offset store are always off: the worker commits what it
        delivered. ``group=False``: a reader that only assigns partitions (librdkafka still wants a
        group id; it is a fresh one and nothing is committed to it)."""
        conf = self._common()
        conf.update({
            "group.id": self.group_id if group else f"streamseq-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": _OFFSET_RESETS[self.auto_offset_reset],
            "isolation.level": self.effective_isolation_level,
            "fetch.max.bytes": self.fetch_max_bytes,
            "max.partition.fetch.bytes": self.max_partition_fetch_bytes,
            "check.crcs": self.check_crcs,
        })
        if group:
            conf.update({"session.timeout.ms": self.session_timeout_ms,
                         "heartbeat.interval.ms": self.heartbeat_interval_ms,
                         "max.poll.interval.ms": self.max_poll_interval_ms,
                         "partition.assignment.strategy": COOPERATIVE})
        conf.update(self.librdkafka)
        conf.update(extra)
        return conf

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        """Producer(config): idempotent when acks=all, transactional with exactly_once; keys are placed
        by murmur2 like the Java client and kafka-python (librdkafka's default is CRC32)."""
        conf = self._common()
        conf.update({
            "acks": "all" if self.acks in ("all", -1) else self.acks,
            "enable.idempotence": self.idempotent,
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size,
            "message.max.bytes": self.max_request_size,
            "partitioner": "murmur2_random",
        })
        if self.exactly_once:
            if not self.transactional_id:
                raise ConfigError("kafka.transactional_id",
                                  "a stable id, unique per worker, when exactly_once is true, got None")
            conf["transactional.id"] = self.transactional_id
            conf["transaction.timeout.ms"] = self.transaction_timeout_ms
        conf.update(self.librdkafka)
        conf.update(extra)
        return conf

    def admin_config(self) -> dict[str, Any]:
        conf = self._common()
        conf.update(self.librdkafka)
        return conf

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sasl_password" and value is not None:
                value = "***"
            if f.name == "librdkafka":
                value = {k: ("***" if "password" in k or "secret" in k else v) for k, v in value.items()}
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__


def _check_passthrough(prop: str, value: Any, where: str) -> None:
    if prop in _FROM_SHARED_KEYS:
        raise ConfigError(where, f"[kafka] {_FROM_SHARED_KEYS[prop]} instead (the transport sets {prop} from it)")
    if prop in _OWNED:
        raise ConfigError(where, f"no {prop}: the transport sets it (commits, delivery reports and "
                                 "partitioning depend on it)")
    if not isinstance(value, (str, int, float, bool)):
        raise ConfigError(where, f"a string, number or boolean, got {value!r}")


def _probe(props: dict[str, Any], where: dict[str, str]) -> None:
    """Let librdkafka check the passthrough properties: a client made with them and no broker
    connects to nothing; an unknown property or a bad value fails there, named."""
    if not props:
        return
    from confluent_kafka import KafkaException, Producer

    def fails(subset: dict[str, Any]) -> str | None:
        try:
            Producer({**subset, "log_level": 0})  # no bootstrap servers: no connection; consumer-only props just warn
        except (KafkaException, TypeError, ValueError) as e:
            err = e.args[0] if e.args else e
            return err.str() if hasattr(err, "str") else str(err)
        return None

    if fails(props) is None:
        return
    for prop, value in props.items():
        reason = fails({prop: value})
        if reason is not None:
            raise ConfigError(where[prop], f"a librdkafka property ({reason})")
    raise ConfigError("kafka.librdkafka", f"librdkafka properties that work together ({fails(props)})")


class _QuietConfigWarnings(logging.Filter):
    """Passthrough properties go to every client; librdkafka warns when one does not apply to a client
    (a consumer property on the producer): expected here, so debug, not a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and record.args[0] == "CONFWARN" and "will be ignored" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return LIBRDKAFKA_LOG.isEnabledFor(logging.DEBUG)
        return True


LIBRDKAFKA_LOG = logging.getLogger("streamseq_connectors.confluent.librdkafka")
LIBRDKAFKA_LOG.addFilter(_QuietConfigWarnings())
