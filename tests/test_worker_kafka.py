"""The stream worker against a real Kafka-API broker (Tansu): no mocks of Kafka.

Properties: live equals replay; SIGKILL at several points loses nothing and
every copy of a forecast is identical; a rebalance moves keys with their state;
bad records go to the dead-letter topic and change no valid forecast; SIGTERM
exits 0 in time and the next start resumes with no gap and no duplicate.

Every property is checked on the default client (kafka-python). The confluent client
(librdkafka) runs a chosen few, to keep the broker suite's CI time: live = replay byte for
byte beside kafka-python, exactly-once under SIGKILL, the rebalance, and (in
test_worker_faults) poison records as dead letters; tests/test_confluent_connectors.py
checks its connectors one by one against kafka-python's.
"""
from __future__ import annotations

import json
import signal
import time
from datetime import UTC
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from kafka_worker_util import (
    CLIENTS,
    feed_frame,
    forecast_table,
    free_port,
    kill,
    metric,
    read_forecasts,
    read_raw,
    replay_table,
    start_worker,
    wait_for,
    write_worker_config,
)

from streamseq import config as config_mod
from streamseq.backtesting import run_backtest
from streamseq.synthetic import generate

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
H = 3600 * 10**9

WINDOWING = {"interval": "1h", "agg": "mean", "allowed_lateness": "0s", "gap": "ffill"}
FORECAST = {"horizon": 6, "season": 24, "models": ["gru", "seasonal_naive", "naive"], "ensemble": True}


def topics(broker, name):
    """Fresh topics and a fresh consumer group: runs on the two clients never share a group."""
    return {k: broker.unique_topic(f"{name}-{k}") for k in ("obs", "forecasts", "dlq", "changelog", "group")}


def replay_of(tmp_path, df, key_col, time_col, value_cols, windowing, forecast) -> dict:
    path = tmp_path / "input.parquet"
    df.write_parquet(path)
    cfg = config_mod.from_dict({
        "source": {"files": [str(path)], "key_col": key_col, "time_col": time_col, "value_cols": value_cols},
        "windowing": windowing, "forecast": forecast, "rnn": {"learn": False, "hidden": 16},
    })
    run_backtest(cfg, tmp_path / "replay", progress=False, report=False)
    return replay_table(tmp_path / "replay" / "forecasts.parquet")


def assert_live_matches_replay(live: dict, replay: dict, n_keys: int, n_models: int):
    """Every live forecast equals the replay's; the replay has at most the final windows more."""
    assert live, "no forecasts were published"
    for k, copies in live.items():
        assert all(c == copies[0] for c in copies), f"copies of {k} differ"
        assert k in replay, f"live forecast {k} is not in the replay"
        assert copies[0] == replay[k], f"live forecast {k} differs from the replay"
    missing = set(replay) - set(live)
    # Replay closes every key's last window at end of file; a live stream keeps it open.
    assert len(missing) <= 2 * n_keys * n_models, len(missing)
    last = {}
    for key, origin, _model in replay:
        last[key] = max(last.get(key, 0), origin)
    assert all(origin >= last[key] - 2 * H for key, origin, _ in missing)


def synthetic(keys, windows, seed=0):
    return generate(keys, windows, seed=seed, irregular=False).with_columns(pl.col("key").cast(pl.String))


def without_produced_at(value: bytes) -> bytes:
    """A forecast message less its wall-clock ``produced_at`` (the last field): what two runs share."""
    head, sep, _ = value.rpartition(b',"produced_at":')
    assert sep, value[:200]
    return head


