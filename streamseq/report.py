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
    warnings: Sequence[str] = (),
    provenance: dict[str, str] | None = None,
    metrics_by_key: pl.DataFrame | None = None,
    value_label: str = "value",
    season: int = 1,
    baseline: str = "seasonal_naive",
) -> None:
    """Write the run report to ``path`` as one HTML file.

    ``metrics`` is ``evaluation.score``'s table; ``summary`` is shown as a
    label → value table at the top, ``warnings`` as a banner above it and
    ``provenance`` (command, version, date, config) below it. Per-key metrics
    (``evaluation.score_by_key``; computed with ``season`` when not given) list
    the worst keys of the best model; the keys plotted are its worst, median
    and best, each with the best model and one baseline (``baseline`` when it
    ran, else naive, else the runner-up).
    """
    forecasts = forecasts.lazy().collect() if isinstance(forecasts, pl.LazyFrame) else forecasts
    models = sorted(set(metrics["model"].to_list()) | set(forecasts["model"].unique().to_list()))
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}  # one colour per model in every plot
    header, rows = evaluation.overall_table(metrics)
    ranked = [r[0] for r in rows]
    ranked += [m for m in models if m not in ranked]
    level = f"{interval_level:.0%}"
    if metrics_by_key is None:
        metrics_by_key = evaluation.score_by_key(forecasts, actuals, season) if forecasts.height else None
    shown = _plotted_models(ranked, metrics, baseline)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        _warnings_banner(warnings),
        "<h2>Overall metrics</h2>",
        _diverged_note(metrics),
        _overall_with_skill(metrics, header, rows, level, baseline),
        '<p class="note">MAE, RMSE in the units of the target; MASE scaled by each key\'s in-sample '
        "seasonal-naive error; sMAPE in percent; skill: 1 − MASE / MASE of seasonal naive on the same "
        "forecasts (above 0 beats it); coverage: share of actuals inside the forecast interval; count: "
        "forecasts scored; diverged: non-finite or absurd forecasts, left out of the other metrics.</p>",
        "<h2>The run</h2>" if summary or provenance else "",
        _summary_table(summary),
        _provenance(provenance),
    ]

    with matplotlib.rc_context(rc=_RC):
        parts += ["<h2>Error and coverage by horizon step</h2>",
                  _img(_step_figure(metrics, ranked, colors, interval_level), "error and coverage by step")]
        parts += ["<h2>Error over time</h2>", _img(_time_figure(forecasts, actuals, ranked, colors), "error over time")]
        parts += _keys_section(metrics_by_key, shown)
        parts.append("<h2>Forecasts for a few keys</h2>")
        parts.append(
            f'<p class="note">{_esc(" and ".join(shown)) or "No model"}. Black: actuals (a break where windows '
            f"are missing). Left: the step-1 forecasts over the last stretch of the run. Right: zoom on one "
            f"origin's whole forecast (dashed) with its {level} interval band.</p>"
        )
        for key, label in _keys_to_plot(forecasts, actuals, metrics_by_key, shown[:1], keys_to_plot):
            parts.append(f"<h3>{_esc(key)} <span class='note'>{_esc(label)}</span></h3>")
            parts.append(_img(_key_figure(key, forecasts, actuals, shown, colors, level, value_label),
                              f"forecasts for {key}"))

    step_rows = evaluation.error_by_step(metrics)
    parts += [
        "<h2>Metrics by horizon step</h2>",
        "<details><summary>per model and step</summary>",
        _html_table(step_rows.columns, evaluation.formatted_metrics(step_rows), coverage_label=f"coverage ({level})"),
        "</details>",
        "</body></html>",
    ]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_index(path: str | Path, runs: Sequence[dict[str, Any]]) -> None:
    """An index page comparing streams: one row per run (``name``, ``summary``, ``metrics``,
    ``warnings``; the report at ``<name>/report.html``), MASE of every model side by side, the
    best of each row in bold."""
    models = sorted({m for r in runs for m in evaluation.overall(r["metrics"])["model"].to_list()},
                    key=lambda m: (m == "ensemble", m))
    head = ["stream", "keys", "records", "dead letters", "warnings", "best (MASE)", "its skill vs seasonal naive",
            *models]
    body = []
    for r in runs:
        overall = evaluation.overall(r["metrics"]).filter(pl.col("count") > 0)
        mase = dict(zip(overall["model"].to_list(), overall["MASE"].to_list()))
        finite = {m: v for m, v in mase.items() if v is not None}
        best = min(finite, key=finite.get) if finite else None
        skill = dict(zip(*evaluation.with_skill(overall).select("model", "skill").to_dict(as_series=False).values()))
        s, name = r["summary"], r["name"]
        cells = [f'<td><a href="{_esc(name)}/report.html">{_esc(name)}</a></td>',
                 f'<td class="num">{_esc(s.get("keys", ""))}</td>',
                 f'<td class="num">{s.get("records", 0):,}</td>',
                 f'<td class="num">{s.get("dead letters", 0):,}</td>',
                 f'<td class="num">{len(r.get("warnings", []))}</td>',
                 f"<td>{_esc(best or '-')}</td>",
                 f'<td class="num">{_skill(skill.get(best))}</td>']
        for m in models:
            text = evaluation.format_number(mase.get(m), 3) if m in mase else ""
            cells.append(f'<td class="num">{"<b>" + text + "</b>" if m == best else _esc(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    warn = [f"<li><b>{_esc(r['name'])}</b>: {_esc(w)}</li>" for r in runs for w in r.get("warnings", [])]
    page = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>streamseq backtests</title><style>{_CSS}</style></head><body>",
        "<h1>streamseq backtests</h1>",
        "<h2>MASE by stream and model</h2>",
        "<table><thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table>",
        '<p class="note">MASE: mean absolute error scaled by each key\'s in-sample seasonal-naive error '
        "(below 1 beats it); the best model of each stream in bold. Each stream's name links to its report.</p>",
        ('<div class="warn"><b>Warnings</b><ul>' + "".join(warn) + "</ul></div>") if warn else "",
        "</body></html>",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(p for p in page if p) + "\n", encoding="utf-8")


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
        return f"{value:,.6g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _warnings_banner(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return f'<div class="warn"><b>Check before trusting these figures</b><ul>{items}</ul></div>'


