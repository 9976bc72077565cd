"""Per-key state ⇄ bytes for the changelog topic (safetensors: no code runs on load).

``Pipeline.snapshot_keys`` gives {component/field: array with one row per key};
open window cells are the exception (rows owned by a key through
``windower/cell_owner``), and object arrays hold one variable-length value per
key: bytes (stored as ``<field>#blob``, uint8) or a 1-D array (``<field>#ragged``,
its own dtype). Each key's record holds exactly its rows.

The changelog is written by workers but readable and writable by any client
with rights on the topic, so decoding trusts nothing: a record is size-capped
before it is parsed, and with ``template`` (``Pipeline.state_template()``, the
state of a fresh key) every tensor must have a known name, the template's dtype
and row shape, finite floats where a fresh key's are finite and integers no
lower than a fresh key's. A record that is not a state of this pipeline is left
out (its key starts afresh); a model or calibrator part that does not fit is
replaced by the fresh state and listed under ``#reset/<component>`` for
``Pipeline.restore_keys`` to reset.
"""
from __future__ import annotations

import logging

import numpy as np
import orjson
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .windowing import CNT, NO_WID

FORMAT = "streamseq.state/v1"
MAX_RECORD_BYTES = 1_000_000  # under the broker's default message limit (1 MiB): a worker never writes more
MAX_TENSORS = 4096
MAX_CELLS = 100_000  # open windows of one key
MAX_EVENT_NS = 7_289_654_400 * 10**9  # 2201-01-01: the observation decoders take years 1970..2200
RESET = "#reset/"  # RESET + component: bool per key, the component's state did not fit
CORE = ("pipeline", "windower")  # a key is restored with these or not at all
_CELL_FIELDS = ("windower/cell_wid", "windower/cell_stats")
_OWNER = "windower/cell_owner"
_BLOB = "#blob"
_RAGGED = "#ragged"
_KINDS = ("", "blob", "ragged")
log = logging.getLogger("streamseq.state")


class _Unfit(Exception):
    """A record (or one component of it) is not a state of this pipeline."""


def encode_keys(keys: list[str], state: dict[str, np.ndarray]) -> dict[str, bytes]:
    owner = state.get(_OWNER)
    out = {}
    for i, key in enumerate(keys):
        tensors: dict[str, np.ndarray] = {}
        for name, arr in state.items():
            if name == _OWNER or name.startswith(RESET):
                continue
            if name in _CELL_FIELDS:
                tensors[name] = np.ascontiguousarray(arr[owner == i])
            elif arr.dtype == object:
                v = arr[i]
                if isinstance(v, np.ndarray):
                    tensors[name + _RAGGED] = np.ascontiguousarray(v)
                else:
                    tensors[name + _BLOB] = np.frombuffer(bytes(v), dtype=np.uint8).copy()
            else:
                tensors[name] = np.ascontiguousarray(arr[i:i + 1])
        out[key] = st_save(tensors, metadata={"format": FORMAT, "key": key})
    return out


