"""One self-contained HTML page for a replay run: summary, metrics tables and plots.

Nothing on the page is fetched: CSS is inline and every plot is an inline
base64 PNG drawn with matplotlib's Agg renderer (no pyplot, no global
backend). All user text goes through ``html.escape``.
"""
from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import numpy as np
import polars as pl
from matplotlib.figure import Figure

from . import evaluation

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; }
th { background: #f5f5f5; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { background: none; font-weight: 600; }
.warn { background: #fff4e5; border-left: 4px solid #f0a030; padding: 0.5em 1em; }
.note { color: #666; font-size: 0.85em; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
details summary { cursor: pointer; color: #345; }
"""

# Context windows shown before the fan origin in the per-key plots, in multiples of the horizon.
_CONTEXT_HORIZONS = 8
_MIN_CONTEXT = 48
# Plotted values this many actual ranges outside the actuals are diverged forecasts; leave them out.
_PLOT_CLIP = 5.0


def write_report(
    path: str | Path,
    *,
    title: str,
    metrics: pl.DataFrame,
    forecasts: pl.DataFrame,
    actuals: pl.DataFrame,
    summary: dict[str, Any],
    keys_to_plot: int = 3,
    interval_level: float = 0.9,
) -> None:
    """Write the run report to ``path`` as one HTML file.

    ``metrics`` is ``evaluation.score``'s table; ``summary`` is shown as a
    label → value table at the top. Keys to plot are those with the most
    real actuals (ties by key), among keys that have forecasts.
    """
    forecasts = forecasts.lazy().collect() if isinstance(forecasts, pl.LazyFrame) else forecasts
    models = sorted(set(metrics["model"].to_list()) | set(forecasts["model"].unique().to_list()))
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}  # one colour per model in every plot
    header, rows = evaluation.overall_table(metrics)
    ranked = [r[0] for r in rows]
    ranked += [m for m in models if m not in ranked]
    level = f"{interval_level:.0%}"

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        _summary_table(summary),
        "<h2>Overall metrics</h2>",
        _diverged_note(metrics),
        _html_table(header, rows, coverage_label=f"coverage ({level} nominal)"),
        '<p class="note">MAE, RMSE in the units of the target; MASE scaled by each key\'s in-sample '
        "seasonal-naive error; sMAPE in percent; coverage: share of actuals inside the forecast "
        "interval; count: forecasts scored; diverged: non-finite or absurd forecasts, left out of the "
        "other metrics.</p>",
    ]

    with matplotlib.rc_context(rc=_RC):
        parts += ["<h2>Error by horizon step</h2>", _img(_step_figure(metrics, ranked, colors), "error by step")]
        parts += ["<h2>Error over time</h2>", _img(_time_figure(forecasts, actuals, ranked, colors), "error over time")]
        parts.append("<h2>Forecasts for a few keys</h2>")
        parts.append(
            f'<p class="note">Black: actuals. Thin lines: each model\'s step-1 forecasts. Dashed: one '
            f"origin's full forecast with its {level} interval band.</p>"
        )
        for key in _keys_to_plot(forecasts, actuals, keys_to_plot):
            parts.append(f"<h3>{_esc(key)}</h3>")
            parts.append(_img(_key_figure(key, forecasts, actuals, ranked, colors, level), f"forecasts for {key}"))

    step_rows = evaluation.error_by_step(metrics)
    parts += [
        "<h2>Metrics by horizon step</h2>",
        "<details open><summary>per model and step</summary>",
        _html_table(step_rows.columns, evaluation.formatted_metrics(step_rows), coverage_label=f"coverage ({level})"),
        "</details>",
        "</body></html>",
    ]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- HTML ---------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _summary_table(summary: dict[str, Any]) -> str:
    if not summary:
        return ""
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_summary_value(v))}</td></tr>" for k, v in summary.items())
    return f'<table class="summary">{rows}</table>'


def _summary_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return evaluation.format_number(value)
    return str(value)


def _diverged_note(metrics: pl.DataFrame) -> str:
    bad = evaluation.overall(metrics).filter(pl.col("diverged") > 0)
    if bad.height == 0:
        return ""
    items = ", ".join(f"{_esc(m)}: {d}" for m, d in bad.select("model", "diverged").iter_rows())
    return (
        f'<p class="warn">Diverged forecasts (non-finite or absurd means), left out of the metrics — {items}.</p>'
    )


def _html_table(header: Sequence[str], rows: list[list[str]], coverage_label: str = "coverage") -> str:
    labels = [coverage_label if h == "coverage" else h for h in header]
    text_cols = {i for i, h in enumerate(header) if h in ("model", "step")}
    head = "".join(f"<th>{_esc(h)}</th>" for h in labels)

    def cell(i: int, text: str) -> str:
        return f"<td>{_esc(text)}</td>" if i in text_cols else f'<td class="num">{_esc(text)}</td>'

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    # No Software/date chunks: the same inputs give the same bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


# -- plots --------------------------------------------------------------------

_RC = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "legend.fontsize": 8,
    "figure.autolayout": False,
    "text.usetex": False,
}


def _label(text: str) -> str:
    """Matplotlib text: no mathtext from '$' and no legend-hiding leading '_'."""
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _times(series: pl.Series) -> np.ndarray:
    if isinstance(series.dtype, pl.Datetime) and series.dtype.time_zone is not None:
        series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return series.to_numpy()


def _date_axis(ax) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888")


def _step_figure(metrics: pl.DataFrame, models: list[str], colors: dict[str, str]) -> Figure:
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    steps = evaluation.error_by_step(metrics).with_columns(pl.col("step").cast(pl.Int64))
    for ax, metric in zip(axes, ("MAE", "MASE")):
        for model in models:
            rows = steps.filter(pl.col("model") == model).sort("step")
            ax.plot(rows["step"].to_numpy(), rows[metric].cast(pl.Float64).to_numpy(), marker="o", ms=3, lw=1.4,
                    color=colors[model], label=_label(model))
        ax.set_xlabel("horizon step")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by horizon step")
        if steps.height == 0:
            _empty(ax, "no scored forecasts")
    if models and steps.height:
        axes[1].legend(loc="best")
    return fig


def _time_figure(forecasts: pl.DataFrame, actuals: pl.DataFrame, models: list[str], colors: dict[str, str]) -> Figure:
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    ax = fig.subplots()
    over_time = evaluation.error_over_time(forecasts, actuals) if forecasts.height else pl.DataFrame()
    for model in models:
        if over_time.height == 0:
            break
        rows = over_time.filter((pl.col("model") == model) & (pl.col("count") > 0))
        ax.plot(_times(rows["bucket_start"]), rows["MAE"].to_numpy(), marker="o", ms=2.5, lw=1.2,
                color=colors[model], label=_label(model))
    ax.set_ylabel("MAE (all steps)")
    ax.set_title("MAE by forecast origin")
    if over_time.height:
        _date_axis(ax)
        ax.legend(loc="best")
    else:
        _empty(ax, "no scored forecasts")
    return fig


def _keys_to_plot(forecasts: pl.DataFrame, actuals: pl.DataFrame, n: int) -> list[str]:
    if n <= 0:
        return []
    counts = evaluation.observed(actuals).group_by("key").agg(pl.len().alias("n")).collect()
    with_forecasts = counts.join(forecasts.select("key").unique(), on="key", how="semi")
    if with_forecasts.height:
        counts = with_forecasts
    return counts.sort(["n", "key"], descending=[True, False]).head(n)["key"].to_list()


def _key_figure(
    key: str, forecasts: pl.DataFrame, actuals: pl.DataFrame, models: list[str], colors: dict[str, str], level: str
) -> Figure:
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax = fig.subplots()
    act = evaluation.observed(actuals).filter(pl.col("key") == key).sort("end").collect()
    fk = forecasts.filter(pl.col("key") == key).with_columns(pl.col("step").cast(pl.Int64))
    ax.set_title(_label(f"{key}"))
    if act.height == 0 or fk.height == 0:
        _empty(ax, "no actuals" if act.height == 0 else "no forecasts")
        return fig

    origin = _fan_origin(fk, act["end"].max())
    horizon = int(fk["step"].max())
    context = max(_CONTEXT_HORIZONS * horizon, _MIN_CONTEXT)
    before = act.filter(pl.col("end") <= origin)
    start = before["end"][-context] if before.height >= context else act["end"][0]
    fan_end = fk.filter(pl.col("origin") == origin)["target_ts"].max()
    act = act.filter(pl.col("end").is_between(start, fan_end))

    values = act["value"].to_numpy()
    lo_ok, hi_ok = (values.min(), values.max()) if values.size else (0.0, 1.0)
    span = max(hi_ok - lo_ok, abs(hi_ok), 1e-9) * _PLOT_CLIP
    clip = (lo_ok - span, hi_ok + span)

    ax.plot(_times(act["end"]), values, color="black", lw=1.3, label="actual", zorder=5)
    for model in models:
        rows = fk.filter(pl.col("model") == model)
        if rows.height == 0:
            continue
        one = rows.filter((pl.col("step") == 1) & pl.col("target_ts").is_between(start, fan_end)).sort("target_ts")
        ax.plot(_times(one["target_ts"]), _clipped(one["mean"], clip), color=colors[model], lw=0.9, alpha=0.8,
                label=_label(f"{model} step 1"))
        fan = rows.filter(pl.col("origin") == origin).sort("step")
        if fan.height == 0:
            continue
        t = _times(fan["target_ts"])
        ax.plot(t, _clipped(fan["mean"], clip), color=colors[model], lw=1.6, ls="--", marker="o", ms=2.5,
                label=_label(f"{model} from origin"))
        lo, hi = _clipped(fan["lo"], clip), _clipped(fan["hi"], clip)
        if np.isfinite(lo).any() and np.isfinite(hi).any():
            ax.fill_between(t, lo, hi, color=colors[model], alpha=0.15, lw=0, label=_label(f"{model} {level} interval"))
    ax.axvline(_times(pl.Series([origin]))[0], color="#888", lw=0.8, ls=":")
    _date_axis(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return fig


def _fan_origin(fk: pl.DataFrame, last_actual):
    """The latest origin whose whole horizon is already observed, else the earliest origin."""
    ends = fk.group_by("origin").agg(pl.col("target_ts").max().alias("last")).sort("origin")
    complete = ends.filter(pl.col("last") <= last_actual)
    return complete["origin"][-1] if complete.height else ends["origin"][0]


def _clipped(series: pl.Series, bounds: tuple[float, float]) -> np.ndarray:
    values = series.cast(pl.Float64).to_numpy().astype(np.float64, copy=True)
    with np.errstate(invalid="ignore"):
        values[~np.isfinite(values) | (values < bounds[0]) | (values > bounds[1])] = np.nan
    return values
