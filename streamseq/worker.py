"""The long-running stream worker: the replay pipeline fed by a message-broker transport.

One loop, one thread of pipeline work:

    poll ─► pipeline.process ─► forecasts / dead letters queued on the producer
    every N records or T seconds: checkpoint
        1. flush forecasts and dead letters (acknowledged)
        2. write the state of every key touched since the last checkpoint
           to the changelog (keyed by series key, co-partitioned with the input)
        3. commit the source offsets — 2 and 3 in one transaction with exactly_once

On a partition assignment the worker restores the latest state of the keys of
the partitions it gained (reading the changelog itself) before it processes
any of their records; records already reflected in a restored state are
skipped. Each partition's stream time is committed with its offset (as the
offset's metadata, the Kafka Streams way), so a restored partition closes its
windows exactly when an uninterrupted worker would. On revocation it
checkpoints first, then forgets the moved keys.

Faults: a broker that can't be reached during a checkpoint is retried with
backoff for up to ``[worker] outage_budget_s``; records that could not be
delivered make the worker rewind (forget its state, restore it from the
changelog, read again from the committed offsets). Once processing a batch has
failed, nothing more is committed: the state in memory may be half-advanced.

The transport is duck-typed (``connectors.kafka.transport.KafkaTransport``):
``part`` (a SourcePartition with ``set_rebalance_listener``,
``position_offsets``, ``assignment``, ``lag``, ``topic_partition``),
``producer`` (``flush``, ``commit(offsets, part)``, ``abort``, ``close``),
``changelog`` (``write(key, partition, bytes|None)``, ``restore(partitions)``),
``forecast_sink`` and ``dead_letter_sink``.
"""
from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np

from .clock import SystemClock
from .config import Config
from .metrics import Health, WorkerMetrics
from .pipeline import Pipeline
from .errors import StreamseqError
from .state_codec import decode_keys, encode_keys

log = logging.getLogger("streamseq.worker")


class WorkerFailure(StreamseqError):
    """The worker cannot go on (e.g. the broker stayed unreachable beyond the outage budget)."""


CLOCK_METADATA = "streamseq.clock/v1"


