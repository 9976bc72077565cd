"""The replay backtest: a file source through the pipeline into Parquet, then scoring and a report.

Before any work: the output folder must be a writable folder, the report's
plotting library must be there, the input must be readable (the source checks
that its times parse and sorts a small file that is out of time order). After
the run: when no record got through, say why (the top dead-letter reasons, or
the time range) as one error; when most rows were dead or the setup was
degenerate (horizon or season longer than the data, fewer scored origins than
keys, most windows forward-filled, a season that fits no natural period),
warn on the terminal and in the report.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from . import plugins, specs
from .compose import build_pipeline, close_pipeline, open_source
from .config import Config
from .errors import DataError, InputError, UsageError
from .ports import DeadLetterSink
from .records import DeadLetter
from .timeutil import format_duration, iso

# Reasons of dead letters (their text up to the value) -> what to change.
_HINTS = {
    "unparsable time": "set --time-format (text times) or --time-unit (epoch numbers)",
    "missing time": "check --time-col",
    "too late": "sort the file by time, or allow --lateness",
    "missing key": "check --key-col and --sep",
    "missing value": "check --value-col and --sep",
    "non-numeric value": "check --value-col and --sep",
    "future_time": "check the times, or [windowing] max_time_jump",
}
# More than this share of rows dead: say why on the terminal.
_MOSTLY_DEAD = 0.5


@dataclass
class BacktestResult:
    out_dir: Path
    metrics: pl.DataFrame
    table: str
    summary: dict
    warnings: list[str] = field(default_factory=list)
    forecasts: pl.DataFrame | None = None
    windows: pl.DataFrame | None = None
    metrics_by_key: pl.DataFrame | None = None
    provenance: dict = field(default_factory=dict)
    interval_level: float = 0.9
    value_label: str = "value"
    seconds: float = 0.0  # the replay's wall time (pipe.run to the sinks' close), unrounded

    def write_report(self, path: str | os.PathLike) -> Path:
        """report.html of this run at ``path``."""
        require_report()
        from .report import write_report

        path = Path(path)
        write_report(path, title=f"streamseq backtest: {self.summary['dataset']}", metrics=self.metrics,
                     forecasts=self.forecasts, actuals=self.windows, summary=self.summary,
                     interval_level=self.interval_level, warnings=self.warnings, provenance=self.provenance,
                     metrics_by_key=self.metrics_by_key, value_label=self.value_label)
        return path


class _FirstOfEachReason(DeadLetterSink):
    """Keeps the first dead letter of every reason, for messages that show an example."""

    def __init__(self) -> None:
        self.first: dict[str, DeadLetter] = {}

    def write(self, letters: list[DeadLetter]) -> None:
        for dl in letters:
            self.first.setdefault(reason_kind(dl.reason), dl)


def reason_kind(reason: str) -> str:
    """A dead letter's reason without its particulars (as counted in PipelineStats.dead_by_reason)."""
    return reason.split(":")[0].split(" '")[0]


def require_report() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("report.html needs matplotlib, which is not installed: pip install 'streamseq[report]' "
                         "(or pass --no-report)")


def prepare_out(out: Path) -> None:
    """``out`` as a folder we can write to, or a one-line error."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file is in the way (give a folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".streamseq-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def scoring_rows(forecasts: pl.DataFrame, actuals: pl.DataFrame, warmup: int) -> pl.DataFrame:
    """Forecasts made after each key's first ``warmup`` windows (every model is scored on the same origins)."""
    if warmup <= 0 or forecasts.height == 0:
        return forecasts
    firsts = (
        actuals.filter(~pl.col("filled")).sort("key", "end")
        .group_by("key", maintain_order=True).agg(pl.col("end").get(warmup - 1, null_on_oob=True).alias("scored_from"))
    )
    return (
        forecasts.join(firsts, on="key", how="inner")
        .filter(pl.col("scored_from").is_not_null() & (pl.col("origin") >= pl.col("scored_from")))
        .drop("scored_from")
    )


def season_note(cfg: Config, season: int) -> str | None:
    """A warning when the season spans no natural period (day, week, month, year) of the windows."""
    from .grid import DAY_NS, default_season

    grid = cfg.windowing.grid
    usual = default_season(grid)
    if cfg.windowing.gap == "skip" or season in (1, usual):
        return None  # with skipped gaps a season counts observed windows (e.g. 9 opening hours a day)
    period = season * grid.nominal
    for natural in (DAY_NS, 7 * DAY_NS, 30.436875 * DAY_NS, 91.310625 * DAY_NS, 365.2425 * DAY_NS):
        if abs(period / natural - 1) <= 0.035:  # 30 or 31 days are a month, 52 weeks or 365 days a year
            return None
    return (f"season {season} × {grid.name} windows = {format_duration(int(period))} is not a day, week, month, "
            f"quarter or year: seasonal naive and MASE compare with that far back (the usual season of "
            f"{grid.name} windows is {usual}; --season)")


