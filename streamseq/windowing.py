"""Per-key event-time tumbling windows, vectorised over a whole poll.

Watermark semantics follow Kafka Streams: stream time is the largest event
time seen on a source partition (the whole merged stream for file replay);
the watermark is stream time minus the allowed lateness. A window closes when
the watermark reaches its end. A record whose window has already closed is
too late: it goes to the dead letters, never silently away.

A key's state: its open windows (pre-aggregated cells), the last closed window
and its features (for forward-fill), its partition and its latest event time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError
from .keyspace import grow

SUM, CNT, MIN, MAX, FIRST, LAST = range(6)
NO_WID = np.iinfo(np.int64).min
AGGS = ("mean", "last", "first", "min", "max", "sum", "count")


@dataclass
class WindowSpec:
    interval: int  # ns
    allowed_lateness: int = 0  # ns
    features: list[tuple[int, str]] = field(default_factory=lambda: [(0, "mean")])
    feature_names: list[str] = field(default_factory=lambda: ["value"])
    gap: str = "ffill"  # "ffill" | "skip"
    max_gap_fill: int = 48  # longer gaps are not filled: the series just resumes

    @property
    def n_features(self) -> int:
        return len(self.features)


def build_spec(
    value_cols: list[str],
    agg: str | dict = "mean",
    interval: int = 3600 * 10**9,
    allowed_lateness: int = 0,
    gap: str = "ffill",
    max_gap_fill: int = 48,
) -> WindowSpec:
    """Features per window from the value columns; feature 0 is the forecast target.

    >>> build_spec(["price", "size"], "ohlcv").feature_names
    ['close', 'open', 'high', 'low', 'volume']
    >>> build_spec(["t", "h"], {"t": "mean", "h": ["min", "max"]}).feature_names
    ['t_mean', 'h_min', 'h_max']
    """
    if interval <= 0:
        raise ConfigError("windowing.interval", "a positive duration")
    if gap not in ("ffill", "skip"):
        raise ConfigError("windowing.gap", f"'ffill' or 'skip', got {gap!r}")
    feats: list[tuple[int, str]] = []
    names: list[str] = []
    if agg == "ohlcv":
        for a, n in (("last", "close"), ("first", "open"), ("max", "high"), ("min", "low")):
            feats.append((0, a))
            names.append(n)
        if len(value_cols) > 1:
            feats.append((len(value_cols) - 1, "sum"))
            names.append("volume")
    elif isinstance(agg, str):
        if agg not in AGGS:
            raise ConfigError("windowing.agg", f"one of {', '.join(AGGS)} or 'ohlcv', got {agg!r}")
        for i, c in enumerate(value_cols):
            feats.append((i, agg))
            names.append(c if len(value_cols) == 1 else f"{c}_{agg}")
        if len(value_cols) == 1:
            names = [value_cols[0]]
    elif isinstance(agg, dict):
        for c, aggs in agg.items():
            if c not in value_cols:
                raise ConfigError(f"windowing.agg.{c}", f"a value column ({', '.join(value_cols)})")
            for a in [aggs] if isinstance(aggs, str) else list(aggs):
                if a not in AGGS:
                    raise ConfigError(f"windowing.agg.{c}", f"one of {', '.join(AGGS)}, got {a!r}")
                feats.append((value_cols.index(c), a))
                names.append(f"{c}_{a}")
    else:
        raise ConfigError("windowing.agg", "a string or a table of column = aggregation")
    if not feats:
        raise ConfigError("windowing.agg", "at least one feature")
    return WindowSpec(interval, allowed_lateness, feats, names, gap, max_gap_fill)


def _sequential_sums(values: np.ndarray, start: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Per-group sums added strictly in arrival order.

    np.add.reduceat sums pairwise, so a window's sum would depend on where poll
    or chunk boundaries fell; in arrival order it is the same bit for bit
    however the stream was cut. One vectorised pass per position in a group.
    """
    acc = values[start].copy()
    lengths = last - start + 1
    for j in range(1, int(lengths.max())):
        g = np.flatnonzero(lengths > j)
        acc[g] += values[start[g] + j]
    return acc


@dataclass
class ClosedWindows:
    """Closed windows sorted by (wid, slot). ``end = (wid + 1) * interval``."""

    slot: np.ndarray  # int64
    wid: np.ndarray  # int64
    count: np.ndarray  # int64
    filled: np.ndarray  # bool
    features: np.ndarray  # (n, F_out) float64

    def __len__(self) -> int:
        return len(self.wid)

    @staticmethod
    def empty(n_features: int) -> "ClosedWindows":
        return ClosedWindows(
            np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64),
            np.empty(0, bool), np.empty((0, n_features)),
        )


