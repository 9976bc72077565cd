"""Options shared by several commands, and the Config they make (config file first, options on top)."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..config import ForecastConfig, SourceConfig, WindowingConfig


def common(p: argparse.ArgumentParser) -> None:
    """-v / -q, honoured by every command."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="log more (DEBUG)")
    g.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors; no progress bar")


def log_level(a: argparse.Namespace, configured: str = "INFO") -> str:
    if getattr(a, "verbose", False):
        return "DEBUG"
    if getattr(a, "quiet", False):
        return "WARNING"
    return configured


def setup_logging(a: argparse.Namespace, cfg) -> None:
    from .. import logs

    logs.setup(log_level(a, cfg.logging.level), cfg.logging.format)


def data_options(p: argparse.ArgumentParser) -> None:
    """What a file source reads: files, columns, time parsing, bounds, pace."""
    d = SourceConfig()
    p.add_argument("files", nargs="*", metavar="FILE", help="CSV, Parquet or JSON-lines files (or [source] files)")
    p.add_argument("--config", help="TOML config; these options override it")
    p.add_argument("--key-col", help=f"column of the series key (default: {d.key_col})")
    p.add_argument("--time-col", help=f"column of the event time (default: {d.time_col})")
    p.add_argument("--value-col", action="append", dest="value_cols", metavar="COL",
                   help=f"a value column; repeat for several, the first is the target (default: {d.value_cols[0]})")
    p.add_argument("--time-format", help="strftime format of text times, e.g. '%%d/%%m/%%Y %%H:%%M' (default: ISO 8601)")
    p.add_argument("--time-unit", choices=["s", "ms", "us", "ns"],
                   help=f"unit of numeric epoch times (default: {d.time_unit})")
    p.add_argument("--start", help="first event time to read, ISO (default: from the beginning)")
    p.add_argument("--end", help="read up to this event time, ISO, exclusive (default: to the end)")
    p.add_argument("--speed", type=float, help="replay at real time × SPEED (default: as fast as possible)")
    p.add_argument("--sep", metavar="CHAR", help="CSV field separator, e.g. ';' or '\\t' (default: ',')")
    p.add_argument("--no-sort", action="store_true",
                   help="replay files as they are, even when not in time order (default: a file up to 256 MiB "
                        "that is not in time order is replayed sorted)")


def pipeline_options(p: argparse.ArgumentParser) -> None:
    """How windows are cut and what is forecast."""
    w, f = WindowingConfig(), ForecastConfig()
    p.add_argument("--interval", help=f"window length: 30min, 1h, 1d, or calendar 1w, 1mo, 1q, 1y (default: {w.interval})")
    p.add_argument("--timezone", help=f"IANA time zone of calendar windows, e.g. Europe/Berlin (default: {w.timezone})")
    p.add_argument("--agg", help=f"mean|last|first|min|max|sum|count|ohlcv (default: {w.agg})")
    p.add_argument("--lateness", help=f"allowed lateness, e.g. 10min (default: {w.allowed_lateness})")
    p.add_argument("--gap", choices=["ffill", "skip"], help=f"empty windows: forward-fill or skip (default: {w.gap})")
    p.add_argument("--horizon", type=int, help=f"steps forecast at each window (default: {f.horizon})")
    p.add_argument("--season", type=int, help="seasonal period in windows (default: the interval's usual one: "
                                               "24 for 1h, 7 for 1d, 52 for 1w, 12 for 1mo, 4 for 1q)")
    p.add_argument("--models", help=f"comma list of gru,lstm,transformer,snarimax,holt_winters,naive,seasonal_naive "
                                    f"(default: {','.join(f.models)})")
    p.add_argument("--level", type=float, help=f"prediction-interval level (default: {f.interval_level})")
    p.add_argument("--seed", type=int, help=f"random seed (default: {f.seed})")
    p.add_argument("--no-learn", action="store_true", help="freeze the shared RNN weights (no online learning)")
    p.add_argument("--retrain-every", type=int, metavar="WINDOWS",
                   help="retrain (transformer, RNN refresh) every N new windows, in event time (default: off)")
    p.add_argument("--fit-first", type=int, metavar="WINDOWS",
                   help="once the stream has N windows, fit GRU/LSTM (and train the transformer) on all keys' "
                        "windows so far, then continue with online learning from there (default: off)")


def config_from_args(a: argparse.Namespace):
    """The config file (or defaults and STREAMSEQ_* variables), then the options given."""
    from .. import config as config_mod

    cfg = config_mod.load(a.config) if getattr(a, "config", None) else config_mod.from_dict({}, env=os.environ)
    s, w, f = cfg.source, cfg.windowing, cfg.forecast
    if getattr(a, "files", None):
        s.files = [str(Path(x).resolve()) for x in a.files]
    for attr, target, name in (
        ("key_col", s, "key_col"), ("time_col", s, "time_col"), ("time_format", s, "time_format"),
        ("time_unit", s, "time_unit"), ("speed", s, "speed"), ("start", s, "start"), ("end", s, "end"),
        ("interval", w, "interval"), ("timezone", w, "timezone"), ("agg", w, "agg"), ("lateness", w, "allowed_lateness"), ("gap", w, "gap"),
        ("horizon", f, "horizon"), ("season", f, "season"), ("level", f, "interval_level"), ("seed", f, "seed"),
    ):
        v = getattr(a, attr, None)
        if v is not None:
            setattr(target, name, v)
    if getattr(a, "sep", None) is not None:
        s.separator = {"\\t": "\t", "tab": "\t"}.get(a.sep, a.sep)
    if getattr(a, "no_sort", False):
        s.sort = "off"
    if getattr(a, "value_cols", None):
        s.value_cols = a.value_cols
    if getattr(a, "models", None):
        f.models = [m.strip() for m in a.models.split(",") if m.strip()]
    if getattr(a, "no_learn", False):
        cfg.rnn.learn = False
    if getattr(a, "retrain_every", None):
        cfg.trainer.every_windows = a.retrain_every
    if getattr(a, "fit_first", None):
        cfg.trainer.fit_first = a.fit_first
    config_mod.validate(cfg)
    return cfg


def load_config(path: str | None):
    from .. import config as config_mod

    return config_mod.load(path) if path else config_mod.from_dict({}, env=os.environ)


log = logging.getLogger("streamseq")