def degenerate_setup(cfg: Config, windows: pl.DataFrame, scored: pl.DataFrame, season: int,
                     warmup: int) -> list[str]:
    """Warnings about a setup whose metrics mean little."""
    out: list[str] = []
    H = cfg.forecast.horizon
    real = windows.filter(~pl.col("filled"))
    per_key = real.group_by("key").agg(pl.len().alias("n"), pl.col("end").sort().diff().median().alias("gap"))
    if per_key.height == 0:
        return out
    n_max = int(per_key["n"].max())
    if H >= n_max:
        out.append(f"horizon {H} is longer than the data: the longest key has {n_max} windows (--horizon)")
    if season >= n_max:
        out.append(f"season {season} is longer than the data ({n_max} windows at most per key): seasonal naive "
                   f"and MASE fall back to the previous window (--season)")
    keys = per_key.height
    origins = scored.select("key", "origin").unique().height if scored.height else 0
    if origins < keys:
        out.append(f"only {origins} scored forecast origins for {keys} keys: each key's first {warmup} windows are "
                   f"warm-up (2 × season) and a forecast is scored once its {H} steps are observed; the metrics "
                   f"rest on little data (replay more data, or shorten --season, --horizon or [forecast] warmup)")
    if cfg.windowing.gap == "ffill" and windows.height:
        share = windows["filled"].mean()
        gaps = per_key["gap"].drop_nulls()
        if share > 0.5 and len(gaps):
            spacing = int(gaps.dt.total_nanoseconds().median())
            filled = f"{share:.0%} of the windows are forward-filled (no observation in them)"
            if spacing > 1.5 * cfg.windowing.interval_ns:
                out.append(f"{filled}: the data come about every {_human(spacing)} and --interval is "
                           f"{cfg.windowing.interval}; a longer --interval fits the data")
            else:
                out.append(f"{filled}: they lie in long gaps of the data (nights, weekends?); --gap skip leaves "
                           f"them out")
    return out


def _human(ns: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60), ("s", 1)):
        if ns >= size * 10**9:
            value = ns / (size * 10**9)
            return f"{value:.3g}{unit}"
    return f"{ns}ns"


def dead_rows(stats, examples: dict[str, DeadLetter], rows: int) -> str:
    """'900 unparsable time (e.g. row 1 of x.csv: ...), ...; hint' for the top reasons."""
    top = sorted(stats.dead_by_reason.items(), key=lambda kv: -kv[1])[:3]
    parts = []
    for kind, n in top:
        dl = examples.get(kind)
        where = f"row {dl.offset + 1} of {os.path.basename(dl.source)}: {dl.reason}" if dl is not None else ""
        parts.append(f"{n:,} {kind}" + (f" (e.g. {where})" if where else ""))
    hints = list(dict.fromkeys(h for kind, _ in top for prefix, h in _HINTS.items() if kind.startswith(prefix)))
    return f"{stats.dead_letters:,} of {rows:,} rows are dead letters: " + ", ".join(parts) + (
        f"; {'; '.join(hints)}" if hints else "")


