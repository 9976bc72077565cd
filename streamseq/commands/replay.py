"""``streamseq replay`` and ``streamseq backtest-all``: backtests of files through the pipeline."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from . import args


def register(sub) -> None:
    r = sub.add_parser("replay", help="replay files through the pipeline: forecasts, metrics, report",
                       description="Replay files through the pipeline in event-time order; write forecasts, "
                                   "windows, metrics and a report to --out.")
    args.common(r)
    args.data_options(r)
    args.pipeline_options(r)
    r.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-report", action="store_true", help="skip report.html")
    r.set_defaults(fn=cmd_replay)

    b = sub.add_parser("backtest-all", help="run every *.toml replay config in a folder",
                       description="Run every *.toml replay config in FOLDER; one report per run and an index page.")
    args.common(b)
    b.add_argument("folder", help="folder of run configs (e.g. replay_data)")
    b.add_argument("--out", default="out", help="output folder (default: out)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--no-learn", action="store_true", help="freeze the shared RNN weights (no online learning)")
    b.set_defaults(fn=cmd_backtest_all)


def cmd_replay(a: argparse.Namespace) -> int:
    from ..backtest import run_backtest

    cfg = args.config_from_args(a)
    args.setup_logging(a, cfg)
    res = run_backtest(cfg, a.out, progress=_progress(a), report=not a.no_report)
    print_result(res)
    return 0


def _progress(a) -> bool | None:
    return False if (a.no_progress or a.quiet) else None


def print_result(res) -> None:
    s = res.summary
    print(f"\n== {s['dataset']}: {s['keys']} keys, {s['records']:,} records, {s['windows closed']:,} windows, "
          f"{s['dead letters']:,} dead letters, {s['wall time (s)']} s ==")
    print(res.table)
    if "retraining" in s:
        print(f"retraining: {s['retraining']}")
    print(f"wrote {res.out_dir}/forecasts.parquet, metrics.csv, report.html"
          + (", dead_letter.jsonl" if s["dead letters"] else ""))


def cmd_backtest_all(a: argparse.Namespace) -> int:
    from .. import config as config_mod
    from ..backtest import run_backtest

    configs = sorted(Path(a.folder).glob("*.toml"))
    if not configs:
        raise InputError(f"no *.toml run configs in {a.folder}")
    cfgs = [config_mod.load(p) for p in configs]  # validate all before any work
    if cfgs:
        args.setup_logging(a, cfgs[0])
    out = Path(a.out)
    index = []
    for cfg in cfgs:
        if a.no_learn:
            cfg.rnn.learn = False
        res = run_backtest(cfg, out / cfg.name, progress=_progress(a))
        print_result(res)
        index.append((cfg.name, res))
    write_index(out / "index.html", index)
    print(f"\nreport: {out / 'index.html'}")
    return 0


def write_index(path: Path, runs) -> None:
    import html

    rows = "".join(
        f"<li><a href='{html.escape(name)}/report.html'>{html.escape(name)}</a> — "
        f"{r.summary['keys']} keys, {r.summary['records']:,} records</li>" for name, r in runs)
    tables = "".join(f"<h2>{html.escape(name)}</h2><pre>{html.escape(r.table)}</pre>" for name, r in runs)
    path.write_text(f"<!doctype html><meta charset='utf-8'><title>streamseq backtests</title>"
                    f"<body style='font-family:sans-serif'><h1>streamseq backtests</h1><ul>{rows}</ul>{tables}</body>")
