"""Prometheus metrics of a stream worker, and the HTTP endpoints for health and scraping."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records_in = Counter("streamseq_records_in", "Observations consumed", registry=r)
        self.records_skipped = Counter("streamseq_records_skipped", "Observations already reflected in restored state", registry=r)
        self.windows_closed = Counter("streamseq_windows_closed", "Windows closed (real observations)", registry=r)
        self.forecasts_out = Counter("streamseq_forecasts_out", "Forecast messages produced", registry=r)
        self.dead_letters = Counter("streamseq_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r)
        self.lag = Gauge("streamseq_consumer_lag", "Highwater minus position", ["topic", "partition"], registry=r)
        self.batch_latency = Histogram("streamseq_batch_latency_seconds", "Poll returned to forecasts handed to the producer",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.restore_seconds = Histogram("streamseq_restore_seconds", "State restore after a partition assignment",
                                         buckets=_LATENCY_BUCKETS + (30.0, 60.0, 300.0), registry=r)
        self.restored_keys = Counter("streamseq_restored_keys", "Keys restored from the changelog", registry=r)
        self.checkpoints = Counter("streamseq_checkpoints", "Checkpoints committed", registry=r)
        self.rewinds = Counter("streamseq_rewinds", "Rewinds to the last commit after records were lost", registry=r)
        self.state_too_large = Counter("streamseq_state_too_large",
                                       "Key states over the record size limit, not kept in the changelog", registry=r)
        self.keys = Gauge("streamseq_keys", "Keys with state in this worker", registry=r)
        self.model_version = Gauge("streamseq_model_info", "Model versions in service", ["model", "version"], registry=r)
        self.model_swaps = Counter("streamseq_model_swaps", "Hot swaps of model versions", ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """live: the process loop runs and has come round within ``stall_s`` (a loop stuck in a call that
    never returns is not live: the orchestrator restarts it); ready: state restored for the current
    assignment."""

    def __init__(self, stall_s: float = 0.0, clock=time.monotonic) -> None:
        self._live = True
        self.ready = False
        self.detail = "starting"
        self.stall_s = stall_s  # 0 = no stall check
        self._clock = clock
        self._beat = clock()

    def beat(self) -> None:
        """The loop came round."""
        self._beat = self._clock()

    @property
    def live(self) -> bool:
        if not self._live:
            return False
        return not self.stall_s or self._clock() - self._beat <= self.stall_s

    @live.setter
    def live(self, value: bool) -> None:
        self._live = value


class HealthServer:
    """/healthz, /readyz, /metrics on a background thread."""

    def __init__(self, host: str, port: int, health: Health, metrics: WorkerMetrics):
        health_ref, metrics_ref = health, metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.startswith("/healthz"):
                    self._send(200 if health_ref.live else 503, b"ok\n" if health_ref.live else b"dead\n")
                elif self.path.startswith("/readyz"):
                    ok = health_ref.ready and health_ref.live
                    self._send(200 if ok else 503, (health_ref.detail + "\n").encode())
                elif self.path.startswith("/metrics"):
                    self._send(200, metrics_ref.render(), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n")

            def _send(self, code, body, ctype="text/plain; charset=utf-8"):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the probe hung up (its own timeout): nothing to answer, nothing to log

            def log_message(self, *args):  # quiet: probes hit this every few seconds
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="health-http", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
