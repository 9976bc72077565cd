"""Restoring state at any point of a stream gives the forecasts of an uninterrupted run.

The worker's checkpoint, simulated without a broker: every few batches the state of the
keys touched since the last checkpoint goes to a "changelog" (latest record per key), and
the offsets are committed with each partition's stream-time clock. Sometimes the process
dies between the state write and the commit (state ahead of the committed offset); it
then restarts from the changelog and the last commit and reads the stream again from
the committed offsets. Every forecast that was ever emitted must equal the uninterrupted
run's, and none may be missing.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import pipeline

from streamseq.memory import MemoryPartition
from streamseq.records import ObservationBatch
from streamseq.state_codec import RESET, decode_keys, encode_keys

M = 60 * 10**9
H = 60 * M


def TwoPartitions():  # noqa: N802 - a Kafka-like source: event time advances per partition
    return MemoryPartition([], partitioned_time=True)


def stream(seed: int, n_keys: int = 12, hours: int = 60):
    """Records in arrival order: two partitions, several readings per window, jitter within
    the lateness, a few too-late records, a far-future outlier, and a key that appears late."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_keys):
        start = 20 * H if k == n_keys - 1 else 0
        for t in range(start, hours * H, 20 * M):
            if k == 2 and 30 * H <= t < 33 * H:  # a hole: three gap-filled windows
                continue
            jitter = int(rng.integers(-4 * M, 4 * M))
            value = 10 * np.sin(2 * np.pi * t / (24 * H)) + k + rng.normal()
            rows.append((max(t + jitter, 0), f"k{k}", value))
    rows.sort(key=lambda r: r[0] + int(rng.integers(0, 3 * M)))  # arrival order: slightly shuffled
    late = rng.choice(len(rows), 60, replace=False)
    for i in late:  # far behind: too late
        rows[i] = (max(rows[i][0] - int(rng.integers(20, 300)) * M, 0), rows[i][1], rows[i][2])
    rows.insert(len(rows) // 3, (200 * 365 * 24 * H, "k1", 1.0))  # year ~2170
    keys = np.array([r[1] for r in rows], dtype=object)
    part = np.array([int(k[1:]) % 2 for k in keys], np.int32)
    offset = np.zeros(len(rows), np.int64)
    for p in (0, 1):
        offset[part == p] = np.arange((part == p).sum())
    return ObservationBatch(keys, np.array([r[0] for r in rows], np.int64), np.array([[r[2]] for r in rows]),
                            part, offset)


def batches_of(obs: ObservationBatch, cuts) -> list[ObservationBatch]:
    return [obs.take(np.arange(a, b)) for a, b in zip(cuts[:-1], cuts[1:])]


def new_pipeline(lateness):
    return pipeline(models=("gru", "seasonal_naive"), horizon=3, season=24, lateness=lateness,
                    learn=False, ensemble=True)


def table(sink) -> dict:
    out: dict = {}
    for b in sink.batches:
        for i, key in enumerate(b.keys.tolist()):
            out.setdefault((key, b.origin, b.model), []).append(
                (b.mean[i].tobytes(), b.lo[i].tobytes(), b.hi[i].tobytes()))
    return out


def run_with_crashes(obs, cuts, lateness, rng):
    part = TwoPartitions()
    batches = batches_of(obs, cuts)
    changelog: dict[str, bytes] = {}  # key -> latest state record, as the worker writes it
    committed = {0: 0, 1: 0}  # next offset to read per partition
    clocks: dict[int, dict | None] = {0: None, 1: None}
    emitted: dict = {}
    pipe, sink, _ = new_pipeline(lateness)
    i = 0
    crashes = 0
    while i < len(batches):
        pipe.process(batches[i], part)
        i += 1
        if i % 3 == 0 or i == len(batches):  # checkpoint
            keys = pipe.dirty_keys()
            if keys:
                changelog.update(encode_keys(keys, pipe.snapshot_keys(keys)))
            commit = rng.random() > 0.3 or i == len(batches)  # sometimes the process dies before the commit
            if commit:
                for p in (0, 1):
                    offs = [int(b.offset[b.partition == p].max()) + 1 for b in batches[:i] if (b.partition == p).any()]
                    if offs:
                        committed[p] = max(offs)
                    clocks[p] = pipe.windower.clock(p)
                pipe.clear_dirty()
        crash = i < len(batches) and rng.random() < 0.25
        if crash:
            crashes += 1
            for k, v in table(sink).items():
                emitted.setdefault(k, []).extend(v)
            pipe, sink, _ = new_pipeline(lateness)
            if changelog:  # the worker's restore: decode against a fresh key's state, then restore
                keys, state = decode_keys(dict(changelog), pipe.state_template())
                assert sorted(keys) == sorted(changelog), "a record written by a worker was refused"
                reset = [n for n, v in state.items() if n.startswith(RESET) and np.asarray(v).any()]
                assert not reset, f"parts of records written by a worker were refused: {reset}"
                pipe.restore_keys(keys, state, partitioned_time=True, committed=dict(committed))
            for p in (0, 1):
                pipe.windower.restore_clock(p, clocks[p])
            # read again from the committed offsets, as a broker redelivers: each partition in order,
            # the partitions interleaved in blocks of any size (often one partition first)
            obs = redeliver(obs, committed, rng)
            new_cuts = sorted(set([0, len(obs)] + rng.integers(0, len(obs), 6).tolist()))
            batches = batches_of(obs, new_cuts)
            i = 0
    pipe.finish()
    for k, v in table(sink).items():
        emitted.setdefault(k, []).extend(v)
    return emitted, crashes


def redeliver(obs, committed, rng) -> ObservationBatch:
    queues = [np.flatnonzero((obs.partition == p) & (obs.offset >= committed[p])) for p in (0, 1)]
    order, heads = [], [0, 0]
    while heads[0] < len(queues[0]) or heads[1] < len(queues[1]):
        p = int(rng.integers(0, 2))
        take = int(rng.choice([1, 50, 400, 10_000]))
        order.extend(queues[p][heads[p]:heads[p] + take].tolist())
        heads[p] += take
    return obs.take(np.array(order, np.int64))


@pytest.mark.parametrize("lateness", ["0s", "5min"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restoring_at_random_points_gives_the_uninterrupted_forecasts(seed, lateness):
    obs = stream(seed)
    rng = np.random.default_rng(100 + seed)
    cuts = sorted(set([0, len(obs)] + rng.integers(0, len(obs), 40).tolist()))
    pipe, sink, dead = new_pipeline(lateness)
    for b in batches_of(obs, cuts):
        pipe.process(b, TwoPartitions())
    pipe.finish()
    expected = {k: v[0] for k, v in table(sink).items()}
    assert any("future_time" in d.reason for d in dead.letters)  # the outlier was held back
    got, crashes = run_with_crashes(obs, cuts, lateness, rng)
    assert crashes >= 2
    missing = set(expected) - set(got)
    assert not missing, f"{len(missing)} forecasts missing, e.g. {sorted(missing)[:3]}"
    wrong = [k for k, copies in got.items() if k not in expected or any(c != expected[k] for c in copies)]
    assert not wrong, f"{len(wrong)} forecasts differ from the uninterrupted run, e.g. {wrong[:3]}"


def test_restored_stream_time_is_the_committed_one_not_a_guess_from_the_keys():
    """Stream time at the committed offset came from a key whose state is already ahead of it: without
    the clock committed with the offset, a redelivered record that the uninterrupted run judged too
    late would be accepted after the restore (and the other way round)."""
    def obs(rows):  # (offset, key, minutes)
        return ObservationBatch(np.array([r[1] for r in rows], dtype=object),
                                np.array([(600 + r[2]) * M for r in rows], np.int64),
                                np.array([[float(r[0])] for r in rows]),
                                np.zeros(len(rows), np.int32), np.array([r[0] for r in rows], np.int64))

    def fresh():
        p, sink, dead = pipeline(models=("naive",), horizon=2, season=2, interval="10min", lateness="15min",
                                 learn=False)
        return p, sink, dead

    first = obs([(0, "b", 50)])  # stream time 10:50; committed at offset 1 with this clock
    rest = obs([(1, "b", 40), (2, "a", 22), (3, "a", 71), (4, "b", 72)])  # a@10:22 is too late (watermark 10:35)
    whole, sink, dead = fresh()
    whole.process(first, TwoPartitions())
    whole.process(rest, TwoPartitions())
    assert [d.key for d in dead.letters] == ["a"]

    crashed, _, _ = fresh()
    crashed.process(first, TwoPartitions())
    clock = crashed.windower.clock(0)  # committed with offset 1
    crashed.process(rest.take(np.array([0])), TwoPartitions())  # b@10:40 applied, state written, commit lost
    state = crashed.snapshot_keys(["b"])

    restored, sink2, dead2 = fresh()
    restored.restore_keys(["b"], state, partitioned_time=True, committed={0: 1})  # b is ahead: sets no time
    restored.windower.restore_clock(0, clock)
    restored.process(rest, TwoPartitions())
    assert [d.key for d in dead2.letters] == ["a"]
    assert table(sink2) == {k: v for k, v in table(sink).items() if k in table(sink2)}