def _provenance(provenance: dict[str, str] | None) -> str:
    if not provenance:
        return ""
    rows = "".join(f"<tr><th>{_esc(k)}</th><td><code>{_esc(v)}</code></td></tr>"
                   for k, v in provenance.items() if k != "config")
    config = provenance.get("config")
    details = (f"<details><summary>the whole config (TOML: save it and run "
               f"<code>streamseq replay --config FILE</code> to repeat this run)</summary>"
               f"<pre>{_esc(config)}</pre></details>") if config else ""
    return f'<table class="summary">{rows}</table>{details}'


def _overall_with_skill(metrics: pl.DataFrame, header: list[str], rows: list[list[str]], level: str,
                        baseline: str) -> str:
    skill = evaluation.with_skill(evaluation.overall(metrics), baseline)
    by_model = dict(zip(skill["model"].to_list(), skill["skill"].to_list()))
    if all(v is None for v in by_model.values()):
        return _html_table(header, rows, coverage_label=f"coverage ({level} nominal)")
    at = header.index("MASE") + 1
    header = [*header[:at], f"skill vs {baseline.replace('_', ' ')}", *header[at:]]
    rows = [[*r[:at], _skill(by_model.get(r[0])), *r[at:]] for r in rows]
    return _html_table(header, rows, coverage_label=f"coverage ({level} nominal)")


def _skill(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1%}"


def _plotted_models(ranked: list[str], metrics: pl.DataFrame, baseline: str) -> list[str]:
    """The best model that was scored, and one baseline to compare it with."""
    scored = set(evaluation.overall(metrics).filter(pl.col("count") > 0)["model"].to_list())
    order = [m for m in ranked if m in scored] or ranked
    if not order:
        return []
    best = order[0]
    other = next((m for m in (baseline, "naive", *order[1:]) if m in ranked and m != best), None)
    return [best] + ([other] if other else [])


