"""``streamseq worker``, ``streamseq feed`` and ``streamseq forecasts``: the live system on a broker."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

from . import args

log = logging.getLogger("streamseq.worker")


def register(sub) -> None:
    w = sub.add_parser("worker", help="run the stream worker on Kafka",
                       description="Run the stream worker: consume observations, checkpoint state, publish "
                                   "forecasts. Exit 0 on SIGTERM/SIGINT after a clean checkpoint.")
    args.common(w)
    w.add_argument("--config", help="worker TOML (every key also as STREAMSEQ_<SECTION>__<KEY>)")
    w.add_argument("--bootstrap-servers", help="Kafka host:port list (overrides [kafka] bootstrap_servers)")
    w.add_argument("--max-records", type=int, help="stop after this many records (tests, demos)")
    w.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="stop after this long without a record (tests, demos, draining a topic)")
    w.set_defaults(fn=cmd_worker)

    f = sub.add_parser("feed", help="produce a file's rows to an observation topic in event-time order",
                       description="Produce the rows of files to an observation topic as JSON messages "
                                   "(key, ts, values), in event-time order, at --speed.")
    args.common(f)
    args.data_options(f)
    f.add_argument("--topic", required=True, help="observation topic")
    f.add_argument("--bootstrap-servers", help="Kafka host:port list (overrides [kafka] bootstrap_servers)")
    f.add_argument("--key-field", default="key", help="JSON field of the series key in each message (default: key)")
    f.add_argument("--time-field", default="ts", help="JSON field of the event time (default: ts)")
    f.add_argument("--max-records", type=int, help="stop after this many records")
    f.add_argument("--create-topics", action="store_true", help="create the configured topics first")
    f.set_defaults(fn=cmd_feed)

    c = sub.add_parser("forecasts", help="read the forecast topic",
                       description="Read streamseq.forecast/v1 messages from the forecast topic.")
    args.common(c)
    c.add_argument("--topic", default="forecasts", help="forecast topic (default: forecasts)")
    c.add_argument("--config", help="TOML config with a [kafka] section")
    c.add_argument("--bootstrap-servers", help="Kafka host:port list (overrides [kafka] bootstrap_servers)")
    c.add_argument("--from-beginning", action="store_true", help="read the topic from its start")
    c.add_argument("--key", help="only this series key")
    c.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    c.add_argument("--follow", action="store_true", help="keep waiting for new forecasts")
    c.add_argument("--max-idle", type=float, default=5.0, help="stop after this many idle seconds (default: 5)")
    c.add_argument("--limit", type=int, default=0, help="stop after this many forecasts (default: no limit)")
    c.set_defaults(fn=cmd_forecasts)


def _kafka_overrides(cfg, a) -> None:
    if getattr(a, "bootstrap_servers", None):
        cfg.kafka["bootstrap_servers"] = a.bootstrap_servers


def cmd_worker(a: argparse.Namespace) -> int:
    from .. import logs
    from ..compose import WorkerApp
    from ..metrics import HealthServer
    from ..worker import install_signal_handlers

    cfg = args.load_config(a.config)
    _kafka_overrides(cfg, a)
    args.setup_logging(a, cfg)
    for secret_key in ("sasl_password", "ssl_password"):
        logs.add_secret(cfg.kafka.get(secret_key))
    stop = threading.Event()
    install_signal_handlers(stop, cfg.worker.shutdown_deadline_s)
    server = None
    with WorkerApp(cfg) as app:
        worker = app.worker
        try:
            if cfg.worker.http_port:
                server = HealthServer(cfg.worker.http_host, cfg.worker.http_port, worker.health,
                                      worker.metrics).start()
                log.info("health and metrics on http://%s:%d", cfg.worker.http_host, server.port)
            log.info("worker started", extra={"topic": ",".join(cfg.topics.observations)})
            worker.run(stop, max_records=a.max_records, max_idle_s=a.exit_when_idle)
        finally:
            if server is not None:
                server.stop()
    st = worker.pipeline.stats
    log.info("worker stopped: %d records, %d windows, %d forecasts, %d dead letters",
             st.records_in, st.windows_closed, st.forecasts_out, st.dead_letters)
    return 0


def cmd_feed(a: argparse.Namespace) -> int:
    from .. import plugins
    from ..compose import open_source, transport_name

    cfg = args.config_from_args(a)
    _kafka_overrides(cfg, a)
    args.setup_logging(a, cfg)
    src = open_source(cfg)
    part = src.build_part(src.list_parts()[0], None)
    transport = plugins.load("transports", transport_name(cfg))(cfg)
    if a.create_topics:
        transport.ensure_topics()
    n = transport.feed(part, a.topic, value_fields=list(cfg.source.value_cols), key_field=a.key_field,
                       time_field=a.time_field, max_records=a.max_records)
    print(f"produced {n:,} observations to {a.topic}")
    return 0


def cmd_forecasts(a: argparse.Namespace) -> int:
    from .. import plugins
    from ..compose import transport_name
    from ..timeutil import iso

    cfg = args.load_config(a.config)
    _kafka_overrides(cfg, a)
    args.setup_logging(a, cfg)
    transport = plugins.load("transports", transport_name(cfg))(cfg)
    it = transport.iter_forecasts(a.topic, from_beginning=a.from_beginning, key=a.key,
                                  max_idle_s=None if a.follow else a.max_idle)
    out = sys.stdout
    if a.format == "table":
        out.write(f"{'key':<16} {'model':<16} {'version':<10} {'origin':<21} step1 mean [lo, hi]\n")
    n = 0
    for f in it:
        if a.format == "json":
            out.write(json.dumps(_as_json(f)) + "\n")
        else:
            s = f.steps[0] if f.steps else None
            first = "" if s is None else f"{s.mean:.4g} [{_num(s.lo)}, {_num(s.hi)}]"
            out.write(f"{f.key:<16} {f.model:<16} {f.model_version[:10]:<10} {iso(f.origin):<21} {first}\n")
        out.flush()
        n += 1
        if a.limit and n >= a.limit:
            break
    return 0


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _as_json(f) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(f) if is_dataclass(f) else dict(f)
