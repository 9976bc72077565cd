"""Prediction intervals calibrated online from each key's own past residuals.

Normalised conformal, per key and horizon step j: the half-width is
``c * scale_j``.

- ``scale_j`` is the mean |residual| of step j: an exact mean over the first
  ``1 / scale_alpha`` residuals (right from few samples), then an exponential
  mean (it follows a key whose noise changes, e.g. volatility on prices). A
  step not seen yet borrows the last seen step's scale times sqrt(j / j').
- ``c`` is the ``level`` quantile of the key's scores ``|r| / scale_j``, pooled
  over all steps (H scores per window, not one per step), kept in a small
  histogram with exponential forgetting. A score is divided by the scale the
  interval had when the forecast was made (kept per forecast in the ring as
  the key's mean scale then, times the step's profile now), so the quantile
  also absorbs the error of the scale estimate: that is what makes it cover.
- While a key has few scores, c leans on the normal-theory value (a prior of
  ``prior_windows`` windows of scores) and the level gets a split-conformal
  small-sample correction ``level * (1 + small_sample / n)``, n = windows'
  worth of scores (one window's H scores are correlated: they count as one).
  small_sample = 0.5 is the accuracy suite's choice over its streams: 0 left
  the short series and the gap-skip stream 1-3 points under 90%, 1 the
  quarterly ones 2 points over.
- No pooling across keys: every figure here is the key's own, so a key's
  intervals survive a snapshot/restore into another worker unchanged.

Residuals need the forecasts that targeted this window, so each key keeps a
ring of its last H forecasts (origin -> H means), stored as a float32 anchor
and a power-of-two unit per forecast with int16 steps (the rounding is below
2^-16 of the forecast's own range: far below any residual that matters, and
half the bytes of float32). A second per-step mean |residual| with a longer
memory (``error_alpha``) gives the ensemble each member's error by step.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from .keyspace import grow
from .models.base import KeyedState

NO_ORIGIN = np.iinfo(np.int64).min
NAN_CODE = -32768  # an int16 ring cell holding a non-finite forecast
CODE_MAX = 32767
# Score histogram: [0, Z0), then geometric bins from Z0 up to Z0 * 2**OCTAVES, then [top, inf).
Z0, PER_OCTAVE, OCTAVES = 0.25, 4, 7
EDGES = np.r_[0.0, Z0 * 2.0 ** (np.arange(PER_OCTAVE * OCTAVES + 1) / PER_OCTAVE)]
N_BINS = len(EDGES)  # the last bin is [EDGES[-1], inf)


class ConformalCalibrator(KeyedState):
    def __init__(self, horizon: int, level: float = 0.9, *, scale_alpha: float = 0.05, error_alpha: float = 0.01,
                 forget: float = 0.01, prior_windows: float = 1.0, small_sample: float = 0.5):
        self.horizon = horizon
        self.level = level
        self.scale_alpha = scale_alpha
        self.error_alpha = error_alpha
        self.forget = forget  # share of the score histogram forgotten per window
        self.prior_windows = prior_windows
        self.small_sample = small_sample
        # the level quantile of |N(0, 1)| in units of its mean: c before a key has scores of its own
        self.prior_c = NormalDist().inv_cdf(0.5 + level / 2) * float(np.sqrt(np.pi / 2))
        H = horizon
        self._code = np.zeros((0, H, H), np.int16)  # [slot, origin % H, step]: (mean - anchor) / unit
        self._anchor = np.zeros((0, H), np.float32)  # per ring row
        self._unit = np.zeros((0, H), np.float32)
        self._row_scale = np.zeros((0, H), np.float32)  # the key's mean step scale when the row's forecast was made
        self._origin = np.zeros((0, H), np.int64)  # wid of the forecast in that ring row
        self._scale = np.zeros((0, H), np.float32)  # mean |residual| per step; NaN until one was seen
        self._count = np.zeros((0, H), np.uint16)  # residuals behind it, capped at 1 / scale_alpha
        self._error = np.zeros((0, H), np.float32)  # the same with the ensemble's longer memory
        self._error_count = np.zeros((0, H), np.uint16)
        self._hist = np.zeros((0, N_BINS), np.float32)  # forgetful counts of scores

    # -- KeyedState ------------------------------------------------------------
    def ensure_capacity(self, capacity: int) -> None:
        for name, fill in self._fields():
            setattr(self, name, grow(getattr(self, name), capacity, fill))

    def snapshot(self, slots):
        return {name[1:]: getattr(self, name)[slots].copy() for name, _ in self._fields()}

    def restore(self, slots, state):
        for name, _ in self._fields():
            getattr(self, name)[slots] = state[name[1:]]

    def state_faults(self, state) -> np.ndarray:
        """Keys whose restored state holds values no update writes (Pipeline.restore_keys starts them afresh):
        negative or huge scales, errors and ring units, negative or huge score counts (NaN stands for
        "not seen yet" and is allowed)."""
        def bad(name, limit=3e38):
            a = np.asarray(state[name], np.float64).reshape(len(state[name]), -1)
            return ((a < 0) | (a > limit)).any(axis=1)  # NaN compares False: allowed
        return bad("scale") | bad("error") | bad("row_scale") | bad("unit") | bad("hist", 1e6)

    def reset(self, slots):
        for name, fill in self._fields():
            getattr(self, name)[slots] = fill

    @staticmethod
    def _fields():
        return (("_code", NAN_CODE), ("_anchor", np.nan), ("_unit", np.nan), ("_row_scale", np.nan),
                ("_origin", NO_ORIGIN), ("_scale", np.nan), ("_count", 0), ("_error", np.nan),
                ("_error_count", 0), ("_hist", 0.0))

    # -- the stream ------------------------------------------------------------
    def observe(self, slots: np.ndarray, wid: int, y: np.ndarray) -> None:
        """The actual y of window ``wid`` arrived: score the forecasts that targeted it."""
        H = self.horizon
        steps = np.arange(1, H + 1)
        origins = wid - steps  # (H,)
        rows = origins % H
        have = self._origin[slots][:, rows] == origins[None, :]  # (n, H)
        fc = self._ring_mean(slots, rows, steps)
        have &= np.isfinite(fc) & np.isfinite(y)[:, None]
        if not have.any():
            return
        r = np.where(have, np.abs(y[:, None] - fc), 0.0)
        self._score(slots, rows, r, have)
        self._scale[slots], self._count[slots] = _running_mean(
            self._scale[slots], self._count[slots], r, have, self.scale_alpha)
        self._error[slots], self._error_count[slots] = _running_mean(
            self._error[slots], self._error_count[slots], r, have, self.error_alpha)

    def record(self, slots: np.ndarray, wid: int, mean: np.ndarray) -> None:
        row = wid % self.horizon
        anchor, unit, code = _encode(mean)
        self._code[slots, row] = code
        self._anchor[slots, row] = anchor
        self._unit[slots, row] = unit
        self._row_scale[slots, row] = _mean_seen(self.step_scale(slots))
        self._origin[slots, row] = wid

    def bounds(self, slots: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of the prediction interval around ``mean`` (NaN until the key has a residual)."""
        q = self.multiplier(slots)[:, None] * self.step_scale(slots)
        return mean - q, mean + q

    # -- what the intervals and the ensemble read ------------------------------
    def multiplier(self, slots: np.ndarray) -> np.ndarray:
        """(n,) the ``level`` quantile of each key's scores, leaning on the normal value while they are few."""
        hist = self._hist[slots].astype(np.float64)
        total = hist.sum(axis=1)
        windows = total / self.horizon
        level = np.minimum(self.level * (1.0 + self.small_sample / np.maximum(windows, 1.0)), 1.0 - (1.0 - self.level) / 4)
        c = _hist_quantile(hist, level)
        w = windows / np.maximum(windows + self.prior_windows, 1e-300)
        return np.where(total > 0, w * c + (1.0 - w) * self.prior_c, self.prior_c)

    def step_scale(self, slots: np.ndarray) -> np.ndarray:
        """(n, H) mean |residual| per step; an unseen step borrows the last seen one's times sqrt(j / j')."""
        s = self._scale[slots].astype(np.float64)
        seen = np.isfinite(s)
        j = np.arange(1, self.horizon + 1)
        last = np.maximum.accumulate(np.where(seen, j[None, :], 0), axis=1)  # last seen step at or before j
        src = np.take_along_axis(s, np.maximum(last - 1, 0), axis=1)
        return np.where(seen, s, np.where(last > 0, src * np.sqrt(j[None, :] / np.maximum(last, 1)), np.nan))

    def step_error(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, H) mean |residual| per step with the ensemble's memory (NaN where unseen) and how many
        residuals it rests on (capped at 1 / error_alpha)."""
        return self._error[slots].astype(np.float64), self._error_count[slots].astype(np.float64)

    # -- internals ---------------------------------------------------------------
    def _ring_mean(self, slots, rows, steps) -> np.ndarray:
        code = self._code[slots[:, None], rows[None, :], steps[None, :] - 1]
        anchor = self._anchor[slots[:, None], rows[None, :]].astype(np.float64)
        unit = self._unit[slots[:, None], rows[None, :]].astype(np.float64)
        return np.where(code == NAN_CODE, np.nan, anchor + unit * code)

    def _score(self, slots, rows, r, have) -> None:
        """Add this window's scores |r| / (the scale its interval had) to each key's histogram."""
        then = self._row_scale[slots[:, None], rows[None, :]].astype(np.float64)  # (n, H)
        now = _mean_seen(self.step_scale(slots))[:, None]
        drift = np.where(now > 0, then / np.where(now > 0, now, 1.0), 1.0)  # how the key's scale moved since
        scale = self._scale[slots].astype(np.float64) * drift
        scored = have & np.isfinite(scale)
        if not scored.any():
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(r == 0, 0.0, r / scale)  # a zero scale with a non-zero residual: the top bin
        hist = self._hist[slots].astype(np.float64)
        got = scored.any(axis=1)
        hist[got] *= 1.0 - self.forget
        bins = np.searchsorted(EDGES, np.where(scored, np.nan_to_num(z, posinf=np.inf), 0.0), side="right") - 1
        row_of = np.broadcast_to(np.arange(len(slots))[:, None], bins.shape)
        np.add.at(hist, (row_of[scored], bins[scored]), 1.0)
        self._hist[slots] = hist


def _running_mean(mean, count, r, have, alpha):
    """An exact mean of the first 1/alpha residuals, then exponential with weight alpha."""
    mean = mean.astype(np.float64)
    n = np.where(have, np.minimum(count.astype(np.float64) + 1.0, round(1.0 / alpha)), count)
    w = np.where(have, 1.0 / np.maximum(n, 1.0), 0.0)
    old = np.where(np.isfinite(mean), mean, 0.0)
    return np.where(have, old + w * (r - old), mean).astype(np.float32), n.astype(count.dtype)


def _mean_seen(s: np.ndarray) -> np.ndarray:
    """(n,) mean over the finite entries of each row (NaN for none)."""
    seen = np.isfinite(s)
    k = seen.sum(axis=1)
    return np.where(k > 0, np.where(seen, s, 0.0).sum(axis=1) / np.maximum(k, 1), np.nan)


def _encode(mean: np.ndarray):
    """(n, H) forecasts -> float32 anchor (n,), power-of-two float32 unit (n,), int16 codes (n, H)."""
    mean = np.asarray(mean, np.float64)
    finite = np.isfinite(mean)
    anchor = _mean_seen(mean)
    anchor = np.where(np.isfinite(anchor), anchor, 0.0).astype(np.float32)
    dev = np.where(finite, np.abs(mean - anchor[:, None]), 0.0).max(axis=1, initial=0.0)
    exp = np.ceil(np.log2(np.where(dev > 0, dev, 1.0)))
    unit = np.where(dev > 0, np.exp2(exp) / CODE_MAX, 1.0).astype(np.float32)
    code = np.rint((np.where(finite, mean, 0.0) - anchor[:, None]) / unit[:, None].astype(np.float64))
    return anchor, unit, np.where(finite, np.clip(code, -CODE_MAX, CODE_MAX), NAN_CODE).astype(np.int16)


def _hist_quantile(hist: np.ndarray, level) -> np.ndarray:
    """(n,) the ``level`` quantile of each row's binned scores, linear within a bin (the open top bin
    counts as one more octave)."""
    n, B = hist.shape
    total = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    target = np.asarray(level) * total
    k = np.minimum((cum < target[:, None]).sum(axis=1), B - 1)  # first bin where cum >= target
    rows = np.arange(n)
    below = np.where(k > 0, cum[rows, np.maximum(k - 1, 0)], 0.0)
    inside = hist[rows, k]
    frac = np.where(inside > 0, (target - below) / np.where(inside > 0, inside, 1.0), 0.0)
    lo = EDGES[k]
    hi = np.where(k + 1 < B, EDGES[np.minimum(k + 1, B - 1)], 2.0 * EDGES[-1])
    return lo + np.clip(frac, 0.0, 1.0) * (hi - lo)
