"""Forecasters: one batch-first interface (``base.BatchForecaster``), one file each."""
from .base import BatchForecaster
from .naive import NaiveForecaster, SeasonalNaiveForecaster
from .rnn import RNNConfig, RNNNet, StatefulRNNForecaster

__all__ = [
    "BatchForecaster",
    "NaiveForecaster",
    "SeasonalNaiveForecaster",
    "RNNConfig",
    "RNNNet",
    "StatefulRNNForecaster",
]
