"""Stateful GRU/LSTM forecaster: weights shared by all keys, hidden state per key.

Per-key state lives in arena tensors indexed by slot:

- ``h``: the carried hidden state (h, or [h | c] for LSTM), advanced by ONE
  cell step per window — never recomputed from history;
- ``h_lag``: the hidden state just before the oldest window in the ring, the
  starting point of truncated BPTT;
- ``ring``: the last k + H windows (raw features + a gap-filled flag);
- running mean/variance of every feature (per-key normalisation).

Learning: when window t arrives, the forecasts made at origins t-H-k+1 .. t-H
are fully resolved (all H targets known). One truncated-BPTT pass runs the
cell over those k windows from ``h_lag`` for every key in the step at once,
scores the H-step outputs, and takes one optimiser step. Forecasting reads
``h`` through the head and changes nothing.

The network predicts each step as a change from the last value, in units of
the key's running standard deviation (``target="delta"``), so an untrained
network starts out as the naive forecast.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..keyspace import grow
from .base import BatchForecaster
from .normalise import RunningStats

# Below ~12 rows BLAS switches kernels and a row's result depends on the batch
# size; padding inference calls keeps every key's forecast bitwise independent
# of which other keys share its step (replay and live then give the same bytes).
MIN_ROWS = 16


def _padded(fn, *tensors: torch.Tensor) -> torch.Tensor:
    n = tensors[0].shape[0]
    if n >= MIN_ROWS:
        return fn(*tensors)
    padded = [torch.cat([t, t.new_zeros((MIN_ROWS - n, *t.shape[1:]))]) for t in tensors]
    return fn(*padded)[:n]


@dataclass
class RNNConfig:
    cell: str = "gru"  # "gru" | "lstm"
    hidden: int = 64  # hidden units
    horizon: int = 24  # H, steps forecast directly
    n_features: int = 1  # window features; feature 0 is the target
    tbptt: int = 8  # k, windows of truncated BPTT per learning step
    # s: each key takes a learning step every s-th of its own windows (TBPTT(k, s)); the schedule depends
    # on the key's history only, so it is the same in replay and live. s = 2 halves the cost of s = 1; it
    # scored as well or better on the three real replay_data/ streams and worse on the synthetic one
    # with regime changes (README, "Accuracy").
    learn_every: int = 2
    max_learn_keys: int = 4096  # keys per optimiser step; bounds the training graph's memory
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" | "sgd"
    learn: bool = True  # online learning of the shared weights
    normalize: bool = True  # per-key running mean/std normalisation
    norm_alpha: float = 0.01  # floor of the running-statistics weight (adaptivity)
    target: str = "delta"  # "delta": change from the last value | "level"
    scale: str = "level"  # unit of the output: "level" std, or "change": sqrt(j) one-window changes (prices)
    clip: float = 1.0  # gradient-norm clip
    seed: int = 0


class RNNNet(nn.Module):
    """One recurrent cell and a linear head for H steps."""

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        n_in = config.n_features + 1  # + gap-filled flag
        cell_cls = nn.GRUCell if config.cell == "gru" else nn.LSTMCell
        self.cell = cell_cls(n_in, config.hidden)
        self.head = nn.Linear(config.hidden, config.horizon)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    @property
    def state_size(self) -> int:
        return self.config.hidden * (2 if self.config.cell == "lstm" else 1)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """x: (B, n_in), state: (B, S) -> (B, S)."""
        if self.config.cell == "gru":
            return self.cell(x, state)
        hd = self.config.hidden
        h, c = self.cell(x, (state[:, :hd], state[:, hd:]))
        return torch.cat([h, c], dim=1)

    def out(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(state[:, : self.config.hidden])  # (B, H)


class StatefulRNNForecaster(BatchForecaster):
    def __init__(self, config: RNNConfig, version: str = "init", net: RNNNet | None = None):
        self.config = config
        self.name = config.cell
        self.version = version
        self.horizon = config.horizon
        if net is None:
            torch.manual_seed(config.seed)
            net = RNNNet(config)
        self.net = net
        self.opt = self._make_optimizer()
        F = config.n_features
        self._R = config.tbptt + config.horizon
        S = self.net.state_size
        self._h = torch.zeros(0, S)
        self._h_lag = torch.zeros(0, S)
        self._ring = torch.zeros(0, self._R, F + 1)
        self._n = np.zeros(0, np.int64)
        self._stats = RunningStats(F, config.norm_alpha)
        self.last_loss = float("nan")

    def _make_optimizer(self):
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(self.net.parameters(), lr=c.lr, momentum=0.9, foreach=True)
        return torch.optim.Adam(self.net.parameters(), lr=c.lr, foreach=True)

    # -- arena --------------------------------------------------------------
    def ensure_capacity(self, capacity):
        self._h = grow(self._h, capacity, 0.0)
        self._h_lag = grow(self._h_lag, capacity, 0.0)
        self._ring = grow(self._ring, capacity, 0.0)
        self._n = grow(self._n, capacity, 0)
        self._stats.ensure_capacity(capacity)

    def _target_scale(self, slots) -> np.ndarray:
        """(n, H) unit of the network's output per step (see models/normalise.py)."""
        return self._stats.target_scale(slots, self.horizon,
                                        self.config.scale if self.config.target == "delta" else "level")

    def _scale(self, slots) -> np.ndarray:
        return self._stats.scale(slots)  # (n, F)

    def _normalise(self, slots, raw: torch.Tensor) -> torch.Tensor:
        """raw: (n, T, F+1) -> normalised inputs, clipped."""
        if not self.config.normalize:
            return raw
        F = self.config.n_features
        mean = torch.from_numpy(self._stats.mean[slots]).float()[:, None, :]
        scale = torch.from_numpy(self._scale(slots)).float()[:, None, :]
        out = raw.clone()
        out[:, :, :F] = ((raw[:, :, :F] - mean) / scale).clamp_(-10.0, 10.0)
        return out

    # -- hot path -------------------------------------------------------------
    def update(self, slots, x, filled, wid=None):
        c = self.config
        n = self._n[slots]
        real = ~filled
        self._stats.update(slots, n, x, self._ring[slots, -1, 0].double().numpy(), real, features=c.normalize)
        row = torch.from_numpy(np.concatenate([x, filled[:, None].astype(np.float64)], axis=1)).float()
        ring = torch.cat([self._ring[slots][:, 1:], row[:, None, :]], dim=1)  # (n, R, F+1), newest last
        self._ring[slots] = ring
        self._n[slots] = n + 1
        if c.learn:
            # A key learns on real windows, every learn_every-th one; gap-filled windows bring no
            # new truth. Keys that do not learn now still move h_lag along with the ring.
            due = real & (((n + 1) % c.learn_every) == 0) if c.learn_every > 1 else real.copy()
            if not due.all():
                rest = ~due
                self._advance_lag(slots[rest], ring[torch.from_numpy(rest)], n[rest] + 1)
            if due.any():
                ds, dr = (slots, ring) if due.all() else (slots[due], ring[torch.from_numpy(due)])
                for a in range(0, len(ds), c.max_learn_keys):
                    self._learn(ds[a:a + c.max_learn_keys], dr[a:a + c.max_learn_keys])
        xin = self._normalise(slots, ring[:, -1:])[:, 0]
        self.net.eval()
        with torch.no_grad():
            self._h[slots] = _padded(self.net.step, xin, self._h[slots])

    def _advance_lag(self, slots, ring, nseen) -> None:
        """h_lag is the state just before the oldest window of the NEXT ring: step it past this
        ring's oldest window (when the key has one). Keys that learn get this from _learn."""
        full = nseen >= self._R
        if not full.any():
            return
        slots = slots[full]
        x0 = self._normalise(slots, ring[torch.from_numpy(full), :1])[:, 0]
        self.net.eval()
        with torch.no_grad():
            self._h_lag[slots] = _padded(self.net.step, x0, self._h_lag[slots])

    def _learn(self, slots, ring) -> None:
        c = self.config
        k, H, R = c.tbptt, c.horizon, self._R
        nseen = self._n[slots]
        sel = nseen >= H + 1  # at least one fully resolved origin in the ring
        if not sel.all():
            young = ~sel
            self._advance_lag(slots[young], ring[torch.from_numpy(young)], nseen[young])
            if not sel.any():
                return
            slots, ring, nseen = slots[sel], ring[torch.from_numpy(sel)], nseen[sel]
        valid = torch.from_numpy(np.arange(R)[None, :] >= (R - nseen)[:, None])  # (n, R)
        xn = self._normalise(slots, ring)
        y = ring[:, :, 0]
        fill = ring[:, :, -1] > 0.5
        idx = torch.arange(k)[:, None] + torch.arange(1, H + 1)[None, :]  # (k, H)
        scale_y = torch.from_numpy(self._target_scale(slots)).float()[:, None, :]  # (n, 1, H)
        if c.target == "delta":
            tgt = (y[:, idx] - y[:, :k, None]) / scale_y
        else:
            mean_y = torch.from_numpy(self._stats.mean[slots][:, 0]).float()[:, None, None]
            tgt = (y[:, idx] - mean_y) / scale_y
        mask = valid[:, :k, None] & ~fill[:, idx]  # (n, k, H)
        if not mask.any():
            self._advance_lag(slots, ring, nseen)
            return
        self.net.train()
        state = self._h_lag[slots]
        states = []
        lag_next = state
        all_valid = bool(valid[:, :k].all())
        for i in range(k):
            stepped = self.net.step(xn[:, i], state)
            state = stepped if all_valid else torch.where(valid[:, i, None], stepped, state)
            if i == 0:
                lag_next = state.detach()
            states.append(state)
        pred = self.net.out(torch.stack(states, dim=1).reshape(-1, state.shape[1])).view(len(slots), k, H)
        w = mask.float()
        err = nn.functional.smooth_l1_loss(pred, tgt.clamp(-20, 20), reduction="none")
        loss = (err * w).sum() / w.sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), c.clip, foreach=True)
        self.opt.step()
        self._h_lag[slots] = lag_next
        self.last_loss = float(loss.detach())

    def forecast(self, slots):
        self.net.eval()
        with torch.no_grad():
            out = _padded(self.net.out, self._h[slots]).double().numpy()  # (n, H)
        scale = self._target_scale(slots) if self.config.normalize else 1.0
        if self.config.target == "delta":
            base = self._ring[slots, -1, 0].double().numpy()[:, None]
        else:
            base = self._stats.mean[slots][:, 0:1] if self.config.normalize else 0.0
        return base + scale * out

    # -- hot swap -------------------------------------------------------------
    def load_weights(self, state_dict: dict, version: str, rewarm: bool = True) -> None:
        """Swap in new shared weights; keep every key's state usable.

        With ``rewarm`` each key's hidden state is rebuilt by running the new
        cell over the windows its ring holds (one batched pass over all keys),
        so the state matches the new weights without replaying history.
        """
        self.net.load_state_dict(state_dict)
        self.opt = self._make_optimizer()
        self.version = version
        if rewarm:
            self.rewarm(np.flatnonzero(self._n > 0))

    def rewarm(self, slots: np.ndarray) -> None:
        if len(slots) == 0:
            return
        R = self._R
        nseen = self._n[slots]
        valid = torch.from_numpy(np.arange(R)[None, :] >= (R - nseen)[:, None])
        xn = self._normalise(slots, self._ring[slots])
        self.net.eval()
        with torch.no_grad():
            state = torch.zeros(len(slots), self.net.state_size)
            for i in range(R):
                state = torch.where(valid[:, i, None], _padded(self.net.step, xn[:, i], state), state)
        self._h[slots] = state
        self._h_lag[slots] = 0.0  # the state before the ring's oldest window: history beyond the ring is gone

    # -- per-key state ---------------------------------------------------------
    def snapshot(self, slots):
        return {
            "h": self._h[slots].numpy().copy(),
            "h_lag": self._h_lag[slots].numpy().copy(),
            "ring": self._ring[slots].numpy().copy(),
            "n": self._n[slots].copy(),
            **self._stats.snapshot(slots),
        }

    def restore(self, slots, state):
        self._h[slots] = torch.from_numpy(np.ascontiguousarray(state["h"], dtype=np.float32))
        self._h_lag[slots] = torch.from_numpy(np.ascontiguousarray(state["h_lag"], dtype=np.float32))
        self._ring[slots] = torch.from_numpy(np.ascontiguousarray(state["ring"], dtype=np.float32))
        self._n[slots] = state["n"]
        self._stats.restore(slots, state)

    def reset(self, slots):
        self._h[slots] = 0.0
        self._h_lag[slots] = 0.0
        self._ring[slots] = 0.0
        self._n[slots] = 0
        self._stats.reset(slots)

    def config_dict(self) -> dict:
        return asdict(self.config)
