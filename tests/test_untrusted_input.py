"""Bytes from outside never run code and never stop a worker.

Changelog records, registry artifacts, observation messages, replay files and
config files are fuzzed (seeded, a few seconds each) and hand-crafted: each
decoder returns a valid value or raises the project's own error
(``StreamseqError``). The exploit blob of issue 14, a protocol-4 pickle that
reaches ``eval`` through a dotted name under a river module
(``river.time_series.snarimax`` / ``SNARIMAX.__init__.__builtins__.get``), is put
everywhere bytes come in; the file its code would create never appears.
"""
from __future__ import annotations

import ast
import collections
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
import torch
from helpers import H, obs
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from streamseq.config import load as load_config
from streamseq.errors import StreamseqError
from streamseq.registry import ModelRegistry, artifact_config
from streamseq.state_codec import MAX_RECORD_BYTES, RESET, decode_keys, encode_keys
from streamseq_connectors.kafka.settings import KafkaSettings
from streamseq_connectors.kafka.source import JsonObservationDecoder
from streamseq_connectors.replay import ReplaySource

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["a", "b", "c", "d", "e"]
MODELS = ("gru", "transformer", "snarimax", "holt_winters", "naive", "seasonal_naive")


def exploit_blob(marker: Path) -> bytes:
    """The issue's blob: find_class("river.time_series.snarimax", "SNARIMAX.__init__.__builtins__.get")
    gives the builtins' dict.get, which gives eval, which runs the code."""
    code = f"open({str(marker)!r}, 'w').write('pwned')"

    def text(s: str) -> bytes:
        b = s.encode()
        assert len(b) < 256
        return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE

    return (b"\x80\x04" + text("river.time_series.snarimax") + text("SNARIMAX.__init__.__builtins__.get")
            + b"\x93" + text("eval") + b"\x85R" + text(code) + b"\x85R.")  # STACK_GLOBAL, call, call


def test_the_exploit_blob_is_live(tmp_path):
    """Unpickled (in a child process), the blob does run its code: the tests below are not vacuous."""
    marker = tmp_path / "pwned-by-pickle"
    blob = tmp_path / "blob"
    blob.write_bytes(exploit_blob(marker))
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())",
                    str(blob)], check=True, timeout=120)
    assert marker.read_text() == "pwned"


