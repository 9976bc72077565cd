"""Hot swap in a running pipeline (no gap, state kept, bad artifacts refused) and replay with retraining."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamseq.compose import build_pipeline
from streamseq.config import from_dict
from streamseq.hotswap import ModelWatcher, attach_retraining
from streamseq.memory import ListSink, MemoryPartition
from streamseq.records import ObservationBatch
from streamseq.registry import ModelRegistry, artifact_config
from streamseq.synthetic import generate

HOUR = 3600 * 10**9


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def config(**over):
    data = {
        "threads": 1,  # small nets on a shared 2-core machine: one intra-op thread is fastest
        "forecast": {"horizon": 4, "season": 24, "models": ["transformer", "gru", "naive"], "ensemble": True},
        "transformer": {"context": 12, "d_model": 16, "heads": 2, "layers": 1, "ff": 32, "epochs": 3,
                        "batch_size": 64, "lr": 0.005, "dropout": 0.0},
        "rnn": {"hidden": 8, "tbptt": 4},
        "trainer": {"holdout": 8, "drift": False, "max_samples": 2000},
    }
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return from_dict(data)


def hourly_batches(n_keys=6, n_windows=80, seed=2) -> list[ObservationBatch]:
    """One batch per hour of a regular synthetic stream; the batch of hour h closes window h-1."""
    df = generate(n_keys=n_keys, n_windows=n_windows, seed=seed, irregular=False)
    keys = df["key"].to_numpy().astype(object)
    ts = df["ts"].dt.epoch("ns").to_numpy()
    vals = df["value"].to_numpy()[:, None]
    bounds = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1], True])
    return [ObservationBatch(keys[a:b], ts[a:b], vals[a:b], np.zeros(b - a, np.int32), np.arange(a, b))
            for a, b in zip(bounds[:-1], bounds[1:])]


def other_weights(model, seed=11):
    """Valid weights that differ from the model's (as a retrained version would)."""
    torch.manual_seed(seed)
    return {k: v + 0.05 * torch.randn_like(v) for k, v in model.net.state_dict().items()}


def publish(registry, pipe, name, seed=11, **param_changes):
    model = pipe.models[name]
    params = {**model.config_dict(), **param_changes}
    return registry.publish(name, other_weights(model, seed), artifact_config(name, params), {"val_mae": 0.1})


def by_model(sink: ListSink) -> dict:
    out = {}
    for b in sink.batches:
        for k in b.keys.tolist():
            out.setdefault(b.model, {})[(k, b.origin)] = b.model_version
    return out


def test_hot_swap_changes_version_with_no_gap_and_keeps_state(tmp_path):
    pipe = build_pipeline(config())
    sink = ListSink()
    pipe.add_sink(sink)
    registry = ModelRegistry(tmp_path)
    watcher = ModelWatcher(registry, pipe)
    batches = hourly_batches()
    for b in batches[:40]:
        pipe.process(b)
        assert watcher.check() == []
    tf, gru = pipe.models["transformer"], pipe.models["gru"]
    slots = np.arange(len(pipe.keys))
    before_t, before_g = tf.snapshot(slots), gru.snapshot(slots)
    registry.promote("transformer", publish(registry, pipe, "transformer"))
    registry.promote("gru", publish(registry, pipe, "gru"))
    assert sorted(watcher.check()) == ["gru@v0001", "transformer@v0001"]
    assert watcher.check() == []
    after_t, after_g = tf.snapshot(slots), gru.snapshot(slots)
    assert all(np.array_equal(before_t[k], after_t[k]) for k in before_t)  # contexts and statistics kept
    assert all(np.array_equal(before_g[k], after_g[k]) for k in ("vals", "step", "wid", "n", "sq", "cross", "mean", "var"))
    assert not np.array_equal(before_g["h"], after_g["h"])  # hidden states rebuilt under the new weights
    swap_origin = 40 * HOUR + batches[0].ts[0]  # window 39 closed in batch 40, so origins from here use v0001
    for b in batches[40:]:
        pipe.process(b)
    pipe.finish()

    got = by_model(sink)
    keys = sorted(set(pipe.keys._slot))
    origins = sorted({o for (_, o) in got["naive"]})
    assert len(origins) == 80
    for name in ("transformer", "gru", "naive", "ensemble"):
        assert set(got[name]) == {(k, o) for k in keys for o in origins}, name  # every key at every window end
    for (k, o), v in got["transformer"].items():
        assert v == ("init" if o < swap_origin else "v0001"), (k, o, v)
    assert {v for (k, o), v in got["gru"].items() if o >= swap_origin} == {"v0001"}
    assert {v for (k, o), v in got["ensemble"].items() if o >= swap_origin} == {"transformer@v0001+gru@v0001+naive@0"}
    assert all(np.isfinite(b.mean).all() for b in sink.batches)


