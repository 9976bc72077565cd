"""Producing with librdkafka: one producer per worker, shared by the forecast, dead-letter and changelog writers.

The same contract as connectors.kafka.sink (the worker cannot tell them apart)::

    handle.begin()                      # no-op unless exactly_once (send() also begins)
    forecast_sink.write(batch); dead_letter_sink.write(letters); changelog.write(...)
    handle.commit(part.position_offsets(), part)   # flush, then offsets (in the transaction)

Producing costs a C call per message; librdkafka batches, compresses and sends on its own
threads without the GIL. Delivery reports come back only for failures
(``delivery.report.only.error``), so a successful message costs no Python callback.

With ``exactly_once`` the producer is transactional and the offsets go into the
transaction (``send_offsets_to_transaction`` with the consumer's group metadata). A
transaction librdkafka says must be aborted is aborted here and reported as lost records
(DeliveryError: the worker rewinds to its last commit). ``ProducerFencedError``: another
instance took over this worker's transactional id; stop without committing anything else.
"""
from __future__ import annotations

import logging
import threading
import warnings

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as WireTopicPartition

from ..common.errors import CommitError, DeliveryError, KafkaConnectorError, ProducerFencedError
from ..common.sinks import TopicDeadLetterSink, TopicForecastSink
from .errors import describe, fenced, kafka_error, retriable
from .settings import ConfluentSettings

log = logging.getLogger(__name__)

# Delivery failures that are the expected fate of records of a transaction we aborted.
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}


