"""librdkafka's errors, sorted into what the worker acts on: retriable (the broker is unreachable or
busy, the same call may succeed later), fenced (another instance took this transactional id)."""
from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

_RETRIABLE = {getattr(KafkaError, name) for name in (
    "_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "_WAIT_COORD", "_RESOLVE", "_TIMED_OUT_QUEUE",
    "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "REQUEST_TIMED_OUT",
    "NETWORK_EXCEPTION", "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "BROKER_NOT_AVAILABLE",
)}
_FENCED = {getattr(KafkaError, name) for name in (
    "_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
) if hasattr(KafkaError, name)}


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The KafkaError a confluent-kafka exception carries (None for other exceptions)."""
    if isinstance(exc, KafkaError):
        return exc
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def retriable(err: KafkaError | None) -> bool:
    return err is not None and not err.fatal() and (err.retriable() or err.code() in _RETRIABLE)


def fenced(err: KafkaError | None) -> bool:
    return err is not None and err.code() in _FENCED


def describe(err: KafkaError | BaseException | None) -> str:
    if isinstance(err, KafkaError):
        return f"{err.name()}: {err.str()}"
    return f"{type(err).__name__}: {err}"
