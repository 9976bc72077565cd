"""Trainer: training lowers held-out error, the gate rejects worse candidates, schedule, CLI, process."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from streamseq.clock import ManualClock
from streamseq.commands import main
from streamseq.config import from_dict
from streamseq.records import WindowBatch
from streamseq.registry import ModelRegistry
from streamseq.store import WindowStore
from streamseq.synthetic import generate
from streamseq.trainer import RetrainSchedule, Trainer, masked_mae, predict
from streamseq.trainer_process import TrainerProcess

HOUR = 3600 * 10**9
SETTINGS = {
    "forecast": {"horizon": 6, "season": 24, "models": ["transformer", "gru", "naive"], "seed": 0},
    "transformer": {"context": 16, "d_model": 16, "heads": 2, "layers": 1, "ff": 32, "epochs": 4,
                    "batch_size": 64, "lr": 0.003, "dropout": 0.0},
    "rnn": {"hidden": 8, "tbptt": 4, "lr": 0.01},
    "trainer": {"holdout": 12, "max_samples": 3000, "rnn_epochs": 3},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small nets: one intra-op thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**over):
    data = {k: dict(v) for k, v in SETTINGS.items()}
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return from_dict(data)


def fill_store(store: WindowStore, n_keys=12, n_windows=200, seed=1) -> None:
    """One observation per window: window features = the synthetic values, written window end by window end."""
    df = generate(n_keys=n_keys, n_windows=n_windows, seed=seed, irregular=False)
    keys = df["key"].to_numpy().astype(object)
    ends = df["ts"].dt.epoch("ns").to_numpy() + HOUR
    vals = df["value"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, ends[1:] != ends[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        store.write_windows(WindowBatch(keys[a:b], ends[a:b], np.ones(b - a, np.int64), np.zeros(b - a, bool),
                                        vals[a:b, None], ["value"]))
    store.flush()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store, a registry and one training run of the transformer (shared: training is the slow part)."""
    root = tmp_path_factory.mktemp("trainer")
    store = WindowStore(root / "store", flush_rows=10_000)
    fill_store(store)
    registry = ModelRegistry(root / "registry")
    trainer = Trainer(config(), store, registry)
    outcomes = trainer.run_once()
    return root, store, registry, trainer, outcomes


def test_training_lowers_validation_error(trained):
    _, store, registry, trainer, outcomes = trained
    assert trainer.models == ["transformer"]  # GRU refresh is off unless trainer.refresh_rnn
    (o,) = outcomes
    assert o.accepted and o.version == "v0001" and registry.promoted("transformer") == "v0001"
    m = o.metrics
    assert m["val_mae"] < 0.8 * m["incumbent_val_mae"], m  # vs the untrained init (≈ naive)
    _, _, meta = registry.load("transformer", "v0001")
    assert meta["incumbent_version"] == "init" and meta["data_range"][0].startswith("2024-01-01")
    assert meta["val_samples"] > 0 and meta["keys"] == 12
    print(f"\nvalidation MAE (scaled): untrained {m['incumbent_val_mae']:.4f} -> trained {m['val_mae']:.4f}")


def test_gate_rejects_a_worse_candidate(trained):
    _, store, registry, trainer, _ = trained
    X, Y, Xv, Yv = trainer.samples("transformer")
    incumbent, version = trainer.incumbent("transformer")
    assert version == "v0001"
    worse = trainer.init_net("transformer")
    accepted, metrics = trainer.gate(worse, incumbent, Xv, Yv)
    assert not accepted and metrics["val_mae"] > metrics["incumbent_val_mae"]
    accepted, _ = trainer.gate(incumbent, worse, Xv, Yv)
    assert accepted
    # a full run that cannot clear the bar: nothing published, the version in service stays
    strict = Trainer(config(trainer={"min_improvement": 0.9}), store, registry)
    (o,) = strict.run_once()
    assert not o.accepted and o.version is None
    assert registry.promoted("transformer") == "v0001" and registry.versions("transformer") == ["v0001"]