class StreamWorker:
    def __init__(self, cfg: Config, pipeline: Pipeline, transport, *, clock=None,
                 metrics: WorkerMetrics | None = None, health: Health | None = None, watcher=None):
        self.cfg = cfg
        self.pipeline = pipeline
        self.transport = transport
        self.part = transport.part
        self.producer = transport.producer
        self.changelog = transport.changelog
        self.clock = clock or SystemClock()
        self.metrics = metrics or WorkerMetrics()
        self.health = health or Health()
        self.watcher = watcher
        pipeline.add_sink(transport.forecast_sink)
        pipeline.add_dead_letter_sink(transport.dead_letter_sink)
        pipeline.add_dead_letter_sink(LoggedDeadLetters(self.clock))
        self.part.set_rebalance_listener(self._on_assigned, self._on_revoked)
        self._owned: set[int] = set()  # source partitions whose keys this worker holds
        self._since_checkpoint = 0
        self._last_checkpoint = self.clock.monotonic()
        self._last_registry_check = -1e18
        self._last_lag = -1e18
        self._seen = dict(records=0, skipped=0, windows=0, forecasts=0, dead=0)
        self._failed = False  # processing raised: the state in memory must never be committed
        self.max_state_bytes = int(getattr(transport, "max_record_bytes", 0) or 0)  # 0: no limit known

    # -- run loop -------------------------------------------------------------------
    def run(self, stop: threading.Event, max_records: int | None = None, max_idle_s: float | None = None) -> int:
        """Process until ``stop`` is set (or, for tests and demos, after ``max_records`` or
        ``max_idle_s`` seconds without a record once partitions were assigned)."""
        w = self.cfg.worker
        last_record = self.clock.monotonic()
        self.health.detail = "waiting for partition assignment"
        self._check_models(force=True)
        try:
            while not stop.is_set():
                batch, letters = self.part.next_batch()
                t0 = self.clock.monotonic()
                self.pipeline.process(batch, self.part, letters)
                if len(batch) or letters:
                    self.metrics.batch_latency.observe(self.clock.monotonic() - t0)
                self._since_checkpoint += len(batch) + len(letters)
                self._update_counters()
                now = self.clock.monotonic()
                if (self._since_checkpoint >= w.checkpoint_every_records
                        or (self._since_checkpoint and now - self._last_checkpoint >= w.checkpoint_every_s)):
                    self.checkpoint()
                self._check_models()
                if now - self._last_lag >= 5.0:
                    self._update_lag()
                if len(batch) or letters or not self.health.ready:
                    last_record = now
                if max_records is not None and self.pipeline.stats.records_in >= max_records:
                    break
                if max_idle_s is not None and now - last_record >= max_idle_s:
                    break
            self.health.detail = "shutting down"
            self.checkpoint()
            return 0
        except BaseException:
            self._failed = True  # close() must not commit what this failure left half-done
            self.health.live = False
            self.health.ready = False
            try:
                self.producer.abort()
            except Exception:  # noqa: BLE001 - already failing; keep the original error
                log.exception("abort after failure failed")
            raise

    def close(self) -> None:
        """Leave the group (revocation checkpoints first, unless processing failed) and close the producer."""
        try:
            self.part.close()
        finally:
            # After a failure nothing queued will be committed: don't wait for it.
            self.producer.close(timeout_s=0.0 if self._failed else 10.0)

    # -- checkpoint -----------------------------------------------------------------
    def checkpoint(self) -> None:
        """Forecasts flushed, then state written, then offsets committed (with each partition's
        stream time as the offset's metadata). A broker outage is ridden out for up to
        ``[worker] outage_budget_s``; lost records make the worker rewind to its last commit."""
        if self._failed:
            raise WorkerFailure("processing failed earlier: nothing more is committed")
        try:
            self._retrying("flush", self.producer.flush)  # 1. forecasts and dead letters acknowledged
            keys = self.pipeline.dirty_keys()
            if keys:
                self._write_state(keys)  # 2. state
            owned = set(self.part.assignment())
            offsets = {tp: (off, self._clock_metadata(tp)) for tp, off in self.part.position_offsets().items()
                       if tp in owned}
            # flushes the state, then 3. offsets (one transaction with exactly_once)
            self._retrying("commit", lambda: self.producer.commit(offsets, self.part))
        except _Lost as lost:
            log.warning("checkpoint failed (%s): rewinding to the last commit", lost.cause)
            self.metrics.rewinds.inc()
            self.rewind_to_committed()
            return
        self.pipeline.clear_dirty()  # only now: a failed commit must write these keys again
        self.metrics.checkpoints.inc()
        self._since_checkpoint = 0
        self._last_checkpoint = self.clock.monotonic()

    def _write_state(self, keys: list[str]) -> None:
        records = encode_keys(keys, self.pipeline.snapshot_keys(keys))
        parts = self._changelog_partitions(keys)
        limit = self.max_state_bytes
        for key, p in zip(keys, parts):
            value = records[key]
            if limit and len(value) > limit:
                # A record the broker would refuse would stop every later checkpoint: write a
                # tombstone instead, so a restore starts this key afresh rather than from stale state.
                log.error("state of key %r is %d bytes, over the %d-byte record limit: not kept in the changelog "
                          "(the key starts afresh after a restore)", key[:64], len(value), limit)
                self.metrics.state_too_large.inc()
                value = None
            self.changelog.write(key, p, value)

    def _clock_metadata(self, tp) -> str:
        clock = self.pipeline.windower.clock(self.part.partition_id(tp))
        return "" if clock is None else json.dumps({"format": CLOCK_METADATA, **clock}, separators=(",", ":"))

    def _retrying(self, what: str, fn):
        """Call ``fn`` until it succeeds, retrying errors the connector marks retriable with backoff
        for up to the outage budget. Records lost for good raise _Lost (the caller rewinds)."""
        budget = self.cfg.worker.outage_budget_s
        start = self.clock.monotonic()
        delay = 0.5
        while True:
            try:
                return fn()
            except StreamseqError as exc:
                if not getattr(exc, "retriable", False):
                    if what == "flush" or type(exc).__name__ == "DeliveryError":
                        raise _Lost(exc) from exc
                    raise
                waited = self.clock.monotonic() - start
                if waited + delay > budget:
                    raise WorkerFailure(f"{what} failed for {waited:.0f}s, beyond [worker] outage_budget_s = "
                                        f"{budget:g}: {exc}") from exc
                self.health.detail = f"broker unreachable: retrying {what}"
                log.warning("%s failed (%s); retrying in %.1fs (%.0fs of the %gs outage budget used)",
                            what, exc, delay, waited, budget)
                self.clock.sleep(delay)
                delay = min(delay * 2, 5.0)

    def rewind_to_committed(self) -> None:
        """Drop everything since the last commit and read it again: abort, forget every key,
        restore the owned partitions' state from the changelog, seek to the committed offsets."""
        self.rewind()
        owned = list(self.part.assignment())
        self._retrying("rewind", self.part.rewind_to_committed)
        self._retrying("restore", lambda: self._on_assigned(owned))

    def _changelog_partitions(self, keys: list[str]) -> list[int]:
        slots = np.array([self.pipeline.keys.get(k) for k in keys], np.int64)
        pids = self.pipeline.windower.key_part[slots]
        return [self.part.topic_partition(int(p)).partition for p in pids.tolist()]

    # -- rebalance ------------------------------------------------------------------
    def _on_revoked(self, tps) -> None:
        log.info("partitions revoked: %s", _fmt(tps))
        self.health.ready = False
        self.health.detail = "rebalancing"
        if self._failed:  # closing after a failure: what was polled was not fully processed
            log.warning("not committing on revocation: processing failed; the next owner resumes from the last commit")
            self.rewind()
            return
        try:
            self.checkpoint()
        except Exception:  # noqa: BLE001 - membership may be lost; the next owner restores from the changelog
            log.exception("checkpoint on revocation failed; rewinding to the last commit")
            self.rewind()

    def rewind(self) -> None:
        """Drop everything since the last commit: abort, forget every key, and let the next
        assignment restore state from the changelog and resume from the committed offsets."""
        try:
            self.producer.abort()
        except Exception:  # noqa: BLE001 - a fenced producer cannot abort; nothing was committed either way
            log.exception("abort failed")
        keys = [k for k, _ in self.pipeline.keys.items()]
        self.pipeline.forget_keys(keys)
        self.pipeline.windower.forget_clocks()
        self._owned = set()
        log.warning("rewound: %d keys will be restored from the changelog", len(keys))

    def _on_assigned(self, tps) -> None:
        t0 = self.clock.monotonic()
        new = {tp.partition for tp in tps}
        gone = self._owned - new
        if gone:
            self._forget_partitions(gone)
        gained = sorted(new - self._owned)
        restored = 0
        if gained:
            commits = {tp: self._committed(tp) for tp in tps if tp.partition in gained}
            records = self.changelog.restore(gained)
            if records:
                keys, state = decode_keys(records)
                fresh = [i for i, k in enumerate(keys) if k not in self.pipeline.keys]
                if len(fresh) < len(keys):
                    keys, state = _subset(keys, state, fresh)
                if keys:
                    committed = {self.part.partition_id(tp): int(off) for tp, (off, _) in commits.items()
                                 if off is not None}
                    self.pipeline.restore_keys(keys, state, partitioned_time=True, committed=committed)
                restored = len(keys)
            for tp, (_, clock) in commits.items():  # stream time at the committed offset: windows close as if never stopped
                if clock is not None:
                    self.pipeline.windower.restore_clock(self.part.partition_id(tp), clock)
        self._owned = new
        dt = self.clock.monotonic() - t0
        self.metrics.restore_seconds.observe(dt)
        self.metrics.restored_keys.inc(restored)
        self.metrics.keys.set(len(self.pipeline.keys))
        self.health.ready = True
        self.health.detail = f"ready: {len(new)} partitions, {len(self.pipeline.keys)} keys"
        log.info("partitions assigned: %s; restored %d keys in %.3fs", _fmt(tps), restored, dt,
                 extra={"keys": restored, "duration_s": round(dt, 3)})

    def _committed(self, tp) -> tuple[int | None, dict | None]:
        """(committed offset, the stream-time clock committed with it) of a partition."""
        off, meta = self.part.committed_metadata(tp)
        clock = None
        if meta:
            try:
                doc = json.loads(meta)
                if doc.get("format") == CLOCK_METADATA and isinstance(doc.get("st"), int):
                    clock = {"st": doc["st"], **({"jump": doc["jump"]} if isinstance(doc.get("jump"), list)
                                                 and len(doc["jump"]) == 3 else {})}
            except (ValueError, TypeError, AttributeError):
                log.warning("offset metadata of %s is not a streamseq clock; stream time restarts", tp)
        return off, clock

    def _forget_partitions(self, partitions: set[int]) -> None:
        pipe = self.pipeline
        items = list(pipe.keys.items())
        if not items:
            pipe.windower.forget_clocks([pid for pid in list(pipe.windower.stream_time)
                                         if self.part.topic_partition(pid).partition in partitions])
            return
        slots = np.array([s for _, s in items], np.int64)
        kparts = np.array([self.part.topic_partition(int(p)).partition for p in pipe.windower.key_part[slots].tolist()])
        moved = [k for (k, _), p in zip(items, kparts.tolist()) if p in partitions]
        pipe.forget_keys(moved)
        pipe.windower.forget_clocks([pid for pid in list(pipe.windower.stream_time)
                                     if self.part.topic_partition(pid).partition in partitions])
        log.info("forgot %d keys of moved partitions %s", len(moved), sorted(partitions))

    # -- models, metrics ------------------------------------------------------------------
    def _check_models(self, force: bool = False) -> None:
        if self.watcher is None:
            return
        now = self.clock.monotonic()
        if not force and now - self._last_registry_check < self.cfg.registry.poll_s:
            return
        self._last_registry_check = now
        for name in self.watcher.check():
            self.metrics.model_swaps.labels(model=name).inc()
        for name, m in self.pipeline.models.items():
            self.metrics.model_version.labels(model=name, version=m.version).set(1)

    def _update_counters(self) -> None:
        st, seen, m = self.pipeline.stats, self._seen, self.metrics
        m.records_in.inc(st.records_in - seen["records"])
        m.records_skipped.inc(st.records_skipped - seen["skipped"])
        m.windows_closed.inc(st.windows_closed - seen["windows"])
        m.forecasts_out.inc(st.forecasts_out - seen["forecasts"])
        seen.update(records=st.records_in, skipped=st.records_skipped, windows=st.windows_closed,
                    forecasts=st.forecasts_out)
        m.keys.set(len(self.pipeline.keys))
        if st.dead_letters != seen["dead"]:
            for reason, n in st.dead_by_reason.items():
                prev = seen.get(f"dead:{reason}", 0)
                if n > prev:
                    m.dead_letters.labels(reason=reason).inc(n - prev)
                    seen[f"dead:{reason}"] = n
            seen["dead"] = st.dead_letters

    def _update_lag(self) -> None:
        self._last_lag = self.clock.monotonic()
        try:
            for tp, lag in self.part.lag().items():
                if lag is not None:
                    self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
        except Exception:  # noqa: BLE001 - metrics must never stop the stream
            log.debug("lag update failed", exc_info=True)