def test_no_module_unpickles():
    """Nothing in streamseq/ or connectors/ imports a code-running loader or calls one."""
    banned_modules = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
    found = []
    for path in sorted([*ROOT.glob("streamseq/**/*.py"), *ROOT.glob("connectors/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            found += [f"{path.relative_to(ROOT)}: import {n}" for n in names if n in banned_modules]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                call = ast.unparse(node.func)
                if call in ("torch.load", "np.load", "numpy.load", "pd.read_pickle", "pandas.read_pickle"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {call}")
                if any(k.arg == "allow_pickle" for k in node.keywords):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: allow_pickle")
    assert not found, found


# -- changelog records ----------------------------------------------------------------------------
class _Part:
    partitioned_time = True

    def origin(self, p):
        return "obs", p


def _pipeline(learn=False):
    from helpers import pipeline

    pipe, sink, dead = pipeline(models=MODELS, horizon=3, season=4, hidden=8, learn=learn)
    return pipe, sink


def _batch(windows, offset0, seed):
    rng = np.random.default_rng(seed)
    keys, ts, vals = [], [], []
    for w in windows:
        for k in KEYS:
            keys.append(k)
            ts.append(w * H + H // 2)
            vals.append(10 + 5 * np.sin(w / 2) + rng.normal())
    n = len(keys)
    return obs(keys, ts, vals, partition=np.zeros(n), offset=np.arange(offset0, offset0 + n))


@pytest.fixture(scope="module")
def trained():
    """A pipeline after 30 windows of 5 keys, and the changelog records of its keys."""
    pipe, _ = _pipeline()
    pipe.process(_batch(range(30), 0, seed=0), _Part())
    return pipe, encode_keys(KEYS, pipe.snapshot_keys(KEYS))


def _restore(records, learn=False):
    """A fresh worker's pipeline restores the records, then goes on with the stream."""
    pipe, sink = _pipeline(learn=learn)
    keys, state = decode_keys(records, pipe.state_template())
    pipe.restore_keys(keys, state, partitioned_time=True, committed={0: 150}, partitions={0})
    pipe.process(_batch(range(30, 34), 150, seed=1), _Part())
    return pipe, sink, keys


def _split(record: bytes):
    n = int.from_bytes(record[:8], "little")
    return json.loads(record[8:8 + n]), record[8 + n:]


def _join(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + data


def _with_tensors(record: bytes, edit) -> bytes:
    """The record with its tensors changed by ``edit(tensors)`` (metadata kept)."""
    header, _ = _split(record)
    tensors = dict(st_load(record))
    edit(tensors)
    return st_save(tensors, metadata=header["__metadata__"])


def test_exploit_blob_in_the_changelog_runs_nothing(trained, tmp_path):
    pipe, records = trained
    marker = tmp_path / "pwned"
    blob = np.frombuffer(exploit_blob(marker), np.uint8)

    def as_tree(t):
        t["model.snarimax/tree#blob"] = blob.copy()

    def as_old_field(t):  # the field the pickle used to travel in
        t["model.snarimax/blob#blob"] = blob.copy()
        del t["model.snarimax/tree#blob"], t["model.snarimax/values#ragged"]

    for whole, variant in ((True, {**records, "a": exploit_blob(marker)}),
                           (False, {**records, "a": _with_tensors(records["a"], as_tree)}),
                           (False, {**records, "a": _with_tensors(records["a"], as_old_field)})):
        restored, _, keys = _restore(variant)
        assert not marker.exists()
        a, b = restored.keys.get("a"), restored.keys.get("b")
        assert restored.models["snarimax"]._n[a] <= 4 < restored.models["snarimax"]._n[b]  # a: afresh
        # the whole record refused, or only its SNARIMAX part (the key's windows and GRU state restored)
        assert (restored.models["gru"]._n[a] <= 4) == whole and restored.models["gru"]._n[b] > 30
    # and straight into the forecaster's restore
    snarimax = restored.models["snarimax"]
    slots = np.array([restored.keys.get("b")])
    snap = snarimax.snapshot(slots)
    snap["tree"][0] = exploit_blob(marker)
    snarimax.restore(slots, snap)
    assert snarimax._models[int(slots[0])] is None and not marker.exists()


def test_restored_records_continue_like_the_original(trained):
    """The control for the fuzz below: unchanged records restore every key exactly."""
    pipe, records = trained
    restored, sink, keys = _restore(records)
    assert keys == KEYS
    reference, ref_sink = _pipeline()
    reference.process(_batch(range(30), 0, seed=0), _Part())
    reference.process(_batch(range(30, 34), 150, seed=1), _Part())
    ours = sorted((b.model, b.origin, k, b.mean[i].tobytes()) for b in sink.batches for i, k in enumerate(b.keys))
    theirs = sorted((b.model, b.origin, k, b.mean[i].tobytes()) for b in ref_sink.batches
                    for i, k in enumerate(b.keys) if b.origin >= 30 * H)
    assert ours == theirs and len(ours) > 0


_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "XX"]
_NAMES = ["model.gru/h", "model.gru/h#blob", "model.gru/h#ragged", "windower/cell_owner", "#reset/model.gru",
          "pipeline/x", "model.other/x", "x", "model.snarimax/tree", "windower/cell_wid#blob", "a/b/c#ragged#blob"]


def _mutate(record: bytes, rng: random.Random, marker: Path) -> bytes:
    """One random change: bytes, header, or the values and shapes of a tensor."""
    op = rng.randrange(16)  # 11..15: values, dtypes and shapes of a tensor
    if len(record) < 16:
        return record + bytes(rng.randrange(256) for _ in range(rng.randrange(16)))
    if op == 0:
        return record[: rng.randrange(len(record))]
    if op == 1:
        b = bytearray(record)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if op == 2:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 8, 64, 600])))
    if op == 3:
        return record + b"\0" * (MAX_RECORD_BYTES + 1 - len(record))
    if op == 4:
        return rng.choice([exploit_blob(marker), (2**63).to_bytes(8, "little") + record[8:],
                           (len(record)).to_bytes(8, "little") + record[8:], b"\xff" * 8 + b"{}"])
    try:
        header, data = _split(record)
        names = [n for n in header if n != "__metadata__" and isinstance(header[n], dict)]
        assert names and isinstance(header.get("__metadata__"), dict)
    except (ValueError, AssertionError, AttributeError):  # an earlier change left no header to work on
        return record[::-1]
    name = rng.choice(names)
    if op == 5:
        header[name]["dtype"] = rng.choice(_DTYPES)
    elif op == 6:
        header[name]["shape"] = [rng.choice([0, 1, 2, 3, 8, 2**31, 2**40]) for _ in range(rng.randint(0, 4))]
    elif op == 7:
        header[name]["data_offsets"] = sorted(rng.randrange(-4, len(data) + 64) for _ in range(2))
    elif op == 8:
        new = rng.choice(_NAMES)
        header[new] = header.pop(name) if rng.random() < 0.5 else dict(header[name])
    elif op == 9:
        meta = header["__metadata__"]
        key = rng.choice(["format", "key", "extra"])
        meta[key] = rng.choice(["streamseq.state/v0", "streamseq.state/v1", "b", "", "x" * 300])
    elif op == 10:
        for _ in range(rng.choice([1, 100, 5000])):
            header[f"model.gru/x{rng.randrange(10**9)}"] = dict(header[name])
    else:
        try:
            return _with_tensors(record, lambda t: _poke(t, rng, marker))
        except Exception:  # noqa: BLE001 - not a readable record any more: change its bytes instead
            return record[: len(record) // 2]
    return _join(header, data)


def _poke(t: dict, rng: random.Random, marker: Path) -> None:
    """Values a worker never writes, with dtypes and shapes that safetensors accepts."""
    name = rng.choice(sorted(t))
    a = t[name]
    choice = rng.randrange(7)
    if choice == 0 and a.size:
        a = a.copy()
        special = [np.nan, np.inf, -np.inf, 1e308] if a.dtype.kind == "f" else (
            [np.iinfo(a.dtype).min, np.iinfo(a.dtype).max, -1, 2**31] if a.dtype.kind in "iu" else [1])
        a.reshape(-1)[rng.randrange(a.size)] = rng.choice(special) if a.dtype.kind != "u" else 255
        t[name] = a
    elif choice == 1:
        t[name] = a.astype(rng.choice([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_]))
    elif choice == 2:
        t[name] = np.concatenate([a, a]) if a.ndim else a
    elif choice == 3:
        t[name] = a.reshape(-1)
    elif choice == 4:
        t[name] = np.zeros((rng.choice([0, 2, 50]),) + a.shape[1:], a.dtype)
    elif choice == 5:
        del t[name]
    else:
        t[name] = rng.choice([np.frombuffer(exploit_blob(marker), np.uint8).copy(),
                              np.frombuffer(b'{"y_hist": 1e999}', np.uint8).copy(),
                              np.frombuffer(b"[" * 5000, np.uint8).copy(), np.full(3, np.nan)])


def _check_stacked(keys, state, records):
    assert keys == sorted(keys) and set(keys) <= set(records)
    owner = state["windower/cell_owner"]
    assert len(owner) == len(state["windower/cell_wid"]) == len(state["windower/cell_stats"])
    assert (owner < len(keys)).all() and (owner >= 0).all()
    for name, arr in state.items():
        if name not in ("windower/cell_owner", "windower/cell_wid", "windower/cell_stats"):
            assert len(arr) == len(keys), name
        if arr.dtype.kind == "f":
            assert not np.isinf(arr).any(), name


def test_changelog_records_fuzzed(trained, tmp_path):
    """Random changes to one key's record: decoding never raises and refuses what does not fit; a
    worker restoring them goes on with the stream, and its shared GRU weights stay finite."""
    pipe, records = trained
    template = pipe.state_template()
    rng = random.Random(14)
    marker = tmp_path / "pwned"
    outcomes = collections.Counter()
    for i in range(300):
        victim = rng.choice(KEYS)
        record = records[victim]
        for _ in range(rng.choice([1, 1, 2])):
            record = _mutate(record, rng, marker)
        fuzzed = {**records, victim: record}
        keys, state = decode_keys(fuzzed, template)
        _check_stacked(keys, state, fuzzed)
        resets = [n for n in state if n.startswith(RESET) and state[n][keys.index(victim)]] if victim in keys else []
        outcomes["refused" if victim not in keys else "part reset" if resets else "kept"] += 1
        if i % 20 == 0:
            restored, sink, _ = _restore(fuzzed, learn=True)
            assert all(torch.isfinite(p).all() for p in restored.models["gru"].net.parameters())
            assert all(np.isfinite(b.mean[[k != victim for k in b.keys]]).all()
                       for b in sink.batches if b.model in ("gru", "transformer", "naive", "seasonal_naive"))
    assert not marker.exists()
    assert outcomes["refused"] > 50 and outcomes["part reset"] > 20 and outcomes["kept"] > 10, outcomes


@pytest.mark.parametrize("what", ["nan hidden state", "inf statistics", "int for float", "wrong hidden size",
                                  "negative count", "huge mean", "negative variance", "blob of floats",
                                  "ragged of ints", "river values NaN"])
def test_crafted_model_state_resets_only_that_part(trained, what):
    pipe, records = trained

    def edit(t):
        if what == "nan hidden state":
            t["model.gru/h"][0, 0] = np.nan
        elif what == "inf statistics":
            t["model.gru/var"][0, 0] = np.inf
        elif what == "int for float":
            t["model.gru/h"] = t["model.gru/h"].astype(np.int32)
        elif what == "wrong hidden size":
            t["model.gru/h"] = np.zeros((1, 9), np.float32)
        elif what == "negative count":  # its normalisation weight 1 / (n + 1) would be inf
            t["model.gru/n"] = np.full(1, -1, np.int64)
        elif what == "huge mean":  # finite, but inf in float32: the normalised input is NaN
            t["model.gru/mean"][0, 0] = 1e300
        elif what == "negative variance":
            t["model.gru/var"][0, 0] = -3e38
        elif what == "blob of floats":
            t["model.snarimax/tree#blob"] = np.zeros(4, np.float64)
        elif what == "ragged of ints":
            t["model.snarimax/values#ragged"] = np.zeros(4, np.int64)
        else:
            t["model.snarimax/values#ragged"] = np.full_like(t["model.snarimax/values#ragged"], np.nan)

    restored, sink, keys = _restore({**records, "c": _with_tensors(records["c"], edit)}, learn=True)
    assert keys == KEYS  # the key is restored...
    c, b = restored.keys.get("c"), restored.keys.get("b")
    part = "gru" if any(w in what for w in ("hidden", "statistics", "int for", "count", "mean", "variance")) \
        else "snarimax"
    if part == "gru":
        assert restored.models["gru"]._n[c] == 4 and restored.models["gru"]._n[b] > 4  # ...but its GRU afresh
    elif what != "river values NaN":
        assert restored.models["snarimax"]._n[c] == 4 and restored.models["snarimax"]._n[b] > 4
    assert restored.windower.last_wid[c] == restored.windower.last_wid[b]  # its windows were restored
    assert all(torch.isfinite(p).all() for p in restored.models["gru"].net.parameters())  # shared weights
    assert all(np.isfinite(b.mean).all() for b in sink.batches if b.model in ("gru", "transformer"))


@pytest.mark.parametrize("field,value", [
    ("windower/max_ts", 9 * 10**18), ("pipeline/last_ts", -5), ("windower/last_wid", 2**62),
    ("windower/key_part", 7), ("pipeline/last_offset", -9), ("windower/cell_wid", -1),
    ("windower/cell_stats", np.nan), ("windower/cell_stats", 0.0), ("windower/last_feat", np.inf),
    ("pipeline/last_vals", np.inf),
])
def test_crafted_core_state_leaves_that_key_afresh(trained, field, value):
    """Times that would overflow window arithmetic, an unassigned partition, empty or non-finite open
    windows: the key starts afresh and the stream goes on; the other keys are restored."""
    pipe, _ = trained
    p2, _ = _pipeline()
    p2.process(_batch(range(30), 0, seed=0), _Part())
    p2.process(obs(KEYS, [30 * H + 1] * 5, [1.0] * 5, partition=np.zeros(5), offset=np.arange(150, 155)), _Part())
    records = encode_keys(KEYS, p2.snapshot_keys(KEYS))  # every key has an open window

    def edit(t):
        arr = t[field].copy()
        if field == "windower/cell_stats" and value == 0.0:
            arr[..., 1] = 0.0  # a window without a record: its mean divides by zero
        else:
            arr.reshape(-1)[0] = value
        t[field] = arr

    restored, sink, keys = _restore({**records, "d": _with_tensors(records["d"], edit)})
    n = {k: int(restored.models["gru"]._n[restored.keys.get(k)]) for k in KEYS}
    assert n["d"] <= 4 and all(n[k] > 30 for k in KEYS if k != "d"), n  # d: only the windows after the restore
    assert all(np.isfinite(b.mean).all() for b in sink.batches if b.model == "gru")


def test_oversized_and_foreign_records(trained):
    pipe, records = trained
    template = pipe.state_template()
    big = _with_tensors(records["a"], lambda t: t.update({"model.gru/pad": np.zeros(MAX_RECORD_BYTES // 8 + 1)}))
    other_key = records["b"]
    v0 = _join({**_split(records["c"])[0], "__metadata__": {"format": "streamseq.state/v0", "key": "c"}},
               _split(records["c"])[1])
    keys, state = decode_keys({**records, "a": big, "d": other_key, "c": v0, "e": "not bytes"}, template)
    assert keys == ["b"]
    keys, _ = decode_keys({}, template)
    assert keys == []


# -- registry artifacts ---------------------------------------------------------------------------
def _artifact(tmp_path):
    from streamseq.models.transformer import TransformerConfig, init_net

    cfg = TransformerConfig(context=4, d_model=8, heads=2, layers=1, ff=8, horizon=2)
    reg = ModelRegistry(tmp_path / "reg")
    v = reg.publish("transformer", init_net(cfg).state_dict(), artifact_config("transformer", cfg), {"val_mae": 1.0})
    reg.promote("transformer", v)
    return reg, reg.path / "transformer" / v


def _registry_calls(reg):
    for call in (lambda: reg.load("transformer", "v0001"), lambda: reg.promoted("transformer"),
                 lambda: reg.list(), lambda: reg.rollback("transformer"), lambda: reg.promote("transformer", "v0001")):
        try:
            call()
        except StreamseqError:
            pass


def test_registry_artifacts_fuzzed(tmp_path):
    reg, where = _artifact(tmp_path)
    originals = {f: (where / f).read_bytes() for f in ("weights.safetensors", "config.json", "meta.json")}
    promoted = (reg.path / "transformer" / "PROMOTED").read_bytes()
    rng = random.Random(7)
    marker = tmp_path / "pwned"
    params = json.loads(originals["config.json"])["params"]
    odd = [None, True, -1, 0, 2**70, 1.5, float("nan"), "x", [], {}, "8", 10**6, 2**14 + 1]
    for _ in range(150):
        target = rng.choice(["weights.safetensors", "config.json", "meta.json", "PROMOTED"])
        path = reg.path / "transformer" / "PROMOTED" if target == "PROMOTED" else where / target
        data = promoted if target == "PROMOTED" else originals[target]
        op = rng.randrange(6)
        if op == 0:
            data = data[: rng.randrange(len(data) + 1)]
        elif op == 1:
            b = bytearray(data)
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        elif op == 2:
            data = rng.choice([exploit_blob(marker), b"[" * 100_000, b" " * (2 << 20), b"\xff\xfe{}", b"null"])
        elif op == 3 and target == "config.json":
            cfg = json.loads(data)
            cfg["params"] = {**params, rng.choice([*params, "extra"]): rng.choice(odd)}
            data = json.dumps(cfg).encode()
        elif op == 3 and target == "weights.safetensors":
            header, body = _split(data)
            name = rng.choice([n for n in header if n != "__metadata__"])
            header[name][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(
                ["F64", "I64", "BOOL", [8], [8, 8, 8], [0], [2**40, 2**40], [0, 8], [-1, 4]])
            data = _join(header, body)
        elif op == 3:
            obj = json.loads(data)
            obj[rng.choice(["version", "history", "sha256", "format"])] = rng.choice(
                odd + [["../../etc"], ["v0001", 5], "v0001", "v9999"])
            data = json.dumps(obj).encode()
        elif op == 4 and target == "weights.safetensors":
            tensors = {k: v.copy() for k, v in st_load(data).items()}
            k = rng.choice(sorted(tensors))
            tensors[k].reshape(-1)[0] = rng.choice([np.nan, np.inf])
            data = st_save(tensors)
        else:
            data = json.dumps(rng.choice(odd)).encode()
        if target in ("weights.safetensors",) and rng.random() < 0.5:  # a crafted artifact brings its checksum
            meta = json.loads(originals["meta.json"])
            meta.pop("sha256")
            (where / "meta.json").write_text(json.dumps(meta))
        path.write_bytes(data)
        _registry_calls(reg)
        path.write_bytes(promoted if target == "PROMOTED" else originals[target])
        (where / "meta.json").write_bytes(originals["meta.json"])
    assert not marker.exists()
    assert reg.load("transformer", "v0001")[1]["kind"] == "transformer"  # the control


@pytest.mark.parametrize("edit", ["nan weight", "float64 weight", "extra tensor", "huge model", "string size",
                                  "bool size", "unknown setting", "pt file only"])
def test_crafted_artifacts_are_refused_before_anything_is_built(tmp_path, edit):
    reg, where = _artifact(tmp_path)
    meta = json.loads((where / "meta.json").read_text())
    meta.pop("sha256")
    (where / "meta.json").write_text(json.dumps(meta))
    cfg = json.loads((where / "config.json").read_text())
    tensors = {k: v.copy() for k, v in st_load((where / "weights.safetensors").read_bytes()).items()}
    if edit == "nan weight":
        tensors["inp.weight"][0, 0] = np.nan
    elif edit == "float64 weight":
        tensors["inp.weight"] = tensors["inp.weight"].astype(np.float64)
    elif edit == "extra tensor":
        tensors["x"] = np.zeros(1, np.float32)
    elif edit == "huge model":
        cfg["params"].update(d_model=2**20, heads=1)  # 4 TB of weights, were it built
    elif edit == "string size":
        cfg["params"]["layers"] = "1"
    elif edit == "bool size":
        cfg["params"]["layers"] = True
    elif edit == "unknown setting":
        cfg["params"]["__class__"] = "os.system"
    else:
        (where / "weights.safetensors").rename(where / "weights.pt")
    if edit != "pt file only":
        (where / "weights.safetensors").write_bytes(st_save(tensors))
    (where / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StreamseqError) as exc:
        reg.load("transformer", "v0001")
    assert str(where) in str(exc.value)


# -- observation messages -------------------------------------------------------------------------
Record = collections.namedtuple("Record", "topic partition offset key value")


def test_observation_messages_fuzzed(tmp_path):
    """Every message comes out as an observation or a dead letter, nothing raises, values are finite."""
    rng = random.Random(3)
    marker = tmp_path / "pwned"
    good = [orjson.dumps({"key": f"k{i}", "ts": 1_704_067_200_000 + i * 1000, "value": i + 0.5, "v2": i})
            for i in range(10)] + [b'{"key": "a", "ts": "2024-01-01T00:00:00Z", "value": 1.5, "v2": 2.0}']
    tokens = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"null", b"true", b"1e999", b"NaN", b"9" * 400,
              b"\xff\xfe", b"\x00", b"\\ud800", b'"ts"', b'"value"', b"[" * 2000, exploit_blob(marker)]
    decoders = [JsonObservationDecoder("key", "ts", ["value"], "ms", max_record_bytes=4096),
                JsonObservationDecoder(None, "ts", ["value", "v2"], "s"),
                JsonObservationDecoder("key", "ts", ["value"], "ns")]
    total = 0
    for _ in range(1500):
        records = []
        for offset in range(rng.randint(1, 8)):
            v = bytearray(rng.choice(good))
            for _ in range(rng.randint(0, 3)):
                pos = rng.randrange(len(v) + 1)
                op = rng.random()
                if op < 0.35:
                    v[pos:pos] = rng.choice(tokens)
                elif op < 0.55:
                    del v[pos:pos + rng.randint(1, 10)]
                elif op < 0.75 and v:
                    v[min(pos, len(v) - 1)] = rng.randrange(256)
                else:
                    v = v[:pos]
            value = rng.choice([bytes(v)] * 8 + [None, exploit_blob(marker), b"x" * 5000])
            key = rng.choice([None, b"k", b"\xff\xfe", b"", exploit_blob(marker)])
            records.append(Record("obs", 0, offset, key, value))
        batch, letters = rng.choice(decoders).decode([(0, records)])
        assert len(batch) + len(letters) == len(records)
        assert np.isfinite(batch.values).all() and (batch.ts >= 0).all()
        total += len(records)
    assert not marker.exists() and total > 5000


# -- replay files ---------------------------------------------------------------------------------
def _replay_seeds():
    csv = b"key,ts,value\n" + b"".join(b"k%d,2024-01-01T%02d:00:00Z,%d.5\n" % (i % 3, i % 24, i) for i in range(40))
    jsonl = b"".join(b'{"key":"k%d","ts":"2024-01-01T%02d:00:00Z","value":%d.5}\n' % (i % 3, i % 24, i)
                     for i in range(40))
    path = Path(pytest.importorskip("tempfile").mkdtemp()) / "seed.parquet"
    pl.DataFrame({"key": ["a", "b"] * 20, "ts": np.arange(40) * 3600, "value": np.arange(40.0)}).write_parquet(path)
    return {"csv": csv, "jsonl": jsonl, "parquet": path.read_bytes()}


def test_replay_files_fuzzed(tmp_path):
    """A malformed CSV, JSON-lines or Parquet file is refused with InputError or read to the end, every
    row an observation or a dead letter; nothing else escapes (polars merging lines was one such escape)."""
    seeds = _replay_seeds()
    rng = random.Random(5)
    marker = tmp_path / "pwned"
    tokens = [b",", b"\n", b"\r", b'"', b"\x00", b"\xff", b"{", b"}", b"nan", b"1e999", b"9" * 400, b"\\",
              b'"ts":[1]', b"[" * 500]
    read = 0
    for i in range(150):
        kind = rng.choice(sorted(seeds))
        data = bytearray(seeds[kind])
        for _ in range(rng.randint(1, 5)):
            pos = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.35:
                data[pos:pos] = rng.choice(tokens)
            elif op < 0.55:
                del data[pos:pos + rng.randint(1, 30)]
            elif op < 0.8 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            else:
                data = data[:pos]
        if rng.random() < 0.1:
            data = exploit_blob(marker)
        path = tmp_path / f"f{i}.{kind}"
        path.write_bytes(bytes(data))
        try:
            source = ReplaySource([str(path)], "key", "ts", ["value"], chunk_rows=7)
            source.validate()
            part = source.build_part("replay", None)
            for _ in range(500):
                if part.exhausted:
                    break
                batch, letters = part.next_batch()
                assert np.isfinite(batch.values).all()
                read += len(batch) + len(letters)
            assert part.exhausted
        except StreamseqError:
            pass
    assert not marker.exists() and read > 1000


def test_jsonl_line_with_an_open_quote_is_its_own_dead_letter(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"key":"a","ts":"2024-01-01T00:00:00Z","value":1}\n{"key":"b\n'
                     b'0","ts":"2024-01-01T01:00:00Z","value":2}\n{"key":"c","ts":"2024-01-01T02:00:00Z","value":3}\n')
    source = ReplaySource([str(path)], "key", "ts", ["value"])
    source.validate()
    batch, letters = source.build_part("replay", None).next_batch()
    assert batch.keys.tolist() == ["a", "c"] and sorted(dl.offset for dl in letters) == [1, 2]


# -- config files ---------------------------------------------------------------------------------
def test_config_files_fuzzed(tmp_path):
    seeds = [p.read_bytes() for p in sorted([*ROOT.glob("deploy/config/*.toml"), *ROOT.glob("replay_data/*.toml")])]
    rng = random.Random(11)
    marker = tmp_path / "pwned"
    tokens = [b"=", b"[", b"]", b'"', b"\n", b"1e400", b"9" * 5000, b"nan", b"inf", b"true", b"{", b"}",
              b"[[x]]", b"\xff", b"1979-05-27T07:32:00Z", b"[" * 3000, exploit_blob(marker)]
    path = tmp_path / "c.toml"
    loaded = 0
    for _ in range(600):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.35:
                data[pos:pos] = rng.choice(tokens)
            elif op < 0.55:
                del data[pos:pos + rng.randint(1, 20)]
            elif op < 0.75 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            else:
                data = data[:pos]
        path.write_bytes(bytes(data))
        try:
            cfg = load_config(path, env={})
            KafkaSettings.from_dict(cfg.kafka)
            loaded += 1
        except StreamseqError:
            pass
    assert not marker.exists() and loaded > 20


@pytest.mark.parametrize("text", [
    '[windowing]\nagg = {value = 5}\n', '[windowing]\ninterval = "' + "9" * 400 + 'h"\n',
    '[windowing]\ninterval = "99999999999999999999999h"\n', '[store]\nretention = "' + "9" * 400 + 'd"\n',
    '[source]\nspeed = nan\n', '[rnn]\nlr = inf\n', '[forecast]\nseason = 99999999999999999999999\n',
    'a = ' + "[" * 5000 + "]" * 5000 + "\n", "name = 'x'\n" + "#" * (2 << 20), "\xef\xbb\xbfname = \x80",
])
def test_crafted_config_files(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if "\x80" not in text else text.encode("latin-1"))
    with pytest.raises(StreamseqError):
        load_config(path, env={})


def test_kafka_settings_are_of_their_declared_types():
    rng = random.Random(2)
    fields = list(KafkaSettings.__dataclass_fields__)
    odd = [None, True, False, 0, -1, 1, 2**70, 1.5, float("nan"), "", "x", "all", "SASL_SSL", [], ["a:1"], [1],
           {}, b"x"]
    for _ in range(3000):
        try:
            s = KafkaSettings.from_dict({rng.choice(fields): rng.choice(odd) for _ in range(rng.randint(1, 4))})
        except StreamseqError:
            continue
        for name, f in KafkaSettings.__dataclass_fields__.items():
            v = getattr(s, name)
            assert {"str": type(v) is str, "str | None": v is None or type(v) is str, "int": type(v) is int,
                    "bool": type(v) is bool, "int | str": type(v) in (int, str)}.get(f.type, True), (name, v)
        s.consumer_kwargs()


# -- a worker on a real broker (Tansu) --------------------------------------------------------------
@pytest.mark.kafka
@pytest.mark.slow
def test_worker_restores_river_baselines_and_shrugs_off_a_poisoned_changelog(kafka_broker, tmp_path):
    """SIGKILL, then records planted in the changelog (the exploit blob for a real key, junk for
    others): the next worker runs no code, logs the refusal, and every other key's SNARIMAX and
    Holt-Winters forecasts equal the replay's bit for bit (restored from plain-data state)."""
    import signal

    from kafka import KafkaProducer
    from kafka_worker_util import (
        feed_frame,
        forecast_table,
        free_port,
        kill,
        metric,
        read_forecasts,
        start_worker,
        wait_for,
        write_worker_config,
    )
    from test_worker_kafka import assert_live_matches_replay, replay_of, topics

    from streamseq.synthetic import generate

    t = topics(kafka_broker, "poison")
    df = generate(12, 160, seed=4, irregular=False).with_columns(pl.col("key").cast(pl.String))
    windowing = {"interval": "1h", "agg": "mean", "allowed_lateness": "0s", "gap": "ffill"}
    forecast = {"horizon": 4, "season": 6, "models": ["snarimax", "holt_winters", "naive"], "ensemble": False}
    feed_frame(kafka_broker, t["obs"], df, "key", "ts", ["value"])
    port = free_port()
    cfg = write_worker_config(tmp_path / "w.toml", kafka_broker, obs=t["obs"], forecasts=t["forecasts"],
                              dlq=t["dlq"], changelog=t["changelog"], group="g-poison", value_fields=["value"],
                              windowing=windowing, forecast=forecast, http_port=port)
    log = tmp_path / "w.log"
    proc = start_worker(cfg, log, idle_s=None)
    assert wait_for(lambda: (metric(port, "streamseq_records_in") or 0) >= df.height // 2, 120), log.read_text()[-3000:]
    kill(proc, signal.SIGKILL)

    marker = tmp_path / "pwned"
    victim = df["key"][0]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for p in range(4):  # the victim's partition is one of them; the latest record of a key wins
        producer.send(t["changelog"], exploit_blob(marker), key=victim.encode(), partition=p)
        producer.send(t["changelog"], b"\x00" * 64, key=b"junk-%d" % p, partition=p)
    producer.flush()
    producer.close()

    proc = start_worker(cfg, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not marker.exists()
    assert "records refused" in log.read_text()
    live = forecast_table(read_forecasts(kafka_broker, t["forecasts"]))
    assert any(k[0] == victim for k in live)  # the victim goes on, from a fresh state
    others = {k: v for k, v in live.items() if k[0] != victim}
    replay = replay_of(tmp_path, df.filter(pl.col("key") != victim), "key", "ts", ["value"], windowing, forecast)
    assert_live_matches_replay(others, replay, 11, 3)


# -- committed offset metadata (the stream-time clock) ----------------------------------------------
@pytest.mark.parametrize("meta", [
    '{"format": "streamseq.clock/v1", "st": 1180591620717411303424}',
    '{"format": "streamseq.clock/v1", "st": -5}', '{"format": "streamseq.clock/v1", "st": 1.5e18}',
    '{"format": "streamseq.clock/v1", "st": 3600000000000, "jump": [{"a": 1}, 1, true]}',
    '{"format": "streamseq.clock/v1", "st": 3600000000000, "jump": [1180591620717411303424, 1, true]}',
    '{"format": "streamseq.clock/v1", "st": 3600000000000, "jump": [7200000000000, -1, 1]}',
    "[" * 5000, "\udcff", "[1]", '"x"', "null", '{"format": "streamseq.clock/v1"}',
])
def test_committed_offset_metadata_never_stops_the_stream(meta):
    """Offset metadata is written with the group's commits, by any member: a clock a worker could not
    have written is ignored, and the stream goes on."""
    from streamseq.checkpoint import parse_clock

    pipe, sink = _pipeline()
    pipe.windower.restore_clock(0, parse_clock(meta, "obs[0]"))
    pipe.process(_batch(range(4), 0, seed=0), _Part())
    assert sum(len(b) for b in sink.batches) > 0
