"""One TOML file for replay, worker and trainer, with environment overrides.

Every key can be set from the environment as ``STREAMSEQ_<SECTION>__<KEY>``
(``STREAMSEQ_KAFKA__BOOTSTRAP_SERVERS``); top-level keys as
``STREAMSEQ_<KEY>``. Values are validated at start: an error names the key
and says what was expected.

>>> cfg = from_dict({"windowing": {"interval": "30min"}, "forecast": {"horizon": 6}})
>>> cfg.windowing.interval_ns // 10**9, cfg.forecast.horizon
(1800, 6)
>>> from_dict({"forecast": {"horizn": 6}})
Traceback (most recent call last):
...
streamseq.errors.ConfigError: forecast.horizn: expected one of the keys horizon, season, models, interval_level, ensemble, seed, warmup
"""
from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError
from .timeutil import parse_duration

MODEL_NAMES = ("gru", "lstm", "transformer", "snarimax", "holt_winters", "naive", "seasonal_naive")


@dataclass
class SourceConfig:
    files: list[str] = field(default_factory=list)  # replay inputs (CSV, Parquet, JSON lines)
    key_col: str = "key"
    time_col: str = "ts"
    value_cols: list[str] = field(default_factory=lambda: ["value"])  # first = forecast target
    time_format: str = ""  # strftime format of string times; "" = ISO
    time_unit: str = "s"  # numeric epoch times: s, ms, us, ns
    speed: float = 0.0  # 0 = as fast as possible; x = real time × x
    start: str = ""  # optional event-time bounds [start, end)
    end: str = ""
    chunk_rows: int = 65536
    separator: str = ","  # CSV field separator, e.g. ";" or "\t"
    sort: str = "auto"  # auto: replay a file that is not in time order sorted (files up to 256 MiB) | off


@dataclass
class WindowingConfig:
    interval: str = "1h"  # a duration (30min, 1h, 1d) or a calendar interval: 1w (from Monday), 1mo, 1q, 1y
    agg: Any = "mean"  # mean|last|first|min|max|sum|count|ohlcv, or {column = agg}
    allowed_lateness: str = "0s"
    gap: str = "ffill"  # ffill | skip
    max_gap_fill: int = 48  # longer gaps are not filled
    max_time_jump: str = "auto"  # how far one record may move stream time ahead unconfirmed (auto: 100 windows, >= 7d; "off")

    timezone: str = "UTC"  # IANA zone of calendar windows (days, weeks, months...): local midnights

    @property
    def grid(self):
        """Which window an event time falls in (streamseq.grid)."""
        from .grid import parse_interval

        return parse_interval(self.interval, self.timezone)

    @property
    def interval_ns(self) -> int:
        """The window length in ns (a calendar interval's average length)."""
        return self.grid.nominal

    @property
    def time_jump_ns(self) -> int:
        """-1 = auto, 0 = off, else ns."""
        if self.max_time_jump == "auto":
            return -1
        if self.max_time_jump in ("off", "0"):
            return 0
        return parse_duration(self.max_time_jump, "windowing.max_time_jump")

    @property
    def lateness_ns(self) -> int:
        return parse_duration(self.allowed_lateness, "windowing.allowed_lateness")


@dataclass
class ForecastConfig:
    horizon: int = 24
    season: int = 0  # seasonal period in windows (seasonal naive, Holt-Winters, MASE scale); 0 = the interval's usual one
    models: list[str] = field(default_factory=lambda: ["gru", "lstm", "snarimax", "holt_winters", "naive", "seasonal_naive"])
    interval_level: float = 0.9
    ensemble: bool = True
    seed: int = 0
    warmup: int = -1  # windows per key not scored in backtests; -1 = 2 × season


@dataclass
class RNNSection:
    hidden: int = 64
    tbptt: int = 8
    learn_every: int = 3  # a learning step every s windows per key (TBPTT(k, s)): each origin is trained k/s times
    lr: float = 0.002
    optimizer: str = "adam"
    learn: bool = True
    norm_alpha: float = 0.01
    target: str = "delta"
    scale: str = "auto"  # transformer output unit: level | change | auto (change for kind = "price", else level)
    calendar: str = "auto"  # calendar features: auto (periods that vary at the interval; none for prices) | none | e.g. "day,week"


@dataclass
class TransformerSection:
    context: int = 48  # L windows of context
    d_model: int = 32
    heads: int = 4
    layers: int = 2
    ff: int = 64
    dropout: float = 0.1
    epochs: int = 3
    batch_size: int = 256
    lr: float = 0.001


