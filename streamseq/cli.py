"""``streamseq`` command line: replay backtests, the stream worker, the trainer, and tools.

Exit codes: 0 done (a worker: stopped cleanly); 1 a runtime failure (e.g. the
broker stayed unreachable, a fenced producer), one line on stderr; 2 bad usage
(a missing file or column, an invalid setting), one line on stderr before any
work starts; 3 a worker's shutdown deadline passed; 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import StreamseqError, UsageError

EXIT_RUNTIME = 1
EXIT_USAGE = 2


def _replay_args(p: argparse.ArgumentParser, files_required: bool = False) -> None:
    p.add_argument("files", nargs="*", metavar="FILE", help="CSV, Parquet or JSON-lines files")
    p.add_argument("--config", help="TOML config (command-line options override it)")
    p.add_argument("--key-col")
    p.add_argument("--time-col")
    p.add_argument("--value-col", action="append", dest="value_cols", help="repeat for several; first = target")
    p.add_argument("--time-format", help="strftime format of string times")
    p.add_argument("--time-unit", choices=["s", "ms", "us", "ns"], help="unit of numeric epoch times")
    p.add_argument("--interval", help="window length, e.g. 1h, 30min, 1d")
    p.add_argument("--agg", help="mean|last|first|min|max|sum|count|ohlcv")
    p.add_argument("--lateness", help="allowed lateness, e.g. 10min")
    p.add_argument("--gap", choices=["ffill", "skip"])
    p.add_argument("--horizon", type=int)
    p.add_argument("--season", type=int, help="seasonal period in windows")
    p.add_argument("--models", help="comma list: gru,lstm,transformer,snarimax,holt_winters,naive,seasonal_naive")
    p.add_argument("--level", type=float, help="prediction-interval level (default 0.9)")
    p.add_argument("--seed", type=int)
    p.add_argument("--speed", type=float, help="real time × X (default: as fast as possible)")
    p.add_argument("--start", help="first event time to replay (ISO)")
    p.add_argument("--end", help="replay up to this event time (ISO, exclusive)")
    p.add_argument("--no-learn", action="store_true", help="freeze the shared RNN weights (no online learning)")
    p.add_argument("--retrain-every", type=int, metavar="WINDOWS",
                   help="retrain (transformer, RNN refresh) every N new windows, in event time")


def _config_from_args(a: argparse.Namespace):
    from . import config as config_mod

    if a.config:
        cfg = config_mod.load(a.config)
    else:
        cfg = config_mod.from_dict({}, env=os.environ)
    s, w, f = cfg.source, cfg.windowing, cfg.forecast
    if a.files:
        s.files = [str(Path(x).resolve()) for x in a.files]
    for attr, target, name in (
        ("key_col", s, "key_col"), ("time_col", s, "time_col"), ("time_format", s, "time_format"),
        ("time_unit", s, "time_unit"), ("speed", s, "speed"), ("start", s, "start"), ("end", s, "end"),
        ("interval", w, "interval"), ("agg", w, "agg"), ("lateness", w, "allowed_lateness"), ("gap", w, "gap"),
        ("horizon", f, "horizon"), ("season", f, "season"), ("level", f, "interval_level"), ("seed", f, "seed"),
    ):
        v = getattr(a, attr, None)
        if v is not None:
            setattr(target, name, v)
    if a.value_cols:
        s.value_cols = a.value_cols
    if a.models:
        f.models = [m.strip() for m in a.models.split(",") if m.strip()]
    if getattr(a, "no_learn", False):
        cfg.rnn.learn = False
    if getattr(a, "retrain_every", None):
        cfg.trainer.every_windows = a.retrain_every
    config_mod.validate(cfg)
    return cfg


def cmd_replay(a) -> int:
    from .backtest import run_backtest

    cfg = _config_from_args(a)
    res = run_backtest(cfg, a.out, progress=None if not a.no_progress else False, report=not a.no_report)
    _print_result(res)
    return 0


def _print_result(res) -> None:
    s = res.summary
    print(f"\n== {s['dataset']}: {s['keys']} keys, {s['records']:,} records, {s['windows closed']:,} windows, "
          f"{s['dead letters']:,} dead letters, {s['wall time (s)']} s ==")
    print(res.table)
    if "retraining" in s:
        print(f"retraining: {s['retraining']}")
    print(f"wrote {res.out_dir}/forecasts.parquet, metrics.csv, report.html"
          + (", dead_letter.jsonl" if s["dead letters"] else ""))


def cmd_backtest_all(a) -> int:
    """Every *.toml run config in a folder (the README's main job)."""
    from . import config as config_mod
    from .backtest import run_backtest

    configs = sorted(Path(a.folder).glob("*.toml"))
    if not configs:
        raise StreamseqError(f"no *.toml run configs in {a.folder}")
    cfgs = [config_mod.load(p) for p in configs]  # validate all before any work
    out = Path(a.out)
    index = []
    for cfg in cfgs:
        if a.no_learn:
            cfg.rnn.learn = False
        res = run_backtest(cfg, out / cfg.name, progress=None if not a.no_progress else False)
        _print_result(res)
        index.append((cfg.name, res))
    _write_index(out / "index.html", index)
    print(f"\nreport: {out / 'index.html'}")
    return 0


def _write_index(path: Path, runs) -> None:
    import html

    rows = "".join(
        f"<li><a href='{html.escape(name)}/report.html'>{html.escape(name)}</a> — "
        f"{r.summary['keys']} keys, {r.summary['records']:,} records</li>" for name, r in runs)
    tables = "".join(f"<h2>{html.escape(name)}</h2><pre>{html.escape(r.table)}</pre>" for name, r in runs)
    path.write_text(f"<!doctype html><meta charset='utf-8'><title>streamseq backtests</title>"
                    f"<body style='font-family:sans-serif'><h1>streamseq backtests</h1><ul>{rows}</ul>{tables}</body>")


def cmd_config_check(a) -> int:
    from . import config as config_mod

    for f in a.files:
        cfg = config_mod.load(f)
        if cfg.kafka:
            from . import plugins

            settings_cls = getattr(plugins.load("transports", "kafka"), "settings_class", None)
            if settings_cls is not None:
                settings_cls.from_dict(cfg.kafka)
        print(f"{f}: ok")
    return 0


def cmd_generate(a) -> int:
    from . import synthetic

    return synthetic.main(a.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamseq", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="replay files through the pipeline: forecasts, metrics, report")
    _replay_args(r)
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--no-report", action="store_true")
    r.set_defaults(fn=cmd_replay)

    b = sub.add_parser("backtest-all", help="run every *.toml replay config in a folder")
    b.add_argument("folder")
    b.add_argument("--out", default="out")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--no-learn", action="store_true")
    b.set_defaults(fn=cmd_backtest_all)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    cc = csub.add_parser("check", help="validate config files")
    cc.add_argument("files", nargs="+")
    cc.set_defaults(fn=cmd_config_check)

    g = sub.add_parser("generate", help="write a synthetic multi-key stream (see streamseq.synthetic)")
    g.add_argument("rest", nargs=argparse.REMAINDER)
    g.set_defaults(fn=cmd_generate)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands():
    """Subcommands that live in their own modules (worker, feed, forecasts, train, models, demo)."""
    out = []
    for mod in ("streamseq.worker_cli", "streamseq.trainer_cli", "streamseq.demo"):
        try:
            m = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        out.append(m.register)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return int(a.fn(a) or 0)
    except UsageError as exc:
        print(f"streamseq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamseqError as exc:
        print(f"streamseq: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
