"""The small interfaces connectors implement (bytewax-style).

A ``Source`` lists its partitions and builds each from its resume state. A
``SourcePartition`` never blocks: ``next_batch`` returns what is ready (an
empty batch when nothing is), ``snapshot`` is the position AFTER the last
record returned, and a partition rebuilt from that snapshot continues with no
gap and no duplicate.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .records import DeadLetter, ForecastBatch, ObservationBatch, WindowBatch


class SourcePartition(ABC):
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

    def close(self) -> None:
        pass


class Source(ABC):
    @abstractmethod
    def list_parts(self) -> list[str]: ...

    @abstractmethod
    def build_part(self, name: str, resume_state: Any | None) -> SourcePartition: ...


class ForecastSink(ABC):
    @abstractmethod
    def write(self, batch: ForecastBatch) -> None: ...

    def write_windows(self, batch: WindowBatch) -> None:
        """Closed windows (actuals); sinks that do not keep them ignore this."""

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


class DeadLetterSink(ABC):
    @abstractmethod
    def write(self, letters: list[DeadLetter]) -> None: ...

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


class ListSink(ForecastSink):
    """Keeps everything in memory; for tests and notebooks."""

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
    """Replays a list of ObservationBatch; the snapshot is the number of batches returned."""

    def __init__(self, batches: list[ObservationBatch], resume_state: int | None = None):
        self._batches = batches
        self._pos = resume_state or 0

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