class ConfluentProducerHandle:
    """The worker's one producer: idempotent, transactional when ``settings.exactly_once``."""

    def __init__(self, settings: ConfluentSettings, *, flush_timeout_s: float = 30.0):
        self.settings = settings
        self.transactional = settings.exactly_once
        self.flush_timeout_s = flush_timeout_s
        self._lock = threading.Lock()
        self._errors: list[tuple[str, KafkaError]] = []  # failed deliveries, from poll()/flush()
        self._fatal: KafkaError | None = None
        self._in_transaction = False
        self._committing = False  # commit_transaction failed retriably: the retry commits again
        self._fenced: BaseException | None = None
        self._closed = False
        self.too_large = 0  # records refused as larger than max_request_size
        self._producer = Producer(settings.producer_config(**{
            "delivery.report.only.error": True, "on_delivery": self._delivered, "error_cb": self._client_error}))
        if self.transactional:
            self._guard(self._producer.init_transactions, self.flush_timeout_s)  # fences older instances

    @property
    def producer(self) -> Producer:
        return self._producer

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    # --- callbacks (served by poll / flush on the calling thread) -----------------------

    def _delivered(self, err: KafkaError | None, msg) -> None:
        if err is None or err.code() in _PURGED:
            return
        with self._lock:
            self._errors.append((msg.topic(), err))

    def _client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
        else:  # librdkafka retries these itself (a broker down, a timeout); flush reports what stays stuck
            log.debug("librdkafka: %s", describe(err))

    # --- producing ----------------------------------------------------------------

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record (starting a transaction if one is needed); failures surface in flush()."""
        self.begin()
        self._produce(topic, value, key, -1 if partition is None else int(partition), headers)
        self._serving(self._producer.poll, 0)

    def send_keyed(self, topic: str, records) -> int:
        """Queue ``(key, value)`` records (key: bytes, never None) on the partition of their key
        (librdkafka's murmur2_random: the Java client's and kafka-python's choice). Returns the
        number queued; failures surface in flush()."""
        records = records if isinstance(records, list) else list(records)
        if not records:
            return 0
        self.begin()
        produce = self._producer.produce
        n = 0
        for key, value in records:
            try:
                produce(topic, value, key)
                n += 1
            except BufferError:  # librdkafka's queue is full: let it send, then queue again
                self._produce(topic, value, key, -1, None)
                n += 1
            except KafkaException as e:
                if self._too_large(e, topic, key):
                    continue
                self._raise_translated(e, f"queueing a record for {topic}")
        self._serving(self._producer.poll, 0)
        return n

    def _produce(self, topic, value, key, partition, headers) -> None:
        while True:
            try:
                if headers:
                    self._producer.produce(topic, value, key, partition, headers=headers)
                else:
                    self._producer.produce(topic, value, key, partition)
                return
            except BufferError:
                self._serving(self._producer.poll, 0.05)
                self._check_usable()
            except KafkaException as e:
                if self._too_large(e, topic, key):
                    return
                self._raise_translated(e, f"queueing a record for {topic}")

    def _too_large(self, e: KafkaException, topic: str, key) -> bool:
        """One oversized record must not stop the stream: count it, log it, go on."""
        err = kafka_error(e)
        if err is None or err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
            return False
        self.too_large += 1
        log.error("record for %s with key %r... not sent: %s", topic, (key or b"")[:64], describe(err))
        return True

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is acknowledged; raise DeliveryError if any failed."""
        self._check_usable()
        timeout = self.flush_timeout_s if timeout_s is None else timeout_s
        left = self._serving(self._producer.flush, timeout)
        self._check_usable()
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            topic, first = errors[0]
            if fenced(first):
                self._fenced = KafkaException(first)
                raise ProducerFencedError(f"producer fenced while writing to {topic}: {describe(first)}")
            raise DeliveryError(f"{len(errors)} record(s) failed; first to topic {topic}: {describe(first)}")
        if left:
            raise DeliveryError(f"{left} record(s) not acknowledged within {timeout}s", retriable=True)

    # --- transactions and commits ---------------------------------------------------

    def begin(self) -> None:
        """Start a transaction (exactly_once); a no-op otherwise or when one is open."""
        self._check_usable()
        if self.transactional and not self._in_transaction:
            self._guard(self._producer.begin_transaction)
            self._in_transaction = True

    def commit(self, offsets: dict, part) -> None:
        """Flush, then commit ``offsets`` {tp: offset or (offset, metadata)} for ``part``'s group
        (a ConfluentPartition). With exactly_once the offsets go into the transaction, which is
        then committed."""
        self.flush()
        if not self.transactional:
            if offsets:
                part.commit(offsets)
            return
        if not self._in_transaction and not offsets:
            return
        timeout = self.flush_timeout_s
        if not self._committing:
            self.begin()
            if offsets:
                try:
                    self._producer.send_offsets_to_transaction(
                        wire_offsets(offsets), part.group_metadata(), timeout)
                except KafkaException as e:
                    self._transaction_failed(e, "offsets not added to the transaction")
        try:
            self._producer.commit_transaction(timeout)
        except KafkaException as e:
            self._committing = True
            self._transaction_failed(e, "transaction not committed")
        self._committing = False
        self._in_transaction = False

    def _transaction_failed(self, e: KafkaException, what: str):
        """Raise what a failed transactional call means for the worker."""
        err = kafka_error(e)
        if fenced(err) or (err is not None and err.fatal()):
            self._raise_translated(e, what)
        if err is not None and err.txn_requires_abort():
            self._committing = False
            self.abort()  # its records and offsets are gone: the worker replays from the last commit
            raise DeliveryError(f"{what}, transaction aborted: {describe(err)}") from e
        raise CommitError(f"{what}: {describe(err)}", retriable=retriable(err)) from e

    def abort(self) -> None:
        """Abort the open transaction (exactly_once); the worker then rewinds to its last commit."""
        with self._lock:
            self._errors.clear()
        self._committing = False
        if not self.transactional or not self._in_transaction or self._fenced is not None:
            self._in_transaction = False
            return
        try:
            self._guard(self._producer.abort_transaction, self.flush_timeout_s)
        finally:
            self._in_transaction = False

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the producer; an open transaction is aborted, never committed; what is still queued
        after ``timeout_s`` is dropped (it belongs to the last commit's replay)."""
        if self._closed:
            return
        self._closed = True
        p = self._producer
        try:
            if self._in_transaction and self._fenced is None and timeout_s > 0:  # after a failure: no waiting
                try:
                    p.abort_transaction(timeout_s)
                except KafkaException as e:
                    log.warning("aborting the open transaction on close failed: %s", describe(kafka_error(e)))
        finally:
            try:
                left = p.flush(timeout_s) if self._fenced is None and timeout_s > 0 else len(p)
            except (KafkaException, SystemError) as e:  # failed for good meanwhile: nothing more will be sent
                log.warning("producer failed while closing: %s", e)
                left = len(p)
            if left:
                log.warning("producer closed with %d record(s) unacknowledged", left)
                p.purge(in_queue=True, in_flight=True)
                p.flush(0)
            close = getattr(p, "close", None)  # confluent-kafka >= 2.10; older ones close when collected
            if close is not None:
                with warnings.catch_warnings():  # close() aborts what a fenced producer cannot: already said
                    warnings.simplefilter("ignore", RuntimeWarning)
                    close()

    # --- helpers ------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._fatal is not None:
            err, self._fatal = self._fatal, None
            self._raise_translated(KafkaException(err), "producer")
        if self._fenced is not None:
            if fenced(kafka_error(self._fenced)):
                raise ProducerFencedError(f"producer was fenced earlier: {describe(kafka_error(self._fenced))}")
            raise KafkaConnectorError(f"producer failed for good earlier: {describe(kafka_error(self._fenced))}")
        if self._closed:
            raise KafkaConnectorError("producer handle is closed")

    def _serving(self, fn, *args):
        """poll() / flush(): they run the callbacks and raise librdkafka's fatal errors."""
        try:
            return fn(*args)
        except KafkaException as e:
            self._raise_translated(e, "producer")
        except SystemError as e:
            # confluent-kafka runs a delivery callback while its own fatal error is pending: the callback's
            # first call fails with SystemError, chained to the real error (seen with 2.16 on a fenced producer)
            cause = e.__cause__ or e.__context__
            if isinstance(cause, KafkaException):
                self._raise_translated(cause, "producer")
            raise

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except KafkaException as e:
            self._raise_translated(e, getattr(fn, "__name__", "producer call"))

    def _raise_translated(self, e: KafkaException, what: str):
        """Re-raise a librdkafka error as the connectors' error; a fenced or fatally failed producer
        is unusable from then on (``_fenced``)."""
        err = kafka_error(e)
        if fenced(err):
            self._fenced = e
            raise ProducerFencedError(
                f"{what}: transactional_id {self.settings.transactional_id!r} is in use by a newer producer: "
                f"{describe(err)}") from e
        if err is not None and err.fatal():
            self._fenced = e
            raise KafkaConnectorError(f"{what}: the producer failed for good: {describe(err)}") from e
        raise DeliveryError(f"{what}: {describe(err)}", retriable=retriable(err)) from e


def wire_offsets(offsets: dict) -> list[WireTopicPartition]:
    """{tp: offset | (offset, metadata)} -> confluent-kafka TopicPartitions with their metadata."""
    out = []
    for tp, off in offsets.items():
        off, meta = off if isinstance(off, tuple) else (off, "")
        out.append(WireTopicPartition(tp.topic, tp.partition, int(off), metadata=meta) if meta
                   else WireTopicPartition(tp.topic, tp.partition, int(off)))
    return out


class ConfluentForecastSink(TopicForecastSink):
    """Forecasts on a topic through a ConfluentProducerHandle (connectors/common/sinks.py)."""


class ConfluentDeadLetterSink(TopicDeadLetterSink):
    """Dead letters on a topic through a ConfluentProducerHandle (connectors/common/sinks.py)."""
