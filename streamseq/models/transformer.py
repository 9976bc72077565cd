"""Transformer batch forecaster: an encoder over each key's last L windows, H steps out directly.

The network (``TransformerNet``) is encoder-only: input projection of each
window's normalised features (+ its gap-filled flag), sinusoidal positional
encoding counted back from the newest window, pre-norm blocks of multi-head
self-attention and feed-forward with residuals, a final layer norm, and a
linear head on the newest window's position giving H steps at once.

Per-key state lives in arena arrays indexed by slot, like the RNN path:

- ``ctx``: the last L windows (raw features + gap-filled flag), newest last;
- ``n``: windows seen; keys with fewer than L are left-padded and the padding
  is masked out of attention;
- running mean/variance of every feature, and of the target's one-window
  change: the same ``RunningStats`` arena ``rnn.py`` holds (models/normalise.py),
  so both paths normalise a key the same way.

``update`` only pushes a window (no model call); ``forecast`` runs ONE encoder
call for every key of the step. Like the RNN's ``"delta"`` target, the output
is a change from the last value in the RNN's unit (``scale``: the level's
std, or sqrt(j) one-window changes for prices), and the
head starts near zero, so an untrained network forecasts about the naive
value. The transformer does not learn in the stream: the trainer retrains it
on the window store and the worker hot-swaps the weights (``load_weights``).

A sample is a tensor (B, L, F+1) of normalised windows; rows that are all NaN
are padding. The store's training samples and the stream use that one
convention, so training and serving see the same inputs.

>>> cfg = TransformerConfig(context=4, d_model=8, heads=2, layers=1, ff=16, horizon=2)
>>> m = TransformerForecaster(cfg); m.ensure_capacity(2)
>>> for v in (1.0, 2.0, 3.0):
...     m.update(np.array([0, 1]), np.array([[v], [10 * v]]), np.array([False, False]))
>>> f = m.forecast(np.array([0, 1]))
>>> f.shape, bool(np.allclose(f[:, 0], [3.0, 30.0], rtol=0.05))
((2, 2), True)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.nn import functional as Fn  # noqa: N812 - torch's own idiom

from ..keyspace import grow
from .base import BatchForecaster
from .normalise import RunningStats, norm_scale, target_scale, update_change_var, update_running_stats  # noqa: F401

# BLAS picks kernels by matrix shape, so a key's forecast could depend on how
# many keys share its step. Every encoder call has the same shape (CHUNK keys,
# zero-padded): forecasts are bitwise independent of the batch, so replay and
# live give the same bytes.
CHUNK = 64
CLIP = 10.0  # normalised inputs are clipped to ±CLIP (as rnn.py)


@dataclass
class TransformerConfig:
    context: int = 48  # L, windows of context per key
    d_model: int = 32  # width of the encoder
    heads: int = 4  # attention heads (d_model must divide by it)
    layers: int = 2  # encoder blocks
    ff: int = 64  # hidden units of the feed-forward layer
    dropout: float = 0.1  # training only
    horizon: int = 24  # H, steps forecast directly
    n_features: int = 1  # window features; feature 0 is the target
    norm_alpha: float = 0.01  # floor of the running-statistics weight (same as the RNN's)
    scale: str = "level"  # output unit, as the RNN's: "level" std, or "change": sqrt(j) one-window changes
    seed: int = 0

    def __post_init__(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if min(self.context, self.d_model, self.heads, self.layers, self.ff, self.horizon, self.n_features) < 1:
            raise ValueError("transformer sizes must be positive")
        if self.scale not in ("level", "change"):
            raise ValueError(f"scale must be 'level' or 'change', got {self.scale!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown transformer settings {sorted(unknown)}")
        return cls(**d)


def sinusoid(length: int, d: int) -> torch.Tensor:
    """(length, d) positional encoding; the newest window is always the last position."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe


class EncoderBlock(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.heads = config.heads
        self.dropout = config.dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, config.ff), nn.GELU(), nn.Linear(config.ff, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor, keep: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """h: (B, L, d) -> (B, L, d); with ``last_only`` -> (B, 1, d), the newest position only (same values)."""
        B, L, d = h.shape
        nh, hd = self.heads, d // self.heads
        x = self.ln1(h)
        if last_only:  # queries, residual and feed-forward of the newest window only; keys/values of all
            k, v = (x @ self.qkv.weight[d:].T + self.qkv.bias[d:]).split(d, dim=2)  # 2 × (B, L, d)
            q = x[:, -1:] @ self.qkv.weight[:d].T + self.qkv.bias[:d]  # (B, 1, d)
            h = h[:, -1:]
        else:
            q, k, v = self.qkv(x).split(d, dim=2)  # 3 × (B, L, d)
        Lq = q.shape[1]
        q = q.view(B, Lq, nh, hd).transpose(1, 2)  # (B, nh, Lq, hd)
        k, v = (t.view(B, L, nh, hd).transpose(1, 2) for t in (k, v))  # (B, nh, L, hd)
        p = self.dropout if self.training else 0.0
        if last_only:  # one query: plain softmax attention (SDPA's one-query CPU path depends on the batch layout)
            w = (q @ k.transpose(-1, -2)) * hd**-0.5  # (B, nh, 1, L)
            w = Fn.dropout(w.masked_fill(~keep, float("-inf")).softmax(-1), p, self.training)
            a = w @ v  # (B, nh, 1, hd)
        else:
            a = Fn.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)  # (B, nh, L, hd)
        h = h + self.drop(self.proj(a.transpose(1, 2).reshape(B, Lq, d)))
        return h + self.drop(self.ff(self.ln2(h)))


