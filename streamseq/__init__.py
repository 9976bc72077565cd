"""streamseq: streaming time-series forecasting with keyed, restorable recurrent state."""
from .records import DeadLetter, ForecastBatch, ObservationBatch, WindowBatch, FORECAST_SCHEMA

__version__ = "0.1.0"
__all__ = [
    "DeadLetter",
    "ForecastBatch",
    "ObservationBatch",
    "WindowBatch",
    "FORECAST_SCHEMA",
    "__version__",
]
