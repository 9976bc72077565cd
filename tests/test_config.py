"""Configuration: examples validate, broken files name the key, env overrides, no secret in logs."""
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamseq import config as config_mod
from streamseq import logs
from streamseq.commands import main
from streamseq.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "deploy" / "config").glob("*.toml")) + sorted((ROOT / "replay_data").glob("*.toml"))


def test_there_are_examples_for_worker_trainer_and_replay():
    names = {p.name for p in EXAMPLES}
    assert {"worker.toml", "trainer.toml", "replay.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_config_check_accepts_every_example(path, capsys):
    assert main(["config", "check", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("text,key", [
    ("[forecast]\nhorizn = 3\n", "forecast.horizn"),
    ("[forecast]\nhorizon = 'three'\n", "forecast.horizon"),
    ("[windowing]\ninterval = 'soon'\n", "windowing.interval"),
    ("[forecast]\nmodels = ['gru', 'prophet']\n", "forecast.models"),
    ("[windowing]\ngap = 'zero'\n", "windowing.gap"),
    ("[kafka]\nbootstrap_server = 'x:9092'\n", "kafka.bootstrap_server"),
    ("[kafka]\nsecurity_protocol = 'TLS'\n", "kafka.security_protocol"),
    ("[wroker]\nhttp_port = 1\n", "wroker"),
    ("[forecast]\ninterval_level = 1.5\n", "forecast.interval_level"),
    ("name = [\n", "valid TOML"),
])
def test_config_check_rejects_broken_files_naming_the_key(tmp_path, capsys, text, key):
    p = tmp_path / "broken.toml"
    p.write_text(text)
    assert main(["config", "check", str(p)]) == 2
    err = capsys.readouterr().err
    assert key in err and err.count("\n") == 1


def test_environment_overrides_and_their_errors(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[forecast]\nhorizon = 6\n")
    env = {"STREAMSEQ_FORECAST__HORIZON": "12", "STREAMSEQ_FORECAST__MODELS": "gru,naive",
           "STREAMSEQ_KAFKA__SASL_PASSWORD": "s3cret", "STREAMSEQ_WORKER__EXACTLY_ONCE": "true"}
    cfg = config_mod.load(p, env=env)
    assert cfg.forecast.horizon == 12 and cfg.forecast.models == ["gru", "naive"]
    assert cfg.kafka["sasl_password"] == "s3cret" and cfg.worker.exactly_once is True
    with pytest.raises(ConfigError, match="STREAMSEQ_FORECAST__HORIZON"):
        config_mod.load(p, env={"STREAMSEQ_FORECAST__HORIZON": "many"})
    with pytest.raises(ConfigError, match="STREAMSEQ_FORECAST__HORIZN"):
        config_mod.load(p, env={"STREAMSEQ_FORECAST__HORIZN": "3"})


def test_log_lines_are_json_with_data_error_context_and_never_carry_secrets():
    stream = io.StringIO()
    logs.setup("DEBUG", "json", stream=stream)
    logs.add_secret("hunter2-very-secret")
    log = logging.getLogger("streamseq.test")
    log.warning("bad record", extra={"key": "k1", "topic": "obs", "partition": 3, "offset": 42})
    log.info("settings: %s", {"sasl_password": "hunter2-very-secret"})
    try:
        raise RuntimeError("login failed for hunter2-very-secret")
    except RuntimeError:
        log.exception("boom")
    out = stream.getvalue()
    assert "hunter2-very-secret" not in out
    import json

    first = json.loads(out.splitlines()[0])
    assert first["key"] == "k1" and first["topic"] == "obs" and first["partition"] == 3 and first["offset"] == 42


@pytest.mark.kafka
def test_a_sasl_password_in_config_never_reaches_the_worker_logs(kafka_broker, tmp_path):
    secret = "Pa55-w0rd-that-must-not-leak"
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        "[kafka]\n"
        f'bootstrap_servers = "{kafka_broker.bootstrap}"\n'
        'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\nsasl_username = "svc"\n'
        f'sasl_password = "{secret}"\nrequest_timeout_ms = 3000\n'
        '[topics]\ncreate = false\n[worker]\nhttp_port = 0\n[registry]\npath = ""\n'
        '[logging]\nlevel = "DEBUG"\nformat = "json"\n'
    )
    log = tmp_path / "w.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "streamseq", "worker", "--config", str(cfg)],
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
    deadline = time.monotonic() + 90  # long enough to start, fail to authenticate and log about it
    while time.monotonic() < deadline and proc.poll() is None and len(log.read_bytes().splitlines()) < 6:
        time.sleep(0.5)
    proc.kill()
    proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert len(text.splitlines()) > 3, text  # it did log
    assert secret not in text


def test_threads_auto_is_one_in_the_worker_and_up_to_two_in_replay(monkeypatch):
    from streamseq.specs import torch_threads

    cfg = config_mod.from_dict({})
    assert cfg.threads == 0
    assert torch_threads(cfg, streaming=True) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert torch_threads(cfg) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert torch_threads(cfg) == 1
    assert torch_threads(config_mod.from_dict({"threads": 3}), streaming=True) == 3
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            config_mod.from_dict({"threads": bad})


def test_rnn_defaults_are_written_once():
    """[rnn] and the model's own RNNConfig agree on every setting they share (one default per setting)."""
    import dataclasses

    from streamseq.config import RNNSection
    from streamseq.models.rnn import RNNConfig

    section, model = dataclasses.asdict(RNNSection()), dataclasses.asdict(RNNConfig())
    shared = sorted(set(section) & set(model) - {"calendar"})  # calendar: "auto" resolves per interval (specs.rnn_calendar)
    assert shared, "no shared settings: the test compares nothing"
    assert {k: section[k] for k in shared} == {k: model[k] for k in shared}