class TransformerNet(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.inp = nn.Linear(config.n_features + 1, config.d_model)  # + gap-filled flag
        self.register_buffer("pos", sinusoid(config.context, config.d_model), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.horizon)
        nn.init.normal_(self.head.weight, std=0.01)  # untrained ≈ naive
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, F+1) normalised windows, all-NaN rows = padding -> (B, H) scaled deltas."""
        pad = torch.isnan(x[..., 0])  # (B, L)
        pad[:, -1] = False  # the newest window is always real (guards an empty context)
        h = self.inp(torch.nan_to_num(x, nan=0.0)) + self.pos[-x.shape[1]:]  # (B, L, d)
        keep = ~pad[:, None, None, :]  # (B, 1, 1, L): attend to real windows only
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            h = block(h, keep, last_only=i == last)  # only the newest position feeds the head
        return self.head(self.norm(h[:, -1]))  # (B, H)


def init_net(config: TransformerConfig) -> TransformerNet:
    """The untrained network of a config; the same seed gives the same weights."""
    torch.manual_seed(config.seed)
    return TransformerNet(config)


class TransformerForecaster(BatchForecaster):
    name = "transformer"

    def __init__(self, config: TransformerConfig, version: str = "init", net: TransformerNet | None = None):
        self.config = config
        self.version = version
        self.horizon = config.horizon
        self.net = net if net is not None else init_net(config)
        self.net.eval()
        L, F = config.context, config.n_features
        self._ctx = torch.zeros(0, L, F + 1)
        self._n = np.zeros(0, np.int64)
        self._stats = RunningStats(F, config.norm_alpha)

    # -- arena --------------------------------------------------------------
    def ensure_capacity(self, capacity):
        self._ctx = grow(self._ctx, capacity, 0.0)
        self._n = grow(self._n, capacity, 0)
        self._stats.ensure_capacity(capacity)

    def _scale(self, slots) -> np.ndarray:
        return self._stats.scale(slots)  # (n, F)

    def _target_scale(self, slots) -> np.ndarray:
        c = self.config
        return self._stats.target_scale(slots, c.horizon, c.scale)  # (n, H)

    def contexts(self, slots: np.ndarray) -> torch.Tensor:
        """(n, L, F+1) normalised contexts of these keys, padding rows NaN (what the net reads)."""
        F, L = self.config.n_features, self.config.context
        slots = np.ascontiguousarray(slots)
        raw = self._ctx[slots]
        mean = torch.from_numpy(self._stats.mean[slots]).float()[:, None, :]
        scale = torch.from_numpy(self._scale(slots)).float()[:, None, :]
        x = raw.clone()
        x[:, :, :F] = ((raw[:, :, :F] - mean) / scale).clamp_(-CLIP, CLIP)
        pad = torch.from_numpy(np.arange(L)[None, :] < (L - np.minimum(self._n[slots], L))[:, None])
        x[pad] = float("nan")
        return x

    # -- hot path -------------------------------------------------------------
    def update(self, slots, x, filled, wid=None):
        slots = np.ascontiguousarray(slots)
        real = ~filled
        n = self._n[slots]
        self._stats.update(slots, n, x, self._ctx[slots, -1, 0].double().numpy(), real)
        row = torch.from_numpy(np.concatenate([x, filled[:, None].astype(np.float64)], axis=1)).float()
        self._ctx[slots] = torch.cat([self._ctx[slots][:, 1:], row[:, None, :]], dim=1)  # newest last
        self._n[slots] = n + 1

    def forecast(self, slots):
        if len(slots) == 0:
            return np.zeros((0, self.horizon))
        slots = np.ascontiguousarray(slots)
        x = self.contexts(slots)
        n = x.shape[0]
        x = torch.cat([x, x.new_zeros((-n % CHUNK, *x.shape[1:]))])  # (k * CHUNK, L, F+1)
        self.net.eval()
        with torch.no_grad():
            out = torch.cat([self.net(c) for c in x.split(CHUNK)])[:n].double().numpy()  # (n, H)
        base = self._ctx[slots, -1, 0].double().numpy()[:, None]
        return base + self._target_scale(slots) * out

    # -- hot swap -------------------------------------------------------------
    def load_weights(self, state_dict: dict, version: str) -> None:
        """Swap in new weights between batches; per-key contexts need nothing (they are raw windows)."""
        self.net.load_state_dict(state_dict, strict=True)
        self.net.eval()
        self.version = version

    # -- per-key state ---------------------------------------------------------
    def snapshot(self, slots):
        return {
            "ctx": self._ctx[slots].numpy().copy(),
            "n": self._n[slots].copy(),
            **self._stats.snapshot(slots),
        }

    def restore(self, slots, state):
        self._ctx[slots] = torch.from_numpy(np.ascontiguousarray(state["ctx"], dtype=np.float32))
        self._n[slots] = state["n"]
        self._stats.restore(slots, state)

    def reset(self, slots):
        self._ctx[slots] = 0.0
        self._n[slots] = 0
        self._stats.reset(slots)

    def config_dict(self) -> dict:
        return asdict(self.config)


__all__ = [
    "TransformerConfig", "TransformerNet", "TransformerForecaster",
    "init_net", "norm_scale", "update_running_stats", "update_change_var", "target_scale",
]
