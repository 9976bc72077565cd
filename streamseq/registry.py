"""Model registry: versioned artifacts on a path (a local folder or a shared volume).

Layout::

    <path>/<model name>/v0001/weights.safetensors   tensors only (no pickle)
                             /config.json          what rebuilds the model: {"kind", "name", "params"}
                             /meta.json            training metadata: data range, validation metrics, sha256
    <path>/<model name>/PROMOTED                   {"version": "v0002", "history": ["v0001", "v0002"]}

A version is written into a hidden temp folder and renamed into place, and
``PROMOTED`` is replaced with ``os.replace``: a reader sees a whole artifact
or none. Loading never unpickles: weights are safetensors only, and every
artifact is checked before use — JSON files present and of bounded size,
checksum, config of the expected kind with settings of the right types and
sizes, tensor names, shapes and dtypes (read from the safetensors header before
any weight is) equal to those of the model the config builds, weights finite.
Anything off raises ``ArtifactError`` naming the artifact and the problem.

>>> import tempfile
>>> from streamseq.models.transformer import TransformerConfig, init_net
>>> reg = ModelRegistry(tempfile.mkdtemp())
>>> cfg = TransformerConfig(context=4, d_model=8, heads=2, layers=1, ff=8, horizon=2)
>>> v = reg.publish("transformer", init_net(cfg).state_dict(), artifact_config("transformer", cfg), {"val_mae": 1.0})
>>> v, reg.promoted("transformer")
('v0001', None)
>>> reg.promote("transformer", v); reg.promoted("transformer")
'v0001'
>>> sd, config, meta = reg.load("transformer", v)
>>> config["params"]["context"], meta["val_mae"]
(4, 1.0)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import get_type_hints

import torch

from .errors import ArtifactError, UsageError

FORMAT = "streamseq.model/v1"
WEIGHTS = "weights.safetensors"
PROMOTED = "PROMOTED"
MAX_JSON_BYTES = 1 << 20  # config.json, meta.json, PROMOTED: a few KB when written here
# Model sizes an artifact may ask for: far above any model here, low enough that building one stays cheap.
_SIZE_LIMITS = {"context": 1 << 16, "d_model": 1 << 14, "heads": 1 << 8, "layers": 1 << 8, "ff": 1 << 16,
                "horizon": 10_000, "n_features": 1 << 12, "hidden": 1 << 14, "tbptt": 1 << 12}
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_VERSION = re.compile(r"^v(\d{4,})$")
KINDS = {"transformer": "transformer", "gru": "rnn", "lstm": "rnn"}


class RegistryError(UsageError):
    """A registry operation cannot be done (unknown version, nothing to roll back to)."""


# Settings an artifact must share with the model it replaces (the rest only affect training).
SHAPE_KEYS = {
    "transformer": ("context", "d_model", "heads", "layers", "ff", "horizon", "n_features", "scale"),
    "rnn": ("cell", "hidden", "horizon", "n_features", "target", "normalize", "season", "calendar"),
}


def mismatch(artifact_params: dict, running_params: dict, kind: str) -> str | None:
    """Why an artifact cannot replace a running model with these params (None if it can)."""
    diffs = [f"{k} {_short(artifact_params.get(k))} != {running_params.get(k)!r}"
             for k in SHAPE_KEYS.get(kind, ()) if artifact_params.get(k) != running_params.get(k)]
    return ", ".join(diffs) or None


def artifact_config(name: str, params) -> dict:
    """The config.json payload of a model: its kind and the parameters that rebuild it."""
    if name not in KINDS:
        raise RegistryError(f"no artifacts for model {name!r}; registry models are {', '.join(KINDS)}")
    if not isinstance(params, dict):
        params = asdict(params)
    return {"format": FORMAT, "kind": KINDS[name], "name": name, "params": dict(params)}


def build_net(config: dict):
    """The untrained network an artifact config describes (raises ArtifactError if it cannot)."""
    kind, params = config.get("kind"), config.get("params")
    if not isinstance(params, dict):
        raise ArtifactError("config.json has no 'params' table")
    if kind == "transformer":
        from .models.transformer import TransformerConfig as cls  # noqa: N813 - the config class of this kind
        from .models.transformer import TransformerNet as net_cls  # noqa: N813
    elif kind == "rnn":
        from .models.rnn import RNNConfig as cls  # noqa: N813
        from .models.rnn import RNNNet as net_cls  # noqa: N813
    else:
        raise ArtifactError(f"config.json names an unknown model kind {str(kind)[:80]!r}")
    _check_params(kind, params, cls)
    try:
        return net_cls(cls(**params))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"config.json cannot build a {kind} model: {exc}") from exc


def _check_params(kind: str, params: dict, cls) -> None:
    """Every setting known, of its field's type, and sizes within _SIZE_LIMITS: before anything is built."""
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for k, v in params.items():
        if k not in names:
            raise ArtifactError(f"config.json cannot build a {kind} model: unknown setting {str(k)[:80]!r}")
        typ = hints[k]
        ok = (type(v) is int if typ is int else
              type(v) in (int, float) and math.isfinite(v) if typ is float else
              isinstance(v, typ))
        if not ok:
            raise ArtifactError(f"config.json cannot build a {kind} model: {k} is {type(v).__name__}, "
                                f"expected {typ.__name__}")
        if k in _SIZE_LIMITS and not 1 <= v <= _SIZE_LIMITS[k]:
            raise ArtifactError(f"config.json cannot build a {kind} model: {k} {v} outside 1..{_SIZE_LIMITS[k]}")


