"""The composition root: what a Config describes, built and wired in one place.

``build_pipeline`` gives the pipeline of a replay or a worker; ``WorkerApp`` is a
stream worker with everything it owns (transport, window store, registry watcher),
opened and closed as one context manager; ``open_source`` the replay's file source.
Commands, the demo, benchmarks and tests build through here, never piece by piece.
Connectors are found by name through entry points (``streamseq.plugins``): the
engine never imports them.
"""
from __future__ import annotations

import logging
import os

from . import plugins
from .config import Config
from .models.base import BatchForecaster
from .pipeline import Pipeline
from .specs import rnn_config, season, torch_threads, transformer_config, window_spec
from .threads import set_threads

TORCH_MODELS = frozenset({"gru", "lstm", "transformer"})


def build_model(cfg: Config, name: str, n_features: int) -> BatchForecaster:
    """One model; its module (and torch or river) is imported only when it is asked for."""
    H, m = cfg.forecast.horizon, season(cfg)
    if name in ("gru", "lstm"):
        from .models.rnn import StatefulRNNForecaster

        return StatefulRNNForecaster(rnn_config(cfg, name, n_features))
    if name == "naive":
        from .models.naive import NaiveForecaster

        return NaiveForecaster(H)
    if name == "seasonal_naive":
        from .models.naive import SeasonalNaiveForecaster

        return SeasonalNaiveForecaster(H, m)
    if name == "snarimax":
        from .models.river_baselines import SNARIMAXForecaster

        return SNARIMAXForecaster(H, m)
    if name == "holt_winters":
        from .models.river_baselines import HoltWintersForecaster

        return HoltWintersForecaster(H, m)
    if name == "transformer":
        from .models.transformer import TransformerForecaster

        return TransformerForecaster(transformer_config(cfg, n_features))
    raise ValueError(name)


RIVER_MODELS = {"snarimax": "SNARIMAXForecaster", "holt_winters": "HoltWintersForecaster"}


def offloaded(cfg: Config) -> list[str]:
    """The models a replay advances in a second process: river's (no shared weights, the slowest per
    key) when neural models keep this process busy meanwhile and there is a second core."""
    names = cfg.forecast.models
    if (os.cpu_count() or 1) < 2 or not TORCH_MODELS.intersection(names):
        return []
    return [n for n in names if n in RIVER_MODELS]


def build_pipeline(cfg: Config, value_cols: list[str] | None = None, clock=None,
                   streaming: bool = False, parallel: bool = False) -> Pipeline:
    """``parallel``: run ``offloaded(cfg)`` models in a child process (a replay; ``close_pipeline`` stops it)."""
    remote = {}
    if parallel and offloaded(cfg):
        from .offload import ModelHost, build

        H, m = cfg.forecast.horizon, season(cfg)
        host = ModelHost([(n, build, ("streamseq.models.river_baselines", RIVER_MODELS[n], (H, m)))
                          for n in offloaded(cfg)], H)  # started first: it boots while torch imports here
        remote = host.models
    try:
        if TORCH_MODELS.intersection(cfg.forecast.models):  # torch is not even imported without them
            set_threads(torch_threads(cfg, streaming))
        cols = value_cols or cfg.source.value_cols
        spec = window_spec(cfg, cols)
        models = [remote[n] if n in remote else build_model(cfg, n, spec.n_features) for n in cfg.forecast.models]
        return Pipeline(
            spec, len(cols), models, cfg.forecast.horizon,
            interval_level=cfg.forecast.interval_level, ensemble=cfg.forecast.ensemble, clock=clock,
        )
    except BaseException:
        if remote:  # no pipeline to close it later: the model process goes now
            next(iter(remote.values()))._host.close()
        raise


def close_pipeline(pipe: Pipeline) -> None:
    """Stop what a pipeline's models run beside it (the model process of a parallel replay)."""
    hosts = {id(h): h for h in (getattr(m, "_host", None) for m in pipe.models.values()) if h is not None}
    for h in hosts.values():
        h.close()


