"""The GRU/LSTM of this tree against streamseq/models/rnn.py of an earlier revision, bit for bit.

    python bench/check_rnn_bits.py [REV]    # REV: a git revision (default 3724190, before issue 13)

The earlier rnn.py is read with ``git show`` and imported beside this tree's models; both get the
same window ends (tests/test_advance.window_ends: gaps, keys joining late, calendar inputs): the
earlier one window end at a time (update + forecast, as it always ran), this one through advance()
in runs of window ends, as a replay hands them. Forecasts, per-key state and weights must be equal
to the bit (GRU/LSTM, learning on/off, calendar on/off, hidden 64 and horizon 24 too). Exits 1 if
any differ. State of the earlier revision's layout only (snapshot fields both have).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_advance import blocks, window_ends  # noqa: E402

from streamseq.grid import FixedGrid  # noqa: E402
from streamseq.models.base import Forecaster  # noqa: E402
from streamseq.models.rnn import RNNConfig, StatefulRNNForecaster  # noqa: E402


def load_rev(rev: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:streamseq/models/rnn.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "rnn_rev.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("streamseq.models._rnn_rev", path)  # its relative imports resolve
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    rev = sys.argv[1] if len(sys.argv) > 1 else "3724190"
    old = load_rev(rev)
    bad = 0
    for cell in ("gru", "lstm"):
        for learn in (True, False):
            for calendar in ("", "day,week"):
                for hidden, H, T in ((8, 4, 90), (64, 24, 160)):
                    cfg = dict(cell=cell, hidden=hidden, horizon=H, n_features=2, tbptt=3 if H == 4 else 8,
                               learn_every=2 if H == 4 else 3, season=6, learn=learn, calendar=calendar, seed=3,
                               lr=2e-3)  # explicit: the default moved from 1e-3 to 2e-3 after 3724190
                    a, b = old.StatefulRNNForecaster(old.RNNConfig(**cfg)), StatefulRNNForecaster(RNNConfig(**cfg))
                    for m in (a, b):
                        m.bind_grid(FixedGrid(3600 * 10**9))
                        m.ensure_capacity(16)
                    steps = window_ends(T=T)
                    fa = Forecaster.advance(a, steps)
                    fb = [f for blk in blocks(steps) for f in b.advance(blk)]
                    same = len(fa) == len(fb) and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(fa, fb))
                    same &= all(torch.equal(x, y) for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values()))
                    slots = np.arange(5)
                    sa, sb = a.snapshot(slots), b.snapshot(slots)
                    fields = [k for k in sa if k != "step"]  # "step" is stored coded since main 065172e
                    same &= all(np.array_equal(sa[k], sb[k]) for k in fields)
                    n = sum(len(f) for f in fa)
                    print(f"{cell:4} learn={learn!s:5} calendar={calendar or '-':8} hidden={hidden:2} H={H:2}: "
                          f"{n} forecasts, {'identical' if same else 'DIFFERENT'}")
                    bad += not same
    print(f"{'all identical' if not bad else f'{bad} cases differ'} (this tree vs {rev})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
