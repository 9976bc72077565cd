"""Columnar records that flow through the pipeline.

Everything on the hot path is a batch of numpy arrays, never a list of objects:
a poll's worth of observations is decoded, validated and windowed with
vectorised code.

Times are int64 nanoseconds since the Unix epoch (UTC) everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORECAST_SCHEMA = "streamseq.forecast/v1"
NS_PER_S = 1_000_000_000
# What every source accepts (replay and live alike). Keys travel in forecast messages, changelog
# records and dead letters, so they must stay far below a broker's 1 MiB message limit; values
# beyond 1e30 overflow the squares of the running statistics and the float32 rings of the models.
MAX_KEY_BYTES = 1024
MAX_ABS_VALUE = 1e30


def key_fault(key) -> tuple[str, str] | None:
    """Why a series key cannot be used, as (code, text), or None when it can. The one rule of every source.

    >>> key_fault("s1") is None, key_fault("  ")[0], key_fault("x" * 2000)[0]
    (True, 'missing_key', 'key_too_long')
    """
    if key is None or not key.strip():
        return "missing_key", "missing key"
    if len(key) * 4 > MAX_KEY_BYTES:
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > MAX_KEY_BYTES:
            return "key_too_long", f"key too long ({size:,} bytes > {MAX_KEY_BYTES})"
    return None


@dataclass
class ObservationBatch:
    """Observations in arrival order, with their source position.

    ``partition``/``offset`` are the source position of each record: a Kafka
    partition and offset, or for file replay the file index and row number.
    """

    keys: np.ndarray  # (n,) object: series key
    ts: np.ndarray  # (n,) int64 ns: event time
    values: np.ndarray  # (n, F) float64
    partition: np.ndarray  # (n,) int32
    offset: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: np.ndarray) -> ObservationBatch:
        return ObservationBatch(
            self.keys[idx], self.ts[idx], self.values[idx], self.partition[idx], self.offset[idx]
        )

    @staticmethod
    def empty(n_fields: int) -> ObservationBatch:
        return ObservationBatch(
            np.empty(0, dtype=object),
            np.empty(0, dtype=np.int64),
            np.empty((0, n_fields), dtype=np.float64),
            np.empty(0, dtype=np.int32),
            np.empty(0, dtype=np.int64),
        )

    @staticmethod
    def concat(batches: list[ObservationBatch]) -> ObservationBatch:
        return ObservationBatch(
            np.concatenate([b.keys for b in batches]),
            np.concatenate([b.ts for b in batches]),
            np.concatenate([b.values for b in batches]),
            np.concatenate([b.partition for b in batches]),
            np.concatenate([b.offset for b in batches]),
        )


@dataclass
class DeadLetter:
    """A record that could not be used, with why and where it came from."""

    reason: str
    source: str  # file path or topic
    partition: int
    offset: int  # row number for files
    payload: str | bytes | None = None  # the original record, as received
    key: str | None = None

    def to_json_dict(self) -> dict:
        payload: str | None
        if isinstance(self.payload, bytes):
            try:
                payload = self.payload.decode("utf-8")
            except UnicodeDecodeError:
                payload = self.payload.hex()
        else:
            payload = self.payload
        if isinstance(payload, str) and len(payload) > 4096:
            payload = payload[:4096] + f"...[{len(payload)} chars]"
        return {
            "reason": self.reason,
            "source": self.source,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "payload": payload,
        }


@dataclass
class ForecastBatch:
    """Forecasts of one model made at one step for many keys.

    Row i is the H-step forecast for ``keys[i]`` made at the end of the window
    ``origin`` (ns); step j (1-based) targets the window ending at ``targets[j - 1]``
    (calendar windows differ in length, so the ends are given, not computed).
    """

    model: str
    model_version: str
    origin: int  # ns, end of the window the forecast was made at
    interval: str  # the window grid's name, e.g. "1h", "1mo"
    targets: np.ndarray  # (H,) int64 ns: end of each step's target window
    keys: np.ndarray  # (n,) object
    mean: np.ndarray  # (n, H) float64
    lo: np.ndarray  # (n, H)
    hi: np.ndarray  # (n, H)
    produced_at: int = 0  # ns, wall clock from the injected clock

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def horizon(self) -> int:
        return self.mean.shape[1]


@dataclass
class WindowBatch:
    """Closed windows (one row per key and window), as stored and used for training."""

    keys: np.ndarray  # (n,) object
    end: np.ndarray  # (n,) int64 ns, exclusive end of the window
    count: np.ndarray  # (n,) int64 observations aggregated
    filled: np.ndarray  # (n,) bool: gap-filled, no observation
    features: np.ndarray  # (n, F) float64
    feature_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.end)
