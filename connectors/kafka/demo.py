"""`streamseq demo`: the whole live system on one machine, no Docker.

Starts the bundled Kafka-API broker (Tansu, dev extra), feeds a replay_data
stream into an observation topic at a speed factor, runs a stream worker (and
a trainer run when the registry is available), shows live forecasts for a few
keys in the terminal (actual vs forecast, updating), then stops everything it
started.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from streamseq import config as config_mod
from streamseq.timeutil import iso

from .devbroker import TEST_CLIENT_SETTINGS, start_tansu


class _Actuals:
    """A window sink that remembers each key's latest actual window values."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_key: dict[str, dict[int, float]] = {}

    def write_windows(self, wb) -> None:
        with self.lock:
            for k, end, v, filled in zip(wb.keys.tolist(), wb.end.tolist(), wb.features[:, 0].tolist(),
                                         wb.filled.tolist()):
                if not filled:
                    self.by_key.setdefault(k, {})[end] = v


def run_demo(data_config: str, *, speed: float, records: int, keys_shown: int, duration_s: float,
             models: list[str] | None, out=sys.stdout) -> int:
    from streamseq.worker_cli import build_worker

    from .transport import KafkaTransport

    base = config_mod.load(data_config)
    broker = start_tansu()
    workdir = Path(tempfile.mkdtemp(prefix="streamseq-demo-"))
    stop = threading.Event()
    threads: list[threading.Thread] = []
    worker = None
    try:
        kafka = {"bootstrap_servers": broker.bootstrap, **TEST_CLIENT_SETTINGS, "group_id": "streamseq-demo",
                 "auto_offset_reset": "earliest", "max_poll_records": 2000}
        cfg = config_mod.from_dict({
            "name": "demo", "kind": base.kind, "kafka": kafka,
            "topics": {"observations": ["demo-observations"], "forecasts": "demo-forecasts",
                       "dead_letter": "demo-dlq", "changelog": "demo-changelog", "partitions": 4},
            "input": {"key_field": "key", "time_field": "ts", "value_fields": list(base.source.value_cols)},
            "windowing": {"interval": base.windowing.interval, "agg": base.windowing.agg,
                          "allowed_lateness": base.windowing.allowed_lateness, "gap": base.windowing.gap},
            "forecast": {"horizon": base.forecast.horizon, "season": base.forecast.season,
                         "models": models or ["gru", "seasonal_naive", "naive"], "ensemble": True},
            "registry": {"path": str(workdir / "registry")},
            "store": {"path": str(workdir / "windows")},
            "worker": {"http_port": 0, "checkpoint_every_s": 1.0},
            "logging": {"level": "WARNING"},
        })
        transport = KafkaTransport(cfg)
        transport.ensure_topics()
        base.source.speed = speed
        from streamseq.backtest import make_source

        part = make_source(base).build_part("replay", None)
        fed = {"n": 0}

        def feeder():
            fed["n"] = transport.feed(part, "demo-observations", value_fields=list(base.source.value_cols),
                                      max_records=records)

        worker = build_worker(cfg)
        actuals = _Actuals()
        worker.pipeline.add_window_sink(actuals)
        latest: dict[tuple[str, str], object] = {}
        latest_lock = threading.Lock()

        class Tap:  # the forecasts the worker publishes, as they are produced
            def write(self, fb):
                with latest_lock:
                    for i, k in enumerate(fb.keys.tolist()):
                        latest[(k, fb.model)] = (fb.origin, fb.interval, fb.mean[i].copy(), fb.lo[i].copy(),
                                                 fb.hi[i].copy(), fb.model_version)

            def write_windows(self, wb):
                pass

            def flush(self):
                pass

        worker.pipeline.add_sink(Tap())
        threads.append(threading.Thread(target=feeder, name="feeder", daemon=True))
        threads.append(threading.Thread(target=worker.run, args=(stop,), kwargs={"max_records": records},
                                        name="worker", daemon=True))
        for t in threads:
            t.start()
        t0 = time.monotonic()
        tty = out.isatty() if hasattr(out, "isatty") else False
        while threads[1].is_alive() and time.monotonic() - t0 < duration_s:
            time.sleep(1.0)
            _render(out, tty, worker, actuals, latest, latest_lock, keys_shown, fed["n"])
        stop.set()
        threads[1].join(timeout=30)
        _render(out, False, worker, actuals, latest, latest_lock, keys_shown, fed["n"])
        st = worker.pipeline.stats
        out.write(f"\ndemo done: {fed['n']:,} observations fed, {st.records_in:,} consumed, "
                  f"{st.windows_closed:,} windows, {st.forecasts_out:,} forecasts, {st.dead_letters} dead letters\n")
        return 0
    finally:
        stop.set()
        if worker is not None:
            try:
                worker.close()
            except Exception:  # noqa: BLE001 - the broker is going away anyway
                pass
            if getattr(worker, "store", None) is not None:
                worker.store.close()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _render(out, tty, worker, actuals, latest, lock, n_keys, fed) -> None:
    with lock:
        snapshot = dict(latest)
    keys = sorted({k for k, _ in snapshot})[:n_keys]
    models = sorted({m for _, m in snapshot})
    lines = []
    st = worker.pipeline.stats
    lines.append(f"fed {fed:,}  consumed {st.records_in:,}  windows {st.windows_closed:,}  "
                 f"forecasts {st.forecasts_out:,}  dead letters {st.dead_letters}")
    for k in keys:
        with actuals.lock:
            acts = dict(actuals.by_key.get(k, {}))
        last_end = max(acts) if acts else None
        head = f"\n{k}: last window {iso(last_end) if last_end else '-'} actual {acts.get(last_end, float('nan')):.4g}"
        lines.append(head)
        for m in models:
            v = snapshot.get((k, m))
            if v is None:
                continue
            origin, interval, mean, lo, hi, version = v
            # the forecast this model made one window ago for the latest actual
            lines.append(f"  {m:<15} next: {mean[0]:9.4g} [{lo[0]:.4g}, {hi[0]:.4g}]   "
                         f"+{len(mean)} steps: {mean[-1]:.4g}   ({version})")
    text = "\n".join(lines) + "\n"
    out.write(("\x1b[2J\x1b[H" if tty else "") + text)
    out.flush()