def open_source(cfg: Config, clock=None):
    """The replay source of ``[source]``, validated (a missing file or column is an InputError)."""
    from .clock import SystemClock
    from .errors import InputError

    s = cfg.source
    if not s.files:
        raise InputError("no input files: give FILE... or [source] files in the config")
    replay_source = plugins.load("sources", "replay")
    w = cfg.windowing
    # A row further behind the latest time than the lateness and one window is certainly too late.
    late_after = w.lateness_ns + w.interval_ns if s.sort == "auto" else None
    src = replay_source(
        [cfg.resolve(f) for f in s.files], s.key_col, s.time_col, list(s.value_cols),
        time_format=s.time_format or None, time_unit=s.time_unit, speed=s.speed or None,
        start=s.start or None, end=s.end or None, chunk_rows=s.chunk_rows, clock=clock or SystemClock(),
        separator=s.separator, late_after_ns=late_after,
    )
    src.validate()
    return src


# [kafka] client -> the transport's entry point name (streamseq.transports).
CLIENT_TRANSPORTS = {"kafka-python": "kafka", "confluent": "confluent"}


def transport_name(cfg: Config) -> str:
    """The transport ``[kafka] client`` names: kafka-python (the default) or confluent (librdkafka)."""
    from .errors import ConfigError

    client = cfg.kafka.get("client", "kafka-python")
    if client not in CLIENT_TRANSPORTS:
        raise ConfigError("kafka.client", f"one of {', '.join(map(repr, CLIENT_TRANSPORTS))}, got {client!r}")
    return CLIENT_TRANSPORTS[client]


def writer_id() -> str:
    """A window-store writer name no other worker uses: host (pod) name, process id, random suffix."""
    import re
    import secrets
    import socket

    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9_.]", "_", f"{host}.{os.getpid()}.{secrets.token_hex(3)}")


class WorkerApp:
    """A stream worker and what it owns, as a context manager::

        with WorkerApp(cfg) as app:
            app.worker.run(stop)

    Opening connects the transport (creating topics when ``[topics] create``), attaches
    the window store (``[store] path``) and the registry watcher (``[registry] path``).
    Closing leaves the group (the last checkpoint runs on revocation unless processing
    failed), closes the producer, then flushes the store.
    """

    def __init__(self, cfg: Config, clock=None, transport: str | None = None):
        self.cfg = cfg
        self.clock = clock
        self.transport_name = transport or transport_name(cfg)
        self.pipeline = None
        self.store = None
        self.watcher = None
        self.worker = None

    def __enter__(self) -> WorkerApp:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> WorkerApp:
        from .metrics import Health, WorkerMetrics
        from .worker import StreamWorker

        cfg = self.cfg
        transport_class = plugins.load("transports", self.transport_name)  # first: a missing extra fails at once
        self.pipeline = build_pipeline(cfg, value_cols=list(cfg.input.value_fields), clock=self.clock, streaming=True)
        if cfg.store.path:
            from .store import WindowStore

            # Several workers may share one store volume: each writes files under its own name.
            self.store = WindowStore.from_config(cfg, writer=writer_id())
            self.pipeline.add_window_sink(self.store)
        if cfg.registry.path:
            from .hotswap import ModelWatcher
            from .registry import ModelRegistry

            self.watcher = ModelWatcher(ModelRegistry(cfg.resolve(cfg.registry.path)), self.pipeline)
        transport = transport_class(cfg).open()
        # Not live when the loop has not come round for longer than the longest a checkpoint may retry,
        # plus a transaction's timeout and a minute (a call stuck for good: the orchestrator restarts us).
        stall_s = cfg.worker.outage_budget_s + cfg.kafka.get("transaction_timeout_ms", 60_000) / 1000 + 60
        self.worker = StreamWorker(cfg, self.pipeline, transport, clock=self.clock, metrics=WorkerMetrics(),
                                   health=Health(stall_s), watcher=self.watcher)
        return self

    def close(self) -> None:
        try:
            if self.worker is not None:
                self.worker.close()
        finally:
            if self.store is not None:
                self.store.close()
                self.store = None


def open_trainer(cfg: Config, *, registry: bool = True):
    """The trainer of ``[store]`` and ``[registry]`` (the store is required)."""
    from .errors import ConfigError
    from .registry import ModelRegistry
    from .store import WindowStore
    from .trainer import Trainer

    if not cfg.store.path:
        raise ConfigError("store.path", "a window store folder: the trainer trains on it")
    return Trainer(cfg, WindowStore.from_config(cfg),
                   ModelRegistry(cfg.resolve(cfg.registry.path)) if registry else None)


log = logging.getLogger(__name__)
