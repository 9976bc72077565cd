"""The ensemble forecast: per key and horizon step, a weighted mean of the members' forecasts.

A member's weight at step j of a key is exponential in how much worse than the best member it
has been, counted over the residuals behind the estimate (Hedge, the exponentially weighted
forecaster, on discounted losses):

    w_m ∝ exp(-rate * n * (r_m - 1)),   r_m = sqrt(e_mj / min_k e_kj  *  e_m / min_k e_k)

``e_mj`` is member m's mean |error| at step j for that key (kept by its interval calibrator, an
exact mean of its first residuals, then exponential with memory 1 / error_alpha), ``e_m`` its mean
over the steps (the step's own ratio is noisy; the key's pools the evidence of every step), ``n``
how many residuals both m's and the best member's means rest on, counted up to ``EVIDENCE``
(a stream's residuals are correlated: the 100 behind a mean are not 100 independent ones, and a
member 10% worse keeps a share, which a combination needs to beat its best member). With few
residuals the weights stay near equal; as evidence accumulates they lean on the members that
are really better, which a weighting by the error ratio alone never does. Members more than ``cutoff`` times worse than the best, members
whose forecast is not finite, and members whose forecast lies more than ``outlier`` best-member
errors from the members' median (a model that has just diverged, before its errors show) get
nothing. Before any error is known the members count equally.

>>> import numpy as np
>>> means = np.array([[[1.0]], [[3.0]], [[100.0]]])  # (members, keys, steps)
>>> errors = np.array([[[1.0]], [[1.0]], [[50.0]]])
>>> float(combine(means, errors, np.full_like(errors, 20.0))[0, 0])
2.0
"""
from __future__ import annotations

import warnings

import numpy as np

RATE = 0.5  # per residual, per unit of relative excess error
CUTOFF = 3.0  # members this many times worse than the best at a step are left out
OUTLIER = 100.0  # a forecast this many best-member errors from the members' median is left out
EVIDENCE = 20.0  # residuals counted at most; the accuracy suite: 10 averages too much (prices), 100 selects (hourly)


def weights(means: np.ndarray, errors: np.ndarray, counts: np.ndarray, rate: float = RATE,
            cutoff: float = CUTOFF, outlier: float = OUTLIER, evidence: float = EVIDENCE) -> np.ndarray:
    """(m, n, H) weights summing to 1 over the members (0 where no member is usable), from the
    members' forecasts, mean |errors| and the residual counts behind them, all (m, n, H)."""
    usable = np.isfinite(means)
    known = usable & np.isfinite(errors)
    best = np.min(np.where(known, errors, np.inf), axis=0, keepdims=True)  # inf where none is known
    if outlier:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step without any usable member
            median = np.nanmedian(np.where(usable, means, np.nan), axis=0, keepdims=True)
        far = np.abs(means - median) > outlier * best
        usable &= ~(far & np.isfinite(best) & (best > 0))
        known &= usable
    rel = np.sqrt(_relative(errors, known) * _relative(_mean_over_steps(errors, known), known.any(axis=2, keepdims=True)))
    inside = known & (rel <= cutoff)
    first_best = np.argmin(np.where(known, errors, np.inf), axis=0)[None]
    n_best = np.take_along_axis(counts, first_best, axis=0)
    n = np.minimum(np.minimum(np.where(inside, counts, 0.0), n_best), evidence)  # the evidence that m is worse
    w = np.where(inside, np.exp(-rate * n * (np.where(inside, rel, 1.0) - 1.0)), 0.0)
    w = np.where(known.any(axis=0, keepdims=True), w, usable)  # nothing known yet: equal
    return w / np.maximum(w.sum(axis=0, keepdims=True), 1e-300)


def _relative(errors: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Each member's error over the best known one's (>= 1; inf where unknown)."""
    best = np.min(np.where(known, errors, np.inf), axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(errors == best, 1.0, errors / best)  # 0 / 0: an exact best
    return np.where(known, rel, np.inf)


def _mean_over_steps(errors: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(m, n, 1) each member's mean error over the steps where it is known."""
    k = known.sum(axis=2, keepdims=True)
    return np.where(known, errors, 0.0).sum(axis=2, keepdims=True) / np.maximum(k, 1)


def combine(means: np.ndarray, errors: np.ndarray, counts: np.ndarray, **kw) -> np.ndarray:
    """(n, H) ensemble forecast from the members' (m, n, H) forecasts and their errors (NaN where
    no member has a finite forecast)."""
    w = weights(means, errors, counts, **kw)
    out = np.einsum("mnh,mnh->nh", w, np.where(np.isfinite(means), means, 0.0))
    return np.where(w.sum(axis=0) > 0, out, np.nan)


__all__ = ["combine", "weights"]
