"""The replay backtest: a file source through the pipeline into Parquet, then scoring and a report."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from . import plugins, specs
from .compose import build_pipeline, close_pipeline, open_source
from .config import Config


@dataclass
class BacktestResult:
    out_dir: Path
    metrics: pl.DataFrame
    table: str
    summary: dict
    seconds: float = 0.0  # the replay's wall time (pipe.run to the sinks' close), unrounded


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


def run_backtest(cfg: Config, out_dir: str | os.PathLike, *, progress: bool | None = None,
                 report: bool = True, stream=None) -> BacktestResult:
    from .evaluation import format_table, score, write_metrics_csv
    from .progress import Progress

    stream = stream or sys.stderr
    out = Path(out_dir)
    src = open_source(cfg)
    out.mkdir(parents=True, exist_ok=True)
    part = src.build_part(src.list_parts()[0], None)
    pipe = build_pipeline(cfg, parallel=True)
    ParquetForecastSink = plugins.load("sinks", "parquet")
    JsonlSink = plugins.load("sinks", "jsonl")
    sink = ParquetForecastSink(str(out / "forecasts.parquet"), str(out / "windows.parquet"))
    dead_path = out / "dead_letter.jsonl"
    if dead_path.exists():
        dead_path.unlink()
    dead = JsonlSink(str(dead_path))
    pipe.add_sink(sink)
    pipe.add_dead_letter_sink(dead)
    retrainer = None
    if cfg.trainer.every_windows > 0 or cfg.trainer.every or cfg.trainer.fit_first > 0:
        # The trainer's schedule runs in event time: the backtest shows what retraining would have done live.
        from .hotswap import attach_retraining

        retrainer = attach_retraining(pipe, cfg)
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

    forecasts = pl.read_parquet(out / "forecasts.parquet")
    windows = pl.read_parquet(out / "windows.parquet") if (out / "windows.parquet").exists() else pl.DataFrame(
        schema={"key": pl.String, "end": pl.Datetime("ns", "UTC"), "value": pl.Float64, "filled": pl.Boolean})
    season = specs.season(cfg)
    warmup = cfg.forecast.warmup if cfg.forecast.warmup >= 0 else 2 * season
    metrics = score(scoring_rows(forecasts, windows, warmup), windows, season)
    write_metrics_csv(metrics, out / "metrics.csv")
    st = pipe.stats
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
    if report:
        from .report import write_report

        write_report(out / "report.html", title=f"streamseq backtest: {cfg.name}", metrics=metrics,
                     forecasts=forecasts, actuals=windows, summary=summary,
                     interval_level=cfg.forecast.interval_level)
    table = format_table(metrics, models_order=None)
    return BacktestResult(out, metrics, table, summary, elapsed)
