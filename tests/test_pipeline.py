"""The pipeline with an in-memory source and a list sink."""
import numpy as np
import polars as pl
from helpers import H, frame_batches, obs, pipeline, run

from streamseq.memory import MemoryPartition
from streamseq.pipeline import ENSEMBLE
from streamseq.synthetic import generate


def stream(keys=6, windows=120, irregular=False, seed=0):
    return generate(keys, windows, seed=seed, irregular=irregular)


def all_forecasts(sink):
    rows = []
    for b in sink.batches:
        for i, k in enumerate(b.keys.tolist()):
            rows.append((b.model, b.model_version, k, b.origin, b.mean[i].tobytes(), b.lo[i].tobytes(), b.hi[i].tobytes()))
    return sorted(rows)


def test_every_key_gets_a_forecast_at_every_window_end():
    df = stream(irregular=False)
    pipe, sink, dead = pipeline(models=("gru", "naive"), horizon=4)
    run(pipe, frame_batches(df, 500))
    assert not dead.letters
    gru = [b for b in sink.batches if b.model == "gru"]
    origins = {b.origin for b in gru}
    assert len(origins) == 120
    assert all(len(b) == 6 and b.mean.shape == (6, 4) for b in gru)
    assert all(b.origin % H == 0 for b in gru)
    assert pipe.stats.windows_closed == 6 * 120


def test_same_input_same_forecasts():
    df = stream(irregular=True)
    outs = []
    for _ in range(2):
        pipe, sink, _ = pipeline(models=("gru", "lstm", "seasonal_naive"), ensemble=True)
        run(pipe, frame_batches(df, 300))
        outs.append(all_forecasts(sink))
    assert outs[0] == outs[1]


def test_chunking_does_not_change_forecasts_with_learning_on():
    df = stream(irregular=False, keys=5, windows=80)
    outs = []
    for chunk in (37, 400, 10_000):
        pipe, sink, _ = pipeline(models=("gru", "lstm"), learn=True)
        run(pipe, frame_batches(df, chunk))
        outs.append(all_forecasts(sink))
    assert outs[0] == outs[1] == outs[2]


def test_chunking_does_not_change_forecasts_with_gaps_and_frozen_weights():
    df = stream(irregular=True, keys=7, windows=100, seed=3)
    outs = []
    for chunk in (13, 1000):
        pipe, sink, _ = pipeline(models=("gru", "seasonal_naive"), learn=False, gap="ffill")
        run(pipe, frame_batches(df, chunk))
        outs.append(all_forecasts(sink))
        assert pipe.stats.windows_filled > 0
    assert outs[0] == outs[1]