def test_bad_artifact_is_refused_and_the_model_kept(tmp_path, caplog):
    pipe = build_pipeline(config(forecast={"models": ["transformer", "naive"], "ensemble": False}))
    sink = ListSink()
    pipe.add_sink(sink)
    registry = ModelRegistry(tmp_path)
    watcher = ModelWatcher(registry, pipe)
    batches = hourly_batches(n_windows=30)
    for b in batches[:10]:
        pipe.process(b)
    good = publish(registry, pipe, "transformer")
    bad = publish(registry, pipe, "transformer", seed=12)
    weights = tmp_path / "transformer" / bad / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated on a shared volume
    (tmp_path / "transformer" / "PROMOTED").write_text(json.dumps({"version": bad, "history": [bad]}))
    w0 = {k: v.clone() for k, v in pipe.models["transformer"].net.state_dict().items()}
    assert watcher.check() == [] and watcher.errors == 1
    assert watcher.check() == [] and watcher.errors == 1  # refused once, not retried every batch
    assert "refused transformer v0002" in caplog.text
    assert pipe.models["transformer"].version == "init"
    assert all(torch.equal(w0[k], v) for k, v in pipe.models["transformer"].net.state_dict().items())
    for b in batches[10:15]:
        pipe.process(b)
    # an artifact built for another context length does not fit the running model
    wrong = publish(registry, pipe, "transformer", context=24)
    registry.promote("transformer", wrong)
    assert watcher.check() == [] and watcher.errors == 2 and "does not fit the running model" in caplog.text
    registry.promote("transformer", good)
    assert watcher.check() == [f"transformer@{good}"]
    registry.promote("transformer", publish(registry, pipe, "transformer", seed=13))
    assert watcher.check() == ["transformer@v0004"]
    registry.rollback("transformer")
    assert watcher.check() == [f"transformer@{good}"]
    for b in batches[15:]:
        pipe.process(b)
    versions = [b.model_version for b in sink.batches if b.model == "transformer"]
    assert versions[:14] == ["init"] * 14 and versions[-1] == good and len(versions) == 29


def replay(cfg, batches):
    pipe = build_pipeline(cfg)
    sink = ListSink()
    pipe.add_sink(sink)
    retrainer = attach_retraining(pipe, cfg)
    pipe.run(MemoryPartition(batches))
    store = retrainer.trainer.store.path
    assert store.is_dir()
    retrainer.close()
    assert not store.exists()
    return sink, retrainer


def test_replay_with_retraining_is_deterministic():
    cfg = config(forecast={"models": ["transformer", "naive"], "ensemble": False},
                 trainer={"every_windows": 48, "drift": True})
    batches = hourly_batches(n_keys=6, n_windows=130)
    a, ra = replay(cfg, batches)
    b, rb = replay(cfg, batches)
    assert ra.history == rb.history and len(ra.history) == 2
    assert [r["end"] for r in ra.history] == ["2024-01-03T01:00:00Z", "2024-01-05T01:00:00Z"]
    assert any(r["accepted"] for r in ra.history), ra.history
    assert len(a.batches) == len(b.batches)
    for x, y in zip(a.batches, b.batches):
        assert (x.model, x.model_version, x.origin) == (y.model, y.model_version, y.origin)
        assert np.array_equal(x.mean, y.mean) and np.array_equal(x.keys, y.keys)
    versions = [x.model_version for x in a.batches if x.model == "transformer"]
    first = next(r for r in ra.history if r["accepted"])
    assert first["version"] == "r0001" and "r0001" in versions and versions[0] == "init"
    # the swap happens between window ends: forecasts at the retraining end are still the old model's
    i = versions.index("r0001")
    assert versions[i - 1] == "init"
