"""Offline fitting of the shared GRU/LSTM weights by running the online learner over stored windows.

The offline fit and the stream compute exactly the same inputs because they are
the same code: ``fit`` builds a ``StatefulRNNForecaster`` around the network,
feeds it every key's windows in event-time order (all keys of a window end in
one call, as the pipeline does), with learning on, and does that ``epochs``
times, each pass from fresh per-key state. ``evaluate`` runs the same model
with learning off and scores its forecasts on the newest windows, in each
key's baseline-error units (0.5 is half the error of the key's naive/seasonal
blend). Used by the trainer (``refresh_rnn``), ``--fit-first`` and the
retraining schedule; the worker gets the result through the registry and
rebuilds hidden states from each key's ring (``load_weights``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import torch

from .rnn import TARGET_CLIP, RNNConfig, RNNNet, StatefulRNNForecaster

RESERVED = ("key", "end", "count", "filled")


@dataclass
class WindowArrays:
    """Windows sorted by (wid, key): the order the pipeline advances them in."""

    keys: np.ndarray  # (K,) key names; ``slot`` indexes them
    slot: np.ndarray  # (n,)
    wid: np.ndarray  # (n,) window ids on the stream's grid
    x: np.ndarray  # (n, F) features, column 0 = target
    filled: np.ndarray  # (n,) gap-filled

    def __len__(self) -> int:
        return len(self.slot)

    def before(self, wid: int) -> WindowArrays:
        sel = self.wid < wid
        return WindowArrays(self.keys, self.slot[sel], self.wid[sel], self.x[sel], self.filled[sel])

    def groups(self):
        """(wid, rows) of every window end, oldest first."""
        b = np.flatnonzero(np.r_[True, self.wid[1:] != self.wid[:-1], True])
        for a, e in zip(b[:-1].tolist(), b[1:].tolist()):
            yield int(self.wid[a]), slice(a, e)


def from_frame(df: pl.DataFrame, grid, keep_keys: int | None = None, seed: int = 0) -> WindowArrays:
    """A window-store frame (key, end, count, filled, features...) as arrays; ``keep_keys``: a seeded
    random subset of keys at most (bounds the cost of a fit on very many keys)."""
    feats = [c for c in df.columns if c not in RESERVED]
    if df.height == 0 or not feats:
        return WindowArrays(np.empty(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64),
                            np.zeros((0, max(1, len(feats)))), np.zeros(0, bool))
    df = df.unique(["key", "end"], keep="last", maintain_order=True)
    keys, slot = np.unique(df["key"].to_numpy().astype(str), return_inverse=True)
    if keep_keys is not None and len(keys) > keep_keys:
        pick = np.zeros(len(keys), bool)
        pick[np.random.default_rng(seed).choice(len(keys), keep_keys, replace=False)] = True
        df = df.filter(pl.Series(pick[slot]))
        keys, slot = np.unique(df["key"].to_numpy().astype(str), return_inverse=True)
    end = df["end"].dt.epoch("ns").to_numpy()
    wid = np.asarray(grid.wid_of(end - 1), np.int64)  # the window that ends at ``end``
    order = np.lexsort((keys[slot], wid))  # the pipeline's order: by window end, then by key
    return WindowArrays(keys, slot[order].astype(np.int64), wid[order],
                        df.select(feats).to_numpy().astype(np.float64)[order],
                        df["filled"].to_numpy().astype(bool)[order])


def _model(net: RNNNet, config: RNNConfig, grid, n_keys: int, **changes) -> StatefulRNNForecaster:
    m = StatefulRNNForecaster(replace(config, **changes), net=net)
    m.bind_grid(grid)
    m.ensure_capacity(max(1, n_keys))
    return m


def fit(net: RNNNet, config: RNNConfig, data: WindowArrays, grid, *, epochs: int, lr: float,
        learn_every: int = 1, seed: int = 0) -> tuple[RNNNet, float]:
    """A copy of ``net`` trained by ``epochs`` passes of online TBPTT over ``data`` (all keys at once).
    Returns it and the mean loss of the last pass."""
    torch.manual_seed(seed)
    net = copy.deepcopy(net)
    m = _model(net, config, grid, len(data.keys), learn=True, learn_every=learn_every, lr=lr)
    all_slots = np.arange(len(data.keys))
    loss = float("nan")
    for _ in range(max(0, epochs)):
        m.reset(all_slots)
        losses = []
        for wid, rows in data.groups():
            m.last_loss = float("nan")
            m.update(data.slot[rows], data.x[rows], data.filled[rows], wid)
            if np.isfinite(m.last_loss):
                losses.append(m.last_loss)
        loss = float(np.mean(losses)) if losses else float("nan")
    net.eval()
    return net, loss


def evaluate(net: RNNNet, config: RNNConfig, data: WindowArrays, grid, from_wid: int) -> tuple[float, int]:
    """Mean |error| in units of each key's baseline error (each capped at TARGET_CLIP, as the loss is, so a
    young key's tiny unit cannot decide the gate) over the real targets at or after ``from_wid`` of
    forecasts made along ``data`` with learning off; and how many were scored."""
    m = _model(net, config, grid, len(data.keys), learn=False)
    H = config.horizon
    pending: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # origin wid -> slots, forecasts, units
    total, count = 0.0, 0
    for wid, rows in data.groups():
        slots, x, filled = data.slot[rows], data.x[rows], data.filled[rows]
        if wid >= from_wid:
            for j in range(1, H + 1):
                got = pending.get(wid - j)
                if got is None:
                    continue
                ps, pf, pu = got
                common, i_new, i_old = np.intersect1d(slots[~filled], ps, return_indices=True)
                if len(common):
                    y = x[~filled][i_new, 0]
                    total += float(np.sum(np.minimum(np.abs(y - pf[i_old, j - 1]) / pu[i_old, j - 1], TARGET_CLIP)))
                    count += len(common)
        m.update(slots, x, filled, wid)
        real = slots[~filled]
        if wid >= from_wid - H and len(real):
            pending[wid] = (real, m.forecast(real), m.output_unit(real))
        for o in [o for o in pending if o <= wid - H]:
            del pending[o]
    return (total / count if count else float("nan")), count


__all__ = ["WindowArrays", "from_frame", "fit", "evaluate"]