class LoggedDeadLetters:
    """Every data error is logged with key, topic, partition and offset (at most ``burst`` per ``period_s``)."""

    def __init__(self, clock, burst: int = 20, period_s: float = 10.0):
        self.clock, self.burst, self.period_s = clock, burst, period_s
        self._window_start = clock.monotonic()
        self._logged = 0
        self._suppressed = 0

    def write(self, letters) -> None:
        now = self.clock.monotonic()
        if now - self._window_start >= self.period_s:
            if self._suppressed:
                log.warning("%d more data errors in the last %.0fs (see the dead-letter topic)",
                            self._suppressed, self.period_s)
            self._window_start, self._logged, self._suppressed = now, 0, 0
        for dl in letters:
            if self._logged >= self.burst:
                self._suppressed += 1
                continue
            self._logged += 1
            log.warning("data error: %s", dl.reason,
                        extra={"key": dl.key, "topic": dl.source, "partition": dl.partition, "offset": dl.offset})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Lost(Exception):
    """Records of this checkpoint were lost for good: rewind to the last commit."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _subset(keys, state, idx):
    """Restrict a decoded snapshot to some of its keys."""
    idx_arr = np.asarray(idx, np.int64)
    remap = {int(o): i for i, o in enumerate(idx)}
    out = {}
    owner = state["windower/cell_owner"]
    keep_cells = np.isin(owner, idx_arr)
    for name, arr in state.items():
        if name == "windower/cell_owner":
            out[name] = np.array([remap[int(o)] for o in owner[keep_cells].tolist()], np.int64)
        elif name in ("windower/cell_wid", "windower/cell_stats"):
            out[name] = arr[keep_cells]
        else:
            out[name] = arr[idx_arr]
    return [keys[i] for i in idx], out


def _fmt(tps) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "none"


def install_signal_handlers(stop: threading.Event, deadline_s: float) -> None:
    """SIGTERM/SIGINT: stop polling, then flush, checkpoint, commit, leave the group.

    A watchdog ends the process if a clean shutdown takes longer than the deadline.
    """
    import signal

    def handler(signum, frame):
        if stop.is_set():
            return
        log.info("signal %d: shutting down (deadline %.0fs)", signum, deadline_s)
        stop.set()
        t = threading.Timer(deadline_s, _deadline_passed)
        t.daemon = True
        t.start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _deadline_passed() -> None:
    log.error("shutdown deadline passed; exiting without a clean leave")
    logging.shutdown()
    os._exit(3)
