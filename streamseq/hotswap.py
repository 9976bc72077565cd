"""Retraining in the running stream: hot swap from the registry (live) and the same schedule in event time (replay).

Live: the trainer runs in its own process and promotes versions in the
registry. ``ModelWatcher.check()``, called by the worker between batches,
loads a newly promoted version and swaps its weights into the running model
object, so per-key state stays (the transformer's contexts are raw windows;
GRU/LSTM hidden states are rebuilt from each key's ring). A corrupt, foreign
or incompatible artifact is refused (``ArtifactError``, logged) and the model
in service is kept.

Replay: ``attach_retraining`` hooks an ``EventTimeRetrainer`` into the
pipeline. At every window end it runs the trainer's schedule in EVENT time —
every N windows, every T of event time, or on ADWIN drift of the live
step-1 residuals — and when due trains a candidate synchronously on the
store's windows up to that end, gates it, and swaps it in before the next
window. A backtest then shows what retraining would have done live, and the
same seed gives the same forecasts.
"""
from __future__ import annotations

import logging
import shutil
import tempfile

import numpy as np

from .errors import ArtifactError
from .ports import ForecastSink
from .records import ForecastBatch, WindowBatch
from .registry import ModelRegistry
from .store import WindowStore
from .timeutil import iso
from .trainer import TRAINABLE, RetrainSchedule, Trainer

log = logging.getLogger(__name__)


def swap_weights(pipeline, name: str, state_dict: dict, version: str) -> None:
    """Load new weights into the pipeline's running model object; on failure the old weights are restored."""
    model = pipeline.models[name]
    backup = {k: v.clone() for k, v in model.net.state_dict().items()}
    old_version = model.version
    try:
        if name in ("gru", "lstm"):
            model.load_weights(state_dict, version, rewarm=True)  # hidden states rebuilt from each key's ring
        else:
            model.load_weights(state_dict, version)
    except Exception as exc:
        model.net.load_state_dict(backup)
        model.version = old_version
        raise ArtifactError(f"{name} {version}: weights could not be loaded into the running model: {exc}") from exc
    pipeline.swap_model(model)


class ModelWatcher:
    """Picks up promoted versions between batches. ``check()`` returns the swaps done (``["transformer@v0003"]``)."""

    def __init__(self, registry: ModelRegistry, pipeline, names=TRAINABLE, *, poll_s: float = 0.0, clock=None):
        self.registry = registry
        self.pipeline = pipeline
        self.names = [n for n in names if n in pipeline.models]
        self.poll_s = poll_s
        self.clock = clock
        self.current = {n: pipeline.models[n].version for n in self.names}
        self.refused: dict[str, str] = {}  # name -> version refused (not retried until another is promoted)
        self.errors = 0
        self.swaps = 0
        self._next = float("-inf")

    def check(self) -> list[str]:
        if self.poll_s and self.clock is not None:
            now = self.clock.monotonic()
            if now < self._next:
                return []
            self._next = now + self.poll_s
        done = []
        for name in self.names:
            try:
                version = self.registry.promoted(name)
            except ArtifactError as exc:
                self._refuse(name, "PROMOTED", exc)
                continue
            if version is None or version == self.current[name] or self.refused.get(name) == version:
                continue
            try:
                state_dict, _, _ = self.registry.load(name, version, expect=self.pipeline.models[name].config_dict())
                swap_weights(self.pipeline, name, state_dict, version)
            except Exception as exc:  # noqa: BLE001 - ArtifactError, or an I/O error on a shared volume: keep the model in service
                self._refuse(name, version, exc)
                continue
            log.info("hot swap: %s %s -> %s", name, self.current[name], version)
            self.current[name] = version
            self.refused.pop(name, None)
            self.swaps += 1
            done.append(f"{name}@{version}")
        return done

    def _refuse(self, name: str, version: str, exc: Exception) -> None:
        if self.refused.get(name) != version:
            self.errors += 1
            log.error("refused %s %s: %s; keeping %s %s", name, version, exc, name, self.current[name])
        self.refused[name] = version