def test_live_equals_replay_on_both_clients_byte_for_byte_and_any_client_can_read_the_topic(kafka_broker, tmp_path):
    t = topics(kafka_broker, "live")
    df = pl.read_csv(ROOT / "replay_data" / "parking.csv", try_parse_dates=True).filter(
        pl.col("LastUpdated") < pl.datetime(2016, 10, 20))
    df = df.with_columns(pl.col("LastUpdated").dt.replace_time_zone("UTC"))
    windowing = {"interval": "1h", "agg": "mean", "allowed_lateness": "0s", "gap": "skip"}
    forecast = {"horizon": 9, "season": 9, "models": ["gru", "lstm", "holt_winters", "seasonal_naive", "naive"],
                "ensemble": True}
    n = feed_frame(kafka_broker, t["obs"], df, "SystemCodeNumber", "LastUpdated", ["Occupancy"])
    assert n == df.height
    replay = replay_of(tmp_path, df, "SystemCodeNumber", "LastUpdated", ["Occupancy"], windowing, forecast)
    published = {}
    for client in ("kafka-python", "confluent"):  # the same input topic, a group and output topics per client
        out = {k: kafka_broker.unique_topic(f"live-{client}-{k}") for k in ("forecasts", "dlq", "changelog")}
        cfg = write_worker_config(tmp_path / f"{client}.toml", kafka_broker, obs=t["obs"], forecasts=out["forecasts"],
                                  dlq=out["dlq"], changelog=out["changelog"], group=f"g-live-{client}",
                                  value_fields=["Occupancy"], windowing=windowing, forecast=forecast, client=client)
        log = tmp_path / f"{client}.log"
        proc = start_worker(cfg, log)
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
        live = forecast_table(read_forecasts(kafka_broker, out["forecasts"]))
        assert_live_matches_replay(live, replay, df["SystemCodeNumber"].n_unique(), 6)
        published[client] = out["forecasts"]

    # Byte for byte: the same messages (key, value less produced_at), on the same partition, in the same order.
    raw = {client: read_raw(kafka_broker, topic, partitions=True) for client, topic in published.items()}
    assert raw["kafka-python"], "no forecasts were published"
    for client, records in raw.items():
        raw[client] = [(p, k, without_produced_at(v)) for p, k, v in records]
    assert raw["confluent"] == raw["kafka-python"]

    # An independent client (librdkafka) reads the same messages, and each one validates against the schema.
    import jsonschema
    from confluent_kafka import Consumer, TopicPartition

    from streamseq.forecast_json import SCHEMA_PATH

    schema = json.loads(Path(SCHEMA_PATH).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    topic = published["kafka-python"]
    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "independent", "enable.auto.commit": False})
    meta = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    seen, idle = 0, time.monotonic()
    while time.monotonic() - idle < 3:
        msg = c.poll(0.2)
        if msg is None or msg.error():
            continue
        idle = time.monotonic()
        doc = json.loads(msg.value())
        validator.validate(doc)
        assert msg.key().decode() == doc["key"]
        seen += 1
    c.close()
    assert seen == len(raw["kafka-python"])


@pytest.mark.parametrize("lateness", ["0s", "5min"])
def test_sigkill_at_several_points_loses_nothing(kafka_broker, tmp_path, lateness):
    """Lateness 5 min is the shipped worker.toml's: a restored partition's windows must not close early
    (the no-stream-time sentinel and the committed clock)."""
    t = topics(kafka_broker, "crash")
    df = synthetic(40, 400)
    assert df.height >= 16_000
    feed_frame(kafka_broker, t["obs"], df, "key", "ts", ["value"])
    port = free_port()
    windowing = {**WINDOWING, "allowed_lateness": lateness}
    cfg = write_worker_config(tmp_path / "w.toml", kafka_broker, obs=t["obs"], forecasts=t["forecasts"],
                              dlq=t["dlq"], changelog=t["changelog"], group=t["group"], value_fields=["value"],
                              windowing=windowing, forecast=FORECAST, http_port=port)
    log = tmp_path / "w.log"
    for threshold in (3_000, 4_000, 5_000):  # records_in counts from each start
        proc = start_worker(cfg, log, idle_s=None)
        reached = wait_for(lambda n=threshold: (metric(port, "streamseq_records_in") or 0) >= n, 120)
        assert reached, log.read_text()[-3000:]
        kill(proc, signal.SIGKILL)
    proc = start_worker(cfg, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]

    live = forecast_table(read_forecasts(kafka_broker, t["forecasts"]))
    replay = replay_of(tmp_path, df, "key", "ts", ["value"], windowing, FORECAST)
    assert_live_matches_replay(live, replay, 40, 4)
    assert any(len(c) > 1 for c in live.values()), "the kills should have caused redelivery"
    assert read_raw(kafka_broker, t["dlq"], idle_s=1.0) == [], "no valid record may be dead-lettered"


