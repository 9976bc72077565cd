"""Build the pipeline a config describes (used by replay, worker and trainer alike)."""
from __future__ import annotations

import os

import torch

from .config import Config
from .models import NaiveForecaster, RNNConfig, SeasonalNaiveForecaster, StatefulRNNForecaster
from .models.base import BatchForecaster
from .models.normalise import output_scale
from .pipeline import Pipeline
from .windowing import WindowSpec, build_spec


def set_threads(n: int) -> None:
    """Intra-op threads for torch; inter-op 1: a worker's batches are one call at a time."""
    torch.set_num_threads(max(1, n))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def torch_threads(cfg: Config, streaming: bool = False) -> int:
    """Torch intra-op threads: ``cfg.threads``, or when it is 0 (auto) one thread in the stream worker
    and up to two in replay. The worker shares its cores with the Kafka client's I/O thread (and the
    trainer when it starts one), and its per-window ops over ~1,000 keys are too small to gain from
    a second thread (bench/bench_worker.py: 1 vs 2 threads within the run-to-run noise, 0.61 vs 0.59
    and 0.73 vs 0.54 of the raw loop's records/s). Replay has the cores to itself.
    """
    if cfg.threads:
        return cfg.threads
    return 1 if streaming else max(1, min(2, os.cpu_count() or 1))


def window_spec(cfg: Config, value_cols: list[str] | None = None) -> WindowSpec:
    w = cfg.windowing
    cols = value_cols or cfg.source.value_cols
    return build_spec(cols, w.agg, w.interval_ns, w.lateness_ns, w.gap, w.max_gap_fill, w.time_jump_ns)


def rnn_config(cfg: Config, cell: str, n_features: int) -> RNNConfig:
    r = cfg.rnn
    return RNNConfig(
        cell=cell, hidden=r.hidden, horizon=cfg.forecast.horizon, n_features=n_features,
        tbptt=r.tbptt, learn_every=r.learn_every, lr=r.lr, optimizer=r.optimizer, learn=r.learn,
        norm_alpha=r.norm_alpha, target=r.target, seed=cfg.forecast.seed,
        scale=output_scale(cfg),
    )


def build_model(cfg: Config, name: str, n_features: int) -> BatchForecaster:
    H, m = cfg.forecast.horizon, cfg.forecast.season
    if name in ("gru", "lstm"):
        return StatefulRNNForecaster(rnn_config(cfg, name, n_features))
    if name == "naive":
        return NaiveForecaster(H)
    if name == "seasonal_naive":
        return SeasonalNaiveForecaster(H, m)
    if name == "snarimax":
        from .models.river_baselines import SNARIMAXForecaster

        return SNARIMAXForecaster(H, m)
    if name == "holt_winters":
        from .models.river_baselines import HoltWintersForecaster

        return HoltWintersForecaster(H, m)
    if name == "transformer":
        from .models.transformer import TransformerForecaster, transformer_config

        return TransformerForecaster(transformer_config(cfg, n_features))
    raise ValueError(name)


def build_pipeline(cfg: Config, value_cols: list[str] | None = None, clock=None,
                   streaming: bool = False) -> Pipeline:
    set_threads(torch_threads(cfg, streaming))
    cols = value_cols or cfg.source.value_cols
    spec = window_spec(cfg, cols)
    models = [build_model(cfg, n, spec.n_features) for n in cfg.forecast.models]
    return Pipeline(
        spec, len(cols), models, cfg.forecast.horizon,
        interval_level=cfg.forecast.interval_level, ensemble=cfg.forecast.ensemble, clock=clock,
    )