def _keys_section(by_key: pl.DataFrame | None, shown: list[str], n: int = 10) -> list[str]:
    """The worst keys of the best model, with the baseline's figures beside them."""
    if by_key is None or by_key.height == 0 or not shown:
        return []
    best = shown[0]
    rows = by_key.filter(pl.col("model") == best).select("key", "MASE", "MAE", "coverage", "count")
    if len(shown) > 1:
        other = by_key.filter(pl.col("model") == shown[1]).select("key", pl.col("MASE").alias(f"MASE {shown[1]}"))
        rows = rows.join(other, on="key", how="left")
    worst = rows.sort(["MASE", "key"], descending=[True, False], nulls_last=True).head(n)
    table = _html_table(worst.columns, evaluation.formatted_metrics(worst))
    return [f"<h2>Keys, worst first ({_esc(best)})</h2>", table,
            f'<p class="note">{min(n, rows.height)} of {rows.height} keys by MASE of {_esc(best)}; every key and '
            "model in metrics_by_key.csv.</p>"]


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
    text_cols = {i for i, h in enumerate(header) if h in ("model", "step", "key")}
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


def _step_figure(metrics: pl.DataFrame, models: list[str], colors: dict[str, str], level: float) -> Figure:
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    steps = evaluation.error_by_step(metrics).with_columns(pl.col("step").cast(pl.Int64))
    for ax, metric in zip(axes, ("MAE", "MASE", "coverage")):
        for model in models:
            rows = steps.filter(pl.col("model") == model).sort("step")
            ax.plot(rows["step"].to_numpy(), rows[metric].cast(pl.Float64).to_numpy(), marker="o", ms=3, lw=1.4,
                    color=colors[model], label=_label(model))
        ax.set_xlabel("horizon step")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by horizon step" if metric != "coverage" else "interval coverage by step")
        if steps.height == 0:
            _empty(ax, "no scored forecasts")
    axes[2].axhline(level, color="#888", lw=1, ls="--", label=f"nominal {level:.0%}")
    if models and steps.height:
        fig.legend(*axes[2].get_legend_handles_labels(), loc="outside lower center", ncols=min(8, len(models) + 1),
                   frameon=False)
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


