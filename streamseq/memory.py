"""In-memory sources and sinks: for the Python API, notebooks and tests."""
from __future__ import annotations

from .ports import DeadLetterSink, ForecastSink, SourcePartition
from .records import DeadLetter, ForecastBatch, ObservationBatch, WindowBatch


class ListSink(ForecastSink):
    """Keeps every forecast batch and window batch in memory."""

    def __init__(self) -> None:
        self.batches: list[ForecastBatch] = []
        self.windows: list[WindowBatch] = []

    def write(self, batch: ForecastBatch) -> None:
        self.batches.append(batch)

    def write_windows(self, batch: WindowBatch) -> None:
        self.windows.append(batch)


class ListDeadLetterSink(DeadLetterSink):
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)


class MemoryPartition(SourcePartition):
    """Replays a list of ObservationBatch; the snapshot is the number of batches returned.
    ``partitioned_time``: event time advances per partition id, as on Kafka."""

    def __init__(self, batches: list[ObservationBatch], resume_state: int | None = None,
                 partitioned_time: bool = False):
        self._batches = batches
        self._pos = resume_state or 0
        self.partitioned_time = partitioned_time

    def next_batch(self):
        if self._pos >= len(self._batches):
            return ObservationBatch.empty(self._batches[0].values.shape[1] if self._batches else 1), []
        b = self._batches[self._pos]
        self._pos += 1
        return b, []

    def snapshot(self) -> int:
        return self._pos

    @property
    def exhausted(self) -> bool:
        return self._pos >= len(self._batches)


__all__ = ["ListSink", "ListDeadLetterSink", "MemoryPartition"]
