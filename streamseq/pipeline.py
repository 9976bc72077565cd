"""The pipeline object: the same one runs a replay backtest and the Kafka worker.

    observations ─► idempotent filter ─► windowing (per key, event time)
                 └─ too late ─► dead letters
    closed windows, grouped by window end ─► every model: score past forecasts,
    advance state, forecast (one call per model for all keys of the group)
    ─► forecasts (+ intervals, + ensemble) ─► sink; windows ─► sink / store

Only the source and the sinks differ between replay and live.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np

from .calibration import ConformalCalibrator
from .clock import SystemClock
from .ensemble import combine
from .errors import StreamseqError
from .keyspace import KeyIndex, grow
from .models.base import BatchForecaster, WindowStep
from .ports import DeadLetterSink, ForecastSink, SourcePartition
from .records import DeadLetter, ForecastBatch, ObservationBatch, WindowBatch
from .state_codec import RESET, core_faults, select
from .timeutil import format_duration, iso
from .windowing import NO_WID, ClosedWindows, Windower, WindowSpec

ENSEMBLE = "ensemble"
log = logging.getLogger("streamseq.pipeline")


@dataclass
class PipelineStats:
    records_in: int = 0
    records_invalid: int = 0  # rejected by the source (dead letters that never became records)
    records_skipped: int = 0  # already reflected in restored state (idempotent apply)
    windows_closed: int = 0
    windows_filled: int = 0
    forecasts_out: int = 0
    dead_letters: int = 0
    late_records: int = 0
    future_records: int = 0
    dead_by_reason: dict = field(default_factory=dict)


class Pipeline:
    def __init__(
        self,
        spec: WindowSpec,
        n_fields: int,
        models: list[BatchForecaster],
        horizon: int,
        *,
        interval_level: float = 0.9,
        ensemble: bool = False,
        clock=None,
        capacity: int = 1024,
    ):
        self.spec = spec
        self.grid = spec.grid
        self.n_fields = n_fields
        self.horizon = horizon
        self.models = {m.name: m for m in models}
        for m in models:
            m.bind_grid(self.grid)
        self.calibrators = {m.name: ConformalCalibrator(horizon, interval_level) for m in models}
        self.ensemble = ensemble and len(models) > 1
        if self.ensemble:
            self.calibrators[ENSEMBLE] = ConformalCalibrator(horizon, interval_level)
        self.clock = clock or SystemClock()
        self.keys = KeyIndex(capacity)
        self._rank_of: np.ndarray | None = None  # slot -> position in the key order (see _key_rank)
        self._rank_gen = -1
        self.windower = Windower(spec, n_fields, capacity)
        self._last_offset = np.zeros(0, np.int64)
        self._last_ts = np.zeros(0, np.int64)
        self._last_vals = np.zeros((0, n_fields))
        self._dirty = np.zeros(0, bool)
        self.keys.on_grow(self._grow)
        self.stats = PipelineStats()
        self.forecast_sinks: list[ForecastSink] = []
        self.window_sinks: list = []  # objects with write_windows(WindowBatch)
        self.dead_letter_sinks: list[DeadLetterSink] = []
        self.on_step = None  # callable(wid) after each window-end group, e.g. a retraining schedule

    def _grow(self, cap: int) -> None:
        self.windower.ensure_capacity(cap)
        for m in self.models.values():
            m.ensure_capacity(cap)
        for c in self.calibrators.values():
            c.ensure_capacity(cap)
        self._last_offset = grow(self._last_offset, cap, -1)
        self._last_ts = grow(self._last_ts, cap, NO_WID)
        self._last_vals = grow(self._last_vals, cap, np.nan)
        self._dirty = grow(self._dirty, cap, False)

    # -- wiring ---------------------------------------------------------------
    def add_sink(self, sink: ForecastSink) -> None:
        self.forecast_sinks.append(sink)

    def add_window_sink(self, sink) -> None:
        self.window_sinks.append(sink)

    def add_dead_letter_sink(self, sink: DeadLetterSink) -> None:
        self.dead_letter_sinks.append(sink)

    def swap_model(self, model: BatchForecaster) -> None:
        """Replace a model between batches (hot swap); per-key state arenas are kept by the caller's model."""
        model.ensure_capacity(self.keys.capacity)
        model.bind_grid(self.grid)
        self.models[model.name] = model
        if model.name not in self.calibrators:
            self.calibrators[model.name] = ConformalCalibrator(self.horizon, self.calibrators[next(iter(self.calibrators))].level)
            self.calibrators[model.name].ensure_capacity(self.keys.capacity)

    # -- processing -------------------------------------------------------------
    def process(self, batch: ObservationBatch, part: SourcePartition | None = None,
                letters: list[DeadLetter] | None = None) -> int:
        """Window a batch and advance every key whose window closed. Returns windows closed."""
        if letters:
            self.stats.records_invalid += len(letters)
            self._dead(letters)
        n = len(batch)
        if n == 0:
            return 0
        partitioned = part is not None and part.partitioned_time
        self.stats.records_in += n
        slots = self.keys.slots(batch.keys)
        if partitioned:
            wrong = self._wrong_partition(slots, batch)
            if wrong.any():
                self._wrong_partition_letters(batch, slots, wrong, part)
                keep = np.flatnonzero(~wrong)
                batch, slots, n = batch.take(keep), slots[keep], len(keep)
        apply = np.ones(n, bool)
        if partitioned:
            # Idempotent apply: records already reflected in a restored state are not applied
            # again, but they still move stream time at their place in the partition's order.
            apply = batch.offset > self._last_offset[slots]
            self.stats.records_skipped += int(n - apply.sum())
            np.maximum.at(self._last_offset, slots, batch.offset)
        self._dirty[slots[apply]] = True
        if apply.any():
            idx = np.flatnonzero(apply)
            dup = self._duplicates(slots[idx], batch.take(idx))
            if dup.any():
                self._duplicate_letters(batch.take(idx), dup, part)
                apply[idx[dup]] = False
        closed, late, future, wm = self.windower.process(slots, batch.ts, batch.values, batch.partition,
                                                         partitioned, apply=apply)
        if late.any():
            self._late(batch, late, wm, part)
        if future.any():
            self._future(batch, future, part)
        return self._advance(closed)

    def _wrong_partition(self, slots, batch) -> np.ndarray:
        """Records of a key that arrive on another partition than the key's: its state, offsets and
        stream time belong to one partition (the changelog is co-partitioned), so such a record
        would be silently mistaken for one already applied, or fork the key's state."""
        w = self.windower
        known = w.max_ts[slots] != NO_WID
        home = w.key_part[slots].astype(np.int64)
        if not known.all():  # a new key's home is the partition of its first record in this batch
            uniq, first = np.unique(slots, return_index=True)
            first_part = np.empty(int(uniq.max()) + 1, np.int64)
            first_part[uniq] = batch.partition[first]
            home = np.where(known, home, first_part[slots])
        return batch.partition.astype(np.int64) != home

    def _wrong_partition_letters(self, batch, slots, wrong, part) -> None:
        letters = []
        for i in np.flatnonzero(wrong).tolist():
            home = _source(part, int(self.windower.key_part[slots[i]]))
            src, p = _source(part, int(batch.partition[i]))
            letters.append(DeadLetter(
                reason=f"wrong_partition: records of key {str(batch.keys[i])[:64]!r} come from {home[0]}[{home[1]}], "
                       f"this one from {src}[{p}] (produce observations keyed by series key)",
                source=src, partition=p, offset=int(batch.offset[i]),
                payload=json.dumps({"key": batch.keys[i], "ts": iso(int(batch.ts[i])),
                                    "values": batch.values[i].tolist()}),
                key=str(batch.keys[i]),
            ))
        self._dead(letters)

    def finish(self) -> int:
        """End of a finite stream: close every open window and advance."""
        return self._advance(self.windower.flush())

    def _duplicates(self, slots, batch) -> np.ndarray:
        """An exact repeat (same time, same values) of a key's previous record is a duplicate."""
        order = np.argsort(slots, kind="stable")
        s, ts, v = slots[order], batch.ts[order], batch.values[order]
        same = np.zeros(len(s), bool)
        same[1:] = s[1:] == s[:-1]
        prev_ts = np.where(same, np.r_[NO_WID, ts[:-1]], self._last_ts[s])
        prev_v = np.where(same[:, None], np.r_[v[:1], v[:-1]], self._last_vals[s])
        dup_sorted = (ts == prev_ts) & (v == prev_v).all(axis=1)
        last = np.r_[~same[1:], True]
        self._last_ts[s[last]] = ts[last]
        self._last_vals[s[last]] = v[last]
        dup = np.empty(len(s), bool)
        dup[order] = dup_sorted
        return dup

    def _duplicate_letters(self, batch, dup, part) -> None:
        letters = []
        for i in np.flatnonzero(dup).tolist():
            p = int(batch.partition[i])
            letters.append(DeadLetter(
                reason="duplicate record: same key, time and values as the previous one",
                source=_source(part, p)[0], partition=_source(part, p)[1], offset=int(batch.offset[i]),
                payload=json.dumps({"key": batch.keys[i], "ts": iso(int(batch.ts[i])), "values": batch.values[i].tolist()}),
                key=str(batch.keys[i]),
            ))
        self._dead(letters)

    def _late(self, batch, late, wm, part) -> None:
        idx = np.flatnonzero(late)
        self.stats.late_records += len(idx)
        ends = self.grid.end_of(self.grid.wid_of(batch.ts[idx]))
        letters = []
        for i, end in zip(idx.tolist(), ends.tolist()):
            p = int(batch.partition[i])
            letters.append(DeadLetter(
                reason=f"too late: window ending {iso(end)} already closed (watermark {iso(int(wm[i]))})",
                source=_source(part, p)[0], partition=_source(part, p)[1],
                offset=int(batch.offset[i]),
                payload=json.dumps({"key": batch.keys[i], "ts": iso(int(batch.ts[i])),
                                    "values": batch.values[i].tolist()}),
                key=str(batch.keys[i]),
            ))
        self._dead(letters)

    def _future(self, batch, future, part) -> None:
        idx = np.flatnonzero(future)
        self.stats.future_records += len(idx)
        limit = format_duration(self.spec.time_jump_limit)
        letters = []
        for i in idx.tolist():
            p = int(batch.partition[i])
            letters.append(DeadLetter(
                reason=f"future_time: {iso(int(batch.ts[i]))} is more than {limit} ahead of stream time "
                       f"and no other key confirms the jump ([windowing] max_time_jump)",
                source=_source(part, p)[0], partition=_source(part, p)[1], offset=int(batch.offset[i]),
                payload=json.dumps({"key": batch.keys[i], "ts": iso(int(batch.ts[i])),
                                    "values": batch.values[i].tolist()}),
                key=str(batch.keys[i]),
            ))
        self._dead(letters)

    def _dead(self, letters: list[DeadLetter]) -> None:
        self.stats.dead_letters += len(letters)
        for dl in letters:
            kind = dl.reason.split(":")[0].split(" '")[0]
            self.stats.dead_by_reason[kind] = self.stats.dead_by_reason.get(kind, 0) + 1
        for s in self.dead_letter_sinks:
            s.write(letters)

    def _advance(self, closed: ClosedWindows) -> int:
        if len(closed) == 0:
            return 0
        self.stats.windows_closed += int((~closed.filled).sum())
        self.stats.windows_filled += int(closed.filled.sum())
        self._dirty[closed.slot] = True
        # Every window end's keys in key order: deterministic whatever the arrival order.
        order = np.lexsort((self._key_rank(closed.slot), closed.wid))
        slot, wid, x, filled, count = (closed.slot[order], closed.wid[order], closed.features[order],
                                       closed.filled[order], closed.count[order])
        bounds = np.flatnonzero(np.r_[True, wid[1:] != wid[:-1], True]).tolist()
        groups = list(zip(bounds[:-1], bounds[1:]))
        # A retraining schedule (on_step) may swap a model after any window end: then one at a time.
        per_block = len(groups) if self.on_step is None else 1
        for i in range(0, len(groups), per_block):
            part = groups[i:i + per_block]
            self._steps([(int(wid[a]), slot[a:b], x[a:b], filled[a:b], count[a:b]) for a, b in part])
        return len(closed)

    def _key_rank(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's position in the key order (recomputed when keys come or go)."""
        ki = self.keys
        if self._rank_of is None or self._rank_gen != ki.generation:
            names = np.array([k if k is not None else "" for k in ki.slot_keys()], dtype=object)
            rank = np.empty(len(names), np.int64)
            rank[np.argsort(names, kind="stable")] = np.arange(len(names))
            self._rank_of, self._rank_gen = rank, ki.generation
        return self._rank_of[slots]

    def _steps(self, groups: list) -> None:
        """Consecutive window ends, each (wid, slots, x, filled, count) in key order: every model advances
        over all of them in one call, then each window end is calibrated and emitted in turn, exactly as
        one window end at a time would do it (models and calibrators share no state)."""
        H = self.horizon
        wids = np.array([g[0] for g in groups], np.int64)
        ends = self.grid.end_of(wids).tolist()
        targets = self.grid.end_of(wids[:, None] + np.arange(1, H + 1)[None, :])  # (T, H) the calendar's step ends
        steps = []
        prev = None
        for wid, slots, x, filled, _ in groups:
            if prev is not None and len(prev) == len(slots) and np.array_equal(prev, slots):
                slots = prev  # the same keys as the window end before: models see it at a glance
            steps.append(WindowStep(slots, x, filled, wid))
            prev = slots
        # Models in another process (offload.py) get their windows first and run beside the others.
        started = {name: m.advance_async(steps) for name, m in self.models.items() if hasattr(m, "advance_async")}
        here = {name: m.advance(steps) for name, m in self.models.items() if name not in started}
        means = {name: here[name] if name in here else started[name]() for name in self.models}
        window_sinks = list(self.window_sinks)
        window_sinks += [s for s in self.forecast_sinks if type(s).write_windows is not ForecastSink.write_windows]
        names = list(self.spec.feature_names)
        versions = {name: m.version for name, m in self.models.items()}
        ens_version = "+".join(f"{n}@{v}" for n, v in versions.items())
        for t, (wid, slots, x, filled, count) in enumerate(groups):
            keys = self.keys.keys_of(slots)
            end = ends[t]
            if window_sinks:
                wb = WindowBatch(keys, np.full(len(slots), end, np.int64), count, filled, x, names)
                for s in window_sinks:
                    s.write_windows(wb)
            real = ~filled
            some_filled = not real.all()
            r_slots, r_keys = (slots[real], keys[real]) if some_filled else (slots, keys)
            if len(r_slots) == 0:
                if self.on_step is not None:
                    self.on_step(wid)
                continue
            y = x[real, 0] if some_filled else x[:, 0]
            produced = self.clock.now_ns()
            step_means = {}
            for name in self.models:
                cal = self.calibrators[name]
                cal.observe(r_slots, wid, y)
                mean = means[name][t]
                step_means[name] = mean
                self._emit(name, versions[name], cal, r_slots, r_keys, wid, end, targets[t], mean, produced)
            if self.ensemble:
                cal = self.calibrators[ENSEMBLE]
                cal.observe(r_slots, wid, y)
                mean = self._ensemble(r_slots, step_means)
                self._emit(ENSEMBLE, ens_version, cal, r_slots, r_keys, wid, end, targets[t], mean, produced)
            if self.on_step is not None:
                self.on_step(wid)

    def _emit(self, name, version, cal, slots, keys, wid, end, targets, mean, produced) -> None:
        lo, hi = cal.bounds(slots, mean)
        cal.record(slots, wid, mean)
        fb = ForecastBatch(name, version, end, self.grid.name, targets, keys, mean, lo, hi, produced)
        self.stats.forecasts_out += len(fb)
        for s in self.forecast_sinks:
            s.write(fb)

    def _ensemble(self, slots, means: dict) -> np.ndarray:
        """Per key and step, the members weighted by their recent error there (streamseq.ensemble)."""
        names = list(means)
        errors, counts = zip(*(self.calibrators[n].step_error(slots) for n in names))
        return combine(np.stack([means[n] for n in names]), np.stack(errors), np.stack(counts))

    # -- running a finite source ---------------------------------------------
    def run(self, part: SourcePartition, progress=None) -> None:
        """Process a finite source to its end, close every window, flush the sinks."""
        st = self.stats
        while not part.exhausted:
            batch, letters = part.next_batch()
            self.process(batch, part, letters)
            if progress is not None:
                progress.update(st.records_in, st.windows_closed, st.dead_letters, st.records_in + st.records_invalid)
        self.finish()
        if progress is not None:  # the windows the end of the stream closed, so the last line agrees with the summary
            progress.update(st.records_in, st.windows_closed, st.dead_letters, st.records_in + st.records_invalid)
        for sink in self.forecast_sinks:
            sink.flush()
        for dead in self.dead_letter_sinks:
            dead.flush()

    # -- per-key state ---------------------------------------------------------
    def dirty_keys(self, clear: bool = False) -> list[str]:
        """Keys touched since the last ``clear_dirty`` (the worker clears only after a commit succeeded)."""
        slots = np.flatnonzero(self._dirty)
        if clear:
            self._dirty[:] = False
        return self.keys.keys_of(slots).tolist()

    def clear_dirty(self) -> None:
        self._dirty[:] = False

    def snapshot_keys(self, keys: list[str]) -> dict[str, np.ndarray]:
        """Every component's state of these keys, as {component/field: array with one row per key}."""
        slots = np.array([self.keys.get(k) for k in keys], np.int64)
        out: dict[str, np.ndarray] = {
            "pipeline/last_offset": self._last_offset[slots].copy(),
            "pipeline/last_ts": self._last_ts[slots].copy(),
            "pipeline/last_vals": self._last_vals[slots].copy(),
        }
        for name, arr in self.windower.snapshot(slots).items():
            out[f"windower/{name}"] = arr
        for name, m in self.models.items():
            for f, arr in m.snapshot(slots).items():
                out[f"model.{name}/{f}"] = arr
        for name, c in self.calibrators.items():
            for f, arr in c.snapshot(slots).items():
                out[f"calib.{name}/{f}"] = arr
        return out

    def state_template(self) -> dict[str, np.ndarray]:
        """The state of one fresh key: the fields, dtypes and row shapes a restored record must have."""
        probe = "\x00state template"
        while probe in self.keys:
            probe += "\x00"
        self.keys.slots(np.array([probe], dtype=object))
        try:
            return self.snapshot_keys([probe])
        finally:
            self.forget_keys([probe])

    def restore_keys(self, keys: list[str], state: dict[str, np.ndarray], partitioned_time: bool = True,
                     committed: dict[int, int] | None = None, partitions=None) -> None:
        """``committed``: next offset to read per partition id. A key whose state already reflects
        records at or past it (written by a checkpoint whose commit did not happen) must not set
        its partition's stream time, or other keys' windows would close before their redelivered
        records are back. ``partitions``: the partition ids the keys may belong to (those just
        assigned). State comes from a topic others can write: a key whose state no worker writes
        is not restored (it starts afresh), nor is a component's state that does not fit."""
        bad, why = core_faults(state, self.spec.interval, partitions)
        if bad.any():
            log.warning("state of %d of %d keys is implausible (%s); they start afresh",
                        int(bad.sum()), len(keys), ", ".join(why))
            keys, state = select(keys, state, np.flatnonzero(~bad))
            if not keys:
                return
        slots = self.keys.slots(np.array(keys, dtype=object))
        time_from = None
        if committed is not None:
            parts = state["windower/key_part"].tolist()
            last = state["pipeline/last_offset"].tolist()
            time_from = np.array([p in committed and o < committed[p] for p, o in zip(parts, last)], bool)
        self._last_offset[slots] = state["pipeline/last_offset"]
        self._last_ts[slots] = state["pipeline/last_ts"]
        self._last_vals[slots] = state["pipeline/last_vals"]
        self.windower.restore(slots, _component(state, "windower/"), partitioned_time, time_from)
        for kind, items in (("model", self.models), ("calib", self.calibrators)):
            for name, comp in items.items():
                part = _component(state, f"{kind}.{name}/")
                if not part:
                    comp.reset(slots)
                    continue
                try:
                    comp.restore(slots, part)
                except (ValueError, KeyError, RuntimeError, IndexError, TypeError, StreamseqError) as exc:
                    # State written by a differently configured model (e.g. another hidden size):
                    # start these keys afresh for this component rather than stop the stream.
                    log.warning("state of %s %s does not fit (%s); %d keys start afresh", kind, name, exc, len(slots))
                    comp.reset(slots)
                    continue
                unfit = state.get(f"{RESET}{kind}.{name}", np.zeros(len(slots), bool))  # see decode_keys
                if hasattr(comp, "state_faults"):  # values the component itself knows no update writes
                    faults = comp.state_faults(part)
                    if faults.any():
                        log.warning("state of %s %s: %d keys hold values no update writes; they start afresh",
                                    kind, name, int(faults.sum()))
                    unfit = unfit | faults
                if unfit.any():
                    comp.reset(slots[unfit])

    def forget_keys(self, keys: list[str]) -> None:
        """Drop keys whose partition moved to another worker."""
        slots = np.array([s for s in (self.keys.get(k) for k in keys) if s is not None], np.int64)
        if len(slots) == 0:
            return
        self.windower.drop(slots)
        for m in self.models.values():
            m.reset(slots)
        for c in self.calibrators.values():
            c.reset(slots)
        self._last_offset[slots] = -1
        self._last_ts[slots] = NO_WID
        self._last_vals[slots] = np.nan
        self._dirty[slots] = False
        self.keys.forget(keys)


def _source(part, pid: int) -> tuple[str, int]:
    """(source name, partition) of a record: topic and Kafka partition, or file path and file index."""
    return part.origin(pid) if part is not None else (str(pid), pid)


def _component(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


__all__ = ["Pipeline", "PipelineStats", "ENSEMBLE", "NO_WID"]
