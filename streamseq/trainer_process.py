"""The trainer as a process beside a worker, at idle priority (a light module: no torch at import).

The priority is lowered before torch and polars load in the child, so the
stream keeps its CPU; a crash of the trainer never reaches the worker, which
picks up promoted versions with ``hotswap.ModelWatcher``.
"""
from __future__ import annotations

import os


def lower_priority(cfg) -> str:
    """Make this (trainer) process yield the CPU to the stream: SCHED_IDLE where available, else nice."""
    t = cfg.trainer
    if t.idle_priority and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    if t.nice:
        try:
            os.nice(t.nice)
            return f"nice {t.nice}"
        except OSError:
            pass
    return "normal"


def trainer_process_main(cfg, stop_event) -> None:
    """Entry of ``TrainerProcess``'s child: priority down before torch and polars load, then train on schedule."""
    priority = lower_priority(cfg)
    from .trainer import run_trainer_process

    run_trainer_process(cfg, stop_event, priority)


class TrainerProcess:
    """The trainer in a child process (spawned: no torch state shared with the worker), at idle priority."""

    def __init__(self, cfg):
        from .errors import ConfigError

        if not cfg.store.path:
            raise ConfigError("store.path", "a window store folder: the trainer trains on it")
        self.cfg = cfg
        self._proc = None
        self._stop = None

    def start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=trainer_process_main, args=(self.cfg, self._stop),
                                 name="streamseq-trainer", daemon=True)
        self._proc.start()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        if self._proc is None:
            return
        self._stop.set()
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._proc = None


__all__ = ["TrainerProcess", "lower_priority", "trainer_process_main"]
