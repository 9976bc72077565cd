"""Event-time windowing: aggregation, watermark, lateness, gaps, partitions, chunking."""
import numpy as np
import pytest

from streamseq.windowing import NO_WID, Windower, build_spec

H = 3600 * 10**9
M = 60 * 10**9


def windower(agg="mean", cols=("v",), lateness=0, gap="skip", max_fill=48, fields=None, max_jump=-1):
    spec = build_spec(list(cols), agg, H, lateness, gap, max_fill, max_jump)
    w = Windower(spec, fields or len(cols), capacity=8)
    return w


def feed(w, slots, ts, values, partition=None, partitioned=False):
    values = np.asarray(values, float)
    if values.ndim == 1:
        values = values[:, None]
    closed, late, _future, wm = feed_all(w, slots, ts, values, partition, partitioned)
    return closed, late, wm


def feed_all(w, slots, ts, values, partition=None, partitioned=False):
    """(closed, too late, held back as far-future, watermark)."""
    values = np.asarray(values, float)
    if values.ndim == 1:
        values = values[:, None]
    part = np.zeros(len(ts), np.int32) if partition is None else np.asarray(partition, np.int32)
    return w.process(np.asarray(slots, np.int64), np.asarray(ts, np.int64), values, part, partitioned)


def test_aggregations_and_close_on_watermark():
    w = windower(agg={"v": ["mean", "min", "max", "first", "last", "sum", "count"]})
    closed, late, _ = feed(w, [0, 0, 0], [10 * M, 20 * M, 50 * M], [3.0, 1.0, 2.0])
    assert len(closed) == 0 and not late.any()  # watermark 0:50 < end 1:00
    closed, late, _ = feed(w, [0], [H + 5 * M], [7.0])
    assert len(closed) == 1 and closed.wid[0] == 0 and closed.count[0] == 3
    assert closed.features[0].tolist() == [2.0, 1.0, 3.0, 3.0, 2.0, 6.0, 3.0]
    assert not closed.filled[0]


def test_ohlcv():
    w = windower(agg="ohlcv", cols=("price", "size"))
    feed(w, [0, 0, 0], [1 * M, 2 * M, 3 * M], [[10, 1], [12, 2], [9, 4]])
    closed, _, _ = feed(w, [0], [H + M], [[11, 1]])
    assert w.spec.feature_names == ["close", "open", "high", "low", "volume"]
    assert closed.features[0].tolist() == [9.0, 10.0, 12.0, 9.0, 7.0]


def test_out_of_order_within_lateness_is_kept_beyond_is_late():
    w = windower(lateness=30 * M)
    feed(w, [0, 0], [10 * M, H + 10 * M], [1.0, 5.0])  # watermark 0:40: window 0 still open
    closed, late, _ = feed(w, [0], [40 * M], [3.0])  # out of order but within lateness
    assert not late.any() and len(closed) == 0
    closed, late, _ = feed(w, [0], [H + 31 * M], [6.0])  # watermark 1:01 closes window 0
    assert closed.wid.tolist() == [0] and closed.features[0, 0] == 2.0 and closed.count[0] == 2
    closed, late, wm = feed(w, [0, 0], [20 * M, H + 40 * M], [9.0, 6.0])  # 0:20 is now too late
    assert late.tolist() == [True, False]
    assert wm[0] == H + 1 * M


def test_late_within_a_single_batch_is_decided_in_arrival_order():
    w = windower()
    closed, late, _ = feed(w, [0, 0, 0], [10 * M, H + 10 * M, 20 * M], [1.0, 2.0, 3.0])
    assert late.tolist() == [False, False, True]
    assert closed.wid.tolist() == [0] and closed.features[0, 0] == 1.0


