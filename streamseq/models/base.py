"""The model contract, in two parts (river keeps forecasting to two methods; keyed state is ours).

``Forecaster``: ``update`` takes the closed windows of many keys at one window end
and advances them (and, where the model learns, learns); ``forecast`` returns H
steps for many keys without changing any state.

``KeyedState``: per-key state lives in arrays indexed by arena slot; it can be
grown, snapshotted, restored (into any slots, of any instance) and reset.

Every model the pipeline runs is both (``BatchForecaster``) and passes the same
conformance checks (``models.checks.check_model``); the interval calibrator is
keyed state only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowStep:
    """The closed windows of one window end, as the pipeline hands them to every model."""

    slots: np.ndarray  # (n,) int64 arena slots
    x: np.ndarray  # (n, F) raw window features, column 0 = target
    filled: np.ndarray  # (n,) bool: gap-filled windows (state advances, no forecast is asked)
    wid: int | None = None  # id of the window that closed (see Forecaster.update)


class KeyedState(ABC):
    """Per-key state in arrays indexed by slot."""

    @abstractmethod
    def ensure_capacity(self, capacity: int) -> None:
        """Make room for slots [0, capacity)."""

    @abstractmethod
    def snapshot(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Per-key state of these slots: arrays with len(slots) rows, copies."""

    @abstractmethod
    def restore(self, slots: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Put a snapshot's rows into these slots; the keys then continue as if never moved."""

    @abstractmethod
    def reset(self, slots: np.ndarray) -> None:
        """Forget these keys (a new key or a revoked partition)."""

    def state_nbytes_per_key(self) -> float:
        """Bytes of per-key state (for the memory budget)."""
        snap = self.snapshot(np.array([0]))
        return float(sum(a.nbytes for a in snap.values()))


class Forecaster(ABC):
    """Forecasts many keys at one window end."""

    name: str = "model"
    version: str = "0"
    horizon: int = 1
    grid = None  # the pipeline's window grid (streamseq.grid), bound by bind_grid; None when used alone

    def bind_grid(self, grid) -> None:
        """The window grid of the stream: ``grid.start_of(wid)`` / ``end_of(wid)`` give window times
        (calendar features of a window and of each target step)."""
        self.grid = grid

    @abstractmethod
    def update(self, slots: np.ndarray, x: np.ndarray, filled: np.ndarray, wid: int | None = None) -> None:
        """Advance keys by one window. x: (n, F) raw window features, column 0 = target.

        ``wid``: the id of the window that closed (on ``self.grid``); None when the model is used
        without a stream (calendar unknown)."""

    @abstractmethod
    def forecast(self, slots: np.ndarray) -> np.ndarray:
        """(n, H) point forecasts in the target's units. Pure: state is not changed."""

    def advance(self, steps: list[WindowStep]) -> list[np.ndarray]:
        """``update`` then ``forecast`` of the real (not gap-filled) keys, for consecutive window ends
        in order: per step, the (n_real, H) forecasts. A model may do several steps at once (a replay
        closes many window ends per source batch) if it gives exactly what this loop gives."""
        out = []
        for s in steps:
            self.update(s.slots, s.x, s.filled, s.wid)
            real = s.slots[~s.filled]
            out.append(self.forecast(real) if len(real) else np.zeros((0, self.horizon)))
        return out


class BatchForecaster(Forecaster, KeyedState):
    """A model the pipeline runs: a forecaster whose per-key state is keyed state."""


__all__ = ["BatchForecaster", "Forecaster", "KeyedState", "WindowStep"]
