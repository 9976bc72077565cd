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
    from ..backtesting import run_backtest

    cfg = args.config_from_args(a)
    args.setup_logging(a, cfg)
    res = run_backtest(cfg, a.out, progress=_progress(a), report=not a.no_report, command=_command())
    print_result(res)
    return 0


def _command() -> str:
    import shlex
    import sys

    return shlex.join(["streamseq", *sys.argv[1:]])


def _progress(a) -> bool | None:
    return False if (a.no_progress or a.quiet) else None


def print_result(res) -> None:
    s = res.summary
    print(f"\n== {s['dataset']}: {s['keys']} keys, {s['records']:,} records, {s['windows closed']:,} windows, "
          f"{s['dead letters']:,} dead letters, {s['wall time (s)']} s ==")
    print(res.table)
    if "retraining" in s:
        print(f"retraining: {s['retraining']}")
    files = ["forecasts.parquet", "windows.parquet", "metrics.csv", "metrics_by_key.csv"]
    reported = (res.out_dir / "report.html").exists()
    if reported:
        files.append("report.html")
    if res.warnings:
        print(f"{len(res.warnings)} warning(s): see above" + (" and the top of report.html" if reported else ""))
    if s["dead letters"]:
        files.append("dead_letter.jsonl")
    print(f"wrote {res.out_dir}/: {', '.join(files)}")


def cmd_backtest_all(a: argparse.Namespace) -> int:
    from .. import config as config_mod
    from ..backtesting import require_report, run_backtest
    from ..report import write_index

    configs = sorted(Path(a.folder).glob("*.toml"))
    if not configs:
        raise InputError(f"no *.toml run configs in {a.folder}")
    require_report()
    cfgs = [config_mod.load(p) for p in configs]  # validate all before any work
    if cfgs:
        args.setup_logging(a, cfgs[0])
    out = Path(a.out)
    runs = []
    for path, cfg in zip(configs, cfgs):
        if a.no_learn:
            cfg.rnn.learn = False
        res = run_backtest(cfg, out / cfg.name, progress=_progress(a),
                           command=_command() + f"  # this run: streamseq replay --config {path}")
        print_result(res)
        runs.append({"name": cfg.name, "summary": res.summary, "metrics": res.metrics, "warnings": res.warnings})
    write_index(out / "index.html", runs)
    print(f"\nreport: {out / 'index.html'}")
    return 0