def test_training_is_deterministic_for_a_seed(trained):
    _, store, _, trainer, _ = trained
    data = trainer.samples("transformer", seed=5)
    a = trainer.train_transformer(data, seed=5)
    b = trainer.train_transformer(data, seed=5)
    assert all(torch.equal(a.net.state_dict()[k], b.net.state_dict()[k]) for k in a.net.state_dict())


def test_refresh_rnn_lowers_held_out_error_and_publishes(trained):
    """GRU weights fitted by running the online learner over the stored windows beat the untrained
    network (the per-key baseline) on the held-out windows, and are published with the config."""
    from streamseq.models import rnn_fit

    _, store, registry, _, _ = trained
    trainer = Trainer(config(trainer={"refresh_rnn": True}), store, registry, models=["gru"])
    params = trainer.model_params("gru")
    assert trainer.context("gru") == params.ring == 6 + 4 + 24  # the windows a hot swap rebuilds state from
    data = trainer.rnn_windows(store.read())
    inc, version = trainer.incumbent("gru")
    assert version == "init"
    cut = int(data.wid.max()) - 12 + 1
    cand = trainer.refresh_rnn("gru", data.before(cut), init=inc.state_dict(), seed=0)
    c_mae, n = rnn_fit.evaluate(cand.net, params, data, trainer.grid, cut)
    i_mae, _ = rnn_fit.evaluate(inc, params, data, trainer.grid, cut)
    assert n > 0 and c_mae < i_mae, (c_mae, i_mae)
    (o,) = trainer.run_once()
    assert o.accepted and registry.promoted("gru") == o.version
    sd, config_, _ = registry.load("gru", o.version)
    assert config_["params"]["cell"] == "gru" and config_["params"]["hidden"] == 8
    assert config_["params"]["season"] == 24 and config_["params"]["calendar"] == "day,week"


def test_unreadable_store_file_does_not_stop_training(tmp_path):
    store = WindowStore(tmp_path / "store", flush_rows=500)
    fill_store(store, n_keys=4, n_windows=120)
    store.files()[0].write_bytes(b"PAR1 garbage")
    trainer = Trainer(config(transformer={"epochs": 1}), store, None)
    (o,) = trainer.run_once()
    assert store.unreadable == 1 and "val_mae" in o.metrics


def test_not_enough_data(tmp_path):
    trainer = Trainer(config(), WindowStore(tmp_path), None)
    (o,) = trainer.run_once()
    assert not o.accepted and o.reason == "not enough data"


def test_schedule_windows_time_and_drift():
    s = RetrainSchedule(interval_ns=HOUR, every_windows=5)
    assert [s.due(h * HOUR, 0) for h in range(1, 7)] == [None] * 5 + ["every 5 windows"]
    s.trained(6 * HOUR, 0)
    assert s.due(10 * HOUR, 0) is None and s.due(11 * HOUR, 0) == "every 5 windows"

    s = RetrainSchedule(interval_ns=HOUR, every_ns=24 * HOUR)
    assert s.due(HOUR, 0) is None and s.due(2 * HOUR, 23 * HOUR) is None and s.due(3 * HOUR, 24 * HOUR) == "every 1d"

    s = RetrainSchedule(interval_ns=HOUR, drift=True, min_windows=3)
    s.due(HOUR, 0)
    rng = np.random.default_rng(0)
    assert not any(s.observe_residual(r) for r in rng.normal(0.1, 0.01, 300))
    assert any(s.observe_residual(r) for r in rng.normal(0.5, 0.01, 300)) and s.drifts >= 1
    assert s.due(2 * HOUR, 0) is None  # nothing new to learn from yet
    assert s.due(4 * HOUR, 0) == "drift"
    s.trained(4 * HOUR, 0)
    assert s.due(9 * HOUR, 0) is None

    initial = RetrainSchedule(interval_ns=HOUR, every_windows=100, initial=True)
    assert initial.due(None, 0) is None and initial.due(HOUR, 0) == "initial"

    # --fit-first 4: one run once the stream has 4 windows (counted from its first), then the usual schedule
    first = RetrainSchedule(interval_ns=HOUR, every_windows=3, first_windows=4)
    assert [first.due(h * HOUR, 0) for h in (1, 2, 3)] == [None] * 3 and first.due(4 * HOUR, 0) == "first 4 windows"
    first.trained(4 * HOUR, 0)
    assert first.due(6 * HOUR, 0) is None and first.due(7 * HOUR, 0) == "every 3 windows"
    only = RetrainSchedule(interval_ns=HOUR, first_windows=2)
    assert only.active and only.due(HOUR, 0) is None and only.due(2 * HOUR, 0) == "first 2 windows"
    only.trained(2 * HOUR, 0)
    assert only.due(500 * HOUR, 0) is None


