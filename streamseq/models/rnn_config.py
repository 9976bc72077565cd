"""The settings of a stateful RNN forecaster (models/rnn.py), importable without torch.

The settings layer (specs.py) and the registry build configs before any network exists, so a
replay whose models need no torch never imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .features import seasonal_lags


@dataclass
class RNNConfig:
    cell: str = "gru"  # "gru" | "lstm"
    hidden: int = 64  # hidden units
    horizon: int = 24  # H, steps forecast directly
    n_features: int = 1  # window features; feature 0 is the target
    tbptt: int = 8  # k, windows of truncated BPTT per learning step
    # s: each key takes a learning step every s-th of its own windows (TBPTT(k, s)); the schedule depends
    # on the key's history only, so it is the same in replay and live. s = 3 keeps the learning cost of the
    # richer inputs and head within 1.5x of TBPTT(8, 2) with the old ones, at equal or better accuracy on the
    # replay_data hourly streams (the baseline does much of the work the learner used to).
    learn_every: int = 3
    max_learn_keys: int = 4096  # keys per optimiser step; bounds the training graph's memory
    lr: float = 2e-3  # the [rnn] lr default too (tests/test_config.py holds them equal)
    optimizer: str = "adam"  # "adam" | "sgd"
    learn: bool = True  # online learning of the shared weights
    normalize: bool = True  # per-key running mean/std normalisation
    norm_alpha: float = 0.01  # floor of the running-statistics weight (adaptivity)
    target: str = "delta"  # "delta": correction to the naive/seasonal-naive baseline | "level": to the running mean
    season: int = 1  # m, windows per season (1 = no seasonal lag)
    calendar: str = ""  # calendar periods the windows vary in (features.calendar_periods), comma list; "" = none
    clip: float = 1.0  # gradient-norm clip
    seed: int = 0

    @property
    def periods(self) -> tuple[str, ...]:
        return tuple(p for p in self.calendar.split(",") if p)

    @property
    def ring(self) -> int:
        """R: windows a key keeps (k origins, their H targets, one season of lags before them)."""
        return self.horizon + self.tbptt + self.local

    @property
    def local(self) -> int:
        """W: windows a key's local level and unit are taken over (at least a season)."""
        return max(8, self.season)

    @property
    def max_lag(self) -> int:
        """Lmax: the longest lag a baseline forecast of step 1..H reads."""
        return int(max(self.horizon, seasonal_lags(self.horizon, max(1, self.season))[-1]))


__all__ = ["RNNConfig"]