def test_gap_ffill_flags_filled_windows_and_skip_does_not():
    for gap, expect in (("ffill", [0, 1, 2, 3]), ("skip", [0, 3])):
        w = windower(gap=gap)
        feed(w, [0], [5 * M], [1.0])
        closed, _, _ = feed(w, [0], [3 * H + 5 * M], [4.0])  # closes window 0 only
        closed2, _, _ = feed(w, [0], [4 * H + 5 * M], [5.0])  # closes window 3, gap 1..2
        wids = closed.wid.tolist() + closed2.wid.tolist()
        assert wids == expect, gap
        if gap == "ffill":
            assert closed2.filled.tolist() == [True, True, False]
            assert closed2.features[:, 0].tolist() == [1.0, 1.0, 4.0]
            assert closed2.count.tolist() == [0, 0, 1]


def test_long_gap_is_not_filled():
    w = windower(gap="ffill", max_fill=2)
    feed(w, [0], [0], [1.0])
    feed(w, [0], [10 * H], [2.0])
    closed, _, _ = feed(w, [0], [11 * H], [3.0])
    assert closed.wid.tolist() == [10] and not closed.filled.any()


def test_partition_watermarks_are_independent():
    w = windower()
    # partition 0 runs far ahead; partition 1's window must not close
    closed, late, _ = feed(w, [0, 1, 0], [5 * M, 5 * M, 10 * H], [1.0, 2.0, 3.0], [0, 1, 0], partitioned=True)
    assert closed.slot.tolist() == [0]
    closed, late, _ = feed(w, [1], [H + M], [2.5], [1], partitioned=True)
    assert closed.slot.tolist() == [1] and not late.any()


def test_chunking_does_not_change_the_windows():
    rng = np.random.default_rng(1)
    n = 3000
    slots = rng.integers(0, 7, n)
    ts = np.sort(rng.integers(0, 200 * H, n)) + rng.integers(-20 * M, 20 * M, n)  # jittered, out of order
    vals = rng.normal(size=n)

    def run(chunk):
        w = windower(lateness=10 * M, gap="ffill", agg={"v": ["mean", "max", "count"]})
        out, lates = [], []
        for a in range(0, n, chunk):
            c, late, _ = feed(w, slots[a:a + chunk], ts[a:a + chunk], vals[a:a + chunk])
            out.append(np.c_[c.slot, c.wid, c.filled, c.features])
            lates.append(late)
        c = w.flush()
        out.append(np.c_[c.slot, c.wid, c.filled, c.features])
        rows = np.concatenate(out)
        return rows[np.lexsort((rows[:, 0], rows[:, 1]))], np.concatenate(lates)

    ref, ref_late = run(n)
    assert ref_late.sum() > 0  # the jitter produces some late records
    for chunk in (1, 7, 250):
        got, got_late = run(chunk)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got_late, ref_late)


def test_snapshot_restore_continues_identically():
    rng = np.random.default_rng(2)
    ts = np.sort(rng.integers(0, 50 * H, 400))
    slots = rng.integers(0, 3, 400)
    vals = rng.normal(size=400)
    full = windower(gap="ffill", lateness=5 * M)
    c1, _, _ = feed(full, slots, ts, vals)

    a = windower(gap="ffill", lateness=5 * M)
    ca, _, _ = feed(a, slots[:200], ts[:200], vals[:200])
    keys = np.array([0, 1, 2])
    snap = a.snapshot(keys)
    b = windower(gap="ffill", lateness=5 * M)
    b.restore(keys, snap, partitioned_time=False)
    cb, _, _ = feed(b, slots[200:], ts[200:], vals[200:])
    np.testing.assert_array_equal(np.r_[ca.wid, cb.wid], c1.wid)
    np.testing.assert_allclose(np.r_[ca.features, cb.features], c1.features)


def test_invalid_spec():
    from streamseq.errors import ConfigError

    with pytest.raises(ConfigError, match="windowing.agg"):
        build_spec(["v"], "median")
    with pytest.raises(ConfigError, match="windowing.gap"):
        build_spec(["v"], "mean", gap="zero")
    with pytest.raises(ConfigError, match="windowing.interval"):
        build_spec(["v"], "mean", interval=0)
    assert NO_WID < 0