def decode_keys(records: dict[str, bytes], template: dict[str, np.ndarray] | None = None,
                max_record_bytes: int = MAX_RECORD_BYTES) -> tuple[list[str], dict[str, np.ndarray]]:
    """Stack the records of many keys back into one snapshot (the inverse of encode_keys).

    Records that are not a state of this pipeline are left out with one warning; never raises
    for what a record holds. Without ``template``, records are only checked to be well-formed
    ``FORMAT`` records with the same fields as the first one.
    """
    keys: list[str] = []
    rows: list[dict[str, np.ndarray]] = []
    refused: list[tuple[str, str]] = []  # (key, why) of records left out
    parts: list[tuple[str, str]] = []  # (key, why) of components reset
    reset: dict[str, list[int]] = {}
    expected = None
    fit = _Template(template) if template is not None else None
    for key in sorted(records):
        try:
            tensors = _read_record(key, records[key], max_record_bytes)
            if fit is not None:
                tensors, unfit = _fit(tensors, fit)
            else:
                layout = {n: (k, a.dtype, a.shape[1:] if n in _CELL_FIELDS or k else a.shape)
                          for n, (k, a) in tensors.items()}
                expected = layout if expected is None else expected
                if layout != expected:
                    raise _Unfit("its fields differ from the first record's")
                if any(not k and n not in _CELL_FIELDS and a.shape[:1] != (1,) for n, (k, a) in tensors.items()):
                    raise _Unfit("a field without one row")
                tensors, unfit = {n: _plain(k, a) for n, (k, a) in tensors.items()}, {}
                _check_cells(tensors)
        except _Unfit as exc:
            refused.append((key, str(exc)))
            continue
        for comp, why in unfit.items():
            reset.setdefault(comp, []).append(len(keys))
            parts.append((key, f"{comp}: {why}"))
        keys.append(key)
        rows.append(tensors)
    state = _stack(rows, template, list(expected or ()))
    for comp, idx in reset.items():
        mask = np.zeros(len(keys), bool)
        mask[idx] = True
        state[RESET + comp] = mask
    if fit is not None and keys:
        keys, state = _plausible(keys, state, fit, refused, parts)
    if refused or parts:
        log.warning("changelog state: %d of %d records refused (their keys start afresh), %d parts of "
                    "records do not fit (these start afresh); first: %s", len(refused), len(records),
                    len(parts), "; ".join(f"{_show(k)}: {why}" for k, why in (refused + parts)[:3]))
    return keys, state


def _plausible(keys, state, fit: _Template, refused, parts):
    """Values no worker writes, found in one vectorised pass over the stacked records: floats that are
    not finite where a fresh key's are (NaN stands for "not known yet"; inf never), integers below a
    fresh key's value or 0 (counters only grow; a count of -1 divides by zero). A model or calibrator
    part holding one gets the fresh state and is reset; a key whose pipeline or windower state holds
    one is left out."""
    n = len(keys)
    drop = np.zeros(n, bool)
    for name in fit.checked:
        arr = state[name]
        if not arr.size:
            continue
        flat = arr.reshape(len(arr), -1)
        if name in fit.floats:
            bad = np.isinf(flat).any(axis=1) if fit.floats[name] else ~np.isfinite(flat).all(axis=1)
            why = f"{name}: {'inf' if np.isinf(flat).any() else 'NaN'} where the state must be finite"
        else:
            bad = (flat < fit.ints[name]).any(axis=1)
            why = f"{name}: below {fit.ints[name]}"
        if not bad.any():
            continue
        rows = np.unique(state[_OWNER][bad]) if name in _CELL_FIELDS else np.flatnonzero(bad)
        comp = name.split("/", 1)[0]
        if comp in CORE:
            drop[rows] = True
            refused += [(keys[i], why) for i in rows.tolist()]
            continue
        parts += [(keys[i], why) for i in rows.tolist()]
        mask = state.setdefault(RESET + comp, np.zeros(n, bool))
        mask[rows] = True
        for f in fit.components[comp]:  # the fresh state in place of what does not fit
            col = state[f]
            for i in rows.tolist():
                col[i] = fit.arrays[f][0]
    if drop.any():
        keys, state = select(keys, state, np.flatnonzero(~drop))
    return keys, state


def select(keys: list[str], state: dict[str, np.ndarray], idx) -> tuple[list[str], dict[str, np.ndarray]]:
    """The keys at positions ``idx`` of a stacked snapshot, with their open cells."""
    idx = np.asarray(idx, np.int64)
    pos = np.full(len(keys), -1, np.int64)
    pos[idx] = np.arange(len(idx))
    owner = state.get(_OWNER)
    cells = pos[owner] >= 0 if owner is not None else None
    out = {}
    for name, arr in state.items():
        if name == _OWNER:
            out[name] = pos[arr[cells]]
        elif name in _CELL_FIELDS:
            out[name] = arr[cells]
        else:
            out[name] = arr[idx]
    return [keys[i] for i in idx.tolist()], out


