"""The trainer: retrains on the window store, gates candidates, publishes to the registry.

It runs off to the side of the stream — ``streamseq train`` as its own
process, or a ``trainer_process.TrainerProcess`` beside a worker — and never inside the
worker's processing loop. Data flows one way: store -> trainer -> registry;
the worker only reads the registry (``retrain.ModelWatcher``).

One run (``Trainer.run_once``), for each model it is responsible for:

1. sliding samples of every key from the store (``WindowStore.training_samples``),
   the newest ``trainer.holdout`` windows of each key held out;
2. a candidate: the transformer trained on them (``train_transformer``), or
   GRU/LSTM weights refreshed from the weights in service by running the
   online learner over every key's stored windows, ``trainer.rnn_epochs``
   passes (``refresh_rnn``, models/rnn_fit.py: the stream's own code, so the
   offline and online inputs are the same);
3. the promotion gate: MAE on the held-out windows, in units of each key's
   scale (the transformer) or of its baseline's error (GRU/LSTM), against the
   model in service (the promoted version, or the untrained init when none
   is); the candidate must be better by ``trainer.min_improvement``;
4. an accepted candidate is published and promoted; a rejected one is logged.

When (``RetrainSchedule``): every N windows of new data, every T of time (wall
time in the trainer process, event time in a replay), or when river's ADWIN
sees drift in the live residuals of the model in service.

>>> s = RetrainSchedule(interval_ns=10, every_windows=3)
>>> [s.due(end, now_ns=0) for end in (10, 20, 30, 40)]
[None, None, None, 'every 3 windows']
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .config import Config
from .errors import ArtifactError, ConfigError
from .models import rnn_fit
from .models.rnn import RNNConfig, RNNNet
from .models.transformer import TransformerConfig, init_net
from .registry import ModelRegistry, artifact_config, build_net, mismatch  # noqa: F401 (re-exported)
from .specs import transformer_config
from .store import TrainingSet, WindowStore
from .timeutil import iso, parse_duration

log = logging.getLogger(__name__)

TRAINABLE = ("transformer", "gru", "lstm")
EARLY_STOP_SAMPLES = 2048  # held-out samples the early stop measures after each epoch at most
# -- nets on samples ------------------------------------------------------------
def forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The transformer on (B, L, F+1) samples (GRU/LSTM train on windows in order: models/rnn_fit.py)."""
    return net(x)


def predict(net: nn.Module, X: np.ndarray, batch: int = 4096, unit: bool = False) -> np.ndarray:
    """(N, H) normalised deltas for samples X; with ``unit`` also (N, 1) each sample's loss unit."""
    net.eval()
    out, units = [], []
    with torch.no_grad():
        for i in range(0, len(X), batch):
            x = torch.from_numpy(X[i:i + batch])
            out.append(forward(net, x).numpy())
            if unit:
                units.append(loss_unit(net, x).numpy())
    pred = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    if unit:
        return pred, (np.concatenate(units) if units else np.ones((0, 1), np.float32))
    return pred


