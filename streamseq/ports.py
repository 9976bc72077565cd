"""The ports: what the pipeline and the stream worker need from the outside world, and no more.

Connectors implement these and see nothing else of the engine (besides the records, the
wire formats and the utilities). Sources follow bytewax: a ``Source`` lists its partitions
and builds each from its resume state; a ``SourcePartition`` never blocks —
``next_batch`` returns what is ready (an empty batch when nothing is), ``snapshot`` is
the position AFTER the last record returned, and a partition rebuilt from that snapshot
continues with no gap and no duplicate.

Capabilities are subtypes: any ``SourcePartition`` feeds a replay; a ``GroupPartition``
(a member of a consumer group, whose partitions come and go) also reports assignments,
positions and committed offsets, which is what the worker's checkpoint needs. A
``Transport`` bundles such a partition with the producer, the changelog and the sinks
of one message broker.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from .records import DeadLetter, ForecastBatch, ObservationBatch, WindowBatch


class SourcePartition(ABC):
    """A stream of observations in arrival order."""

    #: Event time advances per source partition (Kafka) rather than over the whole stream (files).
    partitioned_time: bool = False

    @abstractmethod
    def next_batch(self) -> tuple[ObservationBatch, list[DeadLetter]]:
        """Decoded, validated observations ready now, and the records that were not."""

    @abstractmethod
    def snapshot(self) -> Any:
        """Resume state: the position after the last record returned."""

    @property
    def exhausted(self) -> bool:
        """True once a finite source has returned everything."""
        return False

    def origin(self, pid: int) -> tuple[str, int]:
        """(source name, partition) of the records with partition id ``pid``, for dead letters:
        a topic and a Kafka partition, or a file path and its index."""
        return str(pid), pid

    def read_stats(self) -> dict[str, int]:
        """What a finite source read but did not return: ``outside_range`` (rows outside its time
        bounds), and the span of the event times it read (``first_ts``, ``last_ts``, ns)."""
        return {}

    def close(self) -> None:
        pass


class Source(ABC):
    @abstractmethod
    def list_parts(self) -> list[str]: ...

    def notices(self) -> list[str]:
        """What a user should hear about the input before its records flow (e.g. a file replayed sorted)."""
        return []

    @abstractmethod
    def build_part(self, name: str, resume_state: Any | None) -> SourcePartition: ...


RebalanceCallback = Callable[[list[Any]], None]


class GroupPartition(SourcePartition):
    """A consumer-group member: partitions are assigned and revoked by the group, positions are
    committed to it. ``tp`` values are the broker's topic-partition objects (opaque here); a
    ``pid`` is the int partition id the records carry (``ObservationBatch.partition``)."""

    partitioned_time = True

    @abstractmethod
    def set_rebalance_listener(self, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback) -> None:
        """Called (while next_batch or close runs) with the partitions gained / about to be given up."""

    @abstractmethod
    def assignment(self) -> list[Any]:
        """The partitions this member owns now."""

    @abstractmethod
    def position_offsets(self) -> dict[Any, int]:
        """Next offset after everything returned so far, per partition that returned data."""

    @abstractmethod
    def committed_metadata(self, tp) -> tuple[int | None, str]:
        """(committed offset or None, the metadata string committed with it)."""

    @abstractmethod
    def rewind_to_committed(self) -> None:
        """Return every owned partition's records again from its committed offset."""

    @abstractmethod
    def partition_id(self, tp) -> int: ...

    @abstractmethod
    def kafka_partition(self, pid: int) -> int:
        """The broker's partition number of a partition id (the changelog is co-partitioned by it)."""

    @abstractmethod
    def lag(self) -> dict[Any, int | None]:
        """Records behind the end, per owned partition (None while unknown)."""

    def label(self, tp) -> tuple[str, int]:
        """(topic, partition) of a topic-partition, for logs and metrics."""
        return str(tp), 0


class ForecastSink(ABC):
    @abstractmethod
    def write(self, batch: ForecastBatch) -> None: ...

    def write_windows(self, batch: WindowBatch) -> None:
        """Closed windows (actuals); sinks that do not keep them ignore this."""

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


class WindowSink(Protocol):
    """Keeps closed windows (the window store, a test list)."""

    def write_windows(self, batch: WindowBatch) -> None: ...


class DeadLetterSink(ABC):
    @abstractmethod
    def write(self, letters: list[DeadLetter]) -> None: ...

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


@runtime_checkable
class Producer(Protocol):
    """The worker's one producer, shared by the forecast and dead-letter sinks and the changelog.

    Errors it raises are ``StreamseqError`` subclasses with a ``retriable`` flag: retriable
    means the broker is unreachable or busy and the same call may succeed later."""

    def flush(self) -> None:
        """Wait until everything queued is acknowledged."""

    def commit(self, offsets: dict, part: GroupPartition) -> None:
        """Flush, then commit {tp: (offset, metadata)}; atomically with the records with exactly_once."""

    def abort(self) -> None:
        """Abandon what was queued since the last commit (exactly_once: abort the transaction)."""

    def close(self, timeout_s: float = 10.0) -> None: ...


@runtime_checkable
class Changelog(Protocol):
    """Per-key state records, keyed by series key, co-partitioned with the source."""

    def write(self, key: str, partition: int, value: bytes | None) -> None:
        """Queue a key's state (None: a tombstone) for a partition."""

    def restore(self, partitions: list[int]) -> dict[str, bytes]:
        """Latest state per key of these partitions (tombstoned keys left out)."""


@runtime_checkable
class Transport(Protocol):
    """One message broker's connectors for a stream worker (found by name: entry point group
    ``streamseq.transports``). ``open()`` connects; the attributes are then set."""

    part: GroupPartition
    producer: Producer
    changelog: Changelog
    forecast_sink: ForecastSink
    dead_letter_sink: DeadLetterSink
    max_record_bytes: int  # the largest record worth sending (state records above it are not kept)

    def open(self) -> Transport: ...

    def ensure_topics(self) -> dict[str, str]: ...

    def feed(self, part: SourcePartition, topic: str, *, value_fields: list[str], key_field: str = "key",
             time_field: str = "ts", max_records: int | None = None) -> int: ...

    def iter_forecasts(self, topic: str, **kw) -> Iterable: ...


__all__ = [
    "Changelog", "DeadLetterSink", "ForecastSink", "GroupPartition", "Producer", "RebalanceCallback", "Source",
    "SourcePartition", "Transport", "WindowSink",
]
