"""Producing to Kafka: one producer per worker, shared by the forecast, dead-letter and changelog writers.

The worker's commit, in order (the Kafka Streams / quix-streams way)::

    handle.begin()                      # no-op unless exactly_once (send() also begins)
    forecast_sink.write(batch); dead_letter_sink.write(letters); changelog.write(...)
    handle.commit(part.position_offsets(), part)   # flush, then offsets (in the transaction)

With ``settings.exactly_once`` the producer is transactional: records and
consumer offsets are committed atomically, and a worker that crashed mid-way
leaves an aborted transaction that ``read_committed`` readers skip on real
Kafka (Tansu still shows aborted records: forecast ids make copies
recognisable). Without it the producer is idempotent and offsets are committed
after a successful flush: at-least-once.

``ProducerFencedError`` means another instance took over this worker's
transactional id: stop the worker without committing anything else.
"""
from __future__ import annotations

import logging
import threading

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from ..common.errors import CommitError, DeliveryError, KafkaConnectorError, ProducerFencedError
from ..common.sinks import TopicDeadLetterSink, TopicForecastSink
from .settings import KafkaSettings, warn_if_pure_python_crc

log = logging.getLogger(__name__)

_FENCING_ERRORS = (kerr.ProducerFencedError, kerr.InvalidProducerEpochError,
                   kerr.TransactionalIdAuthorizationFailedError)


