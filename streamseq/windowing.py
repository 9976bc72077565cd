"""Per-key event-time tumbling windows, vectorised over a whole poll.

Watermark semantics follow Kafka Streams: stream time is the largest event
time seen on a source partition (the whole merged stream for file replay);
the watermark is stream time minus the allowed lateness. A window closes when
the watermark reaches its end. A record whose window has already closed is
too late: it goes to the dead letters, never silently away.

One record cannot drag stream time far ahead on its own (a device with a wrong
clock, a typo in a year): a record more than ``max_time_jump`` ahead of its
partition's stream time is held back and dead-lettered as ``future_time``
until the jump is confirmed by a record of a second key (or, on a partition
that has only ever seen one key, by a second such record); stream time then
moves to the earliest of those times. A partition whose stream time is not
known yet (a fresh start, or a restore without a committed clock) closes
nothing until a record sets it.

A key's state: its open windows (pre-aggregated cells), the last closed window
and its features (for forward-fill), its partition and its latest event time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError
from .grid import FixedGrid
from .keyspace import grow

SUM, CNT, MIN, MAX, FIRST, LAST = range(6)
NO_WID = np.iinfo(np.int64).min
AGGS = ("mean", "last", "first", "min", "max", "sum", "count")


@dataclass
class WindowSpec:
    interval: int  # ns; a calendar grid's nominal length (see ``grid``)
    allowed_lateness: int = 0  # ns
    features: list[tuple[int, str]] = field(default_factory=lambda: [(0, "mean")])
    feature_names: list[str] = field(default_factory=lambda: ["value"])
    gap: str = "ffill"  # "ffill" | "skip"
    max_gap_fill: int = 48  # longer gaps are not filled: the series just resumes
    max_time_jump: int = -1  # ns a record may move stream time ahead unconfirmed; -1 = auto, 0 = no limit
    grid: Any = None  # which window a time falls in (streamseq.grid); default: a fixed grid of ``interval``

    def __post_init__(self):
        if self.grid is None:
            self.grid = FixedGrid(self.interval)

    @property
    def time_jump_limit(self) -> int:
        """The jump limit in ns (auto: 100 windows, at least 7 days); 0 = no limit."""
        if self.max_time_jump >= 0:
            return self.max_time_jump
        return max(100 * self.interval, 7 * 86_400 * 10**9)

    @property
    def n_features(self) -> int:
        return len(self.features)


def build_spec(
    value_cols: list[str],
    agg: str | dict = "mean",
    interval: Any = 3600 * 10**9,
    allowed_lateness: int = 0,
    gap: str = "ffill",
    max_gap_fill: int = 48,
    max_time_jump: int = -1,
) -> WindowSpec:
    """Features per window from the value columns; feature 0 is the forecast target.

    >>> build_spec(["price", "size"], "ohlcv").feature_names
    ['close', 'open', 'high', 'low', 'volume']
    >>> build_spec(["t", "h"], {"t": "mean", "h": ["min", "max"]}).feature_names
    ['t_mean', 'h_min', 'h_max']
    """
    grid = interval if hasattr(interval, "wid_of") else None  # a grid (calendar windows) or ns
    interval = grid.nominal if grid is not None else interval
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
    return WindowSpec(interval, allowed_lateness, feats, names, gap, max_gap_fill, max_time_jump, grid)


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
    """Closed windows sorted by (wid, slot); window ``wid`` ends at ``spec.grid.end_of(wid)``."""

    slot: np.ndarray  # int64
    wid: np.ndarray  # int64
    count: np.ndarray  # int64
    filled: np.ndarray  # bool
    features: np.ndarray  # (n, F_out) float64

    def __len__(self) -> int:
        return len(self.wid)

    @staticmethod
    def empty(n_features: int) -> ClosedWindows:
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
        self._pending: dict[int, list] = {}  # partition -> unconfirmed jump [earliest ts, records, slot, two keys]

    def ensure_capacity(self, cap: int) -> None:
        self.last_wid = grow(self.last_wid, cap, NO_WID)
        self.last_feat = grow(self.last_feat, cap, 0.0)
        self.max_ts = grow(self.max_ts, cap, NO_WID)
        self.key_part = grow(self.key_part, cap, 0)

    # -- hot path ---------------------------------------------------------
    def process(self, slots, ts, values, partition, partitioned_time: bool, apply: np.ndarray | None = None):
        """Window a batch. Returns (closed windows, too-late mask, far-future mask, watermark per record).

        Rows with ``apply`` False (already applied before a restore, or duplicates) move stream
        time at their place in arrival order but are not aggregated nor judged.
        """
        spec = self.spec
        n = len(ts)
        if n == 0:
            empty = np.zeros(0, bool)
            return ClosedWindows.empty(spec.n_features), empty, empty, np.zeros(0, np.int64)
        stream_part = partition.astype(np.int64) if partitioned_time else np.zeros(n, np.int64)
        st = np.empty(n, np.int64)
        future = np.zeros(n, bool)
        for p in np.unique(stream_part).tolist():
            idx = np.flatnonzero(stream_part == p)
            st[idx], future[idx] = self._clock(p, ts[idx], slots[idx], partitioned_time)
        grid = spec.grid
        wid = grid.wid_of(ts)
        wm = st - spec.allowed_lateness
        late = (grid.end_of(wid) <= wm) | (wid <= self.last_wid[slots])
        late &= ~future
        if apply is not None:
            late &= apply
            future &= apply
            good = ~late & ~future & apply
        else:
            good = ~late & ~future
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
        return closed, late, future, wm

    def _clock(self, p: int, ts: np.ndarray, slots: np.ndarray, partitioned_time: bool):
        """Stream time after each record of partition ``p`` (arrival order), and which records are
        held back as too far in the future. Vectorised unless a jump beyond the limit is involved."""
        limit = self.spec.time_jump_limit
        prev = self.stream_time.get(p)
        cm = np.maximum.accumulate(ts)
        if prev is not None:
            cm = np.maximum(cm, prev)
        if not limit or p not in self._pending:
            before = np.empty(len(ts), np.int64)  # stream time just before each record
            before[1:] = cm[:-1]
            before[0] = ts[0] if prev is None else prev
            if not limit or not (ts - before > limit).any():
                self.stream_time[p] = int(cm[-1])
                return cm, np.zeros(len(ts), bool)
        # Rare: a record far ahead of stream time. Decide record by record, in arrival order.
        st = prev
        pend = self._pending.pop(p, None)
        single = self._keys_on(p, slots, partitioned_time) <= 1
        out = np.empty(len(ts), np.int64)
        future = np.zeros(len(ts), bool)
        for i, (t, s) in enumerate(zip(ts.tolist(), slots.tolist())):
            if st is None:
                st = t
            elif t - st > limit:
                if pend is None:
                    pend = [t, 1, s, False]
                else:
                    pend = [min(pend[0], t), pend[1] + 1, pend[2], pend[3] or s != pend[2]]
                if pend[3] or (single and pend[1] >= 2):
                    st = max(st, pend[0])  # confirmed: a real jump of the whole partition
                    if t - st <= limit:
                        st = max(st, t)
                    pend = None
                else:
                    future[i] = True
            elif t > st:
                st = t
            out[i] = st
        assert st is not None  # the batch is not empty
        self.stream_time[p] = int(st)
        if pend is not None:
            self._pending[p] = pend
        return out, future

    def _keys_on(self, p: int, slots: np.ndarray, partitioned_time: bool) -> int:
        """Keys known on partition ``p`` (seen before, or in this batch)."""
        seen = self.max_ts != NO_WID
        if partitioned_time:
            seen &= self.key_part == p
        return len(np.union1d(np.flatnonzero(seen), slots))

    def clock(self, p: int) -> dict | None:
        """Partition ``p``'s stream time and any unconfirmed jump (None when unknown); see restore_clock."""
        st = self.stream_time.get(p)
        if st is None:
            return None
        out: dict = {"st": int(st)}
        pend = self._pending.get(p)
        if pend is not None:
            out["jump"] = [int(pend[0]), int(pend[1]), bool(pend[3])]
        return out

    def forget_clocks(self, parts=None) -> None:
        """Forget the stream time of these partitions (all when None): their keys were dropped."""
        for p in list(self.stream_time) if parts is None else parts:
            self.stream_time.pop(p, None)
            self._pending.pop(p, None)

    def restore_clock(self, p: int, clock: dict | None) -> None:
        """Set partition ``p``'s clock from ``clock()``'s output (e.g. stored with a committed offset)."""
        if not clock:
            return
        self.stream_time[p] = int(clock["st"])
        jump = clock.get("jump")
        if jump:
            # The first pending key is not kept; a pending jump confirmed by "two keys" is then
            # confirmed by the next record of any key, at worst one record early.
            self._pending[p] = [int(jump[0]), int(jump[1]), -1, bool(jump[2])]

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
            known = st != NO_WID  # a partition without stream time closes nothing (the sentinel is no time)
            wm = np.where(known, st, 0) - spec.allowed_lateness
            is_closed = known & (spec.grid.end_of(self.cell_wid) <= wm)
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
