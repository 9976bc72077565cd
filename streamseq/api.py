"""The Python API: backtest a DataFrame, or forecast a stream chunk by chunk.

``backtest(df, ...)`` runs exactly what ``streamseq replay`` runs (the frame is
written to a temporary Parquet file and replayed through the same source,
pipeline and scoring), and returns the forecasts with the actual values joined
in, the metrics and a report. ``Forecaster`` is the same pipeline as a
stateful object for stream processors: ``update(chunk)`` returns the forecasts
of the windows that chunk closed; ``save``/``load`` keep every key's state,
the shared model weights and the config in one safetensors file (no pickle).

pandas in, pandas out; polars in, polars out. Keywords name the columns
(``key``, ``time``, ``value``: one name or a list, the first is the target)
and the settings, as on the command line: ``interval``, ``horizon``, ``models``,
``season``, ``lateness``, ``gap``, ``agg``, ``level``, ``seed``, ``warmup``,
``timezone``, ``time_format``, ``time_unit``, ``start``, ``end``, ``learn``,
``ensemble``; a whole config section as a dict (``rnn={"hidden": 32}``).

>>> import streamseq
>>> df = streamseq.synthetic.generate(n_keys=2, n_windows=150, seed=1)
>>> bt = streamseq.backtest(df, interval="1h", horizon=6, models=["naive", "seasonal_naive"])
>>> sorted(bt.metrics["model"].to_list())
['ensemble', 'naive', 'seasonal_naive']
>>> bt.forecasts.columns[-4:]
['mean', 'lo', 'hi', 'actual']
"""
from __future__ import annotations

import json
import os
import tempfile
import tomllib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .errors import ConfigError, InputError, StreamseqWarning

FORECAST_COLUMNS = ["key", "model", "model_version", "origin", "step", "target_ts", "mean", "lo", "hi"]
_UTC = pl.Datetime("ns", "UTC")
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_SECTIONS = ("source", "windowing", "forecast", "rnn", "transformer", "trainer")
_SETTINGS = {  # keyword -> (config section, key)
    "interval": ("windowing", "interval"), "timezone": ("windowing", "timezone"), "agg": ("windowing", "agg"),
    "lateness": ("windowing", "allowed_lateness"), "gap": ("windowing", "gap"),
    "max_gap_fill": ("windowing", "max_gap_fill"),
    "horizon": ("forecast", "horizon"), "season": ("forecast", "season"), "models": ("forecast", "models"),
    "level": ("forecast", "interval_level"), "ensemble": ("forecast", "ensemble"), "seed": ("forecast", "seed"),
    "warmup": ("forecast", "warmup"),
    "time_format": ("source", "time_format"), "time_unit": ("source", "time_unit"),
    "start": ("source", "start"), "end": ("source", "end"), "sort": ("source", "sort"),
    "learn": ("rnn", "learn"),
    "name": ("", "name"), "kind": ("", "kind"), "threads": ("", "threads"),
}
FORMAT = "streamseq.forecaster/v1"


def make_config(key: str, time: str, value: str | Sequence[str], settings: dict[str, Any]):
    """A Config from the API's keywords (unknown keywords are a ConfigError naming them)."""
    from . import config as config_mod

    values = [value] if isinstance(value, str) else list(value)
    data: dict[str, Any] = {"name": "api", "source": {"key_col": key, "time_col": time, "value_cols": values}}
    for name, v in settings.items():
        if v is None:
            continue
        if name in _SECTIONS and isinstance(v, dict):
            data.setdefault(name, {}).update(v)
            continue
        if name not in _SETTINGS:
            raise ConfigError(name, f"a keyword among {', '.join(sorted(_SETTINGS))}, or a section "
                                    f"({', '.join(_SECTIONS)}) as a dict")
        section, field = _SETTINGS[name]
        if name == "models" and isinstance(v, str):
            v = [m.strip() for m in v.split(",") if m.strip()]
        if name == "models":
            v = list(v)
        (data.setdefault(section, {}) if section else data)[field] = v
    return config_mod.from_dict(data)


# -- frames ------------------------------------------------------------------------------


def _is_pandas(df) -> bool:
    return type(df).__module__.split(".")[0] == "pandas"


