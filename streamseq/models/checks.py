"""One conformance suite for every model (river's ``check_estimator``, for keyed batch models).

``check_model(make)`` builds fresh models with ``make()`` and checks the contract of
``base.Forecaster`` and ``base.KeyedState``:

- forecasting is pure: forecasting twice gives the same values and changes no state;
- snapshot → restore (into other slots of another instance) continues bitwise identically;
- a key's forecast does not depend on which other keys share its step;
- reset forgets: a reset key behaves exactly as a key never seen.

Every check raises ``AssertionError`` naming the model and what broke.

>>> from streamseq.models.naive import NaiveForecaster
>>> check_model(lambda: NaiveForecaster(horizon=3))
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import BatchForecaster

N_KEYS = 5
STEPS = 60


def stream(n_keys: int = N_KEYS, steps: int = STEPS, n_features: int = 1, seed: int = 0):
    """(steps, n_keys, F) windows with a daily-like season, noise and a few gap-filled windows."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None, None]
    level = rng.normal(10, 5, size=(1, n_keys, 1))
    x = level + 3 * np.sin(2 * np.pi * t / 6) + rng.normal(0, 0.5, size=(steps, n_keys, n_features))
    filled = rng.random((steps, n_keys)) < 0.05
    return x, filled


def _advance(model, slots, x, filled, start: int, stop: int) -> None:
    for t in range(start, stop):
        model.update(slots, x[t], filled[t], t)


def check_forecast_is_pure(make) -> None:
    m = _fresh(make)
    x, filled = stream(n_features=_features(m))
    slots = np.arange(N_KEYS)
    _advance(m, slots, x, filled, 0, STEPS // 2)
    before = m.snapshot(slots)
    a, b = m.forecast(slots), m.forecast(slots)
    _same(a, b, f"{m.name}: two forecasts in a row differ")
    _same_state(before, m.snapshot(slots), f"{m.name}: forecast changed the state")


def check_snapshot_restore_continues_identically(make) -> None:
    x, filled = stream(n_features=_features(_fresh(make)))
    a = _fresh(make)
    slots = np.arange(N_KEYS)
    _advance(a, slots, x, filled, 0, STEPS // 2)
    b = _fresh(make)
    other = slots + 7  # other slots of another instance
    b.ensure_capacity(other.max() + 1)
    b.restore(other, a.snapshot(slots))
    _same(a.forecast(slots), b.forecast(other), f"{a.name}: a restored key forecasts differently")
    for t in range(STEPS // 2, STEPS):
        a.update(slots, x[t], filled[t], t)
        b.update(other, x[t], filled[t], t)
        _same(a.forecast(slots), b.forecast(other), f"{a.name}: a restored key diverges at step {t}")


def check_forecast_does_not_depend_on_the_batch(make) -> None:
    x, filled = stream(n_features=_features(_fresh(make)))
    together, alone = _fresh(make), _fresh(make)
    slots = np.arange(N_KEYS)
    k = N_KEYS // 2
    for t in range(STEPS):
        together.update(slots, x[t], filled[t], t)
        alone.update(slots[k:k + 1], x[t, k:k + 1], filled[t, k:k + 1], t)
        _same(together.forecast(slots)[k:k + 1], alone.forecast(slots[k:k + 1]),
              f"{together.name}: key {k}'s forecast depends on the other keys of its step (step {t})")


def check_reset_forgets(make) -> None:
    x, filled = stream(n_features=_features(_fresh(make)))
    used, new = _fresh(make), _fresh(make)
    slots = np.arange(N_KEYS)
    _advance(used, slots, x, filled, 0, STEPS // 2)
    used.reset(slots)
    _advance(used, slots, x, filled, STEPS // 2, STEPS)
    _advance(new, slots, x, filled, STEPS // 2, STEPS)
    _same(used.forecast(slots), new.forecast(slots), f"{used.name}: a reset key still remembers")


CHECKS = (check_forecast_is_pure, check_snapshot_restore_continues_identically,
          check_forecast_does_not_depend_on_the_batch, check_reset_forgets)


def check_model(make: Callable[[], BatchForecaster]) -> None:
    """Run every check on models built by ``make`` (a model whose shared weights learn online must
    be built with learning off: learning makes one key's past move every key's weights)."""
    for check in CHECKS:
        check(make)


def _fresh(make) -> BatchForecaster:
    m = make()
    m.ensure_capacity(N_KEYS + 16)
    return m


def _features(m) -> int:
    return int(getattr(getattr(m, "config", None), "n_features", 1) or 1)


def _same(a, b, message: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), message


def _same_state(a: dict, b: dict, message: str) -> None:
    assert a.keys() == b.keys(), message
    for name in a:
        if a[name].dtype == object:
            assert [bytes(x) for x in a[name]] == [bytes(x) for x in b[name]], f"{message} ({name})"
        else:
            _same(a[name], b[name], f"{message} ({name})")


__all__ = ["check_model", "CHECKS", "stream"]
