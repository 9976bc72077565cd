"""One key's GRU/LSTM forecaster as a river ``Forecaster``.

The batch model with a single slot: ``learn_one`` advances (and learns),
``forecast`` reads the carried hidden state and changes nothing, so river's
own evaluation utilities can score it like any river forecaster.

>>> from river import time_series
>>> m = RNNRiverForecaster(horizon=3, hidden=8)
>>> for y in [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0]:
...     m.learn_one(y)
>>> len(m.forecast(horizon=3))
3
"""
from __future__ import annotations

import numpy as np
from river.time_series.base import Forecaster

from .rnn import RNNConfig, StatefulRNNForecaster

_SLOT = np.array([0])
_REAL = np.array([False])


class RNNRiverForecaster(Forecaster):
    def __init__(self, horizon: int = 24, cell: str = "gru", hidden: int = 64, tbptt: int = 8,
                 lr: float = 0.002, learn: bool = True, seed: int = 0):
        self.horizon = horizon
        self.cell = cell
        self.hidden = hidden
        self.tbptt = tbptt
        self.lr = lr
        self.learn = learn
        self.seed = seed
        self._model = StatefulRNNForecaster(RNNConfig(
            cell=cell, hidden=hidden, horizon=horizon, tbptt=tbptt, lr=lr, learn=learn, seed=seed))
        self._model.ensure_capacity(1)
        self._seen = 0

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self._model.update(_SLOT, np.array([[float(y)]]), _REAL)
        self._seen += 1

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        if horizon > self.horizon:
            raise ValueError(f"this forecaster was built for horizon {self.horizon}, asked for {horizon}")
        if self._seen == 0:
            return [0.0] * horizon
        return self._model.forecast(_SLOT)[0, :horizon].tolist()
