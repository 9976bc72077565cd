"""Forecasters: one batch-first interface (``base.BatchForecaster``), one file each.

Names are imported when first used: the neural models need torch, the river baselines river, and a
replay imports only what its models need.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "BatchForecaster": ".base",
    "NaiveForecaster": ".naive",
    "SeasonalNaiveForecaster": ".naive",
    "RNNConfig": ".rnn_config",
    "RNNNet": ".rnn",
    "StatefulRNNForecaster": ".rnn",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
