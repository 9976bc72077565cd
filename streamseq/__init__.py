"""streamseq: streaming time-series forecasting with keyed, restorable recurrent state."""
import os as _os

# Before torch loads OpenMP: spinning worker threads make every small op 20-30x slower
# when the worker shares its cores (broker, trainer, other pods). Override by setting it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .records import FORECAST_SCHEMA, DeadLetter, ForecastBatch, ObservationBatch, WindowBatch

__version__ = "0.1.0"
__all__ = [
    "DeadLetter",
    "ForecastBatch",
    "ObservationBatch",
    "WindowBatch",
    "FORECAST_SCHEMA",
    "__version__",
]
