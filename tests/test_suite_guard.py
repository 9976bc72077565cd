"""The suite can't pass by running nothing: a selection that matches no test fails the run (see conftest)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_that_selects_nothing_fails():
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "no_test_has_this_name",
                          "tests/test_suite_guard.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "no test was selected" in out.stdout
