"""Running real stream workers against the test broker: configs, processes, reading topics.

Worker tests run on both Kafka clients: ``client`` is ``[kafka] client`` ("kafka-python" or
"confluent"); ``CLIENTS`` parametrises a test over both (``@pytest.mark.parametrize("client", CLIENTS)``).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from streamseq import config as config_mod
from streamseq.forecast_json import decode_forecast
from streamseq.localbroker import _die_with_parent
from streamseq_connectors.kafka import KafkaSettings
from streamseq_connectors.kafka.forecasts import iter_forecasts
from streamseq_connectors.kafka.transport import KafkaTransport

CLIENTS = [pytest.param("kafka-python", id="kafka-python"), pytest.param("confluent", id="confluent")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_worker_config(path: Path, broker, *, obs: str, forecasts: str, dlq: str, changelog: str,
                        group: str, value_fields, windowing: dict, forecast: dict, partitions: int = 4,
                        exactly_once: bool = False, http_port: int = 0, extra: str = "",
                        registry: str = "", client: str = "kafka-python") -> Path:
    kafka = broker.client_settings()
    lines = ["[kafka]", f'client = "{client}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in kafka.items()]
    lines += [f'group_id = "{group}"', "max_poll_records = 2000", 'auto_offset_reset = "earliest"']
    lines += ["[topics]", f'observations = ["{obs}"]', f'forecasts = "{forecasts}"', f'dead_letter = "{dlq}"',
              f'changelog = "{changelog}"', f"partitions = {partitions}"]
    lines += ["[input]", 'key_field = "key"', 'time_field = "ts"', f"value_fields = {json.dumps(list(value_fields))}"]
    lines += ["[windowing]"] + [f"{k} = {json.dumps(v)}" for k, v in windowing.items()]
    lines += ["[forecast]"] + [f"{k} = {json.dumps(v)}" for k, v in forecast.items()]
    lines += ["[rnn]", "learn = false", "hidden = 16"]
    lines += ["[worker]", f"exactly_once = {'true' if exactly_once else 'false'}", "checkpoint_every_s = 0.5",
              "checkpoint_every_records = 5000", f"http_port = {http_port}", 'http_host = "127.0.0.1"',
              "shutdown_deadline_s = 20"]
    lines += ["[registry]", f"path = {json.dumps(registry)}", "poll_s = 0.2", "[logging]", 'format = "json"']
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def start_worker(cfg_path: Path, log_path: Path, *, idle_s: float | None = 6.0,
                 env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "streamseq", "worker", "--config", str(cfg_path)]
    if idle_s is not None:
        args += ["--exit-when-idle", str(idle_s)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # A worker a failed test did not stop must not outlive pytest (it would spin against a dead broker).
    return subprocess.Popen(args, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent)


def metric(port: int, name: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    total, found = 0.0, False
    for line in body.splitlines():
        head = line.split(" ")[0].split("{")[0]
        if head in (name, name + "_total"):
            total += float(line.split()[-1])
            found = True
    return total if found else None


def wait_for(cond, timeout_s: float, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step_s)
    return None


def kill(proc: subprocess.Popen, sig=signal.SIGKILL, timeout_s: float = 30) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=timeout_s)


def feed_frame(broker, topic: str, df, key_col: str, time_col: str, value_cols: list[str], partitions: int = 4) -> int:
    """Produce a polars frame's rows, keyed by series key, to ``topic`` (created with ``partitions``)."""
    from streamseq.memory import MemoryPartition
    from streamseq.records import ObservationBatch
    from streamseq_connectors.kafka import TopicSpec, ensure_topics

    settings = KafkaSettings.from_dict(broker.client_settings())
    ensure_topics(settings, [TopicSpec(topic, partitions)])
    keys = df[key_col].cast(str).to_numpy().astype(object)
    ts = df[time_col].dt.epoch("ns").to_numpy()
    vals = df.select(value_cols).to_numpy().astype(np.float64)
    n = len(keys)
    b = ObservationBatch(keys, ts, vals, np.zeros(n, np.int32), np.arange(n, dtype=np.int64))
    cfg = config_mod.from_dict({"kafka": broker.client_settings()})
    return KafkaTransport(cfg, settings).feed(MemoryPartition([b]), topic, value_fields=value_cols)


def read_forecasts(broker, topic: str, idle_s: float = 3.0):
    settings = KafkaSettings.from_dict(broker.client_settings())
    return list(iter_forecasts(settings, topic, from_beginning=True, max_idle_s=idle_s, stop_at_end=True))


def read_raw(broker, topic: str, idle_s: float = 3.0, partitions: bool = False) -> list[tuple]:
    """(key, value) of every message; with ``partitions`` (partition, key, value) in partition and offset order."""
    from kafka import KafkaConsumer, TopicPartition

    settings = KafkaSettings.from_dict(broker.client_settings())
    c = KafkaConsumer(**settings.consumer_kwargs(group=False))
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out, idle_since = [], time.monotonic()
    while time.monotonic() - idle_since < idle_s:
        got = c.poll(timeout_ms=200)
        for recs in got.values():
            for r in recs:
                out.append((r.partition, r.offset, r.key, r.value))
            idle_since = time.monotonic()
    c.close()
    out.sort(key=lambda m: m[:2])
    return [(p, k, v) for p, _, k, v in out] if partitions else [(k, v) for _, _, k, v in out]


def forecast_table(forecasts) -> dict:
    """(key, origin, model) -> list of (means, los, his) tuples, one per copy."""
    table: dict = {}
    for f in forecasts:
        vals = (tuple(s.mean for s in f.steps), tuple(s.lo for s in f.steps), tuple(s.hi for s in f.steps))
        table.setdefault((f.key, f.origin, f.model), []).append(vals)
    return table


def replay_table(parquet_path) -> dict:
    import polars as pl

    fc = (pl.read_parquet(parquet_path).with_columns(pl.col("origin").dt.epoch("ns").alias("origin_ns"))
          .sort("key", "model", "origin_ns", "step"))
    table = {}

    def nan_none(xs):
        return tuple(None if x != x else x for x in xs)

    for (key, model, origin), g in fc.group_by(["key", "model", "origin_ns"], maintain_order=True):
        table[(key, int(origin), model)] = (
            tuple(g["mean"].to_list()), nan_none(g["lo"].to_list()), nan_none(g["hi"].to_list()))
    return table


__all__ = ["decode_forecast"]