def _as_polars(df, columns: Sequence[str]) -> pl.DataFrame:
    """The frame as polars with ``columns``; a pandas frame's named index counts as a column."""
    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    if _is_pandas(df):
        if any(c not in df.columns for c in columns) and df.index.name in columns:
            df = df.reset_index()
        df = pl.from_pandas(df)
    if not isinstance(df, pl.DataFrame):
        raise InputError(f"expected a pandas or polars DataFrame, got {type(df).__name__}")
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        raise InputError(f"column {missing[0]!r} not found (columns: {', '.join(df.columns)})")
    return df


def _like(frame: pl.DataFrame, pandas: bool):
    return frame.to_pandas() if pandas else frame


# -- backtest ----------------------------------------------------------------------------


class BacktestResult:
    """What ``backtest`` returns: frames of the kind it was given.

    ``forecasts``: one row per key, model, origin and step (key, model, model_version,
    origin, step, target_ts, mean, lo, hi) and ``actual``, the observed value of the
    target window (null where it was not observed). ``metrics``: one row per model over
    every scored forecast (MAE, RMSE, MASE, sMAPE, coverage, count, diverged);
    ``metrics_by_step`` the same per horizon step; ``metrics_by_key`` per key and model.
    ``windows``: the closed windows (the actuals). ``warnings``: what looked wrong.
    """

    def __init__(self, result, pandas: bool):
        from .evaluation import overall

        self._result = result
        self._pandas = pandas
        truth = result.windows.filter(~pl.col("filled")).select(
            "key", pl.col("end").alias("target_ts"), pl.col("value").alias("actual"))
        joined = result.forecasts.join(truth, on=["key", "target_ts"], how="left", maintain_order="left")
        self.forecasts = _like(joined, pandas)
        self.metrics = _like(overall(result.metrics), pandas)
        self.metrics_by_step = _like(result.metrics.filter(pl.col("step") != "all"), pandas)
        self.metrics_by_key = _like(result.metrics_by_key, pandas)
        self.windows = _like(result.windows, pandas)
        self.summary = result.summary
        self.warnings = list(result.warnings)

    @property
    def table(self) -> str:
        """The metrics as the terminal table of ``streamseq replay``."""
        return self._result.table

    def report(self, path: str | os.PathLike) -> Path:
        """Write the HTML report (the one ``streamseq replay`` writes) to ``path``; needs the report extra."""
        from .backtesting import prepare_out

        path = Path(path)
        prepare_out(path.parent if str(path.parent) else Path("."))
        if path.is_dir():
            raise InputError(f"{path}: a folder is in the way (give a file name such as report.html)")
        return self._result.write_report(path)

    def __repr__(self) -> str:
        s = self.summary
        return (f"<BacktestResult {s['keys']} keys, {s['records']:,} records, {s['windows closed']:,} windows, "
                f"{len(self.warnings)} warnings>\n{self.table}")


def backtest(df, key: str = "key", time: str = "ts", value: str | Sequence[str] = "value", *,
             interval: str | None = None, horizon: int | None = None, models: str | Sequence[str] | None = None,
             **settings) -> BacktestResult:
    """Replay a frame through the pipeline, as ``streamseq replay`` would replay it from a file.

    Rows may come in any order (a frame that is not in time order is sorted first, as the
    CLI sorts such a file); bad rows (missing key, unparsable time, non-numeric value)
    are left out and counted in ``summary["dead letters"]``. Warnings about the setup are
    issued as ``StreamseqWarning`` and kept in ``warnings``.
    """
    from .backtesting import run_backtest

    values = [value] if isinstance(value, str) else list(value)
    frame = _as_polars(df, [key, time, *values]).select(list(dict.fromkeys([key, time, *values])))
    if frame.height == 0:
        raise InputError("the frame has no rows")
    cfg = make_config(key, time, values, {"interval": interval, "horizon": horizon, "models": models, **settings})
    with tempfile.TemporaryDirectory(prefix="streamseq-") as tmp:
        path = Path(tmp) / "input.parquet"
        frame.write_parquet(path)
        cfg.source.files = [str(path)]
        result = run_backtest(cfg, Path(tmp) / "out", progress=False, report=False, keep_frames=True,
                              warn=_warn, command=_call("backtest", key, time, values, cfg))
    result.summary["input files"] = "(a DataFrame)"
    result.provenance["config"] = result.provenance["config"].replace(json.dumps(str(path)), '"(the DataFrame)"')
    return BacktestResult(result, _is_pandas(df))


def _warn(text: str) -> None:
    warnings.warn(text, StreamseqWarning, stacklevel=4)


