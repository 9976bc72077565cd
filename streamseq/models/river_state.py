"""A river forecaster's learned state as plain data, and back into a model our code built.

Per-key state travels through the changelog topic, which any client with produce
rights on it can write, so it holds no classes and no code: only the numbers a
model has learned, under the attribute paths a ``StateLayout`` names. Restoring
builds a fresh model with the forecaster's own ``make()`` and loads those
numbers into it in place (aliases inside the model, such as a river pipeline's
cached last step, stay the same objects). Anything that does not fit the fresh
model, a name, a type, a length or a count, raises ``ArtifactError``.

A dump is a small JSON tree (lengths, feature names, integers, flags) plus one
float64 array with every float the model holds, in the layout's order: floats
go through as bits, including a diverged model's inf and NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from ..errors import ArtifactError

FLOATS = "floats"  # deque or list of floats; at most its deque maxlen, or Field.max_len
FLOAT_MAP = "float_map"  # dict or river VectorDict: feature name -> float, in insertion order
COUNT_MAP = "count_map"  # Counter: feature name -> count
FLOAT = "float"
INT = "int"
BOOL = "bool"
_MAX_INT = 2**53  # counters beyond this were not written by a model


@dataclass(frozen=True)
class Field:
    name: str  # the name in the tree
    path: str  # attributes from the model, dot-separated; a segment on a dict is a key (river pipeline steps)
    kind: str
    max_len: int | None = None  # FLOATS held in a plain list (no deque maxlen to bound it)


class StateLayout:
    """The learned state of one kind of river model.

    ``names``: the feature names its maps may hold (None: any string, at most ``max_names`` of them).
    """

    def __init__(self, fields: list[Field], names: frozenset[str] | None = None, max_names: int = 64):
        self.fields = list(fields)
        self.names = names
        self.max_names = len(names) if names is not None else max_names
        self._field_names = frozenset(f.name for f in self.fields)

    # -- model -> plain data --------------------------------------------------------
    def dump(self, model) -> tuple[bytes, np.ndarray]:
        tree: dict = {}
        floats: list[float] = []
        for f in self.fields:
            v = _resolve(model, f.path)
            if f.kind == FLOATS:
                if v is None:
                    tree[f.name] = None
                    continue
                tree[f.name] = len(v)
                floats.extend(v)
            elif f.kind == FLOAT_MAP:
                tree[f.name] = list(v.keys())
                floats.extend(v.values())
            elif f.kind == COUNT_MAP:
                tree[f.name] = [list(v.keys()), [int(c) for c in v.values()]]
            elif f.kind == FLOAT:
                tree[f.name] = None
                floats.append(v)
            elif f.kind == INT:
                tree[f.name] = int(v)
            elif f.kind == BOOL:
                tree[f.name] = bool(v)
            else:  # pragma: no cover - a layout bug
                raise ValueError(f"unknown field kind {f.kind!r}")
        return orjson.dumps(tree), np.array(floats, dtype=np.float64)

    # -- plain data -> a model built by our code ------------------------------------------
    def load(self, model, tree_bytes: bytes, floats: np.ndarray) -> None:
        """Fill ``model`` (fresh from ``make()``) with a dump; ArtifactError if the dump does not fit it."""
        try:
            tree = orjson.loads(tree_bytes)
        except orjson.JSONDecodeError as exc:
            raise ArtifactError(f"river state: not JSON: {exc}") from exc
        if type(tree) is not dict:
            raise ArtifactError("river state: expected a JSON object")
        if tree.keys() != self._field_names:
            extra = sorted(tree.keys() - self._field_names)[:5]
            missing = sorted(self._field_names - tree.keys())[:5]
            raise ArtifactError(f"river state: fields do not fit (unknown {extra}, missing {missing})")
        if not isinstance(floats, np.ndarray) or floats.dtype != np.float64 or floats.ndim != 1:
            raise ArtifactError("river state: the values are not a float64 vector")
        vals = floats.tolist()
        pos = 0

        def take(n: int) -> list[float]:
            nonlocal pos
            if pos + n > len(vals):
                raise ArtifactError(f"river state: {len(vals)} values, the fields need more")
            pos += n
            return vals[pos - n:pos]

        # Check and take every field first, then write: a dump that does not fit changes nothing.
        writes = []
        for f in self.fields:
            entry = tree[f.name]
            parent, attr, target = _resolve_parent(model, f.path)
            where = f"river state field {f.name!r}"
            if f.kind == FLOATS:
                if target is None or entry is None:
                    if target is not None or entry is not None:
                        raise ArtifactError(f"{where}: present in one of the model and the state only")
                    continue
                cap = getattr(target, "maxlen", None)
                cap = f.max_len if cap is None else cap
                if cap is None:  # pragma: no cover - a layout bug: every sequence needs a bound
                    raise ValueError(f"{where}: no maxlen and no Field.max_len")
                if type(entry) is not int or not 0 <= entry <= cap:
                    raise ArtifactError(f"{where}: length {entry!r} does not fit (at most {cap})")
                writes.append((_fill_sequence, target, take(entry)))
            elif f.kind == FLOAT_MAP:
                names = self._check_names(entry, where)
                writes.append((_fill_map, target, dict(zip(names, take(len(names))))))
            elif f.kind == COUNT_MAP:
                if type(entry) is not list or len(entry) != 2:
                    raise ArtifactError(f"{where}: expected [names, counts]")
                names = self._check_names(entry[0], where)
                counts = entry[1]
                if (type(counts) is not list or len(counts) != len(names)
                        or any(type(c) is not int or not 0 <= c < _MAX_INT for c in counts)):
                    raise ArtifactError(f"{where}: counts must be one non-negative integer per name")
                writes.append((_fill_map, target, dict(zip(names, counts))))
            elif f.kind == FLOAT:
                if entry is not None or type(target) is not float:
                    raise ArtifactError(f"{where}: does not fit a float")
                writes.append((setattr, parent, attr, take(1)[0]))
            elif f.kind == INT:
                if type(entry) is not int or not 0 <= entry < _MAX_INT or type(target) is not int:
                    raise ArtifactError(f"{where}: expected a non-negative integer")
                writes.append((setattr, parent, attr, entry))
            elif f.kind == BOOL:
                if type(entry) is not bool or type(target) is not bool:
                    raise ArtifactError(f"{where}: expected true or false")
                writes.append((setattr, parent, attr, entry))
        if pos != len(vals):
            raise ArtifactError(f"river state: {len(vals)} values, the fields use {pos}")
        for fn, *args in writes:
            fn(*args)

    def _check_names(self, names, where: str) -> list[str]:
        if (type(names) is not list or len(names) > self.max_names
                or any(type(n) is not str for n in names) or len(set(names)) != len(names)):
            raise ArtifactError(f"{where}: expected at most {self.max_names} distinct feature names")
        if self.names is not None and not self.names.issuperset(names):
            raise ArtifactError(f"{where}: unknown feature names {sorted(set(names) - self.names)[:5]}")
        return names


def _step(obj, name: str):
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _resolve(model, path: str):
    obj = model
    for name in path.split("."):
        obj = _step(obj, name)
    return obj


def _resolve_parent(model, path: str):
    *up, attr = path.split(".")
    parent = _resolve(model, ".".join(up)) if up else model
    return parent, attr, _step(parent, attr)


def _fill_sequence(target, values: list[float]) -> None:
    target.clear()  # in place: a deque keeps its maxlen and subclass (Holt-Winters components)
    target.extend(values)


def _fill_map(target, items: dict) -> None:
    target.clear()  # in place: a defaultdict keeps its factory, a VectorDict its initializer
    for k, v in items.items():
        target[k] = v