def run_backtest(cfg: Config, out_dir: str | os.PathLike, *, progress: bool | None = None,
                 report: bool = True, stream=None, warn: Callable[[str], None] | None = None,
                 command: str | None = None, keep_frames: bool = False) -> BacktestResult:
    """Replay ``cfg``'s files into ``out_dir``. ``warn`` gets every warning as it arises (default: a line on
    ``stream``); ``command`` is recorded in the report; ``keep_frames`` keeps forecasts and windows in the
    result (the Python API)."""
    from .evaluation import format_table, score, score_by_key, write_metrics_csv
    from .progress import Progress

    stream = stream or sys.stderr
    warnings: list[str] = []

    def note(text: str) -> None:
        warnings.append(text)
        if warn is not None:
            warn(text)
        else:
            stream.write(f"streamseq: warning: {text}\n")
            stream.flush()

    if report:
        require_report()
    out = Path(out_dir)
    src = open_source(cfg)
    prepare_out(out)
    for text in src.notices():
        note(text)
    season = specs.season(cfg)
    seasonal = season_note(cfg, season)
    if seasonal:
        note(seasonal)
    part = src.build_part(src.list_parts()[0], None)
    pipe = build_pipeline(cfg, parallel=True)
    try:  # until the run's own try/finally: a failure here must not leave the model process behind
        ParquetForecastSink = plugins.load("sinks", "parquet")
        JsonlSink = plugins.load("sinks", "jsonl")
        sink = ParquetForecastSink(str(out / "forecasts.parquet"), str(out / "windows.parquet"))
        dead_path = out / "dead_letter.jsonl"
        for stale in (dead_path, out / "report.html"):  # files of an earlier run that this one may not write
            if stale.exists():
                stale.unlink()
        dead = JsonlSink(str(dead_path))
        examples = _FirstOfEachReason()
        pipe.add_sink(sink)
        pipe.add_dead_letter_sink(dead)
        pipe.add_dead_letter_sink(examples)
        retrainer = None
        if cfg.trainer.every_windows > 0 or cfg.trainer.every or cfg.trainer.fit_first > 0:
            # The trainer's schedule runs in event time: the backtest shows what retraining would have done live.
            from .hotswap import attach_retraining

            retrainer = attach_retraining(pipe, cfg)
    except BaseException:
        close_pipeline(pipe)
        raise
    bar = Progress(getattr(part, "total_rows", None), stream=stream, enabled=progress)
    t0 = time.perf_counter()
    try:
        pipe.run(part, progress=bar)
    finally:
        bar.close()
        sink.close()
        dead.close()
        part.close()
        close_pipeline(pipe)
        if retrainer is not None:
            retrainer.close()
    elapsed = time.perf_counter() - t0
    st = pipe.stats
    rows = st.records_in + st.records_invalid
    if st.records_in == 0:
        read = part.read_stats()
        if st.dead_letters:
            raise DataError(f"no records to replay: {dead_rows(st, examples.first, rows)} (every row with its "
                            f"reason: {dead_path})")
        span = (f": the data run from {iso(read['first_ts'])} to {iso(read['last_ts'])}"
                if "first_ts" in read else "")
        start, end = cfg.source.start, cfg.source.end
        bounds = (f"between --start {start} and --end {end}" if start and end else
                  f"from --start {start} on" if start else f"before --end {end}" if end else "in the input")
        raise DataError(f"no records {bounds}{span}")
    if st.dead_letters > _MOSTLY_DEAD * rows:
        note(f"{dead_rows(st, examples.first, rows)} (every row with its reason: {dead_path})")

    forecasts = pl.read_parquet(out / "forecasts.parquet")
    windows = pl.read_parquet(out / "windows.parquet") if (out / "windows.parquet").exists() else pl.DataFrame(
        schema={"key": pl.String, "end": pl.Datetime("ns", "UTC"), "value": pl.Float64, "filled": pl.Boolean})
    warmup = cfg.forecast.warmup if cfg.forecast.warmup >= 0 else 2 * season
    scored = scoring_rows(forecasts, windows, warmup)
    metrics = score(scored, windows, season)
    by_key = score_by_key(scored, windows, season)
    write_metrics_csv(metrics, out / "metrics.csv")
    by_key.write_csv(out / "metrics_by_key.csv")
    observed = windows.filter(~pl.col("filled")).select("key", pl.col("end").alias("target_ts"))
    for text in degenerate_setup(cfg, windows, scored.join(observed, on=["key", "target_ts"], how="semi"),
                                 season, warmup):
        note(text)
    summary = {
        "dataset": cfg.name,
        "input files": ", ".join(cfg.source.files),
        "keys": len(pipe.keys),
        "records": st.records_in,
        "windows closed": st.windows_closed,
        "windows gap-filled": st.windows_filled,
        "dead letters": st.dead_letters,
        "late records": st.late_records,
        "forecast rows": forecasts.height,
        "models": ", ".join(pipe.models) + (" + ensemble" if pipe.ensemble else ""),
        "interval": cfg.windowing.interval,
        "horizon": cfg.forecast.horizon,
        "season": season,
        "scored after warm-up (windows per key)": warmup,
        "interval level": cfg.forecast.interval_level,
        "seed": cfg.forecast.seed,
        "wall time (s)": round(elapsed, 2),
        "records/s": round(st.records_in / elapsed) if elapsed > 0 else 0,
        "windows/s": round(st.windows_closed / elapsed) if elapsed > 0 else 0,
    }
    if retrainer is not None:
        summary["retraining"] = "; ".join(
            f"{e['model']} at {e['end']} ({e['reason']}): "
            + (f"promoted {e['version']}" if e["accepted"] else f"rejected ({e.get('why', '')})")
            for e in getattr(retrainer, "history", [])) or "scheduled, no run completed"
    if st.dead_by_reason:
        summary["dead letters by reason"] = ", ".join(f"{k}: {v}" for k, v in sorted(st.dead_by_reason.items()))
    result = BacktestResult(out, metrics, format_table(metrics, models_order=None), summary, warnings,
                            forecasts, windows, by_key, provenance(cfg, command), cfg.forecast.interval_level,
                            cfg.source.value_cols[0], elapsed)
    if report:
        result.write_report(out / "report.html")
    if not keep_frames:
        result.forecasts = result.windows = None
    return result


def provenance(cfg: Config, command: str | None) -> dict[str, str]:
    """What made a run: the command, streamseq's version, the date, and the whole config as TOML."""
    from .config import to_toml
    from .version import __version__

    return {
        "command": command if command is not None else " ".join(["streamseq", *sys.argv[1:]]),
        "streamseq version": __version__,
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "config": to_toml(cfg),
    }