class ModelRegistry:
    def __init__(self, path: str | os.PathLike, clock=None):
        self.path = Path(path)
        self._clock = clock

    def _now(self) -> int:
        return self._clock.now_ns() if self._clock is not None else time.time_ns()

    # -- writing ----------------------------------------------------------------
    def publish(self, name: str, state_dict: dict, config: dict, meta: dict) -> str:
        """Write a new version atomically; returns its name (``v0001``, ``v0002``, ...). Does not promote."""
        from safetensors.torch import save_file

        config = dict(config)
        config.setdefault("format", FORMAT)
        config.setdefault("name", name)
        config.setdefault("kind", KINDS.get(name))
        if config["name"] != name or config["kind"] != KINDS.get(name):
            raise RegistryError(f"config for {config['name']!r} ({config['kind']}) published as {name!r}")
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "name": name})
            digest = _sha256(tmp / WEIGHTS)
            meta = {**meta, "name": name, "created_ns": self._now(), "sha256": digest,
                    "torch": torch.__version__}
            _write_json(tmp / "config.json", config)
            for _ in range(100):  # another publisher may take the same number: take the next
                version = f"v{self._last_number(name) + 1:04d}"
                _write_json(tmp / "meta.json", {**meta, "version": version})
                try:
                    os.rename(tmp, folder / version)
                    return version
                except OSError:
                    if not (folder / version).exists():
                        raise
            raise RegistryError(f"could not allocate a version for {name}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def promote(self, name: str, version: str) -> None:
        """Put a version in service: it is loaded and checked first, then PROMOTED is replaced atomically."""
        if not (self.path / name / version).is_dir():
            raise RegistryError(f"{name} has no version {version!r} (have: {', '.join(self.versions(name)) or 'none'})")
        self.load(name, version)
        state = self._promoted_state(name)
        history = [v for v in state.get("history", [])]
        history.append(version)
        self._write_promoted(name, {"version": version, "history": history, "promoted_ns": self._now()})

    def rollback(self, name: str) -> str:
        """Put the previously promoted version back in service; returns it."""
        state = self._promoted_state(name)
        history = list(state.get("history", []))
        if len(history) < 2:
            raise RegistryError(f"{name}: nothing to roll back to (promotion history: {history or 'empty'})")
        history.pop()
        version = history[-1]
        self.load(name, version)
        self._write_promoted(name, {"version": version, "history": history, "promoted_ns": self._now()})
        return version

    def _write_promoted(self, name: str, state: dict) -> None:
        folder = self.path / name
        tmp = folder / f".{PROMOTED}.{uuid.uuid4().hex}.tmp"
        _write_json(tmp, state)
        os.replace(tmp, folder / PROMOTED)

    # -- reading ------------------------------------------------------------------
    def _promoted_state(self, name: str) -> dict:
        p = self.path / name / PROMOTED
        if not p.exists():
            return {}
        try:
            state = _read_json(p)
        except ArtifactError as exc:
            raise ArtifactError(f"{p}: unreadable promotion record: {exc}") from exc
        history = state.get("history", [])
        if (not isinstance(state.get("version"), str) or not _VERSION.match(state["version"])
                or not isinstance(history, list) or not all(isinstance(v, str) and _VERSION.match(v) for v in history)):
            raise ArtifactError(f"{p}: unreadable promotion record: expected a version and a history of versions")
        return state

    def promoted(self, name: str) -> str | None:
        return self._promoted_state(name).get("version")

    def versions(self, name: str) -> list[str]:
        folder = self.path / name
        if not folder.is_dir():
            return []
        return sorted((p.name for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)),
                      key=lambda v: int(v[1:]))

    def _last_number(self, name: str) -> int:
        vs = self.versions(name)
        return int(vs[-1][1:]) if vs else 0

    def models(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list(self, name: str | None = None) -> list[dict]:
        """One row per version: name, version, promoted, created, data range and validation metrics."""
        rows = []
        for n in [name] if name else self.models():
            try:
                current = self.promoted(n)
            except ArtifactError:
                current = None
            for v in self.versions(n):
                try:
                    meta = _read_json(self.path / n / v / "meta.json")
                except ArtifactError as exc:
                    meta = {"error": str(exc)}
                rows.append({"name": n, "version": v, "promoted": v == current, **meta})
        return rows

    def load(self, name: str, version: str, expect: dict | None = None) -> tuple[dict, dict, dict]:
        """(state_dict, config, meta) of a version, checked; ArtifactError if anything is off.

        ``expect``: the params of the running model; an artifact whose shapes differ
        is refused before any weights are read or any network is built.
        """
        where = self.path / name / version
        if not _VERSION.match(version) or not where.is_dir():
            raise ArtifactError(f"{where}: no such model version")
        for f in ("config.json", "meta.json"):
            if not (where / f).is_file():
                raise ArtifactError(f"{where}: incomplete artifact, {f} is missing")
        config = _read_json(where / "config.json")
        meta = _read_json(where / "meta.json")
        if config.get("format") != FORMAT:
            raise ArtifactError(f"{where}: foreign artifact (format {_short(config.get('format'))}, "
                                f"expected {FORMAT!r})")
        if config.get("name") != name or config.get("kind") != KINDS.get(name):
            raise ArtifactError(f"{where}: artifact of {_short(config.get('name'))} ({_short(config.get('kind'))}) "
                                f"is not a {name} model")
        params = config.get("params") if isinstance(config.get("params"), dict) else {}
        if name in ("gru", "lstm") and params.get("cell") != name:
            raise ArtifactError(f"{where}: config cell {_short(params.get('cell'))} is not {name}")
        if expect is not None:
            why = mismatch(params, expect, config["kind"])
            if why:
                raise ArtifactError(f"{where}: does not fit the running model: {why}")
        try:
            with torch.device("meta"):  # names, shapes and dtypes only: nothing is allocated
                skeleton = build_net(config).state_dict()
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc
        expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.items()}
        return self._load_weights(where, meta, expected), config, meta

    def _load_weights(self, where: Path, meta: dict, expected: dict) -> dict:
        """The tensors of weights.safetensors, once its header matches ``expected`` {name: (shape, dtype)}."""
        from safetensors import safe_open

        st = where / WEIGHTS
        if not st.is_file():
            raise ArtifactError(f"{where}: incomplete artifact, {WEIGHTS} is missing")
        digest = meta.get("sha256")
        if digest and _sha256(st) != digest:
            raise ArtifactError(f"{st}: checksum mismatch: the file is truncated or was modified")
        try:
            with safe_open(str(st), framework="pt", device="cpu") as f:
                names = set(f.keys())
                if names != set(expected):
                    extra, missing = sorted(names - set(expected))[:3], sorted(set(expected) - names)[:3]
                    raise ArtifactError(f"{st}: weights do not fit the model its config builds: "
                                        f"unexpected {extra}, missing {missing}")
                for k in sorted(names):
                    sl = f.get_slice(k)
                    shape, dtype = tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype())
                    if (shape, dtype) != expected[k]:
                        raise ArtifactError(f"{st}: weights do not fit the model its config builds: {k} is "
                                            f"{sl.get_dtype()} {list(shape)}, expected {expected[k][1]} "
                                            f"{list(expected[k][0])}")
                sd = {k: f.get_tensor(k) for k in sorted(names)}
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on bad bytes
            raise ArtifactError(f"{st}: not a readable safetensors file: {str(exc)[:200]}") from exc
        bad = next((k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise ArtifactError(f"{st}: weights are not finite ({bad})")
        return sd


def _short(x, limit: int = 80) -> str:
    """A value read from an artifact, shortened for a message."""
    s = repr(x)
    return s if len(s) <= limit else s[:limit] + "..."


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(p: Path, obj) -> None:
    with open(p, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _read_json(p: Path) -> dict:
    """A JSON object from a file of at most MAX_JSON_BYTES; ArtifactError otherwise."""
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise ValueError(f"more than {MAX_JSON_BYTES} bytes")
        obj = json.loads(data)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than json follows
        raise ArtifactError(f"{p}: unreadable JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise ArtifactError(f"{p}: expected a JSON object")
    return obj


__all__ = ["ModelRegistry", "RegistryError", "artifact_config", "build_net", "mismatch"]
