"""Kafka client settings: one dataclass, turned into kafka-python keyword arguments.

Defaults are kafka-python's (= Apache Kafka's) defaults, the right ones for a
real cluster. Tests against Tansu override ``session_timeout_ms`` and
``heartbeat_interval_ms`` (Tansu holds each JoinGroup for about half the
session timeout); that is configuration, never code.

>>> s = KafkaSettings.from_dict({"bootstrap_servers": "k:9092", "sasl_password": "hunter2"})
>>> "hunter2" in repr(s)
False
>>> KafkaSettings.from_dict({"bootstrap_server": "k:9092"})
Traceback (most recent call last):
...
streamseq.errors.ConfigError: kafka.bootstrap_server: expected a KafkaSettings field (did you mean 'bootstrap_servers'?)
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, fields
from typing import Any

from streamseq.errors import ConfigError

log = logging.getLogger(__name__)
_crc_checked = False

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
_ISOLATION_LEVELS = ("read_uncommitted", "read_committed")
_OFFSET_RESETS = ("earliest", "latest", "none")
_ACKS = (0, 1, -1, "all")


@dataclass
class KafkaSettings:
    """Connection, group, fetch and produce settings shared by every Kafka connector."""

    bootstrap_servers: str = "localhost:9092"  # comma-separated host:port list
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...
    sasl_username: str | None = None
    sasl_password: str | None = None  # never shown by repr()
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str | None = None  # None: kafka-python's 'kafka-python-<version>'
    group_id: str | None = None  # consumer group of the stream workers
    session_timeout_ms: int = 45_000  # tests on Tansu: 6000
    heartbeat_interval_ms: int = 3_000  # tests on Tansu: 1000
    max_poll_interval_ms: int = 300_000  # longest gap between two polls before eviction
    max_poll_records: int = 500  # records returned by one poll at most
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 1_048_576
    auto_offset_reset: str = "latest"  # where a group with no committed offset starts
    check_crcs: bool = True  # CRC32C of fetched batches; pure Python (~4 MB/s) unless the crc32c package is installed
    linger_ms: int = 0
    batch_size: int = 16_384
    acks: int | str = "all"  # idempotence and transactions need "all"
    exactly_once: bool = False  # transactional producer; offsets committed in the transaction
    transactional_id: str | None = None  # needed by the producer with exactly_once: stable, unique per worker
    transaction_timeout_ms: int = 60_000
    isolation_level: str | None = None  # None: read_committed with exactly_once, else read_uncommitted
    request_timeout_ms: int = 30_000
    bootstrap_timeout_ms: int = 15_000  # how long a client tries to reach the cluster at start before giving up
    max_request_size: int = 1_048_576  # largest record the producer sends; keep <= the broker's message.max.bytes

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "kafka") -> KafkaSettings:
        """Build from a config mapping; an unknown key raises ConfigError naming it."""
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" ({', '.join(known)})"
                raise ConfigError(f"{prefix}.{key}", f"a KafkaSettings field{hint}")
        d = dict(d)
        servers = d.get("bootstrap_servers")
        if isinstance(servers, (list, tuple)) and all(isinstance(x, str) for x in servers):
            d["bootstrap_servers"] = ",".join(servers)
        settings = cls(**d)
        settings.validate(prefix)
        return settings

    def replace(self, **changes: Any) -> KafkaSettings:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self, prefix: str = "kafka") -> None:
        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"{prefix}.{key}", f"{expected}, got {getattr(self, key)!r}")

        need(isinstance(self.bootstrap_servers, str) and self.bootstrap_servers.strip() != "",
             "bootstrap_servers", "a 'host:port[,host:port]' string")
        for key in ("sasl_username", "sasl_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "client_id",
                    "group_id", "transactional_id"):
            need(getattr(self, key) is None or isinstance(getattr(self, key), str), key, "a string or null")
        need(self.security_protocol in _SECURITY_PROTOCOLS, "security_protocol", f"one of {_SECURITY_PROTOCOLS}")
        need(self.sasl_mechanism is None or self.sasl_mechanism in _SASL_MECHANISMS,
             "sasl_mechanism", f"one of {_SASL_MECHANISMS} or null")
        for key in ("session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms", "max_poll_records",
                    "fetch_max_bytes", "max_partition_fetch_bytes", "batch_size", "transaction_timeout_ms",
                    "request_timeout_ms", "max_request_size", "bootstrap_timeout_ms"):
            value = getattr(self, key)
            need(type(value) is int and 0 < value < 2**31, key, "a positive 32-bit integer")
        need(type(self.linger_ms) is int and 0 <= self.linger_ms < 2**31, "linger_ms", "a non-negative 32-bit integer")
        need(self.heartbeat_interval_ms < self.session_timeout_ms, "heartbeat_interval_ms",
             "less than session_timeout_ms")
        need(type(self.acks) in (int, str) and self.acks in _ACKS, "acks", f"one of {_ACKS}")
        need(isinstance(self.exactly_once, bool), "exactly_once", "true or false")
        need(isinstance(self.check_crcs, bool), "check_crcs", "true or false")
        need(self.auto_offset_reset in _OFFSET_RESETS, "auto_offset_reset", f"one of {_OFFSET_RESETS}")
        need(self.isolation_level is None or self.isolation_level in _ISOLATION_LEVELS,
             "isolation_level", f"one of {_ISOLATION_LEVELS} or null")
        if self.exactly_once:  # transactional_id is checked when a producer is made: it may be derived later
            need(self.acks in ("all", -1), "acks", "'all' when exactly_once is true")

    # --- kafka-python keyword arguments -----------------------------------------

    @property
    def idempotent(self) -> bool:
        return self.acks in ("all", -1)

    @property
    def effective_isolation_level(self) -> str:
        if self.isolation_level is not None:
            return self.isolation_level
        return "read_committed" if self.exactly_once else "read_uncommitted"

    def _common_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
        }
        if self.client_id is not None:
            kw["client_id"] = self.client_id
        if self.sasl_mechanism is not None:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        return kw

    def consumer_kwargs(self, *, group: bool = True) -> dict[str, Any]:
        """KafkaConsumer(**kwargs). Auto-commit is always off: the worker commits what it delivered.

        ``group=False`` gives a group-less consumer (for assign(): changelog restore, readers).
        """
        kw = self._common_kwargs()
        kw.update(
            group_id=self.group_id if group else None,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            isolation_level=self.effective_isolation_level,
            max_poll_records=self.max_poll_records,
            fetch_max_bytes=self.fetch_max_bytes,
            max_partition_fetch_bytes=self.max_partition_fetch_bytes,
            check_crcs=self.check_crcs,
        )
        if group:
            kw.update(
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                max_poll_interval_ms=self.max_poll_interval_ms,
            )
        return kw

    def producer_kwargs(self) -> dict[str, Any]:
        """KafkaProducer(**kwargs): idempotent when acks=all; transactional with exactly_once."""
        kw = self._common_kwargs()
        kw.update(
            acks=self.acks,
            linger_ms=self.linger_ms,
            batch_size=self.batch_size,
            enable_idempotence=self.idempotent,
            max_request_size=self.max_request_size,
        )
        if self.exactly_once:
            if not self.transactional_id:
                raise ConfigError("kafka.transactional_id",
                                  "a stable id, unique per worker, when exactly_once is true, got None")
            kw["transactional_id"] = self.transactional_id
            kw["transaction_timeout_ms"] = self.transaction_timeout_ms
        return kw

    def admin_kwargs(self) -> dict[str, Any]:
        """KafkaAdminClient(**kwargs)."""
        return self._common_kwargs()

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sasl_password" and value is not None:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"KafkaSettings({', '.join(parts)})"

    __str__ = __repr__


def warn_if_pure_python_crc() -> None:
    """Log once when kafka-python computes CRC32C in pure Python.

    Measured here: ~4 MB/s, which caps produce and consume throughput (10k
    records of 2 KB: 9 s to produce, 5 s to restore, against 0.5 s and 0.4 s with
    the ``crc32c`` package, which kafka-python uses automatically when installed).
    """
    global _crc_checked
    if _crc_checked:
        return
    _crc_checked = True
    try:
        from kafka.record.util import crc32c_c
    except ImportError:
        return
    if crc32c_c is None:
        log.warning("kafka-python is computing CRC32C in pure Python (~4 MB/s): "
                    "install the 'crc32c' package for ~10x faster produce and consume")