class KafkaProducerHandle:
    """The worker's one producer: idempotent, transactional when ``settings.exactly_once``."""

    def __init__(self, settings: KafkaSettings, *, flush_timeout_s: float = 30.0):
        self.settings = settings
        self.transactional = settings.exactly_once
        # kafka-python waits on transaction requests without a deadline; a broker that never answers
        # (restarted under the worker) must end in an error the worker acts on, not a hang.
        self.transaction_wait_s = max(flush_timeout_s, settings.transaction_timeout_ms / 1000)
        self.flush_timeout_s = flush_timeout_s
        self._lock = threading.Lock()
        self._errors: list[tuple[str, BaseException]] = []  # filled by the sender thread
        self._in_transaction = False
        self._fenced: BaseException | None = None
        self._closed = False
        self._key_partitions: dict[str, tuple[list[int], dict[bytes, int]]] = {}
        self.too_large = 0  # records refused by the producer as larger than max_request_size
        warn_if_pure_python_crc()
        self._producer = KafkaProducer(**settings.producer_kwargs())
        if self.transactional:
            self._guard(self._producer.init_transactions)  # fences older instances, aborts their open transaction

    @property
    def producer(self) -> KafkaProducer:
        return self._producer

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    # --- producing ----------------------------------------------------------------

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             partition: int | None = None, headers: list[tuple[str, bytes]] | None = None):
        """Queue one record (starting a transaction if one is needed); failures surface in flush()."""
        self.begin()  # checks the handle is usable; opens a transaction with exactly_once
        future = self._guard(self._producer.send, topic, value=value, key=key,
                             partition=partition, headers=headers)
        future.add_errback(self._record_error, topic)
        return future

    def send_keyed(self, topic: str, records) -> int:
        """Queue ``(key, value)`` records (key: bytes, never None) on the partition the default
        partitioner would pick (murmur2 of the key, as the Java client and kafka-python do), looked
        up once per key instead of hashed per record. Returns the number queued; failures surface
        in flush().
        """
        records = records if isinstance(records, list) else list(records)
        if not records:
            return 0
        self.begin()  # checks the handle is usable; opens a transaction with exactly_once
        partition_of = self._partitions_of(topic)
        send, on_error = self._producer.send, self._record_error
        n = 0
        for key, value in records:
            try:
                send(topic, value=value, key=key, partition=partition_of(key)).add_errback(on_error, topic)
                n += 1
            except kerr.MessageSizeTooLargeError as e:  # one oversized record must not stop the stream
                self.too_large += 1
                log.error("record for %s with key %r... not sent: %s", topic, key[:64], e)
            except kerr.KafkaError as e:
                self._raise_translated(e)
        return n

    # Keys whose partition is remembered per topic; past this the cache starts afresh (keys come and go).
    MAX_CACHED_KEYS = 1 << 20

    def _partitions_of(self, topic: str):
        """key -> partition for ``topic``, cached; the cache is dropped when the partition count changes."""
        try:
            partitions = sorted(self._producer.partitions_for(topic) or ())
        except _FENCING_ERRORS as e:
            self._raise_translated(e)
        except kerr.KafkaError as e:
            raise DeliveryError(f"no metadata for topic {topic!r}: {type(e).__name__}: {e}",
                                retriable=_retriable(e)) from e
        if not partitions:
            raise DeliveryError(f"topic {topic!r} has no partitions in the producer's metadata")
        cached = self._key_partitions.get(topic)
        if cached is None or cached[0] != partitions or len(cached[1]) > self.MAX_CACHED_KEYS:
            cached = (partitions, {})
            self._key_partitions[topic] = cached
        cache = cached[1]
        count = len(partitions)

        def partition_of(key: bytes) -> int:
            p = cache.get(key)
            if p is None:
                p = cache[key] = partitions[(murmur2(key) & 0x7FFFFFFF) % count]
            return p

        return partition_of

    def _record_error(self, topic: str, exc: BaseException) -> None:
        if isinstance(exc, kerr.TransactionAbortedError):
            return  # the expected fate of records in a transaction we aborted
        with self._lock:
            self._errors.append((topic, exc))

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is acknowledged; raise DeliveryError if any failed."""
        self._check_usable()
        try:
            self._producer.flush(timeout=self.flush_timeout_s if timeout_s is None else timeout_s)
        except kerr.KafkaTimeoutError as e:
            timeout = self.flush_timeout_s if timeout_s is None else timeout_s
            raise DeliveryError(f"records not acknowledged within {timeout}s: {e}", retriable=True) from e
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            topic, first = errors[0]
            if isinstance(first, _FENCING_ERRORS):
                self._fenced = first
                raise ProducerFencedError(f"producer fenced while writing to {topic}: {first}") from first
            raise DeliveryError(
                f"{len(errors)} record(s) failed; first to topic {topic}: {type(first).__name__}: {first}"
            ) from first

    # --- transactions and commits ---------------------------------------------------

    def begin(self) -> None:
        """Start a transaction (exactly_once); a no-op otherwise or when one is open."""
        self._check_usable()
        if self.transactional and not self._in_transaction:
            self._guard(self._producer.begin_transaction)
            self._in_transaction = True

    def commit(self, offsets: dict, consumer) -> None:
        """Flush, then commit ``offsets`` (next offsets to read) for ``consumer``'s group.

        ``offsets``: {TopicPartition: offset or (offset, metadata string)}. ``consumer``: a
        KafkaPartition or a kafka-python KafkaConsumer. With exactly_once the offsets go into
        the transaction, which is then committed.
        """
        self.flush()
        if not self.transactional:
            self._commit_plain(offsets, consumer)
            return
        if not self._in_transaction and not offsets:
            return
        self.begin()
        if offsets:
            metadata = consumer.group_metadata()
            oam = _offsets_and_metadata(offsets)
            try:
                self._guard(self._transaction_call, "send_offsets_to_transaction", oam, metadata)
            except ProducerFencedError:
                raise
            except kerr.KafkaError as e:
                raise CommitError(f"offsets not added to the transaction: {type(e).__name__}: {e}") from e
        try:
            self._guard(self._transaction_call, "begin_commit")
        except ProducerFencedError:
            raise
        except kerr.KafkaError as e:
            raise CommitError(f"transaction not committed: {type(e).__name__}: {e}") from e
        self._in_transaction = False

    def _transaction_call(self, name: str, *args) -> None:
        """A transaction manager request awaited for at most ``transaction_wait_s`` (kafka-python's
        own methods wait forever). A timeout raises KafkaTimeoutError: the transaction is then in an
        unknown state, and the worker rewinds (abort) or stops."""
        manager = getattr(self._producer, "_transaction_manager", None)
        if manager is None or not hasattr(manager, name):  # another kafka-python: its public call, unbounded
            public = {"send_offsets_to_transaction": self._producer.send_offsets_to_transaction,
                      "begin_commit": self._producer.commit_transaction,
                      "begin_abort": self._producer.abort_transaction}[name]
            public(*args)
            return
        result = getattr(manager, name)(*args)
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=int(self.transaction_wait_s * 1000)):
            raise kerr.KafkaTimeoutError(f"{name} not answered within {self.transaction_wait_s:g}s")

    @staticmethod
    def _commit_plain(offsets: dict, consumer) -> None:
        if not offsets:
            return
        try:
            if isinstance(consumer, KafkaConsumer):
                consumer.commit(_offsets_and_metadata(offsets))
            else:
                consumer.commit(offsets)
        except kerr.KafkaError as e:
            raise CommitError(f"offsets not committed: {type(e).__name__}: {e}", retriable=_retriable(e)) from e

    def abort(self) -> None:
        """Abort the open transaction (exactly_once); the worker then rewinds to its last commit."""
        with self._lock:
            self._errors.clear()
        if not self.transactional or not self._in_transaction or self._fenced is not None:
            self._in_transaction = False
            return
        try:
            self._guard(self._transaction_call, "begin_abort")
        finally:
            self._in_transaction = False

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the producer; an open transaction is aborted, never committed."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._in_transaction and self._fenced is None and timeout_s > 0:
                try:
                    self._transaction_call("begin_abort")
                except kerr.KafkaError as e:
                    log.warning("aborting the open transaction on close failed: %s", e)
        finally:
            try:
                self._producer.close(timeout=0 if self._fenced is not None else timeout_s)
            except kerr.KafkaError as e:  # records still queued at close are the last commit's to replay
                log.warning("producer closed with records unacknowledged: %s", e)

    # --- helpers ------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._fenced is not None:
            raise ProducerFencedError(f"producer was fenced earlier: {self._fenced}")
        if self._closed:
            raise KafkaConnectorError("producer handle is closed")

    def _guard(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except kerr.KafkaError as e:
            self._raise_translated(e)

    def _raise_translated(self, e: kerr.KafkaError):
        """Re-raise a kafka-python error, as ProducerFencedError when it means this producer is fenced."""
        if isinstance(e, _FENCING_ERRORS):
            self._fenced = e
            raise ProducerFencedError(
                f"transactional_id {self.settings.transactional_id!r} is in use by a newer producer: {e}"
            ) from e
        # kafka-python wraps a fenced producer's later calls in a generic KafkaError
        cause = e.__cause__ or e.__context__
        if isinstance(cause, _FENCING_ERRORS) or "ProducerFenced" in str(e):
            self._fenced = e
            raise ProducerFencedError(f"producer fenced: {e}") from e
        raise e


def _offsets_and_metadata(offsets: dict) -> dict:
    """{tp: offset | (offset, metadata)} -> {tp: OffsetAndMetadata}."""
    out = {}
    for tp, off in offsets.items():
        off, meta = off if isinstance(off, tuple) else (off, "")
        out[tp] = OffsetAndMetadata(int(off), meta or "", -1)
    return out


_UNREACHABLE = tuple(c for c in (getattr(kerr, "NoBrokersAvailable", None), kerr.KafkaConnectionError,
                                  kerr.KafkaTimeoutError) if isinstance(c, type))


def _retriable(e: BaseException) -> bool:
    """The broker or coordinator is unreachable or busy (not: the group moved on)."""
    return bool(getattr(e, "retriable", False)) or isinstance(e, _UNREACHABLE)


class KafkaForecastSink(TopicForecastSink):
    """Forecasts on a topic through a KafkaProducerHandle (connectors/common/sinks.py)."""


class KafkaDeadLetterSink(TopicDeadLetterSink):
    """Dead letters on a topic through a KafkaProducerHandle (connectors/common/sinks.py)."""