@pytest.mark.parametrize(("client", "lateness"), [("kafka-python", "5min"), ("confluent", "0s")])
def test_exactly_once_mode_survives_sigkill(kafka_broker, tmp_path, client, lateness):
    """Transactions: Tansu leaves aborted records visible (KAFKA.md), so copies may exist; they must be identical.
    With aborted state visible the restored-partition path is hit on almost every kill: lateness 5 min on one
    client and 0 on the other covers both settings on both clients' exactly-once path in one run each."""
    t = topics(kafka_broker, "eos")
    df = synthetic(40, 300, seed=1)
    feed_frame(kafka_broker, t["obs"], df, "key", "ts", ["value"])
    port = free_port()
    windowing = {**WINDOWING, "allowed_lateness": lateness}
    cfg = write_worker_config(tmp_path / "w.toml", kafka_broker, obs=t["obs"], forecasts=t["forecasts"],
                              dlq=t["dlq"], changelog=t["changelog"], group=t["group"], value_fields=["value"],
                              windowing=windowing, forecast=FORECAST, http_port=port, exactly_once=True,
                              client=client)
    log = tmp_path / "w.log"
    proc = start_worker(cfg, log, idle_s=None)
    assert wait_for(lambda: (metric(port, "streamseq_records_in") or 0) >= 5_000, 120), log.read_text()[-3000:]
    kill(proc, signal.SIGKILL)
    proc = start_worker(cfg, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    live = forecast_table(read_forecasts(kafka_broker, t["forecasts"]))
    replay = replay_of(tmp_path, df, "key", "ts", ["value"], windowing, FORECAST)
    assert_live_matches_replay(live, replay, 40, 4)
    assert read_raw(kafka_broker, t["dlq"], idle_s=1.0) == [], "no valid record may be dead-lettered"


@pytest.mark.parametrize("client", CLIENTS)
def test_rebalance_moves_keys_with_their_state(kafka_broker, tmp_path, client):
    t = topics(kafka_broker, "rebal")
    df = synthetic(40, 300, seed=2)
    half = df.filter(pl.col("ts") < df["ts"].min() + pl.duration(hours=150))
    rest = df.filter(pl.col("ts") >= df["ts"].min() + pl.duration(hours=150))
    pa, pb = free_port(), free_port()
    common = dict(obs=t["obs"], forecasts=t["forecasts"], dlq=t["dlq"], changelog=t["changelog"], group=t["group"],
                  value_fields=["value"], windowing=WINDOWING, forecast=FORECAST, client=client)
    cfg_a = write_worker_config(tmp_path / "a.toml", kafka_broker, http_port=pa, **common)
    cfg_b = write_worker_config(tmp_path / "b.toml", kafka_broker, http_port=pb, **common)
    feed_frame(kafka_broker, t["obs"], half, "key", "ts", ["value"])
    a = start_worker(cfg_a, tmp_path / "a.log", idle_s=None)
    b = start_worker(cfg_b, tmp_path / "b.log", idle_s=None)
    try:
        both = lambda: (metric(pa, "streamseq_keys") or 0) > 0 and (metric(pb, "streamseq_keys") or 0) > 0  # noqa: E731
        assert wait_for(both, 120), (tmp_path / "a.log").read_text()[-2000:] + (tmp_path / "b.log").read_text()[-2000:]
        done = lambda: (metric(pa, "streamseq_records_in") or 0) + (metric(pb, "streamseq_records_in") or 0) >= half.height  # noqa: E731
        assert wait_for(done, 120)
        done_by_b = metric(pb, "streamseq_records_in") or 0
        restored_before = metric(pa, "streamseq_restored_keys") or 0  # before B leaves: A may take over at once
        assert kill(b, signal.SIGTERM) == 0  # graceful leave: A takes over B's partitions
        feed_frame(kafka_broker, t["obs"], rest, "key", "ts", ["value"])
        assert wait_for(lambda: (metric(pa, "streamseq_restored_keys") or 0) > restored_before, 120), \
            (tmp_path / "a.log").read_text()[-3000:]
        # B committed everything it consumed before leaving: A reads each remaining record once.
        assert wait_for(lambda: (metric(pa, "streamseq_records_in") or 0) + done_by_b >= df.height, 180), \
            (tmp_path / "a.log").read_text()[-3000:]
        assert kill(a, signal.SIGTERM) == 0
    finally:  # a failed wait must not leave the workers running
        for proc in (a, b):
            if proc.poll() is None:
                kill(proc, signal.SIGKILL)
    live = forecast_table(read_forecasts(kafka_broker, t["forecasts"]))
    replay = replay_of(tmp_path, df, "key", "ts", ["value"], WINDOWING, FORECAST)
    assert_live_matches_replay(live, replay, 40, 4)
    assert all(len(c) == 1 for c in live.values()), "graceful handover must not duplicate"


def test_bad_records_go_to_the_dead_letter_topic_and_change_nothing(kafka_broker, tmp_path):
    from kafka import KafkaProducer

    t = topics(kafka_broker, "bad")
    df = synthetic(20, 120, seed=3)
    feed_frame(kafka_broker, t["obs"], df.head(0), "key", "ts", ["value"])  # creates the topic
    rng = np.random.default_rng(0)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, max_request_size=2_000_000, linger_ms=5)
    kinds = ["bad json", "missing field", "nan", "string number", "huge", "far time", "duplicate", "not object"]
    bad_sent = 0
    rows = df.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ").alias("iso")).iter_rows(named=True)
    for row in rows:
        key = row["key"].encode()
        good = json.dumps({"key": row["key"], "ts": row["iso"], "value": row["value"]}).encode()
        producer.send(t["obs"], good, key=key)
        if bad_sent < 1000 and rng.random() < 0.45:
            kind = kinds[bad_sent % len(kinds)]
            bad = {
                "bad json": b'{"key": "' + key + b'", "ts": ',
                "missing field": json.dumps({"key": row["key"], "value": 1.0}).encode(),
                "nan": b'{"key": "' + key + b'", "ts": "' + row["iso"].encode() + b'", "value": NaN}',
                "string number": json.dumps({"key": row["key"], "ts": row["iso"], "value": "12.5"}).encode(),
                "huge": json.dumps({"key": row["key"], "ts": row["iso"], "value": 1.0, "pad": "x" * 1_000_001}).encode(),
                "far time": json.dumps({"key": row["key"], "ts": "2999-01-01T00:00:00Z", "value": 1.0}).encode(),
                "duplicate": good,
                "not object": b"[1, 2, 3]",
            }[kind]
            producer.send(t["obs"], bad, key=key)
            bad_sent += 1
    producer.flush()
    producer.close()
    assert bad_sent == 1000
    cfg = write_worker_config(tmp_path / "w.toml", kafka_broker, obs=t["obs"], forecasts=t["forecasts"],
                              dlq=t["dlq"], changelog=t["changelog"], group=t["group"], value_fields=["value"],
                              windowing=WINDOWING, forecast=FORECAST)
    proc = start_worker(cfg, tmp_path / "w.log")
    assert proc.wait(timeout=240) == 0, (tmp_path / "w.log").read_text()[-3000:]
    dead = [json.loads(v) for _, v in read_raw(kafka_broker, t["dlq"])]
    assert len(dead) == 1000
    assert all(d["reason"] and d["source"] == t["obs"] and d["offset"] >= 0 for d in dead)
    reasons = {d["reason"].split(":")[0] for d in dead}
    assert len(reasons) >= 5, reasons
    live = forecast_table(read_forecasts(kafka_broker, t["forecasts"]))
    replay = replay_of(tmp_path, df, "key", "ts", ["value"], WINDOWING, FORECAST)
    assert_live_matches_replay(live, replay, 20, 4)