def loss_unit(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 1) unit a sample's errors are measured in (the net's local scale where it has one)."""
    f = getattr(net, "loss_scale", None)
    return f(x) if f is not None else x.new_ones((x.shape[0], 1))


def masked_mae(pred: np.ndarray, Y: np.ndarray, unit: np.ndarray | None = None) -> float:
    m = ~np.isnan(Y)
    err = np.abs(pred - Y) if unit is None else np.abs(pred - Y) / unit
    return float(err[m].mean()) if m.any() else float("nan")


def fit(net: nn.Module, X: np.ndarray, Y: np.ndarray, *, epochs: int, batch_size: int, lr: float,
        seed: int, clip: float = 1.0, X_val: np.ndarray | None = None, Y_val: np.ndarray | None = None,
        patience: int = 1, max_steps: int = 0) -> float:
    """Adam on the masked smooth-L1 loss in each sample's unit (``loss_unit``); deterministic for a seed.

    With held-out samples: after each epoch their MAE is measured, training stops once it has not
    improved for ``patience`` epochs, and the best epoch's weights are kept. No epoch starts once
    ``max_steps`` optimiser steps are done (0: no limit), so a large store costs a few epochs and a
    small one gets its ``epochs``. Returns the kept epoch's mean training loss."""
    torch.manual_seed(seed)  # dropout
    gen = torch.Generator().manual_seed(seed)  # shuffling
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    with torch.no_grad():
        Ut = torch.cat([loss_unit(net, c) for c in Xt.split(4096)]) if len(Xt) else torch.ones((0, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    early = X_val is not None and Y_val is not None and len(X_val) > 0
    if early and len(X_val) > EARLY_STOP_SAMPLES:  # an evenly spread subset: the stopping signal, not the gate
        pick = np.linspace(0, len(X_val) - 1, EARLY_STOP_SAMPLES).astype(np.int64)
        X_val, Y_val = X_val[pick], Y_val[pick]
    best, best_state, best_loss, stale = float("inf"), None, float("nan"), 0
    if early:
        best = _val_mae(net, X_val, Y_val)  # the starting weights (warm start) are a candidate too
        best_state = {k: v.clone() for k, v in net.state_dict().items()}
    loss_sum, batches, steps = float("nan"), 0, 0
    for _ in range(epochs):
        if max_steps and steps >= max_steps:
            break
        net.train()
        loss_sum, batches = 0.0, 0
        perm = torch.randperm(len(Xt), generator=gen)
        for i in range(0, len(Xt), batch_size):
            idx = perm[i:i + batch_size]
            y = Yt[idx]
            m = ~torch.isnan(y)
            if not m.any():
                continue
            u = Ut[idx].expand_as(y)
            pred = forward(net, Xt[idx])  # (B, H)
            loss = nn.functional.smooth_l1_loss(pred[m] / u[m], y[m] / u[m])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
            loss_sum += float(loss.detach())
            batches += 1
        steps += batches
        if early:
            v = _val_mae(net, X_val, Y_val)
            if v < best:
                best, best_state, best_loss, stale = v, {k: t.clone() for k, t in net.state_dict().items()}, \
                    loss_sum / max(batches, 1), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    if early and best_state is not None:
        net.load_state_dict(best_state)
        net.eval()
        return best_loss if np.isfinite(best_loss) else loss_sum / max(batches, 1)
    net.eval()
    return loss_sum / max(batches, 1)


def _val_mae(net: nn.Module, X: np.ndarray, Y: np.ndarray) -> float:
    pred, unit = predict(net, X, unit=True)
    return masked_mae(pred, Y, unit)


# -- schedule -------------------------------------------------------------------
class RetrainSchedule:
    """When to retrain: every N windows of new data, every T of time, or on ADWIN drift of residuals.

    ``due(newest_end, now_ns)`` returns the reason or None; ``trained`` resets the
    counters. Time is whatever the caller passes: wall time in the trainer
    process, event time in a replay. Drift needs ``min_windows`` of new data since
    the last run (there is nothing new to learn from otherwise).
    """

    def __init__(self, interval_ns: int, every_windows: int = 0, every_ns: int = 0, drift: bool = False,
                 delta: float = 0.002, min_windows: int = 1, initial: bool = False, grid=None,
                 first_windows: int = 0):
        self.interval_ns = interval_ns
        self.grid = grid  # calendar windows: new windows are counted on the grid, not by length
        self.first_windows = first_windows  # one run once the stream has this many windows (--fit-first)
        self.first_end: int | None = None
        self.every_windows = every_windows
        self.every_ns = every_ns
        self.drift = drift
        self.delta = delta
        self.min_windows = max(1, min_windows)
        self.initial = initial
        self.last_end: int | None = None
        self.last_time: int | None = None
        self.drift_seen = False
        self.drifts = 0
        self._adwin = self._new_adwin()

    @classmethod
    def from_config(cls, cfg: Config, initial: bool = False) -> RetrainSchedule:
        t = cfg.trainer
        return cls(cfg.windowing.interval_ns, t.every_windows, parse_duration(t.every, "trainer.every") if t.every else 0,
                   t.drift, t.drift_delta, t.holdout, initial, grid=cfg.windowing.grid, first_windows=t.fit_first)

    @property
    def active(self) -> bool:
        return bool(self.every_windows or self.every_ns or self.drift or self.first_windows)

    def _new_adwin(self):
        if not self.drift:
            return None
        from river.drift import ADWIN

        return ADWIN(delta=self.delta)

    def observe_residual(self, r: float) -> bool:
        """Feed one residual summary (e.g. the mean |error| of one window end); True on drift."""
        if self._adwin is None or not np.isfinite(r):
            return False
        self._adwin.update(float(r))
        if self._adwin.drift_detected:
            self.drift_seen = True
            self.drifts += 1
            return True
        return False

    def due(self, newest_end: int | None, now_ns: int) -> str | None:
        if newest_end is None:
            return None
        if self.first_windows:
            if self.first_end is None:
                self.first_end = newest_end
            if self._windows_between(self.first_end, newest_end) + 1 < self.first_windows:
                return None  # nothing before the first fit: it is the starting point of everything after
            if self.last_end is None:
                return f"first {self.first_windows} windows"
        if self.last_end is None:
            if self.initial:
                return "initial"
            self.last_end, self.last_time = newest_end, now_ns
            return None
        new = self._windows_between(self.last_end, newest_end)
        if self.every_windows and new >= self.every_windows:
            return f"every {self.every_windows} windows"
        if self.every_ns and now_ns - self.last_time >= self.every_ns:
            return "every " + _fmt(self.every_ns)
        if self.drift_seen and new >= self.min_windows:
            return "drift"
        return None

    def _windows_between(self, end_a: int, end_b: int) -> int:
        """Windows from the one ending at ``end_a`` to the one ending at ``end_b`` (on the grid when known)."""
        if self.grid is not None:
            return int(self.grid.wid_of(end_b - 1) - self.grid.wid_of(end_a - 1))
        return (end_b - end_a) // self.interval_ns

    def trained(self, newest_end: int, now_ns: int) -> None:
        self.last_end, self.last_time = newest_end, now_ns
        self.drift_seen = False
        self._adwin = self._new_adwin()  # residuals of a new model start a new history


def _fmt(ns: int) -> str:
    from .timeutil import format_duration

    return format_duration(ns)


# -- the trainer ----------------------------------------------------------------
@dataclass
class Candidate:
    name: str
    net: nn.Module
    config: dict  # artifact config (kind, name, params)
    meta: dict = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    accepted: bool
    metrics: dict
    reason: str = ""
    version: str | None = None  # published and promoted version
    state_dict: dict | None = None  # accepted weights (for a synchronous swap)
    config: dict | None = None


class Trainer:
    def __init__(self, cfg: Config, store: WindowStore, registry: ModelRegistry | None = None,
                 *, n_features: int | None = None, models: list[str] | None = None):
        from .specs import window_spec

        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.n_features = n_features or window_spec(cfg).n_features
        t = cfg.trainer
        if t.holdout < 1:
            raise ConfigError("trainer.holdout", f"a positive number of windows, got {t.holdout}")
        if not 0 <= t.min_improvement < 1:
            raise ConfigError("trainer.min_improvement", f"a share in [0, 1), got {t.min_improvement}")
        if models is None:
            models = [m for m in cfg.forecast.models
                      if m == "transformer" or (m in ("gru", "lstm") and (t.refresh_rnn or t.fit_first))]
        self.models = models
        self.runs = 0
        self._drift_fed_end = -1
        self._serving: dict[str, tuple[str, nn.Module]] = {}
        self.grid = cfg.windowing.grid  # window ids of the stored windows (calendar features)

    # -- configs ----------------------------------------------------------------
    def model_params(self, name: str):
        from .specs import rnn_config

        if name == "transformer":
            return transformer_config(self.cfg, self.n_features)
        return rnn_config(self.cfg, name, self.n_features)

    def context(self, name: str) -> int:
        p = self.model_params(name)
        return p.context if name == "transformer" else p.ring

    def init_net(self, name: str) -> nn.Module:
        """The untrained network, the same weights the stream's model starts with."""
        p = self.model_params(name)
        if name == "transformer":
            return init_net(p)
        torch.manual_seed(p.seed)
        return RNNNet(p)

    def samples(self, name: str, frame=None, seed: int = 0) -> TrainingSet:
        t = self.cfg.trainer
        return self.store.training_samples(
            self.context(name), self.cfg.forecast.horizon, t.holdout, norm_alpha=self.cfg.rnn.norm_alpha,
            min_context=t.min_context, scale=getattr(self.model_params(name), "scale", "level"),
            max_samples=t.max_samples or None, seed=seed, frame=frame)

    def incumbent(self, name: str) -> tuple[nn.Module, str]:
        """The model in service: the promoted version, or the untrained init when none is (or it cannot be used)."""
        if self.registry is not None:
            try:
                version = self.registry.promoted(name)
                if version is not None:
                    expect = artifact_config(name, self.model_params(name))["params"]
                    sd, config, _ = self.registry.load(name, version, expect=expect)
                    net = build_net(config)
                    net.load_state_dict(sd)
                    return net.eval(), version
            except ArtifactError as exc:  # corrupt, or built for another configuration
                log.warning("promoted %s cannot be loaded (%s); comparing with the init", name, exc)
        return self.init_net(name).eval(), "init"

    # -- candidates -------------------------------------------------------------
    def train_transformer(self, data: TrainingSet | None = None, init: dict | None = None,
                          seed: int | None = None) -> Candidate:
        """Train a transformer on the store's samples, from ``init`` weights (warm start) or a fresh init."""
        seed = self.cfg.forecast.seed + self.runs if seed is None else seed
        params: TransformerConfig = self.model_params("transformer")
        data = data if data is not None else self.samples("transformer", seed=seed)
        net = init_net(params)
        if init is not None:
            net.load_state_dict(init)
        tc = self.cfg.transformer
        t0 = time.perf_counter()
        loss = fit(net, data.X_train, data.Y_train, epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr, seed=seed,
                   X_val=data.X_val if tc.early_stop else None, Y_val=data.Y_val if tc.early_stop else None,
                   patience=tc.patience, max_steps=tc.max_steps)
        meta = {"train_loss": loss, "epochs": tc.epochs, "seed": seed, "warm_start": init is not None,
                "train_seconds": round(time.perf_counter() - t0, 3)}
        return Candidate("transformer", net, artifact_config("transformer", params), meta)

    def refresh_rnn(self, name: str, data: rnn_fit.WindowArrays, init: dict | None = None,
                    seed: int | None = None, epochs: int | None = None) -> Candidate:
        """GRU/LSTM weights fitted by ``epochs`` (``trainer.rnn_epochs``) passes of the online learner over
        ``data`` (models/rnn_fit.py), from ``init`` (the weights in service) or the untrained init."""
        seed = self.cfg.forecast.seed + self.runs if seed is None else seed
        params: RNNConfig = self.model_params(name)
        net = self.init_net(name)
        if init is not None:
            net.load_state_dict(init)
        epochs = self.cfg.trainer.rnn_epochs if epochs is None else epochs
        t0 = time.perf_counter()
        net, loss = rnn_fit.fit(net, params, data, self.grid, epochs=epochs, lr=self.cfg.trainer.rnn_lr, seed=seed)
        meta = {"train_loss": loss, "epochs": epochs, "seed": seed, "warm_start": init is not None,
                "train_seconds": round(time.perf_counter() - t0, 3)}
        return Candidate(name, net, artifact_config(name, params), meta)

    def rnn_windows(self, frame, seed: int = 0) -> rnn_fit.WindowArrays:
        return rnn_fit.from_frame(frame, self.grid, keep_keys=self.cfg.trainer.rnn_max_keys or None, seed=seed)

    def gate(self, candidate: Candidate | nn.Module, incumbent: Candidate | nn.Module,
             X_val: np.ndarray, Y_val: np.ndarray) -> tuple[bool, dict]:
        """Accept only a candidate whose held-out MAE beats the incumbent's by ``min_improvement``."""
        cand = candidate.net if isinstance(candidate, Candidate) else candidate
        inc = incumbent.net if isinstance(incumbent, Candidate) else incumbent
        if len(X_val) == 0:
            return False, {"val_samples": 0, "reason": "no held-out windows"}
        c_pred, unit = predict(cand, X_val, unit=True)  # both in the candidate's units
        c_mae = masked_mae(c_pred, Y_val, unit)
        i_mae = masked_mae(predict(inc, X_val), Y_val, unit)
        need = i_mae * (1 - self.cfg.trainer.min_improvement)
        accepted = bool(np.isfinite(c_mae) and np.isfinite(i_mae) and c_mae < need)
        return accepted, {"val_mae": c_mae, "incumbent_val_mae": i_mae, "val_samples": int(len(X_val)),
                          "improvement": (1 - c_mae / i_mae) if i_mae > 0 else 0.0}

    # -- one run ------------------------------------------------------------------
    def run_once(self, incumbents: dict | None = None, *, end: int | None = None,
                 seed: int | None = None) -> list[Outcome]:
        """Train, gate and (when accepted, and a registry is set) publish + promote every model.

        ``incumbents`` maps a name to (net or state_dict, version) of the model in
        service (a replay passes its pipeline's models); otherwise the registry's
        promoted version, or the untrained init. ``end``: windows before it only.
        Never raises for a model that fails: its outcome says why.
        """
        seed = self.cfg.forecast.seed + self.runs if seed is None else seed
        frame = self.store.read(end=end)
        outcomes = []
        for name in self.models:
            try:
                outcomes.append(self._run_model(name, frame, seed, (incumbents or {}).get(name)))
            except Exception as exc:  # a failed run is logged; the model in service stays
                log.exception("training %s failed", name)
                outcomes.append(Outcome(name, False, {}, reason=f"failed: {type(exc).__name__}: {exc}"))
        self.runs += 1
        return outcomes

    def _incumbent_net(self, name, incumbent):
        if incumbent is None:
            return self.incumbent(name)
        inc, inc_version = incumbent
        return (inc if isinstance(inc, nn.Module) else _net_from(self.init_net(name), inc)), inc_version

    def _run_rnn(self, name, frame, seed, incumbent) -> Outcome:
        """Fit on every key's windows before the held-out span, gate on that span, then (when accepted) one
        more pass over everything so the promoted weights have seen the newest windows too."""
        t = self.cfg.trainer
        data = self.rnn_windows(frame, seed)
        if len(data) == 0:
            return Outcome(name, False, {}, reason="not enough data")
        cut = int(data.wid.max()) - t.holdout + 1  # first held-out window
        train = data.before(cut)
        if len(train) == 0 or len(train) == len(data):
            log.info("not training %s: %d of %d windows before the held-out span", name, len(train), len(data))
            return Outcome(name, False, {}, reason="not enough data")
        inc_net, inc_version = self._incumbent_net(name, incumbent)
        init = inc_net.state_dict() if t.warm_start else None
        cand = self.refresh_rnn(name, train, init=init, seed=seed)
        params = self.model_params(name)
        c_mae, n_val = rnn_fit.evaluate(cand.net, params, data, self.grid, cut)
        i_mae, _ = rnn_fit.evaluate(inc_net, params, data, self.grid, cut)
        accepted = bool(np.isfinite(c_mae) and np.isfinite(i_mae) and c_mae < i_mae * (1 - t.min_improvement))
        metrics = {"val_mae": c_mae, "incumbent_val_mae": i_mae, "val_samples": n_val,
                   "improvement": (1 - c_mae / i_mae) if i_mae > 0 else 0.0}
        if accepted:
            cand.net, _ = rnn_fit.fit(cand.net, params, data, self.grid, epochs=1, lr=self.cfg.trainer.rnn_lr, seed=seed)
        return self._publish(name, cand, metrics, accepted, inc_version,
                             {"keys": int(len(data.keys)), "windows": int(len(data)), "train_windows": int(len(train)),
                              "data_start": int(self.grid.start_of(int(data.wid.min()))),
                              "data_end": int(self.grid.end_of(int(data.wid.max())))})

    def _run_model(self, name, frame, seed, incumbent) -> Outcome:
        if name in ("gru", "lstm"):
            return self._run_rnn(name, frame, seed, incumbent)
        data = self.samples(name, frame, seed)
        if len(data.X_train) == 0 or len(data.X_val) == 0:
            log.info("not training %s: %d training and %d held-out samples in the store",
                     name, len(data.X_train), len(data.X_val))
            return Outcome(name, False, {}, reason="not enough data")
        inc_net, inc_version = self._incumbent_net(name, incumbent)
        init = inc_net.state_dict() if self.cfg.trainer.warm_start else None
        cand = self.train_transformer(data, init=init, seed=seed)
        accepted, metrics = self.gate(cand, inc_net, data.X_val, data.Y_val)
        tc = self.cfg.transformer
        if accepted and tc.final_epochs:  # the newest windows (held out for the gate) are the most telling
            fit(cand.net, np.concatenate([data.X_train, data.X_val]), np.concatenate([data.Y_train, data.Y_val]),
                epochs=tc.final_epochs, batch_size=tc.batch_size, lr=tc.lr * 0.5, seed=seed + 1)
        return self._publish(name, cand, metrics, accepted, inc_version, data.info)

    def _publish(self, name, cand, metrics, accepted, inc_version, info) -> Outcome:
        meta = {**cand.meta, **info, **metrics, "accepted": accepted, "incumbent_version": inc_version,
                "data_range": [iso(info["data_start"]), iso(info["data_end"])]}
        version = None
        if accepted and self.registry is not None:
            version = self.registry.publish(name, cand.net.state_dict(), cand.config, meta)
            self.registry.promote(name, version)
        log.info("%s candidate %s: val MAE %.4f vs %.4f of %s (%d held-out samples, data %s .. %s)%s",
                 name, "accepted" if accepted else "rejected", metrics["val_mae"], metrics["incumbent_val_mae"],
                 inc_version, metrics["val_samples"], *meta["data_range"],
                 f", promoted {version}" if version else "")
        return Outcome(name, accepted, {**metrics, "train_loss": cand.meta["train_loss"]},
                       reason="better than the model in service" if accepted else "not better than the model in service",
                       version=version, state_dict=cand.net.state_dict() if accepted else None, config=cand.config)

    # -- on a schedule --------------------------------------------------------------
    def tick(self, schedule: RetrainSchedule, now_ns: int) -> list[Outcome] | None:
        """One look at the store: feed drift, run if due. Returns the outcomes of a run, or None."""
        newest = self.store.newest()
        if schedule.drift and self.models:
            self._feed_drift(schedule)
        reason = schedule.due(newest, now_ns)
        if reason is None:
            return None
        log.info("retraining (%s), newest window %s", reason, iso(newest))
        outcomes = self.run_once()
        schedule.trained(newest, now_ns)
        return outcomes

    def run_forever(self, stop_event, clock=None) -> None:
        """Retrain on the schedule until ``stop_event`` is set; a failed iteration is logged, never fatal."""
        from .clock import SystemClock

        clock = clock or SystemClock()
        schedule = RetrainSchedule.from_config(self.cfg, initial=True)
        if not schedule.active:
            log.warning("trainer: no schedule set (trainer.every_windows, trainer.every, trainer.drift): "
                        "training once when data is there")
        log.info("trainer started: models %s, store %s, registry %s", ", ".join(self.models) or "none",
                 self.store.path, self.registry.path if self.registry else "-")
        while not stop_event.is_set():
            try:
                self.tick(schedule, clock.now_ns())
            except Exception:
                log.exception("trainer iteration failed")
            stop_event.wait(self.cfg.trainer.poll_s)

    def _feed_drift(self, schedule: RetrainSchedule) -> None:
        """Step-1 residuals of the model in service on the newest windows, one summary per window end."""
        if "transformer" not in self.models:
            return  # drift is watched on the transformer's held-out samples
        name = "transformer"
        data = self.samples(name)
        sel = data.val_end > self._drift_fed_end
        if not sel.any():
            return
        version = self.registry.promoted(name) if self.registry else None
        if self._serving.get(name, (None,))[0] != version or name not in self._serving:
            self._serving[name] = (version, self.incumbent(name)[0])
        net = self._serving[name][1]
        ends, X, Y = data.val_end[sel], data.X_val[sel], data.Y_val[sel]
        err = np.abs(predict(net, X)[:, 0] - Y[:, 0])
        ok = np.isfinite(err)
        ends, err = ends[ok], err[ok]
        uniq, inv = np.unique(ends, return_inverse=True)
        per_end = np.bincount(inv, weights=err) / np.bincount(inv)
        for r in per_end:
            if schedule.observe_residual(r):
                log.info("drift detected in the residuals of %s", name)
        self._drift_fed_end = int(data.val_end.max())


def _net_from(net: nn.Module, state_dict: dict) -> nn.Module:
    net.load_state_dict(state_dict)
    return net.eval()


# -- a trainer process the worker starts ----------------------------------------
def trainer_threads(cfg: Config) -> int:
    return cfg.trainer.threads or max(1, (os.cpu_count() or 2) // 2)


def run_trainer_process(cfg: Config, stop_event, priority: str = "normal") -> None:
    """Body of the trainer process (its priority is lowered before torch is even imported: trainer_process)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=cfg.logging.level, format="%(asctime)s trainer %(levelname)s %(message)s")
    from .threads import set_threads

    set_threads(trainer_threads(cfg))
    log.info("trainer process: priority %s, %d torch threads", priority, trainer_threads(cfg))
    store = WindowStore.from_config(cfg)
    registry = ModelRegistry(cfg.resolve(cfg.registry.path))
    Trainer(cfg, store, registry).run_forever(stop_event)


__all__ = ["Trainer", "run_trainer_process", "RetrainSchedule", "Candidate", "Outcome", "predict", "masked_mae",
           "fit", "mismatch", "TRAINABLE"]
