"""streamseq: streaming time-series forecasting with keyed, restorable recurrent state.

The Python API (``backtest``, ``Forecaster``) loads on first use: ``import streamseq``
stays light (no torch) for the command line and for tools that only need the records.
"""
import os as _os

# Before torch loads OpenMP: spinning worker threads make every small op 20-30x slower
# when the worker shares its cores (broker, trainer, other pods). Override by setting it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .records import FORECAST_SCHEMA, DeadLetter, ForecastBatch, ObservationBatch, WindowBatch  # noqa: E402
from .version import __version__  # noqa: E402

_LAZY = {"backtest": "api", "BacktestResult": "api", "Forecaster": "api", "synthetic": None, "api": None}
__all__ = [
    "backtest",
    "BacktestResult",
    "Forecaster",
    "DeadLetter",
    "ForecastBatch",
    "ObservationBatch",
    "WindowBatch",
    "FORECAST_SCHEMA",
    "__version__",
]


def __getattr__(name: str):
    """``streamseq.backtest`` and friends, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'streamseq' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
