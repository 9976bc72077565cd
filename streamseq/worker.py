"""The long-running stream worker: the replay pipeline fed by a message-broker transport.

One loop, one thread of pipeline work:

    poll ─► pipeline.process ─► forecasts / dead letters queued on the producer
    when the checkpoint policy says so: checkpoint (streamseq.checkpoint: flush,
    state, offsets with their stream-time clocks)

On a partition assignment the worker restores the state and clocks of the
partitions it gained before it processes any of their records; on revocation it
checkpoints first, then forgets the moved keys. Once processing a batch has
failed, nothing more is committed: the state in memory may be half-advanced.

What the worker needs from a broker is the ``Transport`` port (streamseq.ports):
a ``GroupPartition`` (consumer-group member), a ``Producer``, a ``Changelog`` and
the forecast and dead-letter sinks.
"""
from __future__ import annotations

import logging
import os
import threading

from .checkpoint import Checkpoint, CheckpointPolicy, RecordsLost, WorkerFailure
from .clock import SystemClock
from .config import Config
from .metrics import Health, WorkerMetrics
from .pipeline import Pipeline
from .ports import Transport

log = logging.getLogger("streamseq.worker")


class StreamWorker:
    def __init__(self, cfg: Config, pipeline: Pipeline, transport: Transport, *, clock=None,
                 metrics: WorkerMetrics | None = None, health: Health | None = None, watcher=None):
        self.cfg = cfg
        self.pipeline = pipeline
        self.transport = transport
        self.part = transport.part
        self.producer = transport.producer
        self.clock = clock or SystemClock()
        self.metrics = metrics or WorkerMetrics()
        self.health = health or Health()
        self.watcher = watcher
        w = cfg.worker
        self.checkpoint = Checkpoint(pipeline, transport, CheckpointPolicy(
            w.checkpoint_every_records, w.checkpoint_every_s, w.outage_budget_s), self.clock, self.metrics)
        self.checkpoint.check_state_size()
        pipeline.add_sink(transport.forecast_sink)
        pipeline.add_dead_letter_sink(transport.dead_letter_sink)
        pipeline.add_dead_letter_sink(LoggedDeadLetters(self.clock))
        self.part.set_rebalance_listener(self._on_assigned, self._on_revoked)
        self._owned: set = set()  # topic-partitions whose keys this worker holds
        self._last_registry_check = -1e18
        self._last_lag = -1e18
        self._seen = dict(records=0, skipped=0, windows=0, forecasts=0, dead=0)
        self._failed = False  # processing raised: the state in memory must never be committed

    # -- run loop -------------------------------------------------------------------
    def run(self, stop: threading.Event, max_records: int | None = None, max_idle_s: float | None = None) -> int:
        """Process until ``stop`` is set (or, for tests and demos, after ``max_records`` or
        ``max_idle_s`` seconds without a record once partitions were assigned)."""
        last_record = self.clock.monotonic()
        self.health.detail = "waiting for partition assignment"
        self._check_models(force=True)
        try:
            while not stop.is_set():
                self.health.beat()
                batch, letters = self.part.next_batch()
                t0 = self.clock.monotonic()
                self.pipeline.process(batch, self.part, letters)
                if len(batch) or letters:
                    self.metrics.batch_latency.observe(self.clock.monotonic() - t0)
                self.checkpoint.note(len(batch) + len(letters))
                self._update_counters()
                if self.checkpoint.due():
                    self._commit()
                self._check_models()
                now = self.clock.monotonic()
                if now - self._last_lag >= 5.0:
                    self._update_lag()
                if len(batch) or letters or not self.health.ready:
                    last_record = now
                if max_records is not None and self.pipeline.stats.records_in >= max_records:
                    break
                if max_idle_s is not None and now - last_record >= max_idle_s:
                    break
            self.health.detail = "shutting down"
            self._commit()
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

    def _commit(self) -> None:
        if self._failed:
            raise WorkerFailure("processing failed earlier: nothing more is committed")
        try:
            self.checkpoint.commit()
        except RecordsLost as lost:
            log.warning("checkpoint failed (%s): rewinding to the last commit", lost)
            self.metrics.rewinds.inc()
            self._owned = set()
            restored = self.checkpoint.rewind()
            self._owned = set(self.part.assignment())
            self.metrics.restored_keys.inc(restored)
        finally:
            self.health.detail = self.checkpoint.status or self.health.detail

    # -- rebalance ------------------------------------------------------------------
    def _on_revoked(self, tps) -> None:
        log.info("partitions revoked: %s", self._fmt(tps))
        self.health.ready = False
        self.health.detail = "rebalancing"
        if self._failed:  # closing after a failure: what was polled was not fully processed
            log.warning("not committing on revocation: processing failed; the next owner resumes from the last commit")
            self.checkpoint.forget_everything()
            self._owned = set()
            return
        try:
            self._commit()
        except Exception:  # noqa: BLE001 - membership may be lost; the next owner restores from the changelog
            log.exception("checkpoint on revocation failed; rewinding to the last commit")
            self.checkpoint.forget_everything()
            self._owned = set()

    def _on_assigned(self, tps) -> None:
        t0 = self.clock.monotonic()
        new = set(tps)
        gone = self._owned - new
        if gone:
            moved = {self.part.kafka_partition(self.part.partition_id(tp)) for tp in gone}
            n = self.checkpoint.forget_partitions(moved)
            log.info("forgot %d keys of moved partitions %s", n, sorted(moved))
        gained = sorted(new - self._owned)
        restored = self.checkpoint.retrying("restore", lambda: self.checkpoint.restore(gained))
        self._owned = new
        dt = self.clock.monotonic() - t0
        self.metrics.restore_seconds.observe(dt)
        self.metrics.restored_keys.inc(restored)
        self.metrics.keys.set(len(self.pipeline.keys))
        self.health.ready = True
        self.health.detail = f"ready: {len(new)} partitions, {len(self.pipeline.keys)} keys"
        log.info("partitions assigned: %s; restored %d keys in %.3fs", self._fmt(tps), restored, dt,
                 extra={"keys": restored, "duration_s": round(dt, 3)})

    def _fmt(self, tps) -> str:
        return ", ".join("%s[%d]" % self.part.label(tp) for tp in sorted(tps)) or "none"

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
                    topic, partition = self.part.label(tp)
                    self.metrics.lag.labels(topic=topic, partition=str(partition)).set(lag)
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
