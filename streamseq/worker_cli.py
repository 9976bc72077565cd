"""``streamseq worker``, ``streamseq feed`` and ``streamseq forecasts``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading

from . import plugins
from .errors import ConfigError

log = logging.getLogger("streamseq.worker")


def _load_config(path: str | None):
    from . import config as config_mod

    return config_mod.load(path) if path else config_mod.from_dict({}, env=os.environ)


def _kafka_overrides(cfg, a) -> None:
    if getattr(a, "bootstrap_servers", None):
        cfg.kafka["bootstrap_servers"] = a.bootstrap_servers


def writer_id() -> str:
    """A name no other worker uses: host (pod) name, process id and a random suffix."""
    import re
    import secrets
    import socket

    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9_.]", "_", f"{host}.{os.getpid()}.{secrets.token_hex(3)}")


def build_worker(cfg, clock=None):
    """Pipeline + transport + worker as the config says (also used by the demo and tests)."""
    from .factory import build_pipeline
    from .metrics import Health, WorkerMetrics
    from .worker import StreamWorker

    pipeline = build_pipeline(cfg, value_cols=list(cfg.input.value_fields), clock=clock, streaming=True)
    store = watcher = None
    if cfg.store.path:
        from .store import WindowStore
        from .timeutil import parse_duration

        # Several workers may share one store volume: each writes files under its own name.
        store = WindowStore(cfg.resolve(cfg.store.path), parse_duration(cfg.store.retention),
                            cfg.store.max_bytes, cfg.store.flush_rows, writer=writer_id())
        pipeline.add_window_sink(store)
    if cfg.registry.path:
        try:
            from .registry import ModelRegistry
            from .retrain import ModelWatcher

            watcher = ModelWatcher(ModelRegistry(cfg.resolve(cfg.registry.path)), pipeline)
        except ImportError:  # registry support not installed in this build
            watcher = None
    transport = plugins.load("transports", "kafka")(cfg).open()
    worker = StreamWorker(cfg, pipeline, transport, clock=clock, metrics=WorkerMetrics(), health=Health(),
                          watcher=watcher)
    worker.store = store
    return worker


def cmd_worker(a) -> int:
    from . import logs
    from .metrics import HealthServer
    from .worker import install_signal_handlers

    cfg = _load_config(a.config)
    _kafka_overrides(cfg, a)
    logs.setup(cfg.logging.level, cfg.logging.format)
    for secret_key in ("sasl_password", "ssl_password"):
        logs.add_secret(cfg.kafka.get(secret_key))
    stop = threading.Event()
    install_signal_handlers(stop, cfg.worker.shutdown_deadline_s)
    worker = build_worker(cfg)
    server = None
    if cfg.worker.http_port:
        server = HealthServer(cfg.worker.http_host, cfg.worker.http_port, worker.health, worker.metrics).start()
        log.info("health and metrics on http://%s:%d", cfg.worker.http_host, server.port)
    log.info("worker started", extra={"topic": ",".join(cfg.topics.observations)})
    try:
        worker.run(stop, max_records=a.max_records, max_idle_s=a.exit_when_idle)
    finally:
        try:
            worker.close()
        finally:
            if getattr(worker, "store", None) is not None:
                worker.store.close()
            if server is not None:
                server.stop()
    st = worker.pipeline.stats
    log.info("worker stopped: %d records, %d windows, %d forecasts, %d dead letters",
             st.records_in, st.windows_closed, st.forecasts_out, st.dead_letters)
    return 0


def cmd_feed(a) -> int:
    from .backtest import make_source
    from .cli import _config_from_args

    cfg = _config_from_args(a)
    _kafka_overrides(cfg, a)
    src = make_source(cfg)
    part = src.build_part(src.list_parts()[0], None)
    transport = plugins.load("transports", "kafka")(cfg)
    if a.create_topics:
        transport.ensure_topics()
    n = transport.feed(part, a.topic, value_fields=list(cfg.source.value_cols), key_field=a.key_field,
                       time_field=a.time_field, max_records=a.max_records)
    print(f"produced {n:,} observations to {a.topic}")
    return 0


def cmd_forecasts(a) -> int:
    cfg = _load_config(a.config)
    _kafka_overrides(cfg, a)
    transport = plugins.load("transports", "kafka")(cfg)
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
            from .timeutil import iso

            s = f.steps[0] if f.steps else None
            first = "" if s is None else f"{s.mean:.4g} [{_fmt(s.lo)}, {_fmt(s.hi)}]"
            out.write(f"{f.key:<16} {f.model:<16} {f.model_version[:10]:<10} {iso(f.origin):<21} {first}\n")
        out.flush()
        n += 1
        if a.limit and n >= a.limit:
            break
    return 0


def _fmt(x):
    return "-" if x is None else f"{x:.4g}"


def _as_json(f) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(f) if is_dataclass(f) else dict(f)


def register(sub) -> None:
    from .cli import _replay_args

    w = sub.add_parser("worker", help="run the stream worker on Kafka")
    w.add_argument("--config", help="worker TOML (every key also as STREAMSEQ_<SECTION>__<KEY>)")
    w.add_argument("--bootstrap-servers")
    w.add_argument("--max-records", type=int, help="stop after this many records (tests, demos)")
    w.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="stop after this long without a record (tests, demos, draining a topic)")
    w.set_defaults(fn=cmd_worker)

    f = sub.add_parser("feed", help="produce a file's rows to an observation topic in event-time order")
    _replay_args(f)
    f.add_argument("--topic", required=True)
    f.add_argument("--bootstrap-servers")
    f.add_argument("--key-field", default="key", help="JSON field of the series key in each message")
    f.add_argument("--time-field", default="ts")
    f.add_argument("--max-records", type=int)
    f.add_argument("--create-topics", action="store_true", help="create the configured topics first")
    f.set_defaults(fn=cmd_feed)

    c = sub.add_parser("forecasts", help="read the forecast topic")
    c.add_argument("--topic", default="forecasts")
    c.add_argument("--config")
    c.add_argument("--bootstrap-servers")
    c.add_argument("--from-beginning", action="store_true")
    c.add_argument("--key")
    c.add_argument("--format", choices=["table", "json"], default="table")
    c.add_argument("--follow", action="store_true", help="keep waiting for new forecasts")
    c.add_argument("--max-idle", type=float, default=5.0, help="stop after this many idle seconds")
    c.add_argument("--limit", type=int, default=0)
    c.set_defaults(fn=cmd_forecasts)


__all__ = ["register", "build_worker", "ConfigError"]