@dataclass
class TopicsConfig:
    observations: list[str] = field(default_factory=lambda: ["observations"])
    forecasts: str = "forecasts"
    dead_letter: str = "observations.dlq"
    changelog: str = "streamseq-state-changelog"
    partitions: int = 4
    replication_factor: int = 1
    create: bool = True


@dataclass
class InputConfig:
    key_field: str = "key"  # "" = the message key
    time_field: str = "ts"
    value_fields: list[str] = field(default_factory=lambda: ["value"])
    time_unit: str = "ms"  # numeric times in messages
    max_record_bytes: int = 1_000_000


@dataclass
class RegistryConfig:
    path: str = "registry"
    poll_s: float = 5.0  # how often the worker looks for a promoted version


@dataclass
class StoreConfig:
    path: str = ""  # window store (Parquet); "" = off
    retention: str = "30d"
    max_bytes: int = 0  # 0 = no size limit
    flush_rows: int = 50_000


@dataclass
class TrainerConfig:
    every_windows: int = 0  # retrain after N new windows (0 = off)
    every: str = ""  # retrain every T of (event or wall) time, e.g. "1d"
    drift: bool = True  # retrain when ADWIN sees drift in live residuals
    holdout: int = 24  # most recent windows per key held out for the promotion gate
    min_improvement: float = 0.0  # candidate must beat the model in service by this share
    refresh_rnn: bool = False  # also refresh GRU/LSTM weights offline
    once: bool = False
    poll_s: float = 30.0  # trainer process: how often it looks at the store and the schedule
    drift_delta: float = 0.002  # ADWIN confidence (smaller = fewer, surer drift alarms)
    max_samples: int = 50_000  # training samples per run at most (a seeded random subset)
    min_context: int = 4  # windows of history a sample's origin needs (shorter contexts are left-padded)
    warm_start: bool = True  # start from the weights in service rather than a fresh init
    rnn_epochs: int = 3  # passes of the online learner over the stored windows when refreshing GRU/LSTM weights
    rnn_lr: float = 0.001  # learning rate of those passes
    rnn_max_keys: int = 5000  # keys a GRU/LSTM refresh trains on at most (a seeded random subset); 0 = all
    fit_first: int = 0  # replay: once the stream has N windows, fit GRU/LSTM (and train the transformer) on them
    threads: int = 0  # torch threads of the trainer; 0 = half the cores (at least 1)
    nice: int = 10  # niceness of the trainer process (when idle_priority is off or unavailable)
    idle_priority: bool = True  # trainer under SCHED_IDLE (Linux): it only gets CPU time the stream leaves


@dataclass
class WorkerConfig:
    checkpoint_every_s: float = 5.0
    checkpoint_every_records: int = 50_000
    poll_timeout_ms: int = 100
    shutdown_deadline_s: float = 30.0
    http_host: str = "0.0.0.0"
    http_port: int = 8080  # 0 = off
    exactly_once: bool = False
    outage_budget_s: float = 120.0  # how long a checkpoint retries an unreachable broker before the worker exits


@dataclass
class LoggingConfig:
    level: str = "INFO"
    format: str = "auto"  # auto (JSON when not a terminal) | json | text


