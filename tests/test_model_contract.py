"""Every model passes the same conformance checks (streamseq.models.checks): forecast is pure,
snapshot → restore continues identically, a key's forecast does not depend on its batch,
reset forgets."""
from __future__ import annotations

import numpy as np
import pytest

from streamseq import config as config_mod
from streamseq.compose import build_model
from streamseq.grid import FixedGrid
from streamseq.models import checks

H = 4
CFG = config_mod.from_dict({"forecast": {"horizon": H, "season": 6}, "rnn": {"hidden": 8, "learn": False},
                            "transformer": {"context": 12, "d_model": 8, "heads": 2, "layers": 1, "ff": 8}})
MODELS = ["naive", "seasonal_naive", "snarimax", "holt_winters", "gru", "lstm", "transformer"]


def make(name):
    def build():
        m = build_model(CFG, name, 1)
        m.bind_grid(FixedGrid(3600 * 10**9))
        return m
    return build


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_model_conforms(name, check):
    check(make(name))


def test_the_checks_can_fail():
    """A model whose forecast advances its state, and one that leaks across keys, are caught."""
    from streamseq.models.naive import NaiveForecaster

    class Impure(NaiveForecaster):
        def forecast(self, slots):
            out = super().forecast(slots)
            self._last[slots] += 1.0
            return out

    class Leaky(NaiveForecaster):
        def forecast(self, slots):
            return super().forecast(slots) + np.nanmean(self._last[slots])

    with pytest.raises(AssertionError, match="forecast changed the state|differ"):
        checks.check_forecast_is_pure(lambda: Impure(H))
    with pytest.raises(AssertionError, match="depends on the other keys"):
        checks.check_forecast_does_not_depend_on_the_batch(lambda: Leaky(H))
