"""The worker's checkpoint: one place decides when it commits, in which order, and how it restores.

Order of a commit (Quix Streams' ``Checkpoint``, Kafka Streams' task commit):

    1. flush forecasts and dead letters (acknowledged by the broker)
    2. write the state of every key touched since the last commit to the changelog
       (keyed by series key, co-partitioned with the input; a tombstone when a state is
       larger than a record may be)
    3. commit the source offsets, each with its partition's stream-time clock as the
       offset's metadata — 2 and 3 in one transaction with ``exactly_once``

Policy: every ``checkpoint_every_records`` records or ``checkpoint_every_s`` seconds,
whichever comes first. A broker that cannot be reached is retried with backoff for up
to ``outage_budget_s``; records lost for good make the worker rewind (``rewind``:
forget every key, restore them from the changelog, read again from the committed
offsets).

Restore, for partitions a worker gains: the latest state of each of their keys from the
changelog, and each partition's clock from its committed offset, so windows close
exactly when an uninterrupted worker would close them. Records already reflected in a
restored state are skipped by the pipeline (idempotent apply by source offset).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, StreamseqError
from .pipeline import Pipeline
from .ports import GroupPartition, Transport
from .records import MAX_KEY_BYTES
from .state_codec import MAX_EVENT_NS, decode_keys, encode_keys

log = logging.getLogger("streamseq.checkpoint")

CLOCK_METADATA = "streamseq.clock/v1"


class WorkerFailure(StreamseqError):
    """The worker cannot go on (e.g. the broker stayed unreachable beyond the outage budget)."""


class RecordsLost(StreamseqError):
    """Records of this checkpoint were lost for good: the caller rewinds to the last commit."""


@dataclass
class CheckpointPolicy:
    every_records: int = 50_000
    every_s: float = 5.0
    outage_budget_s: float = 120.0


class Checkpoint:
    def __init__(self, pipeline: Pipeline, transport: Transport, policy: CheckpointPolicy, clock, metrics):
        self.pipeline = pipeline
        self.part: GroupPartition = transport.part
        self.producer = transport.producer
        self.changelog = transport.changelog
        self.max_state_bytes = int(transport.max_record_bytes or 0)
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self.pending = 0  # records since the last commit
        self._last = clock.monotonic()
        self.status = ""  # what a retry is waiting for, for the health endpoint

    # -- policy ---------------------------------------------------------------------
    def note(self, records: int) -> None:
        self.pending += records

    def due(self) -> bool:
        p = self.policy
        return self.pending >= p.every_records or (
            self.pending > 0 and self.clock.monotonic() - self._last >= p.every_s)

    # -- commit ---------------------------------------------------------------------
    def commit(self) -> None:
        """Flush, write state, commit offsets with their clocks. Raises RecordsLost when records
        were lost for good (the caller rewinds), WorkerFailure beyond the outage budget."""
        self.retrying("flush", self.producer.flush)
        keys = self.pipeline.dirty_keys()
        if keys:
            self._write_state(keys)
        owned = set(self.part.assignment())
        offsets = {tp: (off, self._clock_metadata(tp)) for tp, off in self.part.position_offsets().items()
                   if tp in owned}
        self.retrying("commit", lambda: self.producer.commit(offsets, self.part))
        self.pipeline.clear_dirty()  # only now: a failed commit must write these keys again
        self.metrics.checkpoints.inc()
        self.pending = 0
        self._last = self.clock.monotonic()

    def _write_state(self, keys: list[str]) -> None:
        records = encode_keys(keys, self.pipeline.snapshot_keys(keys))
        limit = self.max_state_bytes
        for key, p in zip(keys, self._changelog_partitions(keys)):
            value: bytes | None = records[key]
            if limit and value is not None and len(value) > limit:
                # A record the broker would refuse would stop every later checkpoint: write a tombstone
                # instead, so a restore starts this key afresh rather than from a stale state.
                log.error("state of key %r is %d bytes, over the %d-byte record limit: not kept in the changelog "
                          "(the key starts afresh after a restore)", key[:64], len(value), limit)
                self.metrics.state_too_large.inc()
                value = None
            self.changelog.write(key, p, value)

    def _changelog_partitions(self, keys: list[str]) -> list[int]:
        slots = np.array([self.pipeline.keys.get(k) for k in keys], np.int64)
        pids = self.pipeline.windower.key_part[slots]
        return [self.part.kafka_partition(int(p)) for p in pids.tolist()]

    def _clock_metadata(self, tp) -> str:
        clock = self.pipeline.windower.clock(self.part.partition_id(tp))
        return "" if clock is None else json.dumps({"format": CLOCK_METADATA, **clock}, separators=(",", ":"))

    def retrying(self, what: str, fn):
        """Call ``fn`` until it succeeds, retrying errors marked retriable with backoff for up to the
        outage budget. A delivery that failed for good raises RecordsLost."""
        budget = self.policy.outage_budget_s
        start = self.clock.monotonic()
        delay = 0.5
        while True:
            try:
                result = fn()
                self.status = ""
                return result
            except StreamseqError as exc:
                if not getattr(exc, "retriable", False):
                    if what in ("flush", "commit") and type(exc).__name__ in ("DeliveryError", "CommitError"):
                        # records lost for good, or offsets the group refused (it moved on, or a transaction
                        # ended in an unknown state): nothing past the last commit counts; read it again
                        raise RecordsLost(str(exc)) from exc
                    raise
                waited = self.clock.monotonic() - start
                if waited + delay > budget:
                    raise WorkerFailure(f"{what} failed for {waited:.0f}s, beyond [worker] outage_budget_s = "
                                        f"{budget:g}: {exc}") from exc
                self.status = f"broker unreachable: retrying {what}"
                log.warning("%s failed (%s); retrying in %.1fs (%.0fs of the %gs outage budget used)",
                            what, exc, delay, waited, budget)
                self.clock.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- rewind and restore -----------------------------------------------------------
    def forget_everything(self) -> None:
        """Drop all state since the last commit: abort what is queued, forget every key and clock."""
        try:
            self.producer.abort()
        except Exception:  # noqa: BLE001 - a fenced producer cannot abort; nothing was committed either way
            log.exception("abort failed")
        keys = [k for k, _ in self.pipeline.keys.items()]
        self.pipeline.forget_keys(keys)
        self.pipeline.windower.forget_clocks()
        log.warning("rewound: %d keys will be restored from the changelog", len(keys))

    def rewind(self) -> int:
        """Forget everything, then restore the owned partitions and read them again from their
        committed offsets. Returns the keys restored."""
        self.forget_everything()
        owned = list(self.part.assignment())
        self.retrying("rewind", self.part.rewind_to_committed)
        return self.retrying("restore", lambda: self.restore(owned))

    def restore(self, tps) -> int:
        """State and clocks of partitions just gained (keys already held are kept). Returns keys restored."""
        if not tps:
            return 0
        commits = {tp: self.committed(tp) for tp in tps}
        restored = 0
        records = self.changelog.restore(sorted({self.part.kafka_partition(self.part.partition_id(tp))
                                                 for tp in tps}))
        if records:
            keys, state = decode_keys(records, self.pipeline.state_template())
            fresh = [i for i, k in enumerate(keys) if k not in self.pipeline.keys]
            if len(fresh) < len(keys):
                keys, state = _subset(keys, state, fresh)
            if keys:
                committed = {self.part.partition_id(tp): int(off) for tp, (off, _) in commits.items()
                             if off is not None}
                self.pipeline.restore_keys(keys, state, partitioned_time=True, committed=committed,
                                           partitions={self.part.partition_id(tp) for tp in tps})
            restored = len(keys)
        for tp, (_, clock) in commits.items():  # stream time at the committed offset
            if clock is not None:
                self.pipeline.windower.restore_clock(self.part.partition_id(tp), clock)
        return restored

    def committed(self, tp) -> tuple[int | None, dict | None]:
        """(committed offset, the stream-time clock committed with it) of a partition."""
        off, meta = self.part.committed_metadata(tp)
        return off, parse_clock(meta, tp)

    def forget_partitions(self, kafka_partitions: set[int]) -> int:
        """Drop the keys and clocks of partitions that moved to another worker. Returns keys dropped."""
        pipe = self.pipeline
        items = list(pipe.keys.items())
        moved = []
        if items:
            slots = np.array([s for _, s in items], np.int64)
            kparts = [self.part.kafka_partition(int(p)) for p in pipe.windower.key_part[slots].tolist()]
            moved = [k for (k, _), p in zip(items, kparts) if p in kafka_partitions]
            pipe.forget_keys(moved)
        pipe.windower.forget_clocks([pid for pid in list(pipe.windower.stream_time)
                                     if self.part.kafka_partition(pid) in kafka_partitions])
        return len(moved)

    # -- setup checks -------------------------------------------------------------------
    def check_state_size(self) -> None:
        """Refuse to start when one key's state could not fit in a changelog record."""
        if not self.max_state_bytes:
            return
        probe = "\x00probe" + "k" * (MAX_KEY_BYTES - 7)
        pipe = self.pipeline
        pipe.keys.slots(np.array([probe], dtype=object))
        try:
            size = len(encode_keys([probe], pipe.snapshot_keys([probe]))[probe])
        finally:
            pipe.forget_keys([probe])
        spec = pipe.spec
        cells = -(-spec.allowed_lateness // spec.interval) + 2  # open windows a key can hold at once
        size += cells * (pipe.n_fields * 6 * 8 + 8)
        if size > self.max_state_bytes:
            raise ConfigError("forecast.horizon", f"a setup whose per-key state fits one changelog record: "
                              f"{size:,} bytes > {self.max_state_bytes:,} (lower the horizon, the allowed "
                              f"lateness or the models, or raise [kafka] max_request_size and the broker's "
                              f"message.max.bytes)")


def parse_clock(meta: str, where="") -> dict | None:
    """The clock in an offset's metadata, or None (absent, or written by something else)."""
    if not meta:
        return None
    try:
        doc = json.loads(meta)
        # Any member of the group can commit metadata: only event times a worker could have written.
        if doc.get("format") != CLOCK_METADATA or not _event_time(doc.get("st")):
            raise ValueError("not a streamseq clock")
        jump = doc.get("jump")
        ok_jump = (isinstance(jump, list) and len(jump) == 3 and _event_time(jump[0]) and type(jump[1]) is int
                   and 0 <= jump[1] < 2**31 and type(jump[2]) is bool)
        return {"st": doc["st"], **({"jump": jump} if ok_jump else {})}
    except (ValueError, TypeError, AttributeError, RecursionError):
        log.warning("offset metadata of %s is not a streamseq clock; its stream time restarts", where)
        return None


def _event_time(x) -> bool:
    return type(x) is int and 0 <= x <= MAX_EVENT_NS


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


__all__ = ["Checkpoint", "CheckpointPolicy", "RecordsLost", "WorkerFailure", "CLOCK_METADATA", "parse_clock"]