class Windower:
    def __init__(self, spec: WindowSpec, n_fields: int, capacity: int = 1024):
        self.spec = spec
        self.n_fields = n_fields
        nf = spec.n_features
        self.last_wid = np.full(capacity, NO_WID, np.int64)
        self.last_feat = np.zeros((capacity, nf))
        self.max_ts = np.full(capacity, NO_WID, np.int64)
        self.key_part = np.zeros(capacity, np.int32)
        self.cell_slot = np.empty(0, np.int64)
        self.cell_wid = np.empty(0, np.int64)
        self.cell_stats = np.empty((0, n_fields, 6))
        self.stream_time: dict[int, int] = {}

    def ensure_capacity(self, cap: int) -> None:
        self.last_wid = grow(self.last_wid, cap, NO_WID)
        self.last_feat = grow(self.last_feat, cap, 0.0)
        self.max_ts = grow(self.max_ts, cap, NO_WID)
        self.key_part = grow(self.key_part, cap, 0)

    # -- hot path ---------------------------------------------------------
    def process(self, slots, ts, values, partition, partitioned_time: bool, apply: np.ndarray | None = None):
        """Window a batch. Returns (closed windows, too-late mask over the batch, watermark per record).

        Rows with ``apply`` False (already applied before a restore, or duplicates) move stream
        time at their place in arrival order but are not aggregated nor judged late.
        """
        spec = self.spec
        n = len(ts)
        if n == 0:
            return ClosedWindows.empty(spec.n_features), np.zeros(0, bool), np.zeros(0, np.int64)
        stream_part = partition.astype(np.int64) if partitioned_time else np.zeros(n, np.int64)
        st = np.empty(n, np.int64)
        for p in np.unique(stream_part).tolist():
            idx = np.flatnonzero(stream_part == p)
            cm = np.maximum.accumulate(ts[idx])
            prev = self.stream_time.get(p)
            if prev is not None:
                cm = np.maximum(cm, prev)
            st[idx] = cm
            self.stream_time[p] = int(cm[-1])
        wid = np.floor_divide(ts, spec.interval)
        wm = st - spec.allowed_lateness
        late = ((wid + 1) * spec.interval <= wm) | (wid <= self.last_wid[slots])
        if apply is not None:
            late &= apply
            good = ~late & apply
        else:
            good = ~late
        g_slots = slots[good]
        np.maximum.at(self.max_ts, g_slots, ts[good])
        self.key_part[g_slots] = partition[good]

        v = values[good]
        stats = np.empty((len(v), self.n_fields, 6))
        stats[:, :, SUM] = v
        stats[:, :, CNT] = 1.0
        stats[:, :, MIN] = v
        stats[:, :, MAX] = v
        stats[:, :, FIRST] = v
        stats[:, :, LAST] = v
        self._merge(g_slots, wid[good], stats)
        closed = self._close(final=False, partitioned_time=partitioned_time)
        return closed, late, wm

    def flush(self) -> ClosedWindows:
        """Close every open window (end of a finite stream)."""
        return self._close(final=True, partitioned_time=False)

    def _merge(self, slots, wids, stats) -> None:
        all_slot = np.concatenate([self.cell_slot, slots])
        all_wid = np.concatenate([self.cell_wid, wids])
        all_stats = np.concatenate([self.cell_stats, stats])
        if len(all_slot) == 0:
            return
        seq = np.arange(len(all_slot))
        order = np.lexsort((seq, all_wid, all_slot))
        s_slot, s_wid, S = all_slot[order], all_wid[order], all_stats[order]
        brk = np.empty(len(order), bool)
        brk[0] = True
        brk[1:] = (s_slot[1:] != s_slot[:-1]) | (s_wid[1:] != s_wid[:-1])
        start = np.flatnonzero(brk)
        last = np.r_[start[1:], len(order)] - 1
        m = np.empty((len(start), self.n_fields, 6))
        m[:, :, SUM] = _sequential_sums(S[:, :, SUM], start, last)
        m[:, :, CNT] = np.add.reduceat(S[:, :, CNT], start, axis=0)
        m[:, :, MIN] = np.minimum.reduceat(S[:, :, MIN], start, axis=0)
        m[:, :, MAX] = np.maximum.reduceat(S[:, :, MAX], start, axis=0)
        m[:, :, FIRST] = S[start, :, FIRST]
        m[:, :, LAST] = S[last, :, LAST]
        self.cell_slot, self.cell_wid, self.cell_stats = s_slot[start], s_wid[start], m

    def _close(self, final: bool, partitioned_time: bool) -> ClosedWindows:
        spec = self.spec
        if len(self.cell_slot) == 0:
            return ClosedWindows.empty(spec.n_features)
        if final:
            is_closed = np.ones(len(self.cell_slot), bool)
        else:
            if partitioned_time:
                parts = self.key_part[self.cell_slot]
                st = np.array([self.stream_time.get(int(p), NO_WID) for p in parts.tolist()], np.int64)
            else:
                st = np.full(len(self.cell_slot), self.stream_time.get(0, NO_WID), np.int64)
            is_closed = (self.cell_wid + 1) * spec.interval <= st - spec.allowed_lateness
        if not is_closed.any():
            return ClosedWindows.empty(spec.n_features)
        c_slot = self.cell_slot[is_closed]
        c_wid = self.cell_wid[is_closed]
        c_stats = self.cell_stats[is_closed]
        keep = ~is_closed
        self.cell_slot, self.cell_wid, self.cell_stats = (
            self.cell_slot[keep], self.cell_wid[keep], self.cell_stats[keep])
        feats = self.features(c_stats)
        count = c_stats[:, 0, CNT].astype(np.int64)
        return self._fill_gaps(c_slot, c_wid, count, feats)

    def features(self, stats: np.ndarray) -> np.ndarray:
        out = np.empty((len(stats), self.spec.n_features))
        for j, (f, agg) in enumerate(self.spec.features):
            s = stats[:, f]
            if agg == "mean":
                out[:, j] = s[:, SUM] / s[:, CNT]
            elif agg == "sum":
                out[:, j] = s[:, SUM]
            elif agg == "count":
                out[:, j] = s[:, CNT]
            else:
                out[:, j] = s[:, {"min": MIN, "max": MAX, "first": FIRST, "last": LAST}[agg]]
        return out

    def _fill_gaps(self, slot, wid, count, feats) -> ClosedWindows:
        """Forward-fill empty windows inside a gap, flag them, and update each key's last window."""
        n = len(slot)  # sorted by (slot, wid)
        same = np.zeros(n, bool)
        same[1:] = slot[1:] == slot[:-1]
        prev_wid = np.where(same, np.r_[NO_WID, wid[:-1]], self.last_wid[slot])
        prev_feat = np.where(same[:, None], np.r_[feats[:1] * 0, feats[:-1]], self.last_feat[slot])
        is_last = np.r_[~same[1:], True]
        self.last_wid[slot[is_last]] = wid[is_last]
        self.last_feat[slot[is_last]] = feats[is_last]

        filled = np.zeros(n, bool)
        if self.spec.gap == "ffill":
            has_prev = prev_wid != NO_WID
            gap = np.where(has_prev, wid - np.where(has_prev, prev_wid, 0) - 1, 0)
            fills = np.where((gap > 0) & (gap <= self.spec.max_gap_fill), gap, 0)
            total = int(fills.sum())
            if total:
                rep = np.repeat(np.arange(n), fills)
                offs = np.arange(total) - np.repeat(np.cumsum(fills) - fills, fills)
                slot = np.concatenate([slot, slot[rep]])
                wid = np.concatenate([wid, prev_wid[rep] + 1 + offs])
                count = np.concatenate([count, np.zeros(total, np.int64)])
                feats = np.concatenate([feats, prev_feat[rep]])
                filled = np.concatenate([filled, np.ones(total, bool)])
        order = np.lexsort((slot, wid))
        return ClosedWindows(slot[order], wid[order], count[order], filled[order], feats[order])

    # -- per-key state ----------------------------------------------------
    def snapshot(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """State of these keys; open cells are returned with the index of their key in ``slots``."""
        pos = {int(s): i for i, s in enumerate(slots.tolist())}
        mask = np.isin(self.cell_slot, slots)
        owner = np.array([pos[int(s)] for s in self.cell_slot[mask].tolist()], np.int64)
        return {
            "last_wid": self.last_wid[slots].copy(),
            "last_feat": self.last_feat[slots].copy(),
            "max_ts": self.max_ts[slots].copy(),
            "key_part": self.key_part[slots].copy(),
            "cell_owner": owner,
            "cell_wid": self.cell_wid[mask].copy(),
            "cell_stats": self.cell_stats[mask].copy(),
        }

    def restore(self, slots: np.ndarray, state: dict[str, np.ndarray], partitioned_time: bool,
                time_from: np.ndarray | None = None) -> None:
        """``time_from``: which keys may set their partition's stream time (keys whose state is not
        ahead of the committed source position; default all)."""
        self.drop(slots)
        self.last_wid[slots] = state["last_wid"]
        self.last_feat[slots] = state["last_feat"]
        self.max_ts[slots] = state["max_ts"]
        self.key_part[slots] = state["key_part"]
        if len(state["cell_owner"]):
            self.cell_slot = np.concatenate([self.cell_slot, slots[state["cell_owner"]]])
            self.cell_wid = np.concatenate([self.cell_wid, state["cell_wid"]])
            self.cell_stats = np.concatenate([self.cell_stats, state["cell_stats"]])
        use = np.ones(len(slots), bool) if time_from is None else time_from
        for p, t, ok in zip(state["key_part"].tolist(), state["max_ts"].tolist(), use.tolist()):
            if t == NO_WID or not ok:
                continue
            p = p if partitioned_time else 0
            self.stream_time[p] = max(self.stream_time.get(p, t), t)

    def drop(self, slots: np.ndarray) -> None:
        keep = ~np.isin(self.cell_slot, slots)
        self.cell_slot, self.cell_wid, self.cell_stats = (
            self.cell_slot[keep], self.cell_wid[keep], self.cell_stats[keep])
        self.last_wid[slots] = NO_WID
        self.last_feat[slots] = 0.0
        self.max_ts[slots] = NO_WID
        self.key_part[slots] = 0