class EventTimeRetrainer(ForecastSink):
    """Replay: the retraining schedule in event time, run synchronously at window ends.

    Also a forecast sink: it keeps the watched model's step-1 forecasts and, when
    the next windows arrive, feeds ADWIN one residual summary per window end
    (sum |error| / sum |actual| over the keys).
    """

    def __init__(self, pipeline, trainer: Trainer, schedule: RetrainSchedule):
        self.pipeline = pipeline
        self.trainer = trainer
        self.schedule = schedule
        self.watch = trainer.models[0] if trainer.models else None
        self.history: list[dict] = []  # one row per model per retraining
        self.failures = 0
        self._fc: tuple[int, np.ndarray, np.ndarray] | None = None
        self._local = 0
        self.temp_store: str | None = None  # a store folder attach_retraining made; removed by close()

    # -- live residuals -------------------------------------------------------------
    def write(self, batch: ForecastBatch) -> None:
        if batch.model == self.watch:
            self._fc = (int(batch.targets[0]), batch.keys, batch.mean[:, 0])

    def write_windows(self, batch: WindowBatch) -> None:
        if self._fc is None or not self.schedule.drift or len(batch) == 0:
            return
        target_end, fkeys, f1 = self._fc
        if int(batch.end[0]) != target_end:
            return
        real = ~batch.filled
        _, i_w, i_f = np.intersect1d(batch.keys[real].astype(str), fkeys.astype(str), return_indices=True)
        if len(i_w) == 0:
            return
        y = batch.features[real, 0][i_w]
        denom = float(np.abs(y).sum())
        if denom > 0 and self.schedule.observe_residual(float(np.abs(y - f1[i_f]).sum()) / denom):
            log.info("replay: drift in the residuals of %s at %s", self.watch, iso(target_end))

    def close(self) -> None:
        if self.temp_store is not None:
            shutil.rmtree(self.temp_store, ignore_errors=True)
            self.temp_store = None

    # -- schedule -----------------------------------------------------------------------
    def on_step(self, wid: int) -> None:
        end = int(self.pipeline.grid.end_of(wid))
        reason = self.schedule.due(end, end)
        if reason is not None:
            self.retrain(end, reason)

    def retrain(self, end: int, reason: str) -> list[dict]:
        """Train on the windows up to ``end`` (event time), gate, and swap accepted candidates in now."""
        incumbents = {n: (self.pipeline.models[n].net, self.pipeline.models[n].version)
                      for n in self.trainer.models if n in self.pipeline.models}
        try:
            outcomes = self.trainer.run_once(incumbents, end=end + 1)
        except Exception:  # never stop the replay for a failed training
            log.exception("replay retraining at %s failed", iso(end))
            self.failures += 1
            outcomes = []
        rows = []
        for o in outcomes:
            version = None
            if o.accepted:
                self._local += 1
                version = o.version or f"r{self._local:04d}"
                try:
                    swap_weights(self.pipeline, o.name, o.state_dict, version)
                except ArtifactError:
                    log.exception("replay: swapping %s %s failed", o.name, version)
                    self.failures += 1
                    version = None
            row = {"end": iso(end), "reason": reason, "model": o.name, "accepted": o.accepted,
                   "version": version, "why": o.reason,
                   **{k: v for k, v in o.metrics.items() if k in ("val_mae", "incumbent_val_mae", "val_samples")}}
            rows.append(row)
            log.info("replay retraining at %s (%s): %s", iso(end), reason, row)
        self.history += rows
        self.schedule.trained(end, end)
        return rows


def attach_retraining(pipeline, cfg, store: WindowStore | None = None,
                      registry: ModelRegistry | None = None) -> EventTimeRetrainer:
    """Replay: keep windows in ``store`` and retrain on ``cfg.trainer``'s schedule in event time.

    ``store`` defaults to ``cfg.store.path`` or, when that is empty, a fresh
    temporary folder; it should start empty for a faithful backtest (windows
    after the current event time are never read). With a ``registry``,
    accepted candidates are also published and promoted there (a replay
    normally leaves it None: versions are then ``r0001``, ``r0002``, ...).
    Call ``close()`` on the result after the run to remove a temporary store.
    """
    temp = None
    if store is None:
        if cfg.store.path:
            store = WindowStore.from_config(cfg)
        else:
            temp = tempfile.mkdtemp(prefix="streamseq-store-")
            store = WindowStore(temp, flush_rows=cfg.store.flush_rows)
    if store not in pipeline.window_sinks:
        pipeline.add_window_sink(store)
    trainer = Trainer(cfg, store, registry, n_features=pipeline.spec.n_features)
    trainer.models = [m for m in trainer.models if m in pipeline.models]
    retrainer = EventTimeRetrainer(pipeline, trainer, RetrainSchedule.from_config(cfg))
    retrainer.temp_store = temp
    pipeline.add_sink(retrainer)
    previous = pipeline.on_step
    if previous is None:
        pipeline.on_step = retrainer.on_step
    else:
        def on_step(wid: int) -> None:
            previous(wid)
            retrainer.on_step(wid)

        pipeline.on_step = on_step
    return retrainer


__all__ = ["ModelWatcher", "EventTimeRetrainer", "attach_retraining", "swap_weights"]
