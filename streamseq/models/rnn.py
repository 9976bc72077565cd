"""Stateful GRU/LSTM forecaster: weights shared by all keys, hidden state per key.

The network predicts a correction to a per-key baseline: step j's forecast is
``baseline_j + unit_j × out_j``. The baseline blends the naive and the
seasonal-naive forecast of step j with the weight that minimises the key's own
tracked squared error of that blend; ``unit_j`` is the blend's tracked error. So
an untrained network (output 0) forecasts no worse than the better of naive and
seasonal naive for the key, and the loss is in each key's own error units
(MASE-like), so keys of any scale learn the shared weights together.

What the cell sees per window (models/features.py): the window's features
normalised by their level and mean |change| over the last W windows of the ring
(computed from the ring alone, so a later learning step or a rewarm sees exactly
what the stream saw), a gap-filled flag, the one-window and the one-season
change, and the calendar position of the window. A key uses the network's
correction in proportion to how much it has lately cut the baseline's step-1
error (``trust``), so where the network does not help a key it falls back to
the baseline. The head sees,
per target step, the seasonal-naive value's offset from the last value and the
calendar position of the target: ``out_j = head(h)_j + Σ_f (mix(h)_f + m_{j,f}) s_{j,f}``.

Per-key state lives in arena tensors indexed by slot:

- ``h``: the carried hidden state (h, or [h | c] for LSTM), advanced by ONE cell
  step per window — never recomputed from history;
- ``h_lag``: the hidden state just before the oldest origin of truncated BPTT;
- ``vals``: the last R = H + k + W windows' features (W = max(season, 8): the
  seasonal lag of every target and input the learner needs, and the span of the
  local level/unit inputs are normalised by), and ``step``: each window's
  distance in windows from the previous one, negative when gap-filled (so the
  calendar of every window in the ring is known from ``wid``, the newest one);
- ``sq``: running mean square of the change over L = 1..Lmax windows, ``cross``:
  of the product of the naive and seasonal-naive errors of step j (baseline weights);
- ``trust``: the last step-1 baseline and correction and their tracked |errors|;
- running mean/variance of every feature (models/normalise.py).

Learning: when window t arrives, the forecasts made at origins t-H-k+1 .. t-H
are fully resolved. One truncated-BPTT pass runs the cell over those k windows
from ``h_lag`` for every due key at once, scores the H-step outputs, and takes
one optimiser step. Forecasting reads ``h`` through the head and changes nothing.
Every feature of a window or a step is computed from windows at or before the
origin (tests/test_no_leak.py).
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from ..keyspace import grow
from .adam import Adam, clip_grad_norm
from .base import BatchForecaster, WindowStep
from .features import calendar_features, seasonal_lags
from .normalise import RunningStats
from .rnn_config import RNNConfig

# Below ~12 rows BLAS switches kernels and a row's result depends on the batch
# size; padding inference calls keeps every key's forecast bitwise independent
# of which other keys share its step (replay and live then give the same bytes).
MIN_ROWS = 16
CLIP = 10.0  # normalised inputs are clipped to ±CLIP
TARGET_CLIP = 20.0  # learning targets, in units of the baseline's error
TRUST_GAIN = 0.05  # a key uses its full correction once that cuts its step-1 error by 5 %
TRUST_ALPHA = 0.05  # weight of the newest error in the trust statistics
MAX_RUN_ROWS = 32_768  # windows × keys advanced in one fused run (bounds the stacked rings' memory)
PRIOR_N = 4  # windows of weight of the random-walk prior of a lag's error (young keys)
GAIN_MIN = 0.03  # share of the naive error² the seasonal blend must remove before it is used (fully at 2×)


def _padded(fn, *tensors: torch.Tensor) -> torch.Tensor:
    n = tensors[0].shape[0]
    if n >= MIN_ROWS:
        return fn(*tensors)
    padded = [torch.cat([t, t.new_zeros((MIN_ROWS - n, *t.shape[1:]))]) for t in tensors]
    return fn(*padded)[:n]


class RNNNet(nn.Module):
    """One recurrent cell and a head of H steps that also reads per-step features."""

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        nc = 2 * len(config.periods)
        self.n_in = config.n_features + 3 + nc  # features, gap flag, 1-window change, 1-season change, calendar
        self.n_step = 1 + nc  # seasonal-naive offset, calendar of the target
        cell_cls = nn.GRUCell if config.cell == "gru" else nn.LSTMCell
        self.cell = cell_cls(self.n_in, config.hidden)
        self.head = nn.Linear(config.hidden, config.horizon)
        self.mix = nn.Linear(config.hidden, self.n_step)  # state-dependent weight of each step feature
        self.step_mix = nn.Parameter(torch.zeros(config.horizon, self.n_step))  # and its per-step part
        for lin in (self.head, self.mix):  # untrained output 0: the forecast is the baseline
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

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

    @torch.no_grad()
    def run(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cell over T windows: x (T, B, n_in), state (B, S) -> (T, B, hidden) h after each window
        and the (B, S) state after the last one.

        torch's sequence kernel gives the bits of ``step`` window by window (rows padded to MIN_ROWS,
        oneDNN's LSTM off: it rounds differently) at a fraction of the per-call cost."""
        T, n = x.shape[0], x.shape[1]
        if n < MIN_ROWS:
            x = torch.cat([x, x.new_zeros(T, MIN_ROWS - n, x.shape[2])], dim=1)
            state = torch.cat([state, state.new_zeros(MIN_ROWS - n, state.shape[1])])
        c = self.cell
        params = [c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh]
        if self.config.cell == "gru":
            out, _ = torch.gru(x, state[None], params, True, 1, 0.0, False, False, False)
            return out[:, :n], out[-1, :n]
        hd = self.config.hidden
        mkldnn = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)
        try:
            out, h, cs = torch.lstm(x, (state[None, :, :hd].contiguous(), state[None, :, hd:].contiguous()),
                                    params, True, 1, 0.0, False, False, False)
        finally:
            torch._C._set_mkldnn_enabled(mkldnn)
        return out[:, :n], torch.cat([h[0, :n], cs[0, :n]], dim=1)

    def cell_step(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``step`` through the cell's op directly (no module call: the learner takes k per step)."""
        c = self.cell
        if self.config.cell == "gru":
            return torch.gru_cell(x, state, c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)
        hd = self.config.hidden
        h, cs = torch.lstm_cell(x, (state[:, :hd], state[:, hd:]), c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)
        return torch.cat([h, cs], dim=1)

    def out(self, state: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """state (B, S), s (B, H, n_step) per-step features -> (B, H) corrections in units of the baseline error."""
        h = state[:, : self.config.hidden]
        state_part = torch.bmm(s, self.mix(h)[:, :, None])[:, :, 0]  # (B, H): Σ_f mix(h)_f s_{j,f}
        return self.head(h) + state_part + (s * self.step_mix).sum(-1)


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
        self._params = list(self.net.parameters())
        self.opt = self._make_optimizer()
        F, H = config.n_features, config.horizon
        self._m = max(1, config.season)
        self._R = config.ring
        self._lag_pos = self._R - H - config.tbptt  # first origin of a learning step (position in the ring)
        self._Ls = seasonal_lags(H, self._m)  # (H,) seasonal-naive lag of step j
        self._Lmax = config.max_lag
        self._W = config.local
        S = self.net.state_size
        self._h = torch.zeros(0, S)
        self._h_lag = torch.zeros(0, S)
        self._vals = torch.zeros(0, self._R, F)
        self._step = torch.zeros(0, self._R, dtype=torch.int16)  # 0 = empty; -d = gap-filled
        self._wid = np.zeros(0, np.int64)  # id of the newest window
        self._n = np.zeros(0, np.int64)
        self._sq = np.zeros((0, self._Lmax), np.float32)
        self._cross = np.zeros((0, H), np.float32)
        self._trust = np.zeros((0, 4), np.float32)  # last step-1 baseline and correction; their tracked |errors|
        self._stats = RunningStats(F, config.norm_alpha)
        self._made = None  # (sorted slots, baseline, correction) of the last update's keys
        self.last_loss = float("nan")

    def _make_optimizer(self):
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(self.net.parameters(), lr=c.lr, momentum=0.9, foreach=True)
        return Adam(self.net.parameters(), lr=c.lr)  # torch.optim.Adam's foreach step, bit for bit

    def _mode(self, train: bool) -> None:
        """Train or eval mode, set explicitly on every path that runs the network (what ``Module.train``
        sets, without its walk through ``__setattr__``: the learner switches twice per learning step)."""
        if self.net.training != train:
            for m in self.net.modules():
                object.__setattr__(m, "training", train)

    # -- arena --------------------------------------------------------------
    def ensure_capacity(self, capacity):
        self._made = None
        self._h = grow(self._h, capacity, 0.0)
        self._h_lag = grow(self._h_lag, capacity, 0.0)
        self._vals = grow(self._vals, capacity, 0.0)
        self._step = grow(self._step, capacity, 0)
        self._wid = grow(self._wid, capacity, 0)
        self._n = grow(self._n, capacity, 0)
        self._sq = grow(self._sq, capacity, 0.0)
        self._cross = grow(self._cross, capacity, 0.0)
        self._trust = grow(self._trust, capacity, 0.0)
        self._stats.ensure_capacity(capacity)

    # -- what the network sees ----------------------------------------------------
    def _units(self, slots, nseen) -> tuple[np.ndarray, np.ndarray]:
        """Per key: (n, H) weight of seasonal naive in the baseline and (n, H) the baseline's tracked
        RMS error (the output unit)."""
        mean, var = self._stats.mean[slots][:, 0], self._stats.var[slots][:, 0]
        return self._units_of(self._sq[slots], self._cross[slots], mean, var, nseen)

    def _units_of(self, sq32, cross32, mean, var, nseen) -> tuple[np.ndarray, np.ndarray]:
        """``_units`` from the tracked errors (float32), the target's running mean and variance and the
        windows seen, one row per key (or per key and window)."""
        sq = sq32.astype(np.float64)
        H = self.horizon
        A = sq[:, :H]  # naive error² of step j
        B = sq[:, self._Ls - 1]  # seasonal-naive error² of step j
        C = cross32.astype(np.float64)
        denom = A - 2 * C + B
        ok = denom > 1e-12 * (A + B + 1e-300)
        w = np.clip(np.where(ok, (A - C) / np.where(ok, denom, 1.0), 1.0), 0, 1)
        e2 = (1 - w) ** 2 * A + 2 * w * (1 - w) * C + w * w * B
        # The seasonal lag only where it cuts the naive error by more than its estimation noise does
        # (on a random walk the tracked weight wanders around 0.1-0.2 and the blend would cost ~1%).
        gain = np.where(A > 0, 1 - e2 / np.where(A > 0, A, 1.0), 1.0)
        w = w * np.clip((gain - GAIN_MIN) / GAIN_MIN, 0, 1)
        seen = nseen[:, None] > self._Ls[None, :] + 1  # a seasonal lag needs a season of data
        w = np.where(seen, w, 0.0)
        # The output unit is the better single baseline's RMS error: the blend's own estimate can come
        # out near 0 when A, B and C are noisy, and a tiny unit would blow up that key's loss. A lag seen
        # only a few times is shrunk towards L × the one-window error (a random walk's).
        lags = np.arange(1, sq.shape[1] + 1)
        seen_n = np.maximum(nseen[:, None] - lags[None, :], 0)
        prior = lags[None, :] * sq[:, :1]
        sqs = (seen_n * sq + PRIOR_N * prior) / (seen_n + PRIOR_N)
        e2 = np.where(seen, np.minimum(sqs[:, :H], sqs[:, self._Ls - 1]), sqs[:, :H])
        floor = 1e-3 * (np.abs(mean) + np.sqrt(var)) + 1e-9
        if self.config.target == "level":
            unit = np.repeat((np.sqrt(var) + floor)[:, None], H, axis=1)
            w = np.zeros_like(w)
        else:
            unit = np.sqrt(np.maximum(e2, 0.0)) + floor[:, None]
        return w, unit

    def _ring_wids(self, steps: torch.Tensor, wid: np.ndarray) -> np.ndarray:
        """(n, R) window id of every ring position, from the newest id and the steps between windows."""
        st = np.abs(steps.numpy().astype(np.int64))
        after = np.cumsum(st[:, ::-1], axis=1)[:, ::-1] - st  # windows between a position and the newest
        return wid[:, None] - after

    def _calendar(self, wids: np.ndarray) -> torch.Tensor:
        """(..., 2 × periods) calendar features of window ids; zeros when the grid is unknown."""
        periods = self.config.periods
        if not periods:
            return torch.zeros(*wids.shape, 0)
        if self.grid is None:
            return torch.zeros(*wids.shape, 2 * len(periods))
        nc = 2 * len(periods)
        if wids.size and (wids == wids.reshape(-1)[0]).all():  # one window for every row (a forecast's steps)
            row = calendar_features(self.grid.start_of(wids.reshape(-1)[:1]), periods)[0]
            return torch.from_numpy(row).expand(*wids.shape, nc)
        if wids.ndim >= 2 and (wids == wids[:1]).all():  # every key's windows are the same ones (the usual case)
            rows = calendar_features(self.grid.start_of(wids[0]), periods)
            return torch.from_numpy(rows).expand(*wids.shape, nc)
        uniq, inv = np.unique(wids.reshape(-1), return_inverse=True)
        feats = calendar_features(self.grid.start_of(uniq), periods)[inv]
        return torch.from_numpy(feats).reshape(*wids.shape, nc)

    def _local(self, vals, nseen, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Level and unit of every feature around each of these ring positions, from the ring alone: the
        mean of the last W windows and the mean |one-window change| over them (W = max(season, 8)).

        Inputs normalised this way are the same whenever they are computed (when the window arrives,
        in a later learning step, on a hot swap's rewarm): running statistics would have moved on, and
        a key's early windows would look different to the learner than they did to the stream."""
        R, W = self._R, self._W
        first = torch.from_numpy(R - np.minimum(nseen, R))[:, None]  # (n, 1) first position holding a window
        pos = torch.arange(R)[None, :]
        have = (pos >= first).to(vals.dtype)[..., None]  # (n, R, 1)
        dhave = have[:, 1:] * have[:, :-1]  # a change needs both windows
        v = vals * have
        d = (vals[:, 1:] - vals[:, :-1]).abs() * dhave  # (n, R-1, F)
        zero = vals.new_zeros(vals.shape[0], 1, vals.shape[2])
        cv, cn = torch.cat([zero, v.cumsum(1)], 1), torch.cat([zero[..., :1], have.cumsum(1)], 1)  # (n, R+1, .)
        cd, cdn = torch.cat([zero, zero, d.cumsum(1)], 1), torch.cat([zero[..., :1], zero[..., :1], dhave.cumsum(1)], 1)
        P = torch.from_numpy(np.asarray(positions))
        lo = (P - W + 1).clamp(min=0)
        cnt = (cn[:, P + 1] - cn[:, lo]).clamp(min=1.0)
        level = (cv[:, P + 1] - cv[:, lo]) / cnt  # (n, P, F)
        dcnt = cdn[:, P + 1] - cdn[:, lo + 1]
        mad = (cd[:, P + 1] - cd[:, lo + 1]) / dcnt.clamp(min=1.0)
        unit = torch.maximum(mad, 1e-3 * level.abs()) + 1e-9
        return level, unit

    def _inputs(self, slots, vals, steps, nseen, positions: np.ndarray, wids=None, loc=None,
                pos_wids=None) -> torch.Tensor:
        """(n, P, n_in) cell inputs of the windows at these ring positions (``loc``: their ``_local``;
        ``wids``: the ring's window ids, or ``pos_wids``: the (n, P) ids of these positions)."""
        R, m = self._R, self._m
        P = torch.from_numpy(np.asarray(positions))
        first = torch.from_numpy(R - np.minimum(nseen, R))[:, None]  # first position holding a window
        x = vals[:, P]  # (n, P, F)
        if self.config.normalize:
            level, unit = self._local(vals, nseen, positions) if loc is None else loc
            z = ((x - level) / unit).clamp_(-CLIP, CLIP)
            cu = unit[..., 0]
        else:
            z, cu = x, torch.ones(x.shape[:2])
        y = vals[:, :, 0]
        ok1 = (P[None, :] - 1 >= first)
        oks = (P[None, :] - m >= first)
        d1 = torch.where(ok1, (y[:, P] - y[:, (P - 1).clamp(min=0)]) / cu, 0.0).clamp_(-CLIP, CLIP)
        ds = torch.where(oks, (y[:, P] - y[:, (P - m).clamp(min=0)]) / cu, 0.0).clamp_(-CLIP, CLIP)
        fill = (steps[:, P] < 0).float()
        parts = [z, fill[..., None], d1[..., None], ds[..., None]]
        if self.config.periods:
            if pos_wids is None:
                w = self._ring_wids(steps, self._wid[slots]) if wids is None else wids
                pos_wids = w[:, np.asarray(positions)]
            parts.append(self._calendar(pos_wids))
        return torch.cat(parts, dim=2)

    def _step_features(self, mean0, vals, nseen, w, origins: np.ndarray, target_wids: np.ndarray,
                       lunit: torch.Tensor | None = None, steps: int | None = None):
        """Baseline (n, K, J) float64 and head features (n, K, J, n_step) of origins at these ring positions,
        for steps 1..J (J = ``steps`` or H).

        ``mean0``: (n,) the target's running mean (the baseline of ``target = "level"``); ``target_wids``:
        (n, K, J) window ids of the targets (their calendar); ``lunit``: (n, K) the origins' local unit
        (``_local``), computed here when not given."""
        R, H = self._R, (steps or self.horizon)
        O = np.asarray(origins)
        spos = O[:, None] + np.arange(1, H + 1)[None, :] - self._Ls[None, :H]  # (K, J) seasonal-naive position
        y = vals[:, :, 0].double().numpy()
        first = R - np.minimum(nseen, R)
        valid_s = spos[None] >= first[:, None, None]  # (n, K, H)
        y_o = y[:, O][:, :, None]  # (n, K, 1)
        y_s = np.where(valid_s, y[:, np.maximum(spos, 0)], y_o)
        ws = w[:, None, :H] * valid_s
        base = y_o + ws * (y_s - y_o)
        if self.config.target == "level":
            base = np.broadcast_to(mean0[:, None, None], base.shape).copy()
        if lunit is None:
            lunit = self._local(vals, nseen, O)[1][..., 0]
        s0 = np.clip((y_s - y_o) / lunit.double().numpy()[:, :, None], -CLIP, CLIP).astype(np.float32)
        parts = [torch.from_numpy(s0)[..., None]]
        if self.config.periods:
            parts.append(self._calendar(target_wids))
        return base, torch.cat(parts, dim=3)

    # -- hot path -------------------------------------------------------------
    def update(self, slots, x, filled, wid=None):
        slots = np.ascontiguousarray(slots)
        self._run(slots, np.asarray(x, np.float64)[None], np.asarray(filled, bool)[None], [wid])

    def advance(self, steps: list[WindowStep]) -> list[np.ndarray]:
        """Consecutive window ends of the same keys go through ``_run`` together (up to MAX_RUN_ROWS)."""
        out: list[np.ndarray] = []
        i = 0
        while i < len(steps):
            slots = np.ascontiguousarray(steps[i].slots)
            j = i + 1
            most = max(1, MAX_RUN_ROWS // max(len(slots), 1))
            while j < len(steps) and j - i < most and (steps[j].slots is steps[i].slots
                                                        or np.array_equal(steps[j].slots, slots)):
                j += 1
            run = steps[i:j]
            fc = self._run(slots, np.stack([np.asarray(s.x, np.float64) for s in run]),
                           np.stack([np.asarray(s.filled, bool) for s in run]), [s.wid for s in run])
            some = np.stack([s.filled for s in run]).any(axis=1).tolist() if len(run) > 1 else [run[0].filled.any()]
            out.extend(f[~s.filled] if gap else f for f, s, gap in zip(fc, run, some))
            i = j
        return out

    def _run(self, slots, xs, filled, wids) -> np.ndarray:
        """Advance keys ``slots`` over T consecutive windows: ``xs`` (T, n, F), ``filled`` (T, n), ``wids``
        T window ids (or None). Returns (T, n, H): each window's forecast, as ``forecast`` gives it.

        Exactly ``update`` window after window: what does not depend on the weights (statistics, rings,
        inputs, baselines) is computed for all T windows at once; the recurrences that do (h, h_lag) run
        through the fused cell kernel between learning steps; a key's learning step is taken at its
        window, before that window's cell step, as one window at a time does it."""
        c = self.config
        T, n = filled.shape
        H, R, p0 = self.horizon, self._R, self._lag_pos
        self._made = None
        real = ~filled
        nb = self._n[slots][None, :] + np.arange(T)[:, None]  # (T, n) windows seen before each window
        ns = nb + 1
        wid_ = self._window_ids(slots, nb, wids)
        enc = np.where(filled, -wid_[1], wid_[1]).astype(np.int16)  # (T, n) steps between windows; < 0: filled
        W = wid_[0]  # (T, n) id of each window
        M0, V0 = self._advance_stats(slots, xs, real, nb)
        ext_v = torch.cat([self._vals[slots], torch.from_numpy(xs.astype(np.float32)).transpose(0, 1)], dim=1)
        ext_s = torch.cat([self._step[slots], torch.from_numpy(np.ascontiguousarray(enc.T))], dim=1)  # (n, R+T)
        SQ, CR = self._advance_errors(slots, ext_v, ext_s, real, ns)
        w, unit = self._units_of(SQ.reshape(T * n, -1), CR.reshape(T * n, -1), M0.reshape(-1), V0.reshape(-1),
                                 ns.reshape(-1))  # (T*n, H) each
        # Each window's ring as a row (window-major): ring t is ext[:, t+1 : t+1+R].
        if T == 1:
            rings, rsteps = ext_v[:, 1:], ext_s[:, 1:]
        else:
            rings = ext_v.unfold(1, R, 1)[:, 1:].permute(1, 0, 3, 2).reshape(T * n, R, -1)
            rsteps = ext_s.unfold(1, R, 1)[:, 1:].transpose(0, 1).reshape(T * n, R)
        nsf, Wf = ns.reshape(-1), W.reshape(-1)
        learn = c.learn
        positions = np.array([p0, R - 1]) if learn else np.array([R - 1])
        level, lunit = self._local(rings, nsf, positions)  # (T*n, P, F)
        xin = self._inputs(None, rings, rsteps, nsf, np.array([R - 1]), loc=(level[:, -1:], lunit[:, -1:]),
                           pos_wids=Wf[:, None])[:, 0].reshape(T, n, -1)
        base, s = self._step_features(M0.reshape(-1), rings, nsf, w, np.array([R - 1]),
                                      Wf[:, None, None] + np.arange(1, H + 1)[None, None, :], lunit[:, -1:, 0])
        base = base[:, 0].reshape(T, n, H)
        s = s[:, 0].reshape(T, n, H, -1)
        if learn:
            # h_lag steps past the ring's first origin (the state a learning step starts from)
            st = np.abs(ext_s.numpy().astype(np.int64))
            ecs = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(st, axis=1)], axis=1)
            t_ = np.arange(T)
            lag_wid = W - (ecs[:, t_ + R + 1] - ecs[:, t_ + p0 + 2]).T  # (T, n) id of the window at p0
            xlag = self._inputs(None, rings, rsteps, nsf, np.array([p0]), loc=(level[:, :1], lunit[:, :1]),
                                pos_wids=lag_wid.reshape(-1)[:, None])[:, 0].reshape(T, n, -1)
            due = real & (ns % c.learn_every == 0) & (ns >= H + 1)
            have = ns >= R - p0
            due_rows = np.flatnonzero(due.reshape(-1))
            learning = (self._learning_inputs(due_rows, rings, rsteps, nsf, w, unit, Wf, M0.reshape(-1))
                        if len(due_rows) else {})
            cut = due.any(axis=1)
            cut[1:] |= (have[1:] != have[:-1]).any(axis=1)
        else:
            cut = np.zeros(T, bool)
        cut[0] = True
        starts = np.flatnonzero(cut).tolist() + [T]
        corr = np.empty((T, n, H))
        h = self._h[slots]
        for a, b in zip(starts[:-1], starts[1:]):
            if learn:
                lag_from = a
                if due[a].any():
                    self._lag_run(slots, ~due[a] & have[a], xlag[a:a + 1])
                    idx = np.flatnonzero(due[a])
                    at = np.searchsorted(due_rows, a * n + idx)  # where these rows are in ``learning``
                    for i in range(0, len(idx), c.max_learn_keys):
                        j = slice(i, i + c.max_learn_keys)
                        pick = torch.from_numpy(at[j])
                        self._learn(slots[idx[j]], {f: v[pick] for f, v in learning.items()},
                                    xlag[a, torch.from_numpy(idx[j])], have[a, idx[j]])
                    lag_from = a + 1
                if lag_from < b:
                    self._lag_run(slots, have[lag_from], xlag[lag_from:b])
            self._mode(False)
            hs, h = self.net.run(xin[a:b], h)
            with torch.no_grad():
                out = _padded(self.net.out, hs.reshape((b - a) * n, -1), s[a:b].reshape((b - a) * n, H, -1))
            corr[a:b] = unit.reshape(T, n, H)[a:b] * out.double().numpy().reshape(b - a, n, H)
        fc = self._advance_trust(slots, xs[:, :, 0], real, ns, base, corr)
        self._h[slots] = h
        self._vals[slots] = ext_v[:, T:]
        self._step[slots] = ext_s[:, T:]
        self._wid[slots] = W[-1]
        self._n[slots] = ns[-1]
        # The pipeline asks for these keys' forecasts next: keep them (derived data, not state; any change
        # of state drops them). Rows are batch-independent (MIN_ROWS), so a subset gets the same bits.
        order = np.argsort(slots, kind="stable")
        self._made = (slots[order], base[-1][order], corr[-1][order])
        return fc

    def _window_ids(self, slots, nb, wids) -> tuple[np.ndarray, np.ndarray]:
        """(T, n) id of each window and (T, n) windows since the key's previous one (1 for a first window)."""
        T, n = nb.shape
        if all(w is not None for w in wids):
            W = np.broadcast_to(np.asarray(wids, np.int64)[:, None], (T, n))
            prev = np.concatenate([self._wid[slots][None, :], W[:-1]])
            return W, np.where(nb > 0, np.clip(W - prev, 1, 32767), 1)
        W, gap = np.empty((T, n), np.int64), np.ones((T, n), np.int64)
        prev = self._wid[slots]
        for t, wid in enumerate(wids):  # no grid: windows are counted
            if wid is None:
                W[t] = prev + 1
            else:
                W[t] = wid
                gap[t] = np.where(nb[t] > 0, np.clip(wid - prev, 1, 32767), 1)
            prev = W[t]
        return W, gap

    def _advance_stats(self, slots, xs, real, nb) -> tuple[np.ndarray, np.ndarray]:
        """Running statistics over T windows, as ``RunningStats.update`` window by window (the same float
        operations in the same order); (T, n) the target's mean and variance after each window."""
        stats, alpha = self._stats, self._stats.alpha
        T, n = real.shape
        mean, var, dvar = stats.mean[slots], stats.var[slots], stats.dvar[slots]
        y = xs[:, :, 0]
        prev = np.empty((T, n))  # the previous window's target as the ring holds it (float32)
        prev[0] = self._vals[slots, -1, 0].double().numpy()
        prev[1:] = y[:-1].astype(np.float32)
        a = np.maximum(1.0 / (nb + 1), alpha)[:, :, None]  # normalise.update_running_stats
        a1 = 1 - a
        seen = nb > 0  # normalise.update_change_var
        d = np.where(seen, y - prev, 0.0)
        ad = np.where(seen, np.maximum(1.0 / np.maximum(nb, 1), alpha), 0.0)
        add = ad * d * d
        ad1 = 1 - ad
        r3 = real[:, :, None]
        M0, V0 = np.empty((T, n)), np.empty((T, n))
        normalize = self.config.normalize
        for t in range(T):
            if normalize:
                delta = xs[t] - mean
                step = a[t] * delta
                mean, var = (np.where(r3[t], mean + step, mean),
                             np.where(r3[t], a1[t] * (var + step * delta), var))
            dvar = np.where(real[t], ad1[t] * dvar + add[t], dvar)
            M0[t], V0[t] = mean[:, 0], var[:, 0]
        stats.mean[slots], stats.var[slots], stats.dvar[slots] = mean, var, dvar
        return M0, V0

    def _advance_errors(self, slots, ext_v, ext_s, real, ns) -> tuple[np.ndarray, np.ndarray]:
        """Running mean square of the change over 1..Lmax windows and of the naive × seasonal-naive errors
        (one float32 row: [sq | cross]), over T windows; (T, n, Lmax) and (T, n, H) after each."""
        T, n = real.shape
        R, L, H, Ls = self._R, self._Lmax, self.horizon, self._Ls
        lags = np.arange(1, L + 1)
        y = ext_v[:, :, 0].double().numpy()  # (n, R+T)
        new = np.arange(T) + R  # where each window is in ext
        back = new[:, None] - lags[None, :]  # (T, L)
        d = (y[:, new][:, :, None] - y[:, back]).transpose(1, 0, 2)  # (T, n, L): y_t - y_{t-L}
        filled_back = (ext_s.numpy() < 0)[:, back].transpose(1, 0, 2)
        ok = real[:, :, None] & (ns[:, :, None] > lags) & ~filled_back
        a = np.maximum(1.0 / np.maximum(ns[:, :, None] - lags, 1), self.config.norm_alpha)
        ok = np.concatenate([ok, ok[:, :, :H] & ok[:, :, Ls - 1]], axis=2)
        a = np.concatenate([a, a[:, :, Ls - 1]], axis=2)
        target = np.concatenate([d * d, d[:, :, :H] * d[:, :, Ls - 1]], axis=2)
        acc = np.concatenate([self._sq[slots], self._cross[slots]], axis=1)  # (n, L + H) float32
        out = np.empty((T, n, L + H), np.float32)
        for t in range(T):
            s64 = acc.astype(np.float64)
            out[t] = np.where(ok[t], s64 + a[t] * (target[t] - s64), s64)
            acc = out[t]  # rounded to float32, as the state holds it
        self._sq[slots], self._cross[slots] = acc[:, :L], acc[:, L:]
        return out[:, :, :L], out[:, :, L:]

    def _advance_trust(self, slots, y, real, ns, base, corr) -> np.ndarray:
        """Score each window's previous step-1 forecast with and without the correction, remember this
        one's; (T, n, H) the forecasts, each with the trust known at its window."""
        T, n = real.shape
        tr = self._trust[slots]
        prev = np.empty((T, n, 2))  # last step-1 baseline and correction, as the state holds them (float32)
        prev[0] = tr[:, :2]
        prev[1:, :, 0] = base[:-1, :, 0].astype(np.float32)
        prev[1:, :, 1] = corr[:-1, :, 0].astype(np.float32)
        ok = (real & (ns > 1))[:, :, None]
        a = np.maximum(1.0 / np.maximum(ns - 1, 1), TRUST_ALPHA)[:, :, None]
        err = np.empty((T, n, 2))
        err[:, :, 0] = np.abs(y - prev[:, :, 0])
        err[:, :, 1] = np.abs(y - prev[:, :, 0] - prev[:, :, 1])
        E = np.empty((T, n, 2), np.float32)  # tracked |error| of the baseline and of the corrected forecast
        e = tr[:, 2:]
        for t in range(T):
            e64 = e.astype(np.float64)
            E[t] = np.where(ok[t], e64 + a[t] * (err[t] - e64), e64)
            e = E[t]
        tr[:, 0] = base[-1, :, 0]
        tr[:, 1] = corr[-1, :, 0]
        tr[:, 2:] = E[-1]
        self._trust[slots] = tr
        eb, en = E[:, :, 0].astype(np.float64), E[:, :, 1].astype(np.float64)
        trust = np.where(eb > 0, np.clip((1 - en / np.where(eb > 0, eb, 1.0)) / TRUST_GAIN, 0, 1), 1.0)
        return base + trust[:, :, None] * corr

    def _lag_run(self, slots, keys: np.ndarray, xlag: torch.Tensor) -> None:
        """h_lag of the ``keys`` (mask) stepped over these windows' inputs at the ring's first origin."""
        sel = np.flatnonzero(keys)
        if len(sel) == 0:
            return
        s = slots[sel]
        self._mode(False)
        self._h_lag[s] = self.net.run(xlag[:, torch.from_numpy(sel)], self._h_lag[s])[1]

    def _learning_inputs(self, rows, rings, rsteps, ns, w, unit, W, mean0) -> dict:
        """What the learning steps at these rows (window-major, of a run's stacked rings) read; it does
        not depend on the weights, so all learning steps of a run get theirs in one vectorised pass."""
        c = self.config
        k, H, R, p0 = c.tbptt, c.horizon, self._R, self._lag_pos
        tr = torch.from_numpy(rows)
        vals, steps, nseen = rings[tr], rsteps[tr], ns[rows]
        wids = self._ring_wids(steps, W[rows]) if c.periods else None
        level, lunit = self._local(vals, nseen, np.arange(p0, R))  # (m, k + H, F): origins first
        O = p0 + np.arange(k)  # origin positions
        first = R - np.minimum(nseen, R)
        valid = torch.from_numpy(np.arange(R)[None, :] >= first[:, None])  # (m, R)
        xin = self._inputs(None, vals, steps, nseen, O, wids, (level[:, :k], lunit[:, :k]))  # (m, k, n_in)
        tpos = O[:, None] + np.arange(1, H + 1)[None, :]  # (k, H) target positions
        twids = wids[:, tpos] if wids is not None else np.zeros((len(rows), k, H), np.int64)
        base, s = self._step_features(mean0[rows], vals, nseen, w[rows], O, twids, lunit[:, :k, 0])
        y = vals[:, :, 0].double().numpy()[:, tpos]  # (m, k, H)
        tgt = torch.from_numpy(np.clip((y - base) / unit[rows][:, None, :], -TARGET_CLIP, TARGET_CLIP)).float()
        fill = torch.from_numpy(steps.numpy()[:, tpos] < 0)
        mask = valid[:, O][:, :, None] & valid[:, tpos] & ~fill  # (m, k, H)
        return {"xin": xin, "s": s, "tgt": tgt, "mask": mask, "valid": valid[:, O]}

    def _learn(self, slots, inp: dict, xlag: torch.Tensor, have: np.ndarray) -> None:
        """One TBPTT step over the k origins of these keys from h_lag (``inp``: ``_learning_inputs``;
        ``xlag``, ``have``: the input at the ring's first origin and which keys have it, for keys that
        have nothing to learn yet: their h_lag just moves on)."""
        c = self.config
        k, H = c.tbptt, c.horizon
        mask = inp["mask"]
        if not mask.any():
            sel = np.flatnonzero(have)
            if len(sel):
                s = slots[sel]
                self._mode(False)
                with torch.no_grad():
                    self._h_lag[s] = _padded(self.net.step, xlag[torch.from_numpy(sel)], self._h_lag[s])
            return
        self._mode(True)
        xin, vO = inp["xin"], inp["valid"]
        state = self._h_lag[slots]
        states = []
        lag_next = state
        all_valid = bool(vO.all())
        step = self.net.cell_step
        for i in range(k):
            stepped = step(xin[:, i], state)
            state = stepped if all_valid else torch.where(vO[:, i, None], stepped, state)
            if i == 0:
                lag_next = state.detach()
            states.append(state)
        n = len(slots)
        pred = self.net.out(torch.stack(states, dim=1).reshape(n * k, -1), inp["s"].reshape(n * k, H, -1)).view(n, k, H)
        wt = mask.float()
        err = nn.functional.smooth_l1_loss(pred, inp["tgt"], reduction="none")
        loss = (err * wt).sum() / wt.sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(self._params, c.clip)
        self.opt.step()
        self._h_lag[slots] = lag_next
        self.last_loss = float(loss.detach())

    def _corrected(self, slots, w=None, unit=None, lunit=None, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, J) baseline and (n, J) the network's correction of it, in the target's units (J = ``steps``
        or H; ``w``, ``unit``, ``lunit``: ``_units`` and the newest window's local unit when known)."""
        nseen = self._n[slots]
        if w is None:
            w, unit = self._units(slots, nseen)
        J = steps or self.horizon
        twids = self._wid[slots][:, None, None] + np.arange(1, J + 1)[None, None, :]  # (n, 1, J)
        base, s = self._step_features(self._stats.mean[slots][:, 0], self._vals[slots], nseen, w,
                                      np.array([self._R - 1]), twids, lunit, J)
        if J < self.horizon:  # the head reads H steps; steps past J get zero features (their outputs are dropped)
            s = torch.cat([s, s.new_zeros(s.shape[0], 1, self.horizon - J, s.shape[3])], dim=2)
        self._mode(False)
        with torch.no_grad():
            out = _padded(self.net.out, self._h[slots], s[:, 0]).double().numpy()[:, :J]  # (n, J)
        return base[:, 0], unit[:, :J] * out

    def trust(self, slots) -> np.ndarray:
        """(n,) share of the network's correction a key's forecasts use: 1 where its corrections have
        cut the baseline's step-1 error by TRUST_GAIN or more lately, 0 where they have not helped."""
        e_base, e_net = self._trust[slots, 2].astype(np.float64), self._trust[slots, 3].astype(np.float64)
        return np.where(e_base > 0, np.clip((1 - e_net / np.where(e_base > 0, e_base, 1.0)) / TRUST_GAIN, 0, 1), 1.0)

    def forecast(self, slots):
        slots = np.ascontiguousarray(slots)
        if len(slots) == 0:
            return np.zeros((0, self.horizon))
        made = self._made
        if made is not None:
            pos = np.minimum(np.searchsorted(made[0], slots), len(made[0]) - 1)
            if (made[0][pos] == slots).all():
                return made[1][pos] + self.trust(slots)[:, None] * made[2][pos]
        base, corr = self._corrected(slots)
        return base + self.trust(slots)[:, None] * corr

    def output_unit(self, slots) -> np.ndarray:
        """(n, H) the unit of the network's output for forecasts made now (errors in it are comparable
        across keys)."""
        slots = np.ascontiguousarray(slots)
        return self._units(slots, self._n[slots])[1]

    # -- hot swap -------------------------------------------------------------
    def load_weights(self, state_dict: dict, version: str, rewarm: bool = True) -> None:
        """Swap in new shared weights; keep every key's state usable.

        With ``rewarm`` each key's hidden state is rebuilt by running the new
        cell over the windows its ring holds (one batched pass over all keys),
        so the state matches the new weights without replaying history.
        """
        self.net.load_state_dict(state_dict)
        self._params = list(self.net.parameters())
        self._made = None
        self.opt = self._make_optimizer()
        self.version = version
        if rewarm:
            self.rewarm(np.flatnonzero(self._n > 0))

    def rewarm(self, slots: np.ndarray) -> None:
        self._made = None
        if len(slots) == 0:
            return
        R = self._R
        nseen = self._n[slots]
        vals, steps = self._vals[slots], self._step[slots]
        valid = torch.from_numpy(np.arange(R)[None, :] >= (R - np.minimum(nseen, R))[:, None])
        xn = self._inputs(slots, vals, steps, nseen, np.arange(R))
        self._mode(False)
        with torch.no_grad():
            state = torch.zeros(len(slots), self.net.state_size)
            lag = state
            for i in range(R):
                state = torch.where(valid[:, i, None], _padded(self.net.step, xn[:, i], state), state)
                if i == self._lag_pos:
                    lag = state
        self._h[slots] = state
        self._h_lag[slots] = lag  # the state after the ring's first origin, as _learn leaves it

    # -- per-key state ---------------------------------------------------------
    def snapshot(self, slots):
        return {
            "h": self._h[slots].numpy().copy(),
            "h_lag": self._h_lag[slots].numpy().copy(),
            "vals": self._vals[slots].numpy().copy(),
            "step": _step_code(self._step[slots].numpy()),
            "wid": self._wid[slots].copy(),
            "n": self._n[slots].copy(),
            "sq": self._sq[slots].copy(),
            "cross": self._cross[slots].copy(),
            "trust": self._trust[slots].copy(),
            **self._stats.snapshot(slots),
        }

    def state_faults(self, state):
        return self._stats.state_faults(state)  # keys Pipeline.restore_keys starts afresh

    def restore(self, slots, state):
        self._made = None
        self._h[slots] = torch.from_numpy(np.ascontiguousarray(state["h"], dtype=np.float32))
        self._h_lag[slots] = torch.from_numpy(np.ascontiguousarray(state["h_lag"], dtype=np.float32))
        self._vals[slots] = torch.from_numpy(np.ascontiguousarray(state["vals"], dtype=np.float32))
        self._step[slots] = torch.from_numpy(_step_of_code(np.asarray(state["step"])))
        self._wid[slots] = state["wid"]
        self._n[slots] = state["n"]
        self._sq[slots] = state["sq"]
        self._cross[slots] = state["cross"]
        self._trust[slots] = state["trust"]
        self._stats.restore(slots, state)

    def reset(self, slots):
        self._made = None
        self._h[slots] = 0.0
        self._h_lag[slots] = 0.0
        self._vals[slots] = 0.0
        self._step[slots] = 0
        self._wid[slots] = 0
        self._n[slots] = 0
        self._sq[slots] = 0.0
        self._cross[slots] = 0.0
        self._trust[slots] = 0.0
        self._stats.reset(slots)

    def config_dict(self) -> dict:
        return asdict(self.config)


def _step_code(step: np.ndarray) -> np.ndarray:
    """The ring's window steps as stored: 2·gap, +1 when gap-filled (0 = empty). State records hold
    no negative numbers, so a restore can refuse any it sees (streamseq.state_codec)."""
    return (2 * np.abs(step.astype(np.int32)) + (step < 0)).astype(np.uint16)


def _step_of_code(code: np.ndarray) -> np.ndarray:
    code = code.astype(np.int32)
    gap = code >> 1
    return np.where(code & 1, -gap, gap).astype(np.int16)
