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

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..keyspace import grow
from .base import BatchForecaster
from .features import calendar_features, seasonal_lags
from .normalise import RunningStats

# Below ~12 rows BLAS switches kernels and a row's result depends on the batch
# size; padding inference calls keeps every key's forecast bitwise independent
# of which other keys share its step (replay and live then give the same bytes).
MIN_ROWS = 16
CLIP = 10.0  # normalised inputs are clipped to ±CLIP
TARGET_CLIP = 20.0  # learning targets, in units of the baseline's error
TRUST_GAIN = 0.05  # a key uses its full correction once that cuts its step-1 error by 5 %
TRUST_ALPHA = 0.05  # weight of the newest error in the trust statistics
PRIOR_N = 4  # windows of weight of the random-walk prior of a lag's error (young keys)
GAIN_MIN = 0.03  # share of the naive error² the seasonal blend must remove before it is used (fully at 2×)


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
    # on the key's history only, so it is the same in replay and live. s = 3 keeps the learning cost of the
    # richer inputs and head within 1.5x of TBPTT(8, 2) with the old ones, at equal or better accuracy on the
    # replay_data hourly streams (the baseline does much of the work the learner used to).
    learn_every: int = 3
    max_learn_keys: int = 4096  # keys per optimiser step; bounds the training graph's memory
    lr: float = 2e-3  # the [rnn] lr default too (tests/test_config.py holds them equal)
    optimizer: str = "adam"  # "adam" | "sgd"
    learn: bool = True  # online learning of the shared weights
    normalize: bool = True  # per-key running mean/std normalisation
    norm_alpha: float = 0.01  # floor of the running-statistics weight (adaptivity)
    target: str = "delta"  # "delta": correction to the naive/seasonal-naive baseline | "level": to the running mean
    season: int = 1  # m, windows per season (1 = no seasonal lag)
    calendar: str = ""  # calendar periods the windows vary in (features.calendar_periods), comma list; "" = none
    clip: float = 1.0  # gradient-norm clip
    seed: int = 0

    @property
    def periods(self) -> tuple[str, ...]:
        return tuple(p for p in self.calendar.split(",") if p)

    @property
    def ring(self) -> int:
        """R: windows a key keeps (k origins, their H targets, one season of lags before them)."""
        return self.horizon + self.tbptt + self.local

    @property
    def local(self) -> int:
        """W: windows a key's local level and unit are taken over (at least a season)."""
        return max(8, self.season)

    @property
    def max_lag(self) -> int:
        """Lmax: the longest lag a baseline forecast of step 1..H reads."""
        return int(max(self.horizon, seasonal_lags(self.horizon, max(1, self.season))[-1]))


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
        return torch.optim.Adam(self.net.parameters(), lr=c.lr, foreach=True)

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
        sq = self._sq[slots].astype(np.float64)
        H = self.horizon
        A = sq[:, :H]  # naive error² of step j
        B = sq[:, self._Ls - 1]  # seasonal-naive error² of step j
        C = self._cross[slots].astype(np.float64)
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
        mean, var = self._stats.mean[slots][:, 0], self._stats.var[slots][:, 0]
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

    def _inputs(self, slots, vals, steps, nseen, positions: np.ndarray, wids=None, loc=None) -> torch.Tensor:
        """(n, P, n_in) cell inputs of the windows at these ring positions (``loc``: their ``_local``)."""
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
            w = self._ring_wids(steps, self._wid[slots]) if wids is None else wids
            parts.append(self._calendar(w[:, np.asarray(positions)]))
        return torch.cat(parts, dim=2)

    def _step_features(self, slots, vals, nseen, w, origins: np.ndarray, target_wids: np.ndarray,
                       lunit: torch.Tensor | None = None, steps: int | None = None):
        """Baseline (n, K, J) float64 and head features (n, K, J, n_step) of origins at these ring positions,
        for steps 1..J (J = ``steps`` or H).

        ``target_wids``: (n, K, J) window ids of the targets (their calendar); ``lunit``: (n, K) the origins'
        local unit (``_local``), computed here when not given."""
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
            base = np.broadcast_to(self._stats.mean[slots][:, 0][:, None, None], base.shape).copy()
        if lunit is None:
            lunit = self._local(vals, nseen, O)[1][..., 0]
        s0 = np.clip((y_s - y_o) / lunit.double().numpy()[:, :, None], -CLIP, CLIP).astype(np.float32)
        parts = [torch.from_numpy(s0)[..., None]]
        if self.config.periods:
            parts.append(self._calendar(target_wids))
        return base, torch.cat(parts, dim=3)

    # -- hot path -------------------------------------------------------------
    def update(self, slots, x, filled, wid=None):
        c = self.config
        self._made = None
        slots = np.ascontiguousarray(slots)
        n = self._n[slots]
        real = ~filled
        self._stats.update(slots, n, x, self._vals[slots, -1, 0].double().numpy(), real, features=c.normalize)
        if wid is None:
            gap = np.ones(len(slots), np.int64)
            new_wid = self._wid[slots] + 1
        else:
            gap = np.where(n > 0, np.clip(wid - self._wid[slots], 1, 32767), 1)
            new_wid = np.full(len(slots), wid, np.int64)
        enc = torch.from_numpy(np.where(filled, -gap, gap).astype(np.int16))
        vals = torch.cat([self._vals[slots][:, 1:], torch.from_numpy(x.astype(np.float32))[:, None, :]], dim=1)  # (n, R, F)
        steps = torch.cat([self._step[slots][:, 1:], enc[:, None]], dim=1)  # (n, R)
        self._vals[slots] = vals
        self._step[slots] = steps
        self._wid[slots] = new_wid
        nseen = n + 1
        self._n[slots] = nseen
        self._track_errors(slots, vals, steps, nseen, real)
        w, unit = self._units(slots, nseen)
        wids = self._ring_wids(steps, new_wid) if c.periods else None
        p0, R = self._lag_pos, self._R
        # Local level/unit of the positions a learning step and the newest window read, computed once.
        level, lunit = self._local(vals, nseen, np.arange(p0, R))  # (n, k + H, F)
        if c.learn:
            # A key learns on real windows, every learn_every-th one; gap-filled windows bring no
            # new truth. Keys that do not learn now still move h_lag along with the ring.
            due = real & ((nseen % c.learn_every) == 0) & (nseen >= self.horizon + 1)
            rest = ~due
            if rest.any():
                r = torch.from_numpy(rest)
                self._advance_lag(slots[rest], vals[r], steps[r], nseen[rest], None if wids is None else wids[rest],
                                  (level[r, :1], lunit[r, :1]))
            if due.any():
                idx = np.flatnonzero(due)
                for a in range(0, len(idx), c.max_learn_keys):
                    i = idx[a:a + c.max_learn_keys]
                    ti = torch.from_numpy(i)
                    self._learn(slots[i], vals[ti], steps[ti], nseen[i], w[i], unit[i], None if wids is None else wids[i],
                                (level[ti], lunit[ti]))
        xin = self._inputs(slots, vals, steps, nseen, np.array([R - 1]), wids, (level[:, -1:], lunit[:, -1:]))[:, 0]
        self.net.eval()
        with torch.no_grad():
            self._h[slots] = _padded(self.net.step, xin, self._h[slots])
        # Trust: remember this origin's step-1 baseline and correction, to score them on the next window.
        self._track_trust(slots, x[:, 0], real, nseen)
        base, corr = self._corrected(slots, w, unit, lunit[:, -1:, 0])
        self._trust[slots, 0] = base[:, 0]
        self._trust[slots, 1] = corr[:, 0]
        # The pipeline asks for these keys' forecasts next: keep them (derived data, not state; any change
        # of state drops them). Rows are batch-independent (MIN_ROWS), so a subset gets the same bits.
        order = np.argsort(slots, kind="stable")
        self._made = (slots[order], base[order], corr[order])

    def _track_errors(self, slots, vals, steps, nseen, real) -> None:
        """Running mean square of the change over 1..Lmax windows and of the naive × seasonal-naive errors."""
        R, L = self._R, self._Lmax
        lags = np.arange(1, L + 1)
        y = vals[:, :, 0].double().numpy()
        filled = steps.numpy() < 0
        d = y[:, -1:] - y[:, R - 1 - lags]  # (n, L) y_t - y_{t-L}
        ok = real[:, None] & (nseen[:, None] > lags[None, :]) & ~filled[:, R - 1 - lags]
        a = np.maximum(1.0 / np.maximum(nseen[:, None] - lags[None, :], 1), self.config.norm_alpha)
        sq = self._sq[slots].astype(np.float64)
        self._sq[slots] = np.where(ok, sq + a * (d * d - sq), sq).astype(np.float32)
        H, Ls = self.horizon, self._Ls
        okc = ok[:, :H] & ok[:, Ls - 1]
        prod = d[:, :H] * d[:, Ls - 1]
        cross = self._cross[slots].astype(np.float64)
        ac = a[:, Ls - 1]
        self._cross[slots] = np.where(okc, cross + ac * (prod - cross), cross).astype(np.float32)

    def _advance_lag(self, slots, vals, steps, nseen, wids, loc) -> None:
        """h_lag is the state just before the first origin of the NEXT learning step: step it past
        this ring's first origin (when the key has it). Keys that learn get this from _learn."""
        p = self._lag_pos
        have = nseen >= self._R - p
        if not have.any():
            return
        sel = np.flatnonzero(have)
        s = slots[sel]
        ts = torch.from_numpy(sel)
        x0 = self._inputs(s, vals[ts], steps[ts], nseen[sel], np.array([p]),
                          None if wids is None else wids[sel], (loc[0][ts], loc[1][ts]))[:, 0]
        self.net.eval()
        with torch.no_grad():
            self._h_lag[s] = _padded(self.net.step, x0, self._h_lag[s])

    def _learn(self, slots, vals, steps, nseen, w, unit, wids, loc) -> None:
        """``loc``: ``_local`` of positions lag_pos .. R-1 (the k origins first)."""
        c = self.config
        k, H, R, p0 = c.tbptt, c.horizon, self._R, self._lag_pos
        O = p0 + np.arange(k)  # origin positions
        first = R - np.minimum(nseen, R)
        valid = torch.from_numpy(np.arange(R)[None, :] >= first[:, None])  # (n, R)
        if wids is None and c.periods:
            wids = self._ring_wids(steps, self._wid[slots])
        xin = self._inputs(slots, vals, steps, nseen, O, wids, (loc[0][:, :k], loc[1][:, :k]))  # (n, k, n_in)
        tpos = O[:, None] + np.arange(1, H + 1)[None, :]  # (k, H) target positions
        twids = wids[:, tpos] if wids is not None else np.zeros((len(slots), k, H), np.int64)
        base, s = self._step_features(slots, vals, nseen, w, O, twids, loc[1][:, :k, 0])
        y = vals[:, :, 0].double().numpy()[:, tpos]  # (n, k, H)
        tgt = torch.from_numpy(np.clip((y - base) / unit[:, None, :], -TARGET_CLIP, TARGET_CLIP)).float()
        fill = torch.from_numpy(steps.numpy()[:, tpos] < 0)
        mask = valid[:, O][:, :, None] & valid[:, tpos] & ~fill  # (n, k, H)
        if not mask.any():
            self._advance_lag(slots, vals, steps, nseen, wids, (loc[0][:, :1], loc[1][:, :1]))
            return
        self.net.train()
        state = self._h_lag[slots]
        states = []
        lag_next = state
        vO = valid[:, O]
        all_valid = bool(vO.all())
        for i in range(k):
            stepped = self.net.step(xin[:, i], state)
            state = stepped if all_valid else torch.where(vO[:, i, None], stepped, state)
            if i == 0:
                lag_next = state.detach()
            states.append(state)
        n = len(slots)
        pred = self.net.out(torch.stack(states, dim=1).reshape(n * k, -1), s.reshape(n * k, H, -1)).view(n, k, H)
        wt = mask.float()
        err = nn.functional.smooth_l1_loss(pred, tgt, reduction="none")
        loss = (err * wt).sum() / wt.sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), c.clip, foreach=True)
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
        base, s = self._step_features(slots, self._vals[slots], nseen, w, np.array([self._R - 1]), twids, lunit, J)
        if J < self.horizon:  # the head reads H steps; steps past J get zero features (their outputs are dropped)
            s = torch.cat([s, s.new_zeros(s.shape[0], 1, self.horizon - J, s.shape[3])], dim=2)
        self.net.eval()
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

    def _track_trust(self, slots, y, real, nseen) -> None:
        """Score the last step-1 forecast with and without the correction; remember this one's."""
        t = self._trust[slots].astype(np.float64)
        ok = real & (nseen > 1)
        a = np.maximum(1.0 / np.maximum(nseen - 1, 1), TRUST_ALPHA)
        e_base, e_net = np.abs(y - t[:, 0]), np.abs(y - t[:, 0] - t[:, 1])
        t[:, 2] = np.where(ok, t[:, 2] + a * (e_base - t[:, 2]), t[:, 2])
        t[:, 3] = np.where(ok, t[:, 3] + a * (e_net - t[:, 3]), t[:, 3])
        self._trust[slots] = t.astype(np.float32)

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
        self.net.eval()
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