def core_faults(state: dict[str, np.ndarray], interval: int, partitions=None) -> tuple[np.ndarray, list[str]]:
    """Keys whose pipeline and windower state no worker writes (bool per key), and what was wrong:
    times outside the observation range (their arithmetic would overflow), open windows without
    a record in them, a source partition that was not just assigned (``partitions``: ids, or None)."""
    n = len(state["pipeline/last_offset"])
    bad = np.zeros(n, bool)
    why: list[str] = []

    def flag(mask, reason):
        if mask.any():
            bad[mask] = True
            why.append(reason)

    def is_time(t, hi):
        return (t == NO_WID) | ((t >= 0) & (t <= hi))

    max_wid = MAX_EVENT_NS // interval
    flag(state["pipeline/last_offset"] < -1, "source offset below -1")
    flag(~is_time(state["pipeline/last_ts"], MAX_EVENT_NS) | ~is_time(state["windower/max_ts"], MAX_EVENT_NS),
         "event time out of range")
    flag(~is_time(state["windower/last_wid"], max_wid), "window id out of range")
    if partitions is not None:
        flag(~np.isin(state["windower/key_part"], np.array(sorted(partitions), np.int64)),
             "source partition not assigned here")
    owner = state["windower/cell_owner"]
    if len(owner):
        wid, stats = state["windower/cell_wid"], state["windower/cell_stats"]
        cell_bad = ((wid < 0) | (wid > max_wid)
                    | ~np.isfinite(stats).all(axis=(1, 2)) | (stats[:, :, CNT] < 1).any(axis=1))
        flag(np.isin(np.arange(n), owner[cell_bad]), "open window out of range, empty or not finite")
    return bad, why


# -- one record ---------------------------------------------------------------------------------
def _read_record(key: str, data, max_bytes: int) -> dict[str, tuple[str, np.ndarray]]:
    """{field: (kind, array)} of one record: kind is "", "blob" or "ragged"."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _Unfit(f"not bytes but {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise _Unfit(f"{len(data)} bytes, more than the {max_bytes} a state record may have")
    if len(data) < 8:
        raise _Unfit(f"not a {FORMAT} record: {len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise _Unfit(f"not a {FORMAT} record: header of {n} bytes in a record of {len(data)}")
    try:
        header = orjson.loads(data[8:8 + n])
    except orjson.JSONDecodeError as exc:
        raise _Unfit(f"not a {FORMAT} record: {exc}") from exc
    if type(header) is not dict or len(header) > MAX_TENSORS + 1:
        raise _Unfit(f"not a {FORMAT} record: no header table, or more than {MAX_TENSORS} tensors")
    meta = header.get("__metadata__")
    if type(meta) is not dict or meta.get("format") != FORMAT:
        raise _Unfit(f"not a {FORMAT} record (format {_show(meta.get('format') if type(meta) is dict else None)})")
    if meta.get("key") != key:
        raise _Unfit(f"written for key {_show(meta.get('key'))}")
    try:
        raw = st_load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on bad bytes
        raise _Unfit(f"not a {FORMAT} record: {type(exc).__name__}: {str(exc)[:200]}") from exc
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, arr in raw.items():
        name, _, kind = name.partition("#")
        if kind not in _KINDS or "/" not in name or name in out or name == _OWNER:
            raise _Unfit(f"tensor name {_show(name + '#' + kind if kind else name)} is not a state field")
        if not arr.ndim:
            raise _Unfit(f"{name}: a scalar, not rows")
        out[name] = (kind, arr)
    return out


class _Template:
    """What a record must hold, read once from a fresh key's state."""

    def __init__(self, template: dict[str, np.ndarray]):
        self.arrays = template
        self.components: dict[str, list[str]] = {}
        for name in template:
            if name != _OWNER and not name.startswith(RESET):
                self.components.setdefault(name.split("/", 1)[0], []).append(name)
        self.names = {c: set(ns) for c, ns in self.components.items()}
        fields = [n for n in template if n != _OWNER and not n.startswith(RESET)]
        # floats: whether NaN may stand for "not known yet"; ints: the least value (a fresh key's, or 0)
        self.floats = {n: bool(np.isnan(template[n]).any()) for n in fields if template[n].dtype.kind == "f"}
        self.ints = {n: min(int(template[n].min()) if template[n].size else 0, 0)
                     for n in fields if template[n].dtype.kind in "iu"}
        self.checked = [*self.floats, *self.ints]


