"""Model registry: versions, promotion history, validation on load, no code run from an artifact, the CLI."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from streamseq.commands import main
from streamseq.errors import ArtifactError
from streamseq.models.rnn import RNNConfig, RNNNet
from streamseq.models.transformer import TransformerConfig, init_net
from streamseq.registry import ModelRegistry, RegistryError, artifact_config

CFG = TransformerConfig(context=4, d_model=8, heads=2, layers=1, ff=8, horizon=2)


def publish(reg, name="transformer", cfg=CFG, meta=None):
    if name == "transformer":
        net = init_net(cfg)
    else:
        net = RNNNet(cfg)
    return reg.publish(name, net.state_dict(), artifact_config(name, cfg), meta or {"val_mae": 0.5})


def test_versions_promote_rollback(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.promoted("transformer") is None and reg.list() == []
    v1, v2, v3 = publish(reg), publish(reg), publish(reg)
    assert (v1, v2, v3) == ("v0001", "v0002", "v0003")
    assert not list(tmp_path.rglob(".tmp-*"))
    reg.promote("transformer", v1)
    reg.promote("transformer", v3)
    assert reg.promoted("transformer") == "v0003"
    rows = reg.list("transformer")
    assert [r["version"] for r in rows] == ["v0001", "v0002", "v0003"]
    assert [r["promoted"] for r in rows] == [False, False, True] and rows[0]["val_mae"] == 0.5
    assert reg.rollback("transformer") == "v0001" and reg.promoted("transformer") == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback("transformer")
    with pytest.raises(RegistryError, match="no version"):
        reg.promote("transformer", "v0042")
    sd, config, meta = reg.load("transformer", v2)
    assert config["kind"] == "transformer" and meta["version"] == "v0002" and len(meta["sha256"]) == 64
    init_net(TransformerConfig.from_dict(config["params"])).load_state_dict(sd, strict=True)


def test_rnn_artifacts(tmp_path):
    reg = ModelRegistry(tmp_path)
    cfg = RNNConfig(cell="lstm", hidden=4, horizon=2)
    v = publish(reg, "lstm", cfg)
    sd, config, _ = reg.load("lstm", v)
    assert config["params"]["cell"] == "lstm" and "cell.weight_ih" in sd
    with pytest.raises(RegistryError):
        reg.publish("gru", RNNNet(cfg).state_dict(), artifact_config("lstm", cfg), {})


def _corrupt(reg, what):
    v = publish(reg)
    d = reg.path / "transformer" / v
    if what == "missing weights":
        (d / "weights.safetensors").unlink()
    elif what == "missing config":
        (d / "config.json").unlink()
    elif what == "truncated":
        data = (d / "weights.safetensors").read_bytes()
        (d / "weights.safetensors").write_bytes(data[: len(data) // 2])
    elif what == "garbage, no checksum":
        (d / "weights.safetensors").write_bytes(b"\x00" * 64)
        meta = json.loads((d / "meta.json").read_text())
        del meta["sha256"]
        (d / "meta.json").write_text(json.dumps(meta))
    elif what == "foreign format":
        (d / "config.json").write_text(json.dumps({"format": "other/v9", "kind": "transformer", "name": "transformer",
                                                    "params": {}}))
    elif what == "wrong kind":
        c = json.loads((d / "config.json").read_text())
        c["kind"] = "rnn"
        (d / "config.json").write_text(json.dumps(c))
    elif what == "shape mismatch":
        c = json.loads((d / "config.json").read_text())
        c["params"]["d_model"] = 16
        (d / "config.json").write_text(json.dumps(c))
    elif what == "bad json":
        (d / "config.json").write_text("{not json")
    return v


@pytest.mark.parametrize("what", ["missing weights", "missing config", "truncated", "garbage, no checksum",
                                  "foreign format", "wrong kind", "shape mismatch", "bad json"])
def test_bad_artifacts_are_refused(tmp_path, what):
    reg = ModelRegistry(tmp_path)
    good = publish(reg)
    reg.promote("transformer", good)
    bad = _corrupt(reg, what)
    with pytest.raises(ArtifactError) as exc:
        reg.load("transformer", bad)
    assert str(reg.path / "transformer" / bad) in str(exc.value)
    with pytest.raises(ArtifactError):
        reg.promote("transformer", bad)
    assert reg.promoted("transformer") == good  # the version in service is kept


def test_gru_artifact_is_not_a_transformer(tmp_path):
    reg = ModelRegistry(tmp_path)
    publish(reg, "gru", RNNConfig(hidden=4, horizon=2))
    # move the gru artifact under the transformer's name: a foreign artifact there
    (tmp_path / "transformer").mkdir()
    (tmp_path / "gru" / "v0001").rename(tmp_path / "transformer" / "v0001")
    with pytest.raises(ArtifactError, match="is not a transformer model"):
        reg.load("transformer", "v0001")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("filename", ["weights.pt", "weights.safetensors"])
def test_pickle_payload_never_runs(tmp_path, filename):
    reg = ModelRegistry(tmp_path / "reg")
    marker = tmp_path / "marker"
    v = publish(reg)
    d = reg.path / "transformer" / v
    (d / "weights.safetensors").unlink()
    meta = json.loads((d / "meta.json").read_text())
    del meta["sha256"]  # a crafted artifact comes with matching metadata
    (d / "meta.json").write_text(json.dumps(meta))
    payload = {"inp.weight": _Payload(marker)}
    if filename == "weights.pt":
        torch.save(payload, d / filename)  # a pickle-based .pt: a __reduce__ payload inside
    else:
        (d / filename).write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(ArtifactError, match="weights.safetensors is missing|not a readable safetensors"):
        reg.load("transformer", v)
    assert not marker.exists()


def test_corrupt_promotion_record(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.promote("transformer", publish(reg))
    (tmp_path / "transformer" / "PROMOTED").write_text("{")
    with pytest.raises(ArtifactError, match="unreadable promotion record"):
        reg.promoted("transformer")


def test_models_cli(tmp_path, capsys):
    reg = ModelRegistry(tmp_path)
    publish(reg), publish(reg)
    assert main(["models", "list", "--registry", str(tmp_path)]) == 0
    assert "v0002" in capsys.readouterr().out
    assert main(["models", "promote", "v0001", "--registry", str(tmp_path)]) == 0
    assert main(["models", "promote", "v0002", "--registry", str(tmp_path), "--model", "transformer"]) == 0
    assert main(["models", "rollback", "--registry", str(tmp_path)]) == 0
    assert "rolled back to v0001" in capsys.readouterr().out
    assert reg.promoted("transformer") == "v0001"
    out = main(["models", "list", "--registry", str(tmp_path)]), capsys.readouterr().out
    assert out[0] == 0 and "v0001    *" in out[1] and "v0002     " in out[1]
    assert main(["models", "promote", "v0009", "--registry", str(tmp_path)]) == 2
    assert "no version 'v0009'" in capsys.readouterr().err
    (tmp_path / "transformer" / "v0002" / "weights.safetensors").write_bytes(b"junk")
    assert main(["models", "promote", "v0002", "--registry", str(tmp_path)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[registry]\npath = "{tmp_path}"\n')
    assert main(["models", "list", "--config", str(cfg), "--model", "transformer"]) == 0
