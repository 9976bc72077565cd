"""Model registry: versioned artifacts on a path (a local folder or a shared volume).

Layout::

    <path>/<model name>/v0001/weights.safetensors   tensors only (no pickle)
                             /config.json          what rebuilds the model: {"kind", "name", "params"}
                             /meta.json            training metadata: data range, validation metrics, sha256
    <path>/<model name>/PROMOTED                   {"version": "v0002", "history": ["v0001", "v0002"]}

A version is written into a hidden temp folder and renamed into place, and
``PROMOTED`` is replaced with ``os.replace``: a reader sees a whole artifact
or none. Loading never unpickles: weights are safetensors (a legacy ``.pt``
is read only with ``torch.load(weights_only=True)``), and every artifact is
checked before use — files present, checksum, config of the expected kind,
tensor names and shapes equal to the model the config builds. Anything off
raises ``ArtifactError`` naming the artifact and the problem.

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
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import UsageError, ArtifactError, StreamseqError

FORMAT = "streamseq.model/v1"
WEIGHTS = "weights.safetensors"
LEGACY_WEIGHTS = "weights.pt"
PROMOTED = "PROMOTED"
_VERSION = re.compile(r"^v(\d{4,})$")
KINDS = {"transformer": "transformer", "gru": "rnn", "lstm": "rnn"}


class RegistryError(UsageError):
    """A registry operation cannot be done (unknown version, nothing to roll back to)."""


# Settings an artifact must share with the model it replaces (the rest only affect training).
SHAPE_KEYS = {
    "transformer": ("context", "d_model", "heads", "layers", "ff", "horizon", "n_features", "scale"),
    "rnn": ("cell", "hidden", "horizon", "n_features", "target", "normalize", "scale"),
}


def mismatch(artifact_params: dict, running_params: dict, kind: str) -> str | None:
    """Why an artifact cannot replace a running model with these params (None if it can)."""
    diffs = [f"{k} {artifact_params.get(k)!r} != {running_params.get(k)!r}"
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
    try:
        if kind == "transformer":
            from .models.transformer import TransformerConfig, TransformerNet

            return TransformerNet(TransformerConfig.from_dict(params))
        if kind == "rnn":
            from .models.rnn import RNNConfig, RNNNet

            unknown = set(params) - set(RNNConfig.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown rnn settings {sorted(unknown)}")
            return RNNNet(RNNConfig(**params))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"config.json cannot build a {kind} model: {exc}") from exc
    raise ArtifactError(f"config.json names an unknown model kind {kind!r}")


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
            for attempt in range(100):  # another publisher may take the same number: take the next
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
            state = json.loads(p.read_text())
            if not isinstance(state, dict) or not isinstance(state.get("version"), str):
                raise ValueError("no 'version' string")
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{p}: unreadable promotion record: {exc}") from exc
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
                    meta = json.loads((self.path / n / v / "meta.json").read_text())
                    if not isinstance(meta, dict):
                        raise ValueError("not a table")
                except (OSError, ValueError) as exc:
                    meta = {"error": f"unreadable meta.json: {exc}"}
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
            raise ArtifactError(f"{where}: foreign artifact (format {config.get('format')!r}, expected {FORMAT!r})")
        if config.get("name") != name or config.get("kind") != KINDS.get(name):
            raise ArtifactError(f"{where}: artifact of {config.get('name')!r} ({config.get('kind')}) "
                                f"is not a {name} model")
        params = config.get("params") if isinstance(config.get("params"), dict) else {}
        if name in ("gru", "lstm") and params.get("cell") != name:
            raise ArtifactError(f"{where}: config cell {params.get('cell')!r} is not {name}")
        if expect is not None:
            why = mismatch(params, expect, config["kind"])
            if why:
                raise ArtifactError(f"{where}: does not fit the running model: {why}")
        state_dict = self._load_weights(where, meta)
        net = build_net(config)
        try:
            net.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise ArtifactError(f"{where}: weights do not fit the model its config builds: "
                                f"{' '.join(first[:3])[:400]}") from exc
        return state_dict, config, meta

    def _load_weights(self, where: Path, meta: dict) -> dict:
        st, pt = where / WEIGHTS, where / LEGACY_WEIGHTS
        if st.is_file():
            expected = meta.get("sha256")
            if expected and _sha256(st) != expected:
                raise ArtifactError(f"{st}: checksum mismatch: the file is truncated or was modified")
            try:
                from safetensors.torch import load_file

                sd = load_file(str(st))
            except Exception as exc:  # safetensors raises its own error types on bad headers
                raise ArtifactError(f"{st}: not a readable safetensors file: {exc}") from exc
        elif pt.is_file():
            try:
                sd = torch.load(str(pt), map_location="cpu", weights_only=True)  # never arbitrary pickle
            except Exception as exc:
                raise ArtifactError(f"{pt}: refused: not a plain tensor file ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]})") from exc
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise ArtifactError(f"{pt}: refused: not a dict of tensors")
        else:
            raise ArtifactError(f"{where}: incomplete artifact, {WEIGHTS} is missing")
        return sd


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
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{p}: unreadable JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ArtifactError(f"{p}: expected a JSON object")
    return obj


__all__ = ["ModelRegistry", "RegistryError", "artifact_config", "build_net", "mismatch"]
