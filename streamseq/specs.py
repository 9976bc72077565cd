"""What the settings describe, as the engine's own objects: window specs and model configs.

Models never read the app's Config: the runtime (compose) and the trainer turn the
settings into each model's own config dataclass here, in one place, so the stream
and the trainer always build the same networks.
"""
from __future__ import annotations

import os

from .config import Config
from .models.rnn_config import RNNConfig
from .windowing import WindowSpec, build_spec


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
    return build_spec(cols, w.agg, w.grid, w.lateness_ns, w.gap, w.max_gap_fill, w.time_jump_ns)


def season(cfg: Config) -> int:
    """The seasonal period in windows: ``[forecast] season``, or the interval's usual one (24 hourly,
    7 daily, 52 weekly, 12 monthly, 4 quarterly)."""
    from .grid import default_season

    return cfg.forecast.season or default_season(cfg.windowing.grid)


def output_scale(cfg: Config) -> str:
    """The output unit of the neural models (``rnn.scale``; "auto": change for prices, else level)."""
    scale = cfg.rnn.scale
    return scale if scale != "auto" else ("change" if cfg.kind == "price" else "level")


def rnn_config(cfg: Config, cell: str, n_features: int) -> RNNConfig:
    r = cfg.rnn
    return RNNConfig(
        cell=cell, hidden=r.hidden, horizon=cfg.forecast.horizon, n_features=n_features,
        tbptt=r.tbptt, learn_every=r.learn_every, lr=r.lr, optimizer=r.optimizer, learn=r.learn,
        norm_alpha=r.norm_alpha, target=r.target, seed=cfg.forecast.seed,
        season=season(cfg), calendar=",".join(rnn_calendar(cfg)),
    )


def rnn_calendar(cfg: Config) -> tuple[str, ...]:
    """Calendar periods the RNN sees: ``[rnn] calendar`` ("auto": those that vary at the interval,
    none for prices, whose calendar effects are too weak to pay for the noise they add)."""
    from .models.features import calendar_periods

    mode = cfg.rnn.calendar
    if mode == "auto" and cfg.kind == "price":
        return ()
    return calendar_periods(cfg.windowing.interval_ns, mode)


def transformer_config(cfg: Config, n_features: int):
    """The transformer a Config describes (normalisation weight shared with the RNN section)."""
    from .models.transformer import TransformerConfig

    t = cfg.transformer
    return TransformerConfig(
        context=t.context, d_model=t.d_model, heads=t.heads, layers=t.layers, ff=t.ff, dropout=t.dropout,
        horizon=cfg.forecast.horizon, n_features=n_features, norm_alpha=cfg.rnn.norm_alpha,
        scale="level" if t.baseline == "blend" else output_scale(cfg), seed=cfg.forecast.seed,
        season=season(cfg), baseline=t.baseline,
    )


__all__ = ["torch_threads", "window_spec", "season", "output_scale", "rnn_config", "rnn_calendar", "transformer_config"]