def test_partition_without_stream_time_closes_nothing_whatever_the_lateness():
    """A restored key whose partition has no stream time yet must keep its open windows (the
    int64-minimum sentinel used to wrap around when the lateness was subtracted)."""
    src = windower(lateness=5 * M)
    feed(src, [0], [10 * M], [1.0], partition=[0], partitioned=True)
    state = src.snapshot(np.array([0]))
    w = windower(lateness=5 * M)
    w.restore(np.array([0]), state, partitioned_time=True, time_from=np.array([False]))
    assert w.stream_time == {}
    closed, late, _ = feed(w, [1], [20 * M], [2.0], partition=[1], partitioned=True)  # another partition moves
    assert len(closed) == 0 and not late.any()
    assert len(w.cell_slot) == 2  # key 0's window is still open


def test_one_far_future_record_does_not_poison_its_partition():
    w = windower(lateness=5 * M)
    feed(w, [0, 1], [10 * M, 11 * M], [1.0, 2.0])
    year_2150 = 5_680_281_600 * 10**9
    closed, late, future, _ = feed_all(w, [0], [year_2150], [3.0])
    assert future.tolist() == [True] and not late.any() and len(closed) == 0
    assert w.stream_time[0] == 11 * M
    closed, late, future, _ = feed_all(w, [0, 1], [H + 20 * M, H + 21 * M], [4.0, 5.0])
    assert not late.any() and not future.any()
    assert sorted(closed.slot.tolist()) == [0, 1] and closed.wid.tolist() == [0, 0]


def test_a_jump_confirmed_by_a_second_key_moves_stream_time():
    w = windower()
    feed(w, [0, 1], [10 * M, 11 * M], [1.0, 2.0])
    week = 8 * 24 * H
    _, _, future, _ = feed_all(w, [0], [week], [3.0])
    assert future.tolist() == [True]
    closed, late, future, _ = feed_all(w, [1, 0], [week + M, week + 2 * M], [4.0, 5.0])
    assert not future.any() and not late.any()
    assert w.stream_time[0] == week + 2 * M
    assert sorted(closed.slot.tolist()) == [0, 1]  # the old windows closed


def test_single_key_stream_confirms_a_jump_with_its_second_record():
    w = windower()
    feed(w, [0], [10 * M], [1.0])
    week = 8 * 24 * H
    _, _, future, _ = feed_all(w, [0, 0], [week, week + H], [3.0, 4.0])
    assert future.tolist() == [True, False]
    assert w.stream_time[0] == week + H


def test_the_jump_guard_is_the_same_however_the_stream_is_cut():
    rng = np.random.default_rng(3)
    n = 400
    slots = rng.integers(0, 6, n)
    ts = np.sort(rng.integers(0, 300 * H, n))
    ts[rng.choice(n, 5, replace=False)] += 10_000 * H  # outliers
    ts[300:] += 20 * 24 * H  # a real jump of the whole stream
    values = rng.normal(size=n)

    def run(cuts):
        w = windower(lateness=10 * M, max_fill=2)
        outs = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            outs.append(feed_all(w, slots[a:b], ts[a:b], values[a:b]))
        outs.append((w.flush(), None, None, None))
        closed = sorted((int(s), int(wd), float(f)) for c in outs for s, wd, f in
                        zip(c[0].slot, c[0].wid, c[0].features[:, 0]))
        late = np.concatenate([c[1] for c in outs[:-1]])
        fut = np.concatenate([c[2] for c in outs[:-1]])
        return closed, late.tolist(), fut.tolist()

    whole = run([0, n])
    assert whole == run([0, 7, 150, 299, 301, 350, n]) == run(list(range(0, n, 13)) + [n])
    assert 1 <= sum(whole[2]) <= 5


def test_clock_round_trips_through_restore_clock():
    w = windower()
    feed(w, [0, 1], [10 * M, 11 * M], [1.0, 2.0])
    feed_all(w, [0], [8 * 24 * H], [3.0])
    clock = w.clock(0)
    assert clock["st"] == 11 * M and clock["jump"][1] == 1
    w2 = windower()
    w2.restore_clock(0, clock)
    assert w2.clock(0) == clock and w2.clock(1) is None
