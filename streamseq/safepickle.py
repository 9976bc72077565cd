"""Pickle for river baselines' per-key state, loaded without running arbitrary code.

State blobs travel through a changelog topic anyone with write access could
touch, so loading only accepts classes on an allowlist (the river estimators
we wrap and the plain containers they hold); anything else is refused.
"""
from __future__ import annotations

import io
import pickle

from .errors import ArtifactError

_ALLOWED_MODULE_PREFIXES = (
    "river.time_series.",
    "river.linear_model.",
    "river.optim.",
    "river.preprocessing.",
    "river.compose.",
    "river.utils.",
    "river.stats.",
    "river._river_rust.",
)
_ALLOWED_EXACT = {
    ("collections", "deque"),
    ("collections", "defaultdict"),
    ("collections", "OrderedDict"),
    ("collections", "Counter"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "tuple"),
    ("builtins", "float"),
    ("builtins", "int"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("functools", "partial"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}
_DENY_NAMES = {"eval", "exec", "system", "popen", "__import__", "getattr", "setattr", "open"}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in _DENY_NAMES or name.startswith("_") and (module, name) not in _ALLOWED_EXACT:
            raise ArtifactError(f"refused to load {module}.{name} from a state blob")
        if (module, name) in _ALLOWED_EXACT or (
            module.startswith(_ALLOWED_MODULE_PREFIXES) and name[:1].isupper()
        ):
            return super().find_class(module, name)
        raise ArtifactError(f"refused to load {module}.{name} from a state blob")


def dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes):
    try:
        return _Restricted(io.BytesIO(data)).load()
    except ArtifactError:
        raise
    except Exception as exc:  # truncated or corrupt
        raise ArtifactError(f"unreadable state blob: {exc}") from exc
