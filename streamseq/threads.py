"""Torch threads of this process (one place: replay, worker and trainer call it)."""
from __future__ import annotations


def set_threads(n: int) -> None:
    """Intra-op threads for torch; inter-op 1: a worker's batches are one call at a time."""
    import torch

    torch.set_num_threads(max(1, n))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