def test_sigterm_exits_zero_in_time_and_resumes_without_gap_or_duplicate(kafka_broker, tmp_path):
    t = topics(kafka_broker, "term")
    df = synthetic(50, 300, seed=4)
    feed_frame(kafka_broker, t["obs"], df, "key", "ts", ["value"])
    port = free_port()
    cfg = write_worker_config(tmp_path / "w.toml", kafka_broker, obs=t["obs"], forecasts=t["forecasts"],
                              dlq=t["dlq"], changelog=t["changelog"], group=t["group"], value_fields=["value"],
                              windowing=WINDOWING, forecast=FORECAST, http_port=port)
    log = tmp_path / "w.log"
    proc = start_worker(cfg, log, idle_s=None)
    assert wait_for(lambda: (metric(port, "streamseq_records_in") or 0) >= 4_000, 120), log.read_text()[-3000:]
    t0 = time.monotonic()
    assert kill(proc, signal.SIGTERM, timeout_s=25) == 0
    assert time.monotonic() - t0 < 20
    proc = start_worker(cfg, log)
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    live = forecast_table(read_forecasts(kafka_broker, t["forecasts"]))
    replay = replay_of(tmp_path, df, "key", "ts", ["value"], WINDOWING, FORECAST)
    assert_live_matches_replay(live, replay, 50, 4)
    assert all(len(c) == 1 for c in live.values()), "a clean stop must not cause redelivery"