def _keys_to_plot(forecasts: pl.DataFrame, actuals: pl.DataFrame, by_key: pl.DataFrame | None,
                  best: list[str], n: int) -> list[tuple[str, str]]:
    """(key, why it is shown): the worst, median and best keys of the best model by MASE; without
    per-key metrics, the keys with the most actuals."""
    if n <= 0:
        return []
    if by_key is not None and best:
        ranked = by_key.filter((pl.col("model") == best[0]) & pl.col("MASE").is_not_null()).sort(["MASE", "key"])
        if ranked.height:
            keys = ranked["key"].to_list()
            picks = [(len(keys) - 1, "worst"), (len(keys) // 2, "median"), (0, "best")]
            if n > 3:
                picks += [(i, "") for i in range(len(keys)) if i not in (0, len(keys) // 2, len(keys) - 1)]
            out, seen = [], set()
            for i, label in picks:
                if keys[i] not in seen and len(out) < n:
                    seen.add(keys[i])
                    mase = evaluation.format_number(ranked["MASE"][i], 3)
                    out.append((keys[i], f"{label} MASE of {best[0]}: {mase}".strip()))
            return out
    counts = evaluation.observed(actuals).group_by("key").agg(pl.len().alias("n")).collect()
    with_forecasts = counts.join(forecasts.select("key").unique(), on="key", how="semi")
    if with_forecasts.height:
        counts = with_forecasts
    return [(k, "") for k in counts.sort(["n", "key"], descending=[True, False]).head(n)["key"].to_list()]


def _with_breaks(times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN where consecutive times are more than 1.5 of their usual spacing apart (a line breaks there)."""
    if len(times) < 3:
        return times, values
    dt = np.diff(times.astype("datetime64[ns]").astype(np.int64))
    usual = np.median(dt)
    cut = np.flatnonzero(dt > 1.5 * usual) + 1
    if len(cut) == 0:
        return times, values
    return (np.insert(times, cut, times[cut - 1] + (times[cut] - times[cut - 1]) // 2),
            np.insert(values.astype(np.float64), cut, np.nan))


def _key_figure(
    key: str, forecasts: pl.DataFrame, actuals: pl.DataFrame, models: list[str], colors: dict[str, str], level: str,
    value_label: str = "value",
) -> Figure:
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    wide, zoom = fig.subplots(1, 2, width_ratios=[3, 2])
    act = evaluation.observed(actuals).filter(pl.col("key") == key).sort("end").collect()
    fk = forecasts.filter((pl.col("key") == key) & pl.col("model").is_in(models)).with_columns(
        pl.col("step").cast(pl.Int64))
    wide.set_title(_label(f"{key}: step-1 forecasts"))
    zoom.set_title("zoom on one forecast")
    for ax in (wide, zoom):
        ax.set_ylabel(_label(value_label))
    if act.height == 0 or fk.height == 0:
        _empty(wide, "no actuals" if act.height == 0 else "no forecasts")
        return fig

    origin = _fan_origin(fk, act)
    horizon = int(fk["step"].max())
    context = max(_CONTEXT_HORIZONS * horizon, _MIN_CONTEXT)
    before = act.filter(pl.col("end") <= origin)
    start = before["end"][-context] if before.height >= context else act["end"][0]
    fan_end = fk.filter(pl.col("origin") == origin)["target_ts"].max()
    act = act.filter(pl.col("end").is_between(start, fan_end))
    zoom_from = before["end"][-min(before.height, 2 * horizon)] if before.height else start

    values = act["value"].to_numpy()
    lo_ok, hi_ok = (values.min(), values.max()) if values.size else (0.0, 1.0)
    span = max(hi_ok - lo_ok, abs(hi_ok), 1e-9) * _PLOT_CLIP
    clip = (lo_ok - span, hi_ok + span)

    t_act, v_act = _with_breaks(_times(act["end"]), values)
    near = act.filter(pl.col("end") >= zoom_from)
    t_near, v_near = _with_breaks(_times(near["end"]), near["value"].to_numpy())
    wide.plot(t_act, v_act, color="black", lw=1.3, label="actual", zorder=5)
    zoom.plot(t_near, v_near, color="black", lw=1.3, marker="o", ms=2.5, label="actual", zorder=5)
    for model in models:
        rows = fk.filter(pl.col("model") == model)
        if rows.height == 0:
            continue
        one = rows.filter((pl.col("step") == 1) & pl.col("target_ts").is_between(start, fan_end)).sort("target_ts")
        t1, v1 = _with_breaks(_times(one["target_ts"]), _clipped(one["mean"], clip))
        wide.plot(t1, v1, color=colors[model], lw=1.0, alpha=0.85, label=_label(f"{model} step 1"))
        fan = rows.filter(pl.col("origin") == origin).sort("step")
        if fan.height == 0:
            continue
        t = _times(fan["target_ts"])
        zoom.plot(t, _clipped(fan["mean"], clip), color=colors[model], lw=1.6, ls="--", marker="o", ms=2.5,
                  label=_label(model))
        lo, hi = _clipped(fan["lo"], clip), _clipped(fan["hi"], clip)
        if np.isfinite(lo).any() and np.isfinite(hi).any():
            zoom.fill_between(t, lo, hi, color=colors[model], alpha=0.15, lw=0, label=_label(f"{model} {level}"))
    marker = _times(pl.Series([origin]))[0]
    for ax in (wide, zoom):
        ax.axvline(marker, color="#888", lw=0.8, ls=":")
        _date_axis(ax)
    wide.legend(loc="upper left", fontsize=7, frameon=False)
    zoom.legend(loc="upper left", fontsize=7, frameon=False)
    return fig


def _fan_origin(fk: pl.DataFrame, act: pl.DataFrame):
    """The latest origin with the most of its steps observed (a whole horizon of actuals where there is one)."""
    seen = act.select(pl.col("end").alias("target_ts"), observed=pl.lit(1))
    per_origin = (fk.select("origin", "target_ts").unique().join(seen, on="target_ts", how="left")
                  .group_by("origin").agg(pl.col("observed").sum().alias("n")).sort("origin"))
    best = per_origin.filter(pl.col("n") == pl.col("n").max())
    return best["origin"][-1]


def _clipped(series: pl.Series, bounds: tuple[float, float]) -> np.ndarray:
    values = series.cast(pl.Float64).to_numpy().astype(np.float64, copy=True)
    with np.errstate(invalid="ignore"):
        values[~np.isfinite(values) | (values < bounds[0]) | (values > bounds[1])] = np.nan
    return values
