"""The window store: every closed window, appended to Parquet, read back as a training set.

Layout, one folder per UTC day of the window end::

    <path>/date=2024-01-03/part-000001.parquet
    <path>/date=2024-01-03/part-000002.parquet

Columns: ``key``, ``end`` (exclusive window end, UTC ns), ``count``,
``filled``, then one column per window feature (feature 0 = the target).
Windows are buffered and written ``flush_rows`` at a time; each file is
written to a hidden temp name and renamed, so a reader never sees half a
file. File names follow a per-day sequence, so a replay into an empty store
writes the same files every time. Retention drops whole days older than
``retention_ns`` before the newest window, then the oldest files while the
store is larger than ``max_bytes``.

The store is a pipeline window sink (``Pipeline.add_window_sink``). The
trainer reads it (``read``, ``training_samples``) from another process: a
file it cannot read is skipped with a warning and counted in ``unreadable``.

>>> import tempfile
>>> from streamseq.records import WindowBatch
>>> s = WindowStore(tempfile.mkdtemp(), flush_rows=2)
>>> s.write_windows(WindowBatch(np.array(["a", "b"], dtype=object), np.array([3600, 3600]) * 10**9,
...     np.array([1, 1]), np.array([False, False]), np.array([[1.0], [2.0]]), ["value"]))
>>> [p.relative_to(s.path).as_posix() for p in s.files()]
['date=1970-01-01/part-000001.parquet']
>>> s.read()["value"].to_list()
[1.0, 2.0]
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from .models.normalise import norm_scale, target_scale, update_change_var, update_running_stats
from .models.transformer import CLIP
from .records import WindowBatch

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 10**9
RESERVED = ("key", "end", "count", "filled")
TARGET_CLIP = 20.0  # normalised targets are clipped like the RNN's learning target
_PART = re.compile(r"^part-(?:.+-)?(\d+)\.parquet$")


def _day_name(day: int) -> str:
    return "date=" + datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")


def _day_of(folder: str) -> int | None:
    try:
        d = datetime.strptime(folder, "date=%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(d.timestamp()) // 86_400


class TrainingSet:
    """Sliding samples: L normalised context windows -> H normalised target deltas.

    Unpacks as ``X_train, Y_train, X_val, Y_val``. X: (N, L, F+1) float32, all-NaN
    rows are left padding; Y: (N, H) float32, NaN where a target is gap-filled or
    not available (beyond the data, or inside the held-out span for training).
    """

    def __init__(self, X_train, Y_train, X_val, Y_val, train_end, train_keys, val_end, val_keys, info):
        self.X_train, self.Y_train, self.X_val, self.Y_val = X_train, Y_train, X_val, Y_val
        self.train_end, self.train_keys = train_end, train_keys  # origin window end and key of each sample
        self.val_end, self.val_keys = val_end, val_keys
        self.info = info  # data range and counts, for the artifact's metadata

    def __iter__(self):
        return iter((self.X_train, self.Y_train, self.X_val, self.Y_val))


@dataclass
class _Buffer:
    keys: list
    end: list
    count: list
    filled: list
    features: list
    rows: int = 0


class WindowStore:
    def __init__(self, path: str | os.PathLike, retention_ns: int = 0, max_bytes: int = 0,
                 flush_rows: int = 50_000, writer: str = ""):
        self.path = Path(path)
        self.retention_ns = int(retention_ns)
        self.max_bytes = int(max_bytes)
        self.flush_rows = max(1, int(flush_rows))
        self.writer = writer  # several workers writing one store: a distinct name each
        self.unreadable = 0  # files skipped because they could not be read
        self.feature_names: list[str] | None = None
        self.newest_end: int | None = None  # newest window end written by this object
        self._bad: set[str] = set()
        self._seq: dict[Path, int] = {}
        self._buf = _Buffer([], [], [], [], [])

    @classmethod
    def from_config(cls, cfg, writer: str = "") -> WindowStore:
        from .timeutil import parse_duration

        s = cfg.store
        return cls(cfg.resolve(s.path), parse_duration(s.retention, "store.retention") if s.retention else 0,
                   s.max_bytes, s.flush_rows, writer)

    # -- writing ----------------------------------------------------------------
    def write_windows(self, batch: WindowBatch) -> None:
        if len(batch) == 0:
            return
        if self.feature_names is None:
            names = list(batch.feature_names) or [f"f{i}" for i in range(batch.features.shape[1])]
            self.feature_names = [f"feature_{n}" if n in RESERVED else n for n in names]
        b = self._buf
        b.keys.append(np.asarray(batch.keys, dtype=object))
        b.end.append(np.asarray(batch.end, np.int64))
        b.count.append(np.asarray(batch.count, np.int64))
        b.filled.append(np.asarray(batch.filled, bool))
        b.features.append(np.asarray(batch.features, np.float64))
        b.rows += len(batch)
        top = int(batch.end.max())
        self.newest_end = top if self.newest_end is None else max(self.newest_end, top)
        if b.rows >= self.flush_rows:
            self.flush()

    def _buffer_frame(self) -> pl.DataFrame | None:
        b = self._buf
        if b.rows == 0:
            return None
        feats = np.concatenate(b.features)
        cols = {
            "key": pl.Series("key", np.concatenate(b.keys).tolist(), pl.String),
            "end": pl.Series("end", np.concatenate(b.end)).cast(pl.Datetime("ns", "UTC")),
            "count": pl.Series("count", np.concatenate(b.count), pl.Int64),
            "filled": pl.Series("filled", np.concatenate(b.filled), pl.Boolean),
        }
        for i, n in enumerate(self.feature_names):
            cols[n] = pl.Series(n, feats[:, i], pl.Float64)
        return pl.DataFrame(cols)

    def flush(self) -> None:
        df = self._buffer_frame()
        if df is None:
            return
        day = df["end"].dt.epoch("ns") // DAY_NS
        for d in np.unique(day.to_numpy()).tolist():
            self._write_file(d, df.filter(day == d))
        self._buf = _Buffer([], [], [], [], [])
        self.enforce_retention()

    def _write_file(self, day: int, df: pl.DataFrame) -> Path:
        folder = self.path / _day_name(day)
        folder.mkdir(parents=True, exist_ok=True)
        seq = self._next_seq(folder)
        name = f"part-{self.writer}-{seq:06d}.parquet" if self.writer else f"part-{seq:06d}.parquet"
        tmp = folder / f".{name}.tmp"
        df.write_parquet(tmp, compression="zstd", statistics=True)
        os.replace(tmp, folder / name)
        return folder / name

    def _next_seq(self, folder: Path) -> int:
        if folder not in self._seq:
            seqs = [int(m.group(1)) for p in folder.iterdir() if (m := _PART.match(p.name))]
            self._seq[folder] = max(seqs, default=0)
        self._seq[folder] += 1
        return self._seq[folder]

    def close(self) -> None:
        self.flush()

    # -- retention ----------------------------------------------------------------
    def partitions(self) -> list[tuple[int, Path]]:
        """(day, folder) of every day partition, oldest first."""
        if not self.path.is_dir():
            return []
        out = [(d, p) for p in self.path.iterdir() if p.is_dir() and (d := _day_of(p.name)) is not None]
        return sorted(out)

    def files(self) -> list[Path]:
        """Every data file, oldest day first, in write order within a day."""
        out = []
        for _, folder in self.partitions():
            parts = [p for p in folder.iterdir() if _PART.match(p.name)]
            out += sorted(parts, key=lambda p: (int(_PART.match(p.name).group(1)), p.name))
        return out

    def total_bytes(self) -> int:
        return sum(_size(p) for p in self.files())

    def enforce_retention(self, now_ns: int | None = None) -> list[Path]:
        """Drop days older than the retention before ``now_ns`` (default: the newest window), then
        the oldest files while over ``max_bytes`` (the newest file is always kept). Returns what was removed."""
        removed: list[Path] = []
        newest = now_ns if now_ns is not None else self.newest_end
        if self.retention_ns > 0 and newest is not None:
            for day, folder in self.partitions():
                if (day + 1) * DAY_NS <= newest - self.retention_ns:  # every window of that day is too old
                    removed += _remove_tree(folder)
        if self.max_bytes > 0:
            files = self.files()
            sizes = [_size(p) for p in files]
            total = sum(sizes)
            for p, size in zip(files[:-1], sizes[:-1]):
                if total <= self.max_bytes:
                    break
                p.unlink(missing_ok=True)
                removed.append(p)
                total -= size
            for _, folder in self.partitions():
                if not any(_PART.match(p.name) for p in folder.iterdir()):
                    _remove_tree(folder)
        if removed:
            log.info("window store retention removed %d files", len(removed))
        return removed

    # -- reading ------------------------------------------------------------------
    def read(self, start: int | None = None, end: int | None = None, include_buffer: bool = True) -> pl.DataFrame:
        """Windows with ``start <= end < end`` (ns; None = open), as written plus what is still buffered.

        A file that cannot be read is skipped with a warning and counted in ``unreadable``.
        """
        frames = []
        for p in self.files():
            day = _day_of(p.parent.name)
            if start is not None and (day + 1) * DAY_NS <= start or end is not None and day * DAY_NS >= end:
                continue
            try:
                df = pl.read_parquet(p)
                missing = [c for c in RESERVED if c not in df.columns]
                if missing:
                    raise ValueError(f"missing columns {missing}")
            except Exception as exc:  # noqa: BLE001 - corrupt, truncated or foreign file: never stop the reader
                if str(p) not in self._bad:
                    self._bad.add(str(p))
                    self.unreadable += 1
                    log.warning("window store: skipping unreadable file %s: %s", p, exc)
                continue
            frames.append(df)
        if include_buffer and (buf := self._buffer_frame()) is not None:
            frames.append(buf)
        if not frames:
            return pl.DataFrame(schema={"key": pl.String, "end": pl.Datetime("ns", "UTC"),
                                        "count": pl.Int64, "filled": pl.Boolean})
        df = pl.concat(frames, how="diagonal_relaxed")
        ns = pl.col("end").dt.epoch("ns")
        if start is not None:
            df = df.filter(ns >= start)
        if end is not None:
            df = df.filter(ns < end)
        return df

    def newest(self) -> int | None:
        """Newest window end in the store (ns), reading the ``end`` column of the newest day only; None when empty."""
        ends = [] if self.newest_end is None else [self.newest_end]
        for _, folder in reversed(self.partitions()):
            for p in folder.iterdir():
                if not _PART.match(p.name):
                    continue
                try:
                    ends.append(int(pl.read_parquet(p, columns=["end"])["end"].dt.epoch("ns").max()))
                except Exception:  # noqa: BLE001 - unreadable: read() warns and counts it
                    continue
            if len(ends) > (self.newest_end is not None):
                break
        return max(ends) if ends else None

    def training_samples(self, L: int, H: int, holdout: int, *, norm_alpha: float = 0.01, min_context: int = 1,
                         scale: str = "level", max_samples: int | None = None, seed: int = 0,
                         frame: pl.DataFrame | None = None) -> TrainingSet:
        """Sliding samples of every key: L context windows -> H targets, the newest ``holdout`` held out.

        Each key's windows are normalised with its running mean/variance as of the
        sample's origin, computed with the same recursion as the models in the
        stream, and the targets are the changes from the origin's value in the
        models' output unit (``scale``: "level" std or "change", as the models'
        ``"delta"`` target). Origins are real
        (not gap-filled) windows with at least ``min_context`` windows of history.
        Training samples see no target inside the held-out span; validation
        samples are the origins whose first target is held out.
        """
        df = self.read() if frame is None else frame
        feat_cols = [c for c in df.columns if c not in RESERVED]
        F = len(feat_cols)
        if df.height == 0 or F == 0:
            return _empty_set(L, H, max(F, 1))
        df = df.unique(["key", "end"], keep="last", maintain_order=True).sort("key", "end")
        keys = df["key"].to_numpy()
        end = df["end"].dt.epoch("ns").to_numpy()
        feat = df.select(feat_cols).to_numpy().astype(np.float64)
        filled = df["filled"].to_numpy().astype(bool)
        n = len(keys)
        brk = np.r_[True, keys[1:] != keys[:-1]]
        starts = np.flatnonzero(brk)
        counts = np.diff(np.r_[starts, n])
        kid = np.repeat(np.arange(len(starts)), counts)
        pos = np.arange(n) - starts[kid]
        K, T = len(starts), int(counts.max())

        V = np.zeros((K, T, F))
        V[kid, pos] = feat
        FL = np.ones((K, T), bool)  # missing positions count as filled: never an origin or a target
        FL[kid, pos] = filled
        E = np.zeros((K, T), np.int64)
        E[kid, pos] = end
        # Running statistics after each window, as the stream's models hold them (loop over time, vectorised over keys).
        M = np.empty((K, T, F))
        S = np.empty((K, T, F))
        DV = np.empty((K, T))
        mean, var, dvar = np.zeros((K, F)), np.zeros((K, F)), np.zeros(K)
        V32 = V[:, :, 0].astype(np.float32).astype(np.float64)  # the models keep past windows in float32
        for t in range(T):
            real = (t < counts) & ~FL[:, t]
            n_t = np.full(K, t)
            mean, var = update_running_stats(mean, var, n_t, V[:, t], real, norm_alpha)
            prev = V32[:, t - 1] if t > 0 else np.zeros(K)
            dvar = update_change_var(dvar, n_t, V[:, t, 0], prev, real, norm_alpha)
            M[:, t], S[:, t], DV[:, t] = mean, norm_scale(mean, var), dvar

        # Origins: real windows with enough history and at least one target after them.
        limit = counts - holdout  # first held-out position per key
        ok = ~filled & (pos >= min_context - 1) & (pos <= counts[kid] - 2)
        train = ok & (pos <= limit[kid] - 2)
        val = ok & (pos >= limit[kid] - 1)
        parts = []
        for sel, lim in ((train, limit), (val, counts)):
            k, t = kid[sel], pos[sel]
            unit = target_scale(S[k, t, 0], DV[k, t], H, scale)  # (N, H)
            X, Y = _gather(V, FL, M, S, unit, k, t, lim[k], L, H)
            keep = ~np.isnan(Y).all(axis=1)
            parts.append((X[keep], Y[keep], k[keep], t[keep]))
        (Xt, Yt, kt, tt), (Xv, Yv, kv, tv) = parts
        if max_samples is not None and len(Xt) > max_samples:
            pick = np.sort(np.random.default_rng(seed).choice(len(Xt), max_samples, replace=False))
            Xt, Yt, kt, tt = Xt[pick], Yt[pick], kt[pick], tt[pick]
        info = {
            "data_start": int(end.min()), "data_end": int(end.max()), "keys": int(K), "windows": int(n),
            "train_samples": int(len(Xt)), "val_samples": int(len(Xv)), "context": L, "horizon": H,
            "holdout": holdout, "scale": scale, "unreadable_files": self.unreadable,
        }
        key_names = keys[starts]
        return TrainingSet(Xt, Yt, Xv, Yv, E[kt, tt], key_names[kt], E[kv, tv], key_names[kv], info)


def _gather(V, FL, M, S, unit, k, t, lim, L, H):
    """X (N, L, F+1) normalised contexts ending at t, Y (N, H) deltas in ``unit`` (N, H) before ``lim``."""
    F = V.shape[2]
    idx = t[:, None] + np.arange(-L + 1, 1)[None, :]  # (N, L)
    pad = idx < 0
    ci = np.maximum(idx, 0)
    mean, scale = M[k, t][:, None, :], S[k, t][:, None, :]  # (N, 1, F)
    X = np.empty((len(k), L, F + 1), np.float32)
    X[:, :, :F] = np.clip((V[k[:, None], ci] - mean) / scale, -CLIP, CLIP)
    X[:, :, F] = FL[k[:, None], ci]
    X[pad] = np.nan
    tj = t[:, None] + np.arange(1, H + 1)[None, :]  # (N, H)
    avail = tj < lim[:, None]
    tj = np.minimum(tj, V.shape[1] - 1)
    Y = (V[k[:, None], tj, 0] - V[k, t, 0][:, None]) / unit
    Y = np.clip(Y, -TARGET_CLIP, TARGET_CLIP)
    Y = np.where(avail & ~FL[k[:, None], tj], Y, np.nan).astype(np.float32)
    return X, Y


def _empty_set(L, H, F) -> TrainingSet:
    ex, ey = np.zeros((0, L, F + 1), np.float32), np.zeros((0, H), np.float32)
    none_end, none_key = np.zeros(0, np.int64), np.empty(0, object)
    return TrainingSet(ex, ey, ex.copy(), ey.copy(), none_end, none_key, none_end, none_key,
                       {"train_samples": 0, "val_samples": 0, "keys": 0, "windows": 0})


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _remove_tree(folder: Path) -> list[Path]:
    removed = []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    try:
        folder.rmdir()
    except OSError:
        pass
    return removed


__all__ = ["WindowStore", "TrainingSet"]
