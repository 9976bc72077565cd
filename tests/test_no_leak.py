"""Nothing looks at the future: a forecast made at origin t depends only on windows that closed at or before t.

Values after t are perturbed; every forecast (point and interval, every model, the ensemble) made at an
origin <= t must be bitwise unchanged, with online learning on, with the event-time fit of --fit-first
and with the retraining schedule. A feature, a normaliser, a baseline statistic or a training sample that
read a later window would change them.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from helpers import frame_batches

from streamseq.compose import build_pipeline
from streamseq.config import from_dict
from streamseq.memory import ListSink, MemoryPartition
from streamseq.synthetic import generate

HOUR = 3600 * 10**9
MODELS = ["gru", "lstm", "transformer", "naive", "seasonal_naive"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**trainer):
    return from_dict({
        "threads": 1,
        "forecast": {"horizon": 4, "season": 6, "models": MODELS, "ensemble": True},
        "rnn": {"hidden": 8, "tbptt": 4, "learn_every": 1},
        "transformer": {"context": 12, "d_model": 8, "heads": 2, "layers": 1, "ff": 16, "epochs": 1,
                        "batch_size": 64, "dropout": 0.0},
        "trainer": {"holdout": 6, "drift": False, "max_samples": 500, "rnn_epochs": 2, **trainer},
    })


def forecasts(cfg, df: pl.DataFrame) -> dict:
    pipe = build_pipeline(cfg)
    sink = ListSink()
    pipe.add_sink(sink)
    retrainer = None
    if cfg.trainer.fit_first or cfg.trainer.every_windows:
        from streamseq.hotswap import attach_retraining

        retrainer = attach_retraining(pipe, cfg)
    try:
        pipe.run(MemoryPartition(frame_batches(df, 97)))
    finally:
        if retrainer is not None:
            retrainer.close()
    out = {}
    for b in sink.batches:
        for i, k in enumerate(b.keys.tolist()):
            out[(b.model, k, int(b.origin))] = (b.model_version, b.mean[i].tobytes(), b.lo[i].tobytes(), b.hi[i].tobytes())
    return out, retrainer


def perturbed(df: pl.DataFrame, after_ns: int) -> pl.DataFrame:
    rng = np.random.default_rng(1)
    later = df["ts"].dt.epoch("ns").to_numpy() >= after_ns
    v = df["value"].to_numpy().copy()
    v[later] = v[later] * 3 + 100 * rng.normal(size=later.sum())
    return df.with_columns(pl.Series("value", v))


@pytest.mark.parametrize("trainer", [{}, {"fit_first": 40}, {"fit_first": 40, "every_windows": 24}],
                         ids=["online", "fit-first", "fit-first+retraining"])
@pytest.mark.parametrize("cut", [30, 70])
def test_forecasts_up_to_t_ignore_every_later_window(trainer, cut):
    df = generate(5, 110, seed=4, irregular=False)
    t0 = int(df["ts"].dt.epoch("ns").min())
    t = t0 + cut * HOUR  # windows [t0, t) closed at or before origin t; later observations are perturbed
    cfg = config(**trainer)
    base, r1 = forecasts(cfg, df)
    moved, r2 = forecasts(cfg, perturbed(df, t))
    early = [k for k in base if k[2] <= t]
    late = [k for k in base if k[2] > t]
    assert {k[0] for k in early} == set(MODELS) | {"ensemble"}
    for k in early:
        assert moved[k] == base[k], k
    assert sum(moved[k] != base[k] for k in late) > 0.9 * len(late)  # the perturbation does reach later forecasts
    if trainer.get("fit_first") and cut > 40:
        assert r1.history and r1.history[0]["reason"] == "first 40 windows"