def test_hot_swap_during_a_live_run_changes_the_version_with_no_gap(kafka_broker, tmp_path):
    from dataclasses import replace

    from streamseq.models.rnn import RNNNet
    from streamseq.registry import ModelRegistry, artifact_config
    from streamseq.specs import rnn_config

    t = topics(kafka_broker, "swap")
    df = synthetic(20, 200, seed=6)
    cut = df["ts"].min() + pl.duration(hours=100)
    first, rest = df.filter(pl.col("ts") < cut), df.filter(pl.col("ts") >= cut)
    port = free_port()
    reg_path = tmp_path / "registry"
    cfg_path = write_worker_config(tmp_path / "w.toml", kafka_broker, obs=t["obs"], forecasts=t["forecasts"],
                                   dlq=t["dlq"], changelog=t["changelog"], group=t["group"], value_fields=["value"],
                                   windowing=WINDOWING, forecast=FORECAST, http_port=port, registry=str(reg_path))
    feed_frame(kafka_broker, t["obs"], first, "key", "ts", ["value"])
    log = tmp_path / "w.log"
    proc = start_worker(cfg_path, log, idle_s=None)
    assert wait_for(lambda: (metric(port, "streamseq_records_in") or 0) >= first.height, 120), log.read_text()[-3000:]

    cfg = config_mod.load(cfg_path)
    params = replace(rnn_config(cfg, "gru", 1), seed=7)
    registry = ModelRegistry(reg_path)
    version = registry.publish("gru", RNNNet(params).state_dict(), artifact_config("gru", params), {"test": True})
    registry.promote("gru", version)
    assert wait_for(lambda: (metric(port, "streamseq_model_swaps") or 0) >= 1, 60), log.read_text()[-3000:]

    feed_frame(kafka_broker, t["obs"], rest, "key", "ts", ["value"])
    assert wait_for(lambda: (metric(port, "streamseq_records_in") or 0) >= df.height, 120), log.read_text()[-3000:]
    assert kill(proc, signal.SIGTERM) == 0

    forecasts = [f for f in read_forecasts(kafka_broker, t["forecasts"]) if f.model == "gru"]
    assert {f.model_version for f in forecasts} == {"init", version}
    by_key: dict = {}
    for f in forecasts:
        by_key.setdefault(f.key, []).append((f.origin, f.model_version))
    assert len(by_key) == 20
    for key, rows in by_key.items():
        rows.sort()
        origins = [o for o, _ in rows]
        assert origins == list(range(origins[0], origins[-1] + H, H)), f"{key}: a window without a forecast"
        versions = [v for _, v in rows]
        swap_at = versions.index(version)
        assert swap_at > 0, f"{key}: no forecast before the swap"
        assert set(versions[:swap_at]) == {"init"} and set(versions[swap_at:]) == {version}


def test_calendar_windows_live_equal_replay_and_target_the_month_ends(kafka_broker, tmp_path):
    """Monthly windows (months of 28 to 31 days) in the worker: the same forecasts as the replay,
    and each step's target_ts on the topic is the end of its calendar month."""
    from datetime import datetime

    t = topics(kafka_broker, "monthly")
    rng = np.random.default_rng(5)
    rows = [(f"m{k}", datetime(2010 + i // 12, i % 12 + 1, 1 + int(rng.integers(0, 27)), tzinfo=UTC),
             50 + 10 * np.sin(2 * np.pi * i / 12) + rng.normal())
            for i in range(48) for k in range(6)]
    df = pl.DataFrame(rows, schema=["key", "ts", "value"], orient="row").sort("ts")
    windowing = {"interval": "1mo", "agg": "mean", "allowed_lateness": "0s", "gap": "ffill"}
    forecast = {"horizon": 3, "season": 0, "models": ["gru", "seasonal_naive", "naive"], "ensemble": True}
    feed_frame(kafka_broker, t["obs"], df, "key", "ts", ["value"])
    cfg = write_worker_config(tmp_path / "w.toml", kafka_broker, obs=t["obs"], forecasts=t["forecasts"],
                              dlq=t["dlq"], changelog=t["changelog"], group=t["group"], value_fields=["value"],
                              windowing=windowing, forecast=forecast)
    proc = start_worker(cfg, tmp_path / "w.log")
    assert proc.wait(timeout=240) == 0, (tmp_path / "w.log").read_text()[-3000:]
    forecasts = read_forecasts(kafka_broker, t["forecasts"])
    assert forecasts and {f.interval for f in forecasts} == {"1mo"}
    for f in forecasts[:50]:
        for s in f.steps:
            day = datetime.fromtimestamp(s.target_ts / 1e9, tz=UTC)
            assert (day.day, day.hour, day.minute) == (1, 0, 0)
    live = forecast_table(forecasts)
    replay = replay_of(tmp_path, df, "key", "ts", ["value"], windowing, forecast)
    assert_live_matches_replay(live, replay, 6, 4)
