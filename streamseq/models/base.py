"""One batch-first interface for every forecaster.

A model owns per-key state in arrays indexed by arena slot. ``update`` takes
the closed windows of many keys at one window end and advances (and, where the
model learns, learns); ``forecast`` returns H steps for many keys without
changing any state.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class BatchForecaster(ABC):
    name: str = "model"
    version: str = "0"
    horizon: int = 1
    grid = None  # the pipeline's window grid (streamseq.grid), bound by bind_grid; None when used alone

    def bind_grid(self, grid) -> None:
        """The window grid of the stream: ``grid.start_of(wid)`` / ``end_of(wid)`` give window times
        (calendar features of a window and of each target step)."""
        self.grid = grid

    @abstractmethod
    def ensure_capacity(self, capacity: int) -> None:
        """Make room for slots [0, capacity)."""

    @abstractmethod
    def update(self, slots: np.ndarray, x: np.ndarray, filled: np.ndarray, wid: int | None = None) -> None:
        """Advance keys by one window. x: (n, F) raw window features, column 0 = target.

        ``wid``: the id of the window that closed (on ``self.grid``); None when the model is used
        without a stream (calendar unknown)."""

    @abstractmethod
    def forecast(self, slots: np.ndarray) -> np.ndarray:
        """(n, H) point forecasts in the target's units. Pure: state is not changed."""

    @abstractmethod
    def snapshot(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Per-key state of these slots; arrays have len(slots) rows (or are per-key blobs)."""

    @abstractmethod
    def restore(self, slots: np.ndarray, state: dict[str, np.ndarray]) -> None: ...

    @abstractmethod
    def reset(self, slots: np.ndarray) -> None:
        """Forget these keys (a new key or a revoked partition)."""

    def state_nbytes_per_key(self) -> float:
        """Bytes of per-key state (for the memory budget)."""
        snap = self.snapshot(np.array([0]))
        return float(sum(a.nbytes for a in snap.values()))
