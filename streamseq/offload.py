"""Models that share no weights with the others, advanced in a second process.

A replay hands every model all the window ends of a source batch at once
(``Forecaster.advance``). A model whose state is its own (river's per-key
SNARIMAX and Holt-Winters) can do that in a child process while this one runs
the neural models: the pipeline sends the windows first (``advance_async``),
advances the local models, then collects. The child runs the model's own code
on the same arrays, so its forecasts are the same bits; only the wall time
changes. Used by replays on two cores or more (``compose.build_pipeline``).

The child is a fresh interpreter (no torch or OpenMP state inherited) that
imports only numpy and the hosted models' modules, while this process imports
torch; it ends with this process (its requests pipe closes).
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np

from .errors import StreamseqError
from .models.base import BatchForecaster, WindowStep


def _pack(steps: list[WindowStep]) -> tuple:
    """Consecutive window ends as a few flat arrays (one pickle of a few buffers, not one per step)."""
    sizes = np.array([len(s.slots) for s in steps], np.int64)
    wids = [s.wid for s in steps]
    if not steps:
        return sizes, wids, np.zeros(0, np.int64), np.zeros((0, 1)), np.zeros(0, bool)
    return (sizes, wids, np.concatenate([s.slots for s in steps]), np.concatenate([s.x for s in steps]),
            np.concatenate([s.filled for s in steps]))


def _unpack(packed) -> list[WindowStep]:
    sizes, wids, slots, x, filled = packed
    cut = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    steps = []
    prev = None
    for a, b, wid in zip(cut[:-1], cut[1:], wids):
        s = slots[a:b]
        if prev is not None and len(prev) == len(s) and np.array_equal(prev, s):
            s = prev  # the same keys as the step before, as the pipeline hands them
        steps.append(WindowStep(s, x[a:b], filled[a:b], wid))
        prev = s
    return steps


def child_main(requests_fd: int, answers_fd: int) -> None:
    """The child: build the models, then answer (name, op, args) in order until told to stop."""
    requests, answers = Connection(requests_fd, writable=False), Connection(answers_fd, readable=False)
    models = {name: make(*args) for name, make, args in requests.recv()}
    while True:
        try:
            msg = requests.recv()
        except EOFError:
            return
        if msg is None:
            return
        name, op, args = msg
        try:
            m = models[name]
            if op == "advance":
                out = m.advance(_unpack(args))
                result = (np.array([len(o) for o in out], np.int64),
                          np.concatenate(out) if out else np.zeros((0, m.horizon)))
            elif op == "attr":
                result = getattr(m, args[0])
            else:
                result = getattr(m, op)(*args)
            answers.send((True, result))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
            answers.send((False, exc))


def build(module: str, cls: str, args: tuple):
    """``module.cls(*args)``, imported in the child only (this process never imports river)."""
    import importlib

    return getattr(importlib.import_module(module), cls)(*args)


class ModelHost:
    """A child process holding models built there by ``make(*args)`` for each (name, make, args).

    Requests are answered in order. Those that return nothing (grid, capacity, restore, reset,
    update) are not waited for: their answers are read, and any error raised, before the next
    answer that is waited for, so building a pipeline does not wait for the child to start.
    """

    def __init__(self, specs: list[tuple[str, Callable, tuple]], horizon: int):
        # A fresh interpreter, not multiprocessing's spawn: that re-imports the caller's main module,
        # which breaks scripts without an ``if __name__ == "__main__"`` guard.
        down_r, down_w = os.pipe()  # requests: this process -> child
        up_r, up_w = os.pipe()  # answers: child -> this process
        code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
                "from streamseq.offload import child_main; child_main(int(sys.argv[2]), int(sys.argv[3]))")
        self._proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(sys.path), str(down_r), str(up_w)],
                                      pass_fds=(down_r, up_w), stdin=subprocess.DEVNULL)
        os.close(down_r)
        os.close(up_w)
        self._out = Connection(down_w, readable=False)
        self._in = Connection(up_r, writable=False)
        # Answers are read as they come, by a thread: a child writing a large answer must never wait on
        # this process while this process waits to write a large request to it (both pipes full).
        self._answers: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read_loop, name="model process answers", daemon=True)
        self._reader.start()
        self._out.send(specs)
        self._sent = 0  # requests sent
        self._read = 0  # answers read
        self._kept: dict[int, object] = {}  # answers read before their caller asked
        self._waited: set[int] = set()  # requests whose caller will ask for the answer
        self.models = {name: RemoteModel(self, name, horizon) for name, _, _ in specs}

    def send(self, msg, wait: bool = True) -> int:
        self._out.send(msg)
        self._sent += 1
        if wait:
            self._waited.add(self._sent)
        return self._sent

    def _read_loop(self) -> None:
        while True:
            try:
                msg = self._in.recv()
            except (EOFError, OSError) as exc:
                self._answers.put(exc)
                return
            self._answers.put(msg)

    def answer(self, seq: int):
        """The answer to request ``seq`` (earlier answers are read first; their errors raised)."""
        while seq not in self._kept:
            msg = self._answers.get()
            if isinstance(msg, BaseException):
                self._answers.put(msg)  # every later caller sees it too
                code = self._proc.poll() if self._proc is not None else None
                raise StreamseqError(f"the model process stopped (exit code {code})") from msg
            ok, value = msg
            self._read += 1
            if not ok:
                self._waited.discard(self._read)
                raise value
            if self._read in self._waited:
                self._kept[self._read] = value
        self._waited.discard(seq)
        return self._kept.pop(seq)

    def call(self, name: str, op: str, *args):
        return self.answer(self.send((name, op, args)))

    def tell(self, name: str, op: str, *args) -> None:
        self.send((name, op, args), wait=False)

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._out.send(None)
        except (OSError, ValueError):
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._out.close()
        self._reader.join(5)  # the child's end is closed: the reader sees EOF
        self._in.close()
        self._proc = None


class RemoteModel(BatchForecaster):
    """A model of a ``ModelHost``, with the interface of the model itself."""

    def __init__(self, host: ModelHost, name: str, horizon: int):
        self._host = host
        self.name = name
        self.horizon = horizon

    def _call(self, op: str, *args):
        return self._host.call(self.name, op, *args)

    def _tell(self, op: str, *args) -> None:
        self._host.tell(self.name, op, *args)

    @property
    def diverged(self) -> int:
        return self._call("attr", "diverged")

    def bind_grid(self, grid) -> None:
        self.grid = grid
        self._tell("bind_grid", grid)

    def ensure_capacity(self, capacity):
        self._tell("ensure_capacity", capacity)

    def update(self, slots, x, filled, wid=None):
        self._tell("update", slots, x, filled, wid)

    def forecast(self, slots):
        return self._call("forecast", slots)

    def advance(self, steps):
        return self.advance_async(steps)()

    def advance_async(self, steps: list[WindowStep]) -> Callable[[], list[np.ndarray]]:
        """Send the window ends now; the returned function waits for their forecasts."""
        seq = self._host.send((self.name, "advance", _pack(steps)))

        def result() -> list[np.ndarray]:
            sizes, out = self._host.answer(seq)
            return np.split(out, np.cumsum(sizes)[:-1]) if len(sizes) else []

        return result

    def snapshot(self, slots):
        return self._call("snapshot", slots)

    def restore(self, slots, state):
        self._call("restore", slots, state)  # waited for: a state that does not fit raises here

    def reset(self, slots):
        self._tell("reset", slots)

    def state_nbytes_per_key(self) -> float:
        return self._call("state_nbytes_per_key")


__all__ = ["ModelHost", "RemoteModel", "build"]
