"""The worker under faults, against a real Kafka-API broker (Tansu): no mocks of Kafka.

A crash while a batch is processed commits nothing of it; poison records (oversized
keys, absurd values, empty keys, far-future times, byte-order marks) go to the
dead-letter topic and change no valid forecast; a broker outage during a checkpoint
is ridden out within the outage budget, and beyond it the worker exits with the
runtime-failure code and one line. Poison records on both Kafka clients (kafka-python, confluent);
the rest on the default client (CI time: see tests/test_worker_kafka.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import polars as pl
import pytest
from kafka_broker import start_tansu
from kafka_worker_util import (
    CLIENTS,
    feed_frame,
    forecast_table,
    free_port,
    metric,
    read_forecasts,
    read_raw,
    start_worker,
    wait_for,
    write_worker_config,
)
from test_worker_kafka import FORECAST, assert_live_matches_replay, replay_of, synthetic, topics

from streamseq import config as config_mod

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
WINDOWING = {"interval": "1h", "agg": "mean", "allowed_lateness": "5min", "gap": "ffill"}


def config(broker, tmp_path, t, group, **kw):
    return write_worker_config(tmp_path / f"{group}.toml", broker, obs=t["obs"], forecasts=t["forecasts"],
                               dlq=t["dlq"], changelog=t["changelog"], group=group, value_fields=["value"],
                               windowing=WINDOWING, forecast=FORECAST, **kw)


def test_a_crash_while_processing_commits_nothing_of_that_batch(kafka_broker, tmp_path):
    from streamseq.compose import WorkerApp

    t = topics(kafka_broker, "crashproc")
    df = synthetic(30, 120, seed=11)
    feed_frame(kafka_broker, t["obs"], df, "key", "ts", ["value"])
    cfg_path = config(kafka_broker, tmp_path, t, t["group"])
    app = WorkerApp(config_mod.load(cfg_path)).open()
    worker = app.worker
    naive = worker.pipeline.models["naive"]
    real_update, calls = naive.update, []

    def failing_update(*args, **kw):
        calls.append(1)
        if len(calls) == 40:  # well inside the first poll's records
            raise RuntimeError("injected failure while processing")
        return real_update(*args, **kw)

    naive.update = failing_update
    with pytest.raises(RuntimeError, match="injected"):
        worker.run(threading.Event())
    app.close()  # what the CLI does: leaving the group must not commit the failed batch

    proc = start_worker(cfg_path, tmp_path / "w.log")
    assert proc.wait(timeout=240) == 0, (tmp_path / "w.log").read_text()[-3000:]
    live = forecast_table(read_forecasts(kafka_broker, t["forecasts"]))
    replay = replay_of(tmp_path, df, "key", "ts", ["value"], WINDOWING, FORECAST)
    assert_live_matches_replay(live, replay, 30, 4)


@pytest.mark.parametrize("client", CLIENTS)
def test_poison_records_are_dead_letters_and_change_no_forecast(kafka_broker, tmp_path, client):
    from kafka import KafkaProducer
    from kafka.partitioner.default import murmur2

    t = topics(kafka_broker, "poison")
    df = synthetic(12, 100, seed=12)
    feed_frame(kafka_broker, t["obs"], df.head(0), "key", "ts", ["value"])  # creates the topic
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, max_request_size=8_000_000, linger_ms=5)
    iso = df.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ").alias("iso"))
    poison = {
        300: ("key_too_long", {"key": "K" * 600_000, "value": 1.0}, b"k"),
        400: ("key_too_long", None, b"M" * 2_000_000),  # a 2 MB message key on an invalid record
        500: ("missing_key", {"key": "", "value": 1.0}, b""),
        600: ("value_out_of_range", {"value": 1e308}, None),
        700: ("future_time", {"ts": "2150-06-01T00:00:00Z"}, "same"),
        800: ("wrong_partition", {}, "other partition"),  # a key's record on a partition not its own
    }
    expected_reasons = []
    for i, row in enumerate(iso.iter_rows(named=True)):
        good = {"key": row["key"], "ts": row["iso"], "value": row["value"]}
        body = json.dumps(good).encode()
        if i % 50 == 7:
            body = b"\xef\xbb\xbf" + body  # a byte-order mark: still a valid record
        producer.send(t["obs"], body, key=row["key"].encode())
        if i in poison:
            reason, change, msg_key = poison[i]
            bad = b"{not json" if change is None else json.dumps({**good, **change}).encode()
            if msg_key == "other partition":
                home = (murmur2(row["key"].encode()) & 0x7FFFFFFF) % 4  # the default partitioner's choice
                producer.send(t["obs"], json.dumps({**good, "value": 0.5}).encode(), partition=(home + 1) % 4)
            else:
                producer.send(t["obs"], bad, key=row["key"].encode() if msg_key == "same" else (msg_key or None))
            expected_reasons.append(reason if change is not None else "not_json")
    producer.flush()
    producer.close()

    proc = start_worker(config(kafka_broker, tmp_path, t, t["group"], client=client), tmp_path / "w.log")
    assert proc.wait(timeout=240) == 0, (tmp_path / "w.log").read_text()[-3000:]
    raw = read_raw(kafka_broker, t["dlq"])
    assert all(len(v) + len(k or b"") < 600_000 for k, v in raw), "a dead letter must stay far below the limit"
    dead = [json.loads(v) for _, v in raw]
    assert sorted(d["reason"].split(":")[0] for d in dead) == sorted(expected_reasons)
    live = forecast_table(read_forecasts(kafka_broker, t["forecasts"]))
    replay = replay_of(tmp_path, df, "key", "ts", ["value"], WINDOWING, FORECAST)
    assert_live_matches_replay(live, replay, 12, 4)


def _outage_run(tmp_path, budget_s: float, pause_s: float, client: str = "kafka-python"):
    """A worker on its own broker, SIGSTOPped for ``pause_s`` while records flow."""
    broker = start_tansu()
    try:
        t = topics(broker, "outage")
        df = synthetic(40, 300, seed=13)
        feed_frame(broker, t["obs"], df, "key", "ts", ["value"])
        port = free_port()
        cfg = config(broker, tmp_path, t, t["group"], http_port=port, client=client)
        env = {"STREAMSEQ_WORKER__OUTAGE_BUDGET_S": str(budget_s), "STREAMSEQ_KAFKA__REQUEST_TIMEOUT_MS": "7000",
               "STREAMSEQ_WORKER__CHECKPOINT_EVERY_S": "0.2"}
        log = tmp_path / "w.log"
        proc = start_worker(cfg, log, idle_s=8.0, env=env)
        assert wait_for(lambda: (metric(port, "streamseq_records_in") or 0) >= 1_000, 120), log.read_text()[-3000:]
        os.kill(broker.pid, signal.SIGSTOP)
        until = time.monotonic() + pause_s
        while time.monotonic() < until and proc.poll() is None:  # a worker that gives up ends the pause early
            time.sleep(0.2)
        os.kill(broker.pid, signal.SIGCONT)
        rc = proc.wait(timeout=300)
        return broker, t, df, rc, log.read_text()
    except BaseException:
        os.kill(broker.pid, signal.SIGCONT)
        broker.stop()
        raise


def test_a_broker_outage_during_checkpoints_is_ridden_out(tmp_path):
    broker, t, df, rc, log = _outage_run(tmp_path, budget_s=120, pause_s=20)
    try:
        assert rc == 0, log[-3000:]
        assert "retrying" in log, "the outage should have made a checkpoint retry"
        live = forecast_table(read_forecasts(broker, t["forecasts"]))
        replay = replay_of(tmp_path, df, "key", "ts", ["value"], WINDOWING, FORECAST)
        assert_live_matches_replay(live, replay, 40, 4)
    finally:
        broker.stop()


def test_an_outage_beyond_the_budget_ends_the_worker_with_one_line_and_code_1(tmp_path):
    broker, _, _, rc, log = _outage_run(tmp_path, budget_s=3, pause_s=25)
    try:
        assert rc == 1, log[-3000:]
        last = [line for line in log.splitlines() if line.startswith("streamseq: error:")]
        assert len(last) == 1 and "outage_budget_s" in last[0], log[-3000:]
        assert "Traceback" not in log
    finally:
        broker.stop()


def test_an_unreachable_broker_is_one_line_and_a_runtime_failure(tmp_path):
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'[kafka]\nbootstrap_servers = "127.0.0.1:{free_port()}"\nrequest_timeout_ms = 3000\n'
                   "session_timeout_ms = 2000\nheartbeat_interval_ms = 500\n[worker]\nhttp_port = 0\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "streamseq", "worker", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("streamseq: error:")]
    assert len(errors) == 1 and "127.0.0.1" in errors[0], out.stderr[-2000:]
    assert time.monotonic() - t0 < 90  # bootstrap_timeout_ms (15 s) after start-up; generous for a loaded CI machine


def test_a_stuck_loop_is_not_live():
    from streamseq.metrics import Health

    now = [0.0]
    h = Health(stall_s=10, clock=lambda: now[0])
    assert h.live
    now[0] = 9.0
    assert h.live
    now[0] = 11.0
    assert not h.live  # the loop has not come round: /healthz answers 503
    h.beat()
    assert h.live
    h.live = False
    assert not h.live