def test_tick_runs_on_the_schedule(tmp_path):
    store = WindowStore(tmp_path / "store", flush_rows=500)
    fill_store(store, n_keys=4, n_windows=100)
    cfg = config(transformer={"epochs": 1}, trainer={"every": "1h", "drift": True})
    trainer = Trainer(cfg, store, ModelRegistry(tmp_path / "reg"))
    clock = ManualClock(0)
    schedule = RetrainSchedule.from_config(cfg, initial=True)
    first = trainer.tick(schedule, clock.now_ns())
    assert first is not None and first[0].name == "transformer"
    clock.advance(1800)
    assert trainer.tick(schedule, clock.now_ns()) is None
    clock.advance(1800)
    assert trainer.tick(schedule, clock.now_ns()) is not None and trainer.runs == 2


def test_train_cli(tmp_path, capsys):
    store = WindowStore(tmp_path / "store", flush_rows=500)
    fill_store(store, n_keys=8, n_windows=150)
    toml = tmp_path / "run.toml"
    toml.write_text(
        '[forecast]\nhorizon = 6\nmodels = ["transformer", "naive"]\n'
        '[transformer]\ncontext = 8\nd_model = 8\nheads = 2\nlayers = 1\nff = 16\nepochs = 4\nlr = 0.005\n'
        '[store]\npath = "store"\n[registry]\npath = "registry"\n[trainer]\nholdout = 12\n')
    assert main(["train", "--config", str(toml), "--once"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("transformer: promoted v0001"), out
    assert ModelRegistry(tmp_path / "registry").promoted("transformer") == "v0001"
    toml.write_text('[forecast]\nmodels = ["transformer"]\n')
    assert main(["train", "--config", str(toml), "--once"]) == 2
    assert "store.path" in capsys.readouterr().err


def test_trainer_process_promotes_without_the_caller_waiting(tmp_path):
    store = WindowStore(tmp_path / "store", flush_rows=500)
    fill_store(store, n_keys=4, n_windows=100)
    cfg = config(transformer={"epochs": 1}, trainer={"every": "1d", "drift": False, "poll_s": 0.2, "threads": 1})
    cfg.store.path = str(tmp_path / "store")
    cfg.registry.path = str(tmp_path / "registry")
    proc = TrainerProcess(cfg)
    t0 = time.perf_counter()
    proc.start()
    assert time.perf_counter() - t0 < 5  # start returns at once: training happens in the child
    reg = ModelRegistry(tmp_path / "registry")
    try:
        deadline = time.monotonic() + 120
        policies = set()
        while reg.promoted("transformer") is None and time.monotonic() < deadline and proc.alive:
            try:
                policies.add(os.sched_getscheduler(proc._proc.pid))
            except OSError:
                pass
            time.sleep(0.2)
        assert os.SCHED_IDLE in policies, policies  # the stream comes first (set as the child starts)
    finally:
        proc.stop(timeout=20)
    assert reg.promoted("transformer") == "v0001" and not proc.alive


def test_predict_and_mae():
    Y = np.array([[1.0, np.nan], [0.0, 2.0]], np.float32)
    assert masked_mae(np.array([[2.0, 5.0], [0.0, 0.0]]), Y) == pytest.approx(1.0)
    assert predict(torch.nn.Linear(1, 1), np.zeros((0, 1), np.float32)).shape == (0, 0)