def test_late_records_go_to_dead_letters_with_reason_and_position():
    pipe, sink, dead = pipeline(models=("naive",))
    batches = [obs(["a", "a", "a", "a"], [0, 2 * H, H // 2, 3 * H], [1.0, 2.0, 3.0, 4.0], offset=[10, 11, 12, 13])]
    run(pipe, batches)
    assert len(dead.letters) == 1
    dl = dead.letters[0]
    assert dl.reason.startswith("too late") and dl.offset == 12 and dl.key == "a"
    assert pipe.stats.late_records == 1 and pipe.stats.dead_letters == 1


def test_snapshot_and_restore_keys_continue_identically():
    df = stream(keys=4, windows=100)
    batches = frame_batches(df, 50)
    ref, ref_sink, _ = pipeline(models=("gru", "seasonal_naive", "snarimax"), learn=False)
    run(ref, batches)

    first, first_sink, _ = pipeline(models=("gru", "seasonal_naive", "snarimax"), learn=False)
    for b in batches[:4]:
        first.process(b)
    keys = sorted(k for k, _ in first.keys.items())
    state = first.snapshot_keys(keys)
    second, second_sink, _ = pipeline(models=("gru", "seasonal_naive", "snarimax"), learn=False)
    second.models["gru"].net.load_state_dict(first.models["gru"].net.state_dict())
    second.restore_keys(keys, state, partitioned_time=False)
    run(second, batches[4:])
    got = all_forecasts(first_sink) + all_forecasts(second_sink)
    assert sorted(got) == all_forecasts(ref_sink)


def test_idempotent_apply_skips_records_already_in_restored_state():
    Part = partitioned  # noqa: N806 - a partition whose event time is per partition id, as on Kafka

    pipe, sink, _ = pipeline(models=("naive",))
    b = obs(["a"] * 3, [0, H, 2 * H], [1.0, 2.0, 3.0], partition=[0, 0, 0], offset=[0, 1, 2])
    pipe.process(b, Part())
    n_before = len(sink.batches)
    pipe.process(b, Part())  # redelivered after a crash: already applied
    assert pipe.stats.records_skipped == 3 and len(sink.batches) == n_before


def test_intervals_cover_about_the_level():
    rng = np.random.default_rng(0)
    n, T = 20, 400
    ts = np.repeat(np.arange(T) * H, n)
    keys = np.tile([f"k{i}" for i in range(n)], T)
    y = 100 + rng.normal(size=n * T) * 5
    pipe, sink, _ = pipeline(models=("naive",), horizon=2)
    run(pipe, [obs(keys, ts, y)])
    actual = {(k, t + H): v for k, t, v in zip(keys, ts, y)}
    inside = total = 0
    for b in sink.batches:
        if b.origin < 100 * H:
            continue
        for i, k in enumerate(b.keys.tolist()):
            a = actual.get((k, b.origin + H))  # step 1 targets the window that starts at origin
            if a is None or not np.isfinite(b.lo[i, 0]):
                continue
            total += 1
            inside += b.lo[i, 0] <= a <= b.hi[i, 0]
    assert total > 1000
    assert 0.85 <= inside / total <= 0.95


def test_ensemble_weights_models_and_names_its_members():
    df = stream(keys=4, windows=150)
    pipe, sink, _ = pipeline(models=("naive", "seasonal_naive"), ensemble=True, season=24)
    run(pipe, frame_batches(df, 500))
    ens = [b for b in sink.batches if b.model == ENSEMBLE]
    assert ens and ens[0].model_version == "naive@0+seasonal_naive@0"
    last = {b.model: b for b in sink.batches[-3:]}
    m = last[ENSEMBLE].mean
    lo = np.minimum(last["naive"].mean, last["seasonal_naive"].mean)
    hi = np.maximum(last["naive"].mean, last["seasonal_naive"].mean)
    assert np.all((m >= lo - 1e-9) & (m <= hi + 1e-9))


def test_windows_reach_window_sinks():
    class Store:
        def __init__(self):
            self.rows = 0

        def write_windows(self, wb):
            self.rows += len(wb)

    df = stream(keys=3, windows=30)
    pipe, _, _ = pipeline(models=("naive",))
    store = Store()
    pipe.add_window_sink(store)
    run(pipe, frame_batches(df, 100))
    assert store.rows == 90
    assert isinstance(df, pl.DataFrame)


def test_exact_duplicates_are_dead_letters_and_do_not_change_windows():
    pipe, sink, dead = pipeline(models=("naive",))
    b = obs(["a", "a", "b", "a", "a"], [0, 0, 0, H // 2, 2 * H], [1.0, 1.0, 1.0, 3.0, 5.0], offset=[0, 1, 2, 3, 4])
    run(pipe, [b])
    assert [d.offset for d in dead.letters] == [1]
    assert dead.letters[0].reason.startswith("duplicate record")
    first = [x for x in sink.batches if x.model == "naive" and "a" in x.keys.tolist()][0]
    assert first.mean[list(first.keys).index("a"), 0] == 2.0  # mean of 1 and 3: the duplicate is not counted


def test_state_from_a_differently_configured_model_resets_instead_of_failing():
    df = stream(keys=3, windows=40)
    a, _, _ = pipeline(models=("gru", "naive"), hidden=16, learn=False)
    run(a, frame_batches(df, 100))
    keys = sorted(k for k, _ in a.keys.items())
    state = a.snapshot_keys(keys)
    b, sink, _ = pipeline(models=("gru", "naive"), hidden=32, learn=False)
    b.restore_keys(keys, state, partitioned_time=False)
    slot = b.keys.get(keys[0])
    assert b.models["gru"]._n[slot] == 0  # reset: the hidden sizes differ
    assert b.models["naive"]._last[slot] == a.models["naive"]._last[a.keys.get(keys[0])]  # restored


def test_restore_after_an_interrupted_checkpoint_keeps_other_keys_windows_open():
    """Key b's state was written by a checkpoint whose offset commit never happened (b is ahead).
    Its later event time must not close key a's window before a's redelivered record is back."""
    from streamseq.state_codec import decode_keys, encode_keys

    Part = partitioned  # noqa: N806 - a partition whose event time is per partition id, as on Kafka

    M = H // 60
    first = obs(["a", "b"], [0, 0], [1.0, 10.0], partition=[0, 0], offset=[0, 1])
    redelivered = obs(["a", "b"], [30 * M, 70 * M], [3.0, 20.0], partition=[0, 0], offset=[2, 3])
    later = obs(["a", "b"], [130 * M, 130 * M], [5.0, 30.0], partition=[0, 0], offset=[4, 5])

    before, _, _ = pipeline(models=("naive",))
    before.process(first, Part())
    at_commit = encode_keys(["a", "b"], before.snapshot_keys(["a", "b"]))  # committed offset: 2
    before.process(redelivered, Part())
    b_ahead = encode_keys(["b"], before.snapshot_keys(["b"]))  # written, but the commit never happened
    keys, state = decode_keys({**at_commit, **b_ahead})

    def resume(committed):
        pipe, sink, dead = pipeline(models=("naive",))
        pipe.restore_keys(keys, state, partitioned_time=True, committed=committed)
        for b in (redelivered, later):
            pipe.process(b, Part())
        a_at_1h = [fb.mean[list(fb.keys).index("a"), 0] for fb in sink.batches if fb.origin == H and "a" in fb.keys]
        return a_at_1h, dead.letters

    a_at_1h, letters = resume({0: 2})
    assert a_at_1h == [2.0] and not letters  # mean of 1 and 3: the redelivered record counted
    a_at_1h, letters = resume(None)  # without the committed offset b's time would close a's window early
    assert a_at_1h == [1.0] and letters[0].reason.startswith("too late")


def partitioned():
    return MemoryPartition([], partitioned_time=True)