def _fit(tensors: dict[str, tuple[str, np.ndarray]], t: _Template):
    """(fields of the record that fit the template, {component: why} for the model and calibrator
    parts that do not, filled with the template's fresh state). _Unfit if the pipeline's own part does not fit."""
    have: dict[str, set[str]] = {}
    for name in tensors:
        have.setdefault(name.split("/", 1)[0], set()).add(name)
    out: dict[str, np.ndarray] = {}
    unfit: dict[str, str] = {}
    for comp, names in t.components.items():
        try:
            got, want = have.get(comp, set()), t.names[comp]
            if got != want:
                extra, missing = sorted(got - want)[:3], sorted(want - got)[:3]
                raise _Unfit(f"fields do not fit (unknown {extra}, missing {missing})")
            part = {n: _fit_field(n, *tensors[n], t.arrays[n]) for n in names}
            if comp == "windower":
                _check_cells(part)
        except _Unfit as exc:
            if comp in CORE:
                raise
            unfit[comp] = str(exc)
            part = {n: t.arrays[n] for n in names}
        out.update(part)
    # Fields of components this pipeline does not have (a model since removed) are left out.
    return out, unfit


def _fit_field(name: str, kind: str, arr: np.ndarray, tmpl: np.ndarray) -> np.ndarray:
    if tmpl.dtype == object:
        t0 = tmpl[0]
        if isinstance(t0, np.ndarray):
            if kind != "ragged" or arr.dtype != t0.dtype or arr.ndim != t0.ndim or arr.shape[1:] != t0.shape[1:]:
                raise _Unfit(f"{name}: {kind or 'fixed'} {arr.dtype} {arr.shape}, expected a {t0.dtype} "
                             f"array of rows {t0.shape[1:]}")
            out = np.empty(1, dtype=object)
            out[0] = arr
            return out
        if kind != "blob" or arr.dtype != np.uint8 or arr.ndim != 1:
            raise _Unfit(f"{name}: expected bytes (a uint8 vector)")
        return np.array([arr.tobytes()], dtype=object)
    if kind or arr.dtype != tmpl.dtype:
        raise _Unfit(f"{name}: {kind or 'fixed'} {arr.dtype}, expected {tmpl.dtype}")
    if name in _CELL_FIELDS:
        if arr.shape[1:] != tmpl.shape[1:] or arr.ndim != tmpl.ndim or len(arr) > MAX_CELLS:
            raise _Unfit(f"{name}: shape {arr.shape}, expected at most {MAX_CELLS} rows of {tmpl.shape[1:]}")
    elif arr.shape != (1, *tmpl.shape[1:]):
        raise _Unfit(f"{name}: shape {arr.shape}, expected {(1, *tmpl.shape[1:])}")
    return arr  # its values: checked for all records at once (_plausible)


def _check_cells(part: dict[str, np.ndarray]) -> None:
    if len(part.get("windower/cell_wid", ())) != len(part.get("windower/cell_stats", ())):
        raise _Unfit("windower: as many open-window ids as open-window statistics expected")


def _stack(rows, template, names) -> dict[str, np.ndarray]:
    if template is not None:
        names = [n for n in template if n != _OWNER and not n.startswith(RESET)]
    state: dict[str, np.ndarray] = {}
    for name in names:
        if rows:
            state[name] = np.concatenate([r[name] for r in rows])
        elif template is not None:
            state[name] = template[name][:0]
    owners = [np.full(len(r.get("windower/cell_wid", ())), i, np.int64) for i, r in enumerate(rows)]
    state[_OWNER] = np.concatenate(owners) if owners else np.empty(0, np.int64)
    return state


def _plain(kind: str, arr: np.ndarray) -> np.ndarray:
    """A field of a record read without a template, as one row of the stacked snapshot."""
    if kind == "blob":
        if arr.dtype != np.uint8 or arr.ndim != 1:
            raise _Unfit("a blob that is not a uint8 vector")
        return np.array([arr.tobytes()], dtype=object)
    if kind == "ragged":
        out = np.empty(1, dtype=object)
        out[0] = arr
        return out
    return arr


def _show(x, limit: int = 80) -> str:
    """A key or name from outside, shortened for a log line."""
    s = repr(x)
    return s if len(s) <= limit else s[:limit] + "...'"


__all__ = ["FORMAT", "MAX_RECORD_BYTES", "RESET", "decode_keys", "encode_keys", "select"]
