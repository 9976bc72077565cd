"""Per-key state ⇄ bytes for the changelog topic (safetensors: no code runs on load).

``Pipeline.snapshot_keys`` gives {component/field: array with one row per key};
open window cells are the exception (rows owned by a key through
``windower/cell_owner``), and river models are byte blobs. Each key's record
holds exactly its rows.
"""
from __future__ import annotations

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .errors import ArtifactError

FORMAT = "streamseq.state/v1"
_CELL_FIELDS = ("windower/cell_wid", "windower/cell_stats")
_OWNER = "windower/cell_owner"
_BLOB = "#blob"


def encode_keys(keys: list[str], state: dict[str, np.ndarray]) -> dict[str, bytes]:
    owner = state.get(_OWNER)
    out = {}
    for i, key in enumerate(keys):
        tensors: dict[str, np.ndarray] = {}
        for name, arr in state.items():
            if name == _OWNER:
                continue
            if name in _CELL_FIELDS:
                tensors[name] = np.ascontiguousarray(arr[owner == i])
            elif arr.dtype == object:
                tensors[name + _BLOB] = np.frombuffer(bytes(arr[i]), dtype=np.uint8).copy()
            else:
                tensors[name] = np.ascontiguousarray(arr[i:i + 1])
        out[key] = st_save(tensors, metadata={"format": FORMAT, "key": key})
    return out


def decode_keys(records: dict[str, bytes]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Stack the records of many keys back into one snapshot (the inverse of encode_keys)."""
    keys = sorted(records)
    parts: dict[str, list[np.ndarray]] = {}
    owners: list[np.ndarray] = []
    for i, key in enumerate(keys):
        try:
            tensors = st_load(records[key])
        except Exception as exc:  # truncated or foreign bytes
            raise ArtifactError(f"state of key {key!r} is not a {FORMAT} record: {exc}") from exc
        n_cells = len(tensors.get("windower/cell_wid", ()))
        owners.append(np.full(n_cells, i, np.int64))
        for name, arr in tensors.items():
            if name.endswith(_BLOB):
                parts.setdefault(name[: -len(_BLOB)], []).append(np.array([arr.tobytes()], dtype=object))
            else:
                parts.setdefault(name, []).append(arr)
    state = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    state[_OWNER] = np.concatenate(owners) if owners else np.empty(0, np.int64)
    return keys, state