@dataclass
class Config:
    name: str = "run"
    kind: str = "sensor"
    threads: int = 0  # torch intra-op threads; 0 = auto (see factory.torch_threads)
    source: SourceConfig = field(default_factory=SourceConfig)
    windowing: WindowingConfig = field(default_factory=WindowingConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    rnn: RNNSection = field(default_factory=RNNSection)
    transformer: TransformerSection = field(default_factory=TransformerSection)
    kafka: dict = field(default_factory=dict)  # validated by the Kafka connector's settings
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    input: InputConfig = field(default_factory=InputConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    base_dir: str = "."  # directory of the config file; relative paths resolve against it

    def resolve(self, path: str) -> str:
        p = Path(path)
        return str(p if p.is_absolute() else Path(self.base_dir) / p)


_SECTIONS = {f.name for f in fields(Config) if f.name not in ("name", "kind", "threads", "base_dir")}


def _coerce(key: str, value: Any, typ: Any, from_env: bool) -> Any:
    origin = getattr(typ, "__origin__", None)
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if from_env and str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
        raise ConfigError(key, f"true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63:
            return value
        if from_env:
            try:
                if -2**63 <= int(value) < 2**63:
                    return int(value)
            except ValueError:
                pass
        raise ConfigError(key, f"a 64-bit integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if from_env:
            try:
                if math.isfinite(float(value)):
                    return float(value)
            except (ValueError, OverflowError):
                pass
        raise ConfigError(key, f"a finite number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"a string, got {value!r}")
    if origin is list:
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"a list of strings, got {value!r}")
        return value
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"a table, got {value!r}")
        return value
    return value


def _section(name: str, cls, data: dict, from_env: bool = False):
    if not isinstance(data, dict):
        raise ConfigError(name, "a table")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    obj = cls()
    for k, v in data.items():
        if k not in names:
            raise ConfigError(f"{name}.{k}", f"one of the keys {', '.join(names)}")
        setattr(obj, k, _coerce(f"{name}.{k}", v, hints[k], from_env))
    return obj


def from_dict(data: dict, base_dir: str = ".", env: dict | None = None) -> Config:
    cfg = Config(base_dir=base_dir)
    hints = get_type_hints(Config)
    for k, v in data.items():
        if k in _SECTIONS:
            if k == "kafka":
                cfg.kafka = _coerce("kafka", v, dict, False)
            else:
                setattr(cfg, k, _section(k, hints[k], v))
        elif k in ("name", "kind", "threads"):
            setattr(cfg, k, _coerce(k, v, hints[k], False))
        else:
            raise ConfigError(k, f"a known section or key ({', '.join(sorted(_SECTIONS | {'name', 'kind', 'threads'}))})")
    if env:
        apply_env(cfg, env)
    validate(cfg)
    return cfg


def apply_env(cfg: Config, env: dict) -> None:
    hints = get_type_hints(Config)
    for var, value in env.items():
        if not var.startswith("STREAMSEQ_") or var in ("STREAMSEQ_CONFIG",):
            continue
        rest = var[len("STREAMSEQ_"):].lower()
        if "__" not in rest:
            if rest in ("name", "kind", "threads"):
                setattr(cfg, rest, _coerce(var, value, hints[rest], True))
            continue
        section, key = rest.split("__", 1)
        if section == "kafka":
            cfg.kafka[key] = _env_scalar(value)
            continue
        if section not in _SECTIONS:
            raise ConfigError(var, f"STREAMSEQ_<SECTION>__<KEY> with a section among {', '.join(sorted(_SECTIONS))}")
        obj = getattr(cfg, section)
        sh = get_type_hints(type(obj))
        if key not in sh:
            raise ConfigError(var, f"a key of [{section}]: {', '.join(f.name for f in fields(obj))}")
        setattr(obj, key, _coerce(var, value, sh[key], True))


def _env_scalar(value: str):
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def validate(cfg: Config) -> None:
    w, f = cfg.windowing, cfg.forecast
    for parsed in ("grid", "lateness_ns", "time_jump_ns"):  # each parses or raises a ConfigError
        getattr(w, parsed)
    if w.gap not in ("ffill", "skip"):
        raise ConfigError("windowing.gap", f"'ffill' or 'skip', got {w.gap!r}")
    if f.horizon < 1 or f.horizon > 10_000:
        raise ConfigError("forecast.horizon", f"an integer in 1..10000, got {f.horizon}")
    if f.season < 0:
        raise ConfigError("forecast.season", f"a positive integer, or 0 for the interval's usual season, got {f.season}")
    if not f.models:
        raise ConfigError("forecast.models", "at least one model")
    for m in f.models:
        if m not in MODEL_NAMES:
            raise ConfigError("forecast.models", f"names among {', '.join(MODEL_NAMES)}, got {m!r}")
    if not 0 < f.interval_level < 1:
        raise ConfigError("forecast.interval_level", f"a number strictly between 0 and 1, got {f.interval_level}")
    if cfg.kind not in ("sensor", "price"):
        raise ConfigError("kind", f"'sensor' or 'price', got {cfg.kind!r}")
    if not isinstance(cfg.threads, int) or isinstance(cfg.threads, bool) or cfg.threads < 0:
        raise ConfigError("threads", f"0 (auto) or a positive integer, got {cfg.threads!r}")
    if cfg.rnn.optimizer not in ("adam", "sgd"):
        raise ConfigError("rnn.optimizer", f"'adam' or 'sgd', got {cfg.rnn.optimizer!r}")
    if cfg.rnn.target not in ("delta", "level"):
        raise ConfigError("rnn.target", f"'delta' or 'level', got {cfg.rnn.target!r}")
    if cfg.rnn.scale not in ("auto", "level", "change"):
        raise ConfigError("rnn.scale", f"auto, level or change, got {cfg.rnn.scale!r}")
    try:
        from .models.features import calendar_periods

        calendar_periods(w.interval_ns, cfg.rnn.calendar)
    except ValueError as exc:
        raise ConfigError("rnn.calendar", f"auto, none or a comma list of day, week, year ({exc})") from None
    if cfg.rnn.learn_every < 1:
        raise ConfigError("rnn.learn_every", "a positive integer")
    if cfg.rnn.hidden < 1 or cfg.rnn.tbptt < 1:
        raise ConfigError("rnn.hidden" if cfg.rnn.hidden < 1 else "rnn.tbptt", "a positive integer")
    if cfg.source.time_unit not in ("s", "ms", "us", "ns"):
        raise ConfigError("source.time_unit", f"one of s, ms, us, ns, got {cfg.source.time_unit!r}")
    if cfg.source.sort not in ("auto", "off"):
        raise ConfigError("source.sort", f"auto or off, got {cfg.source.sort!r}")
    if len(cfg.source.separator.encode()) != 1:
        raise ConfigError("source.separator", f"one single-byte character such as ';' or '\\t', got {cfg.source.separator!r}")
    if cfg.source.speed < 0:
        raise ConfigError("source.speed", "0 (as fast as possible) or a positive factor")
    if cfg.store.retention:
        parse_duration(cfg.store.retention, "store.retention")
    if cfg.trainer.every:
        parse_duration(cfg.trainer.every, "trainer.every")
    if cfg.trainer.fit_first < 0 or cfg.trainer.rnn_epochs < 0 or cfg.trainer.rnn_max_keys < 0:
        bad = next(k for k in ("fit_first", "rnn_epochs", "rnn_max_keys") if getattr(cfg.trainer, k) < 0)
        raise ConfigError(f"trainer.{bad}", "0 or a positive integer")
    if cfg.logging.format not in ("auto", "json", "text"):
        raise ConfigError("logging.format", f"auto, json or text, got {cfg.logging.format!r}")
    if not cfg.source.value_cols:
        raise ConfigError("source.value_cols", "at least one value column")
    if isinstance(w.agg, dict):
        for col, aggs in w.agg.items():
            if not (isinstance(aggs, str) or isinstance(aggs, list) and all(isinstance(a, str) for a in aggs)):
                raise ConfigError(f"windowing.agg.{col}", f"an aggregation or a list of them, got {aggs!r}")
    from .windowing import build_spec

    build_spec(cfg.source.value_cols, w.agg, w.grid, w.lateness_ns, w.gap, w.max_gap_fill, w.time_jump_ns)


_SECRET_KEYS = ("password", "secret", "token")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string without control characters is a TOML basic string


def to_toml(cfg: Config) -> str:
    """The whole config as TOML that ``load`` reads back to the same settings (secrets replaced by ***).

    >>> cfg = from_dict({"windowing": {"interval": "1d", "agg": {"value": "mean"}}, "kafka": {"sasl_password": "x"}})
    >>> again = from_dict(tomllib.loads(to_toml(cfg)))
    >>> again.windowing == cfg.windowing, again.forecast == cfg.forecast, again.kafka
    (True, True, {'sasl_password': '***'})
    """
    lines = [f"{k} = {_toml_value(getattr(cfg, k))}" for k in ("name", "kind", "threads")]
    for f in fields(Config):
        if f.name not in _SECTIONS:
            continue
        section = getattr(cfg, f.name)
        items = section.items() if isinstance(section, dict) else ((x.name, getattr(section, x.name))
                                                                  for x in fields(section))
        lines.append(f"\n[{f.name}]")
        for k, v in items:
            secret = any(word in k for word in _SECRET_KEYS) and v
            lines.append(f"{k} = {_toml_value('***' if secret else v)}")
    return "\n".join(lines) + "\n"


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB


def load(path: str | os.PathLike, env: dict | None = None) -> Config:
    """The config of a TOML file; ConfigError naming the file or key for anything unusable in it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), "an existing TOML file")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(path), f"a readable file ({exc.strerror or exc})") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), f"a TOML file of at most {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:  # ValueError: ints past 4300 digits
        raise ConfigError(str(path), f"valid TOML ({str(exc)[:200]})") from exc
    return from_dict(data, base_dir=str(p.parent.resolve()), env=os.environ if env is None else env)