def _call(fn: str, key: str, time: str, values: list[str], cfg) -> str:
    return (f"streamseq.{fn}(df, key={key!r}, time={time!r}, value={values if len(values) > 1 else values[0]!r}, "
            f"interval={cfg.windowing.interval!r}, horizon={cfg.forecast.horizon}, "
            f"models={cfg.forecast.models!r}, ...)  # every setting in the config below")


# -- streaming -----------------------------------------------------------------------------


class Forecaster:
    """The pipeline as a stateful object: feed chunks of observations, get the forecasts they close.

    ``update(chunk)`` takes rows (key, time, value columns) in arrival order and returns
    the forecasts of the windows the chunk closed: a window closes once a later time has
    been seen (event time, as in the worker). The same rows cut into other chunks give
    the same forecasts. ``flush()`` closes every open window (the end of a finite stream).
    ``save(path)`` writes every key's state, the shared weights and the config to one
    safetensors file; ``Forecaster.load(path)`` continues from it.

    >>> import streamseq
    >>> df = streamseq.synthetic.generate(n_keys=3, n_windows=60, seed=2)
    >>> fc = streamseq.Forecaster(interval="1h", horizon=3, models=["naive"])
    >>> out = fc.update(df.head(100))
    >>> sorted(out.columns) == sorted(streamseq.api.FORECAST_COLUMNS)
    True
    >>> len(fc.keys)
    3
    """

    def __init__(self, key: str = "key", time: str = "ts", value: str | Sequence[str] = "value", *,
                 interval: str | None = None, horizon: int | None = None,
                 models: str | Sequence[str] | None = None, **settings):
        cfg = settings.pop("_config", None)
        if cfg is None:
            cfg = make_config(key, time, value, {"interval": interval, "horizon": horizon, "models": models,
                                                 **settings})
        self._open(cfg)

    def _open(self, cfg) -> None:
        from .compose import build_pipeline
        from .memory import ListDeadLetterSink, ListSink

        self.config = cfg
        s = cfg.source
        self._key, self._time, self._values = s.key_col, s.time_col, list(s.value_cols)
        self._pipe = build_pipeline(cfg, streaming=True)
        self._sink, self._dead = ListSink(), ListDeadLetterSink()
        self._pipe.add_sink(self._sink)
        self._pipe.add_dead_letter_sink(self._dead)
        self._rows = 0  # rows seen: the offset of the next one (dead letters name it)

    @property
    def keys(self) -> list[str]:
        """The series keys seen so far, sorted."""
        return sorted(k for k, _ in self._pipe.keys.items())

    @property
    def dead_letters(self) -> list:
        """Rows that could not be used (DeadLetter: reason, offset = row number in the stream, payload)."""
        return list(self._dead.letters)

    @property
    def stats(self):
        """Counts so far: records_in, windows_closed, forecasts_out, dead_letters, ..."""
        return self._pipe.stats

    def update(self, chunk):
        """Feed rows; return the forecasts of the windows they closed (a frame of the chunk's kind)."""
        frame = _as_polars(chunk, [self._key, self._time, *self._values])
        batch, letters = self._observations(frame)
        self._pipe.process(batch, None, letters)
        return _like(self._drain(), _is_pandas(chunk))

    def update_rows(self, rows: dict | Sequence[dict]) -> list[dict]:
        """``update`` for stream processors that hand over messages (a dict, or a list of them):
        the forecasts as dicts with ISO 8601 times, ready to be sent as JSON.

        >>> fc = Forecaster(interval="1h", horizon=2, models=["naive"])
        >>> fc.update_rows({"key": "s1", "ts": "2024-01-01T00:10:00Z", "value": 3.0})
        []
        >>> fc.update_rows([{"key": "s1", "ts": "2024-01-01T01:20:00Z", "value": 4.0}])[0]["target_ts"]
        '2024-01-01T02:00:00Z'
        """
        rows = [rows] if isinstance(rows, dict) else list(rows)
        if not rows:
            return []
        frame = pl.DataFrame(rows, infer_schema_length=None)
        out = self.update(frame)
        iso = "%Y-%m-%dT%H:%M:%S%.fZ"
        return out.with_columns(pl.col("origin", "target_ts").dt.strftime(iso).str.replace(r"\.0+Z$", "Z")).to_dicts()

    def flush(self, like: str = "polars"):
        """End of the stream: close every open window; return their forecasts (``like="pandas"`` for pandas)."""
        self._pipe.finish()
        return _like(self._drain(), like == "pandas")

    def _drain(self) -> pl.DataFrame:
        batches, self._sink.batches = self._sink.batches, []
        self._sink.windows = []
        return forecast_frame(batches)

    def _observations(self, frame: pl.DataFrame):
        """Rows as an ObservationBatch, in order; bad rows as dead letters (the replay source's rules)."""
        from .records import MAX_ABS_VALUE, DeadLetter, ObservationBatch, key_fault

        n = frame.height
        offsets = np.arange(self._rows, self._rows + n, dtype=np.int64)
        self._rows += n
        keys = frame[self._key].cast(pl.String).to_numpy().astype(object)
        ts, t_missing = self._times(frame[self._time])
        values = np.column_stack([frame[c].cast(pl.Float64, strict=False).fill_null(np.nan).to_numpy()
                                  for c in self._values]) if n else np.empty((0, len(self._values)))
        reasons: dict[int, str] = {}
        for i, k in enumerate(keys.tolist()):
            fault = key_fault(k)
            if fault is not None:
                reasons[i] = fault[1]
        for i in np.flatnonzero(t_missing).tolist():
            reasons.setdefault(i, "missing or unparsable time")
        bad_value = ~np.isfinite(values) | (np.abs(values) > MAX_ABS_VALUE)
        for i, j in zip(*np.nonzero(bad_value)):
            reasons.setdefault(int(i), f"missing, non-numeric or out-of-range value in {self._values[int(j)]!r}")
        letters = []
        if reasons:
            rows = frame.select(self._key, self._time, *self._values)
            for i, why in sorted(reasons.items()):
                letters.append(DeadLetter(reason=why, source="update", partition=0, offset=int(offsets[i]),
                                          payload=json.dumps(rows.row(i, named=True), default=str),
                                          key=None if why.endswith("key") else keys[i]))
            good = np.setdiff1d(np.arange(n), np.fromiter(reasons, np.int64))
            keys, ts, values, offsets = keys[good], ts[good], values[good], offsets[good]
        batch = ObservationBatch(keys, ts, np.ascontiguousarray(values, np.float64),
                                 np.zeros(len(keys), np.int32), offsets)
        return batch, letters

    def _times(self, t: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Event times as int64 ns UTC (naive times are UTC) and where they are missing or unparsable."""
        s = self.config.source
        if t.dtype == pl.String:
            t = t.str.strip_chars().str.to_datetime(s.time_format or None, strict=False, time_unit="ns")
        if t.dtype == pl.Date:
            t = t.cast(pl.Datetime("ns"))
        if isinstance(t.dtype, pl.Datetime):
            ns = t.dt.epoch("ns")
        elif t.dtype.is_integer():  # exact: float64 cannot hold every ns of today's epoch
            limit = np.iinfo(np.int64).max // _UNIT_NS[s.time_unit]
            ns = pl.select(pl.when(t.cast(pl.Int64).abs() <= limit).then(t.cast(pl.Int64) * _UNIT_NS[s.time_unit])
                           ).to_series()
        elif t.dtype.is_numeric():
            ns = (t.cast(pl.Float64) * _UNIT_NS[s.time_unit]).round().cast(pl.Int64, strict=False)
        else:
            raise InputError(f"time column {self._time!r} has type {t.dtype}, expected datetime, text or epoch number")
        missing = ns.is_null().to_numpy()
        return ns.fill_null(0).to_numpy().astype(np.int64), missing

    # -- state ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Every key's state, the shared model weights (and optimiser state) and the config, in one
        safetensors file (written atomically)."""
        from safetensors.numpy import save_file

        from .config import to_toml
        from .state_codec import encode_keys

        pipe = self._pipe
        keys = self.keys
        records = encode_keys(keys, pipe.snapshot_keys(keys)) if keys else {}
        tensors: dict[str, np.ndarray] = {f"key/{i}": np.frombuffer(records[k], np.uint8).copy()
                                          for i, k in enumerate(keys)}
        weights: dict[str, Any] = {}
        for name, model in pipe.models.items():
            net, opt = getattr(model, "net", None), getattr(model, "opt", None)  # the neural models' shared weights
            if net is None:
                continue
            for pname, p in net.state_dict().items():
                tensors[f"weights/{name}/{pname}"] = p.detach().cpu().numpy().copy()
            if opt is not None:
                state = opt.state_dict()
                for idx, per_param in state["state"].items():
                    for field, v in per_param.items():
                        tensors[f"optim/{name}/{idx}/{field}"] = np.atleast_1d(v.detach().cpu().numpy()).copy()
                weights[name] = {"param_groups": state["param_groups"], "scalar": sorted(
                    {f for per_param in state["state"].values() for f, v in per_param.items() if v.dim() == 0})}
        meta = {
            "format": FORMAT, "config": to_toml(self.config), "keys": json.dumps(keys), "rows": str(self._rows),
            "clock": json.dumps(pipe.windower.clock(0)), "optimisers": json.dumps(weights, default=list),
            "versions": json.dumps({n: m.version for n, m in pipe.models.items()}),
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Forecaster:
        """A Forecaster continuing from ``save``'s file."""
        import torch
        from safetensors import safe_open

        from . import config as config_mod
        from .errors import ArtifactError
        from .state_codec import decode_keys

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is not a saved Forecaster
            raise ArtifactError(f"{path}: not a saved Forecaster ({exc})") from None
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"{path}: not a {FORMAT} file (format {meta.get('format')!r})")
        cfg = config_mod.from_dict(tomllib.loads(meta["config"]))
        fc = cls(_config=cfg)
        pipe = fc._pipe
        keys = json.loads(meta["keys"])
        optimisers = json.loads(meta["optimisers"])
        for name, model in pipe.models.items():
            prefix = f"weights/{name}/"
            sd = {k[len(prefix):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(prefix)}
            if sd:
                model.net.load_state_dict(sd)
            if name in optimisers:
                opt_state: dict[int, dict] = {}
                prefix = f"optim/{name}/"
                for k, v in tensors.items():
                    if k.startswith(prefix):
                        idx, field = k[len(prefix):].split("/", 1)
                        t = torch.from_numpy(v.copy())
                        opt_state.setdefault(int(idx), {})[field] = t.reshape(()) if field in optimisers[name][
                            "scalar"] else t
                model.opt.load_state_dict({"state": opt_state, "param_groups": optimisers[name]["param_groups"]})
            model.version = json.loads(meta["versions"]).get(name, model.version)
        if keys:
            restored, state = decode_keys({k: tensors[f"key/{i}"].tobytes() for i, k in enumerate(keys)})
            pipe.restore_keys(restored, state, partitioned_time=False)
        pipe.windower.restore_clock(0, json.loads(meta["clock"]))
        fc._rows = int(meta["rows"])
        return fc


def forecast_frame(batches: list) -> pl.DataFrame:
    """ForecastBatches as rows (key, model, model_version, origin, step, target_ts, mean, lo, hi)."""
    if not batches:
        return pl.DataFrame(schema={"key": pl.String, "model": pl.String, "model_version": pl.String,
                                    "origin": _UTC, "step": pl.Int16, "target_ts": _UTC, "mean": pl.Float64,
                                    "lo": pl.Float64, "hi": pl.Float64})
    cols: dict[str, list[np.ndarray]] = {c: [] for c in FORECAST_COLUMNS}
    for b in batches:
        n, H = b.mean.shape
        steps = np.tile(np.arange(1, H + 1, dtype=np.int16), n)
        cols["key"].append(np.repeat(b.keys, H))
        cols["model"].append(np.full(n * H, b.model, dtype=object))
        cols["model_version"].append(np.full(n * H, b.model_version, dtype=object))
        cols["origin"].append(np.full(n * H, b.origin, dtype=np.int64))
        cols["step"].append(steps)
        cols["target_ts"].append(np.asarray(b.targets, np.int64)[steps.astype(np.int64) - 1])
        for c in ("mean", "lo", "hi"):
            cols[c].append(getattr(b, c).reshape(-1))
    data = {c: np.concatenate(v) for c, v in cols.items()}
    return pl.DataFrame({
        "key": pl.Series(data["key"].tolist(), dtype=pl.String),
        "model": pl.Series(data["model"].tolist(), dtype=pl.String),
        "model_version": pl.Series(data["model_version"].tolist(), dtype=pl.String),
        "origin": pl.Series(data["origin"]).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"),
        "step": pl.Series(data["step"], dtype=pl.Int16),
        "target_ts": pl.Series(data["target_ts"]).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"),
        "mean": data["mean"], "lo": data["lo"], "hi": data["hi"],
    })


__all__ = ["backtest", "BacktestResult", "Forecaster", "forecast_frame", "make_config", "FORECAST_COLUMNS"]
