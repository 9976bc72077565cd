"""`streamseq demo` runs end to end for a bounded number of records and leaves no process behind."""
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _brokers() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,cmd"], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if "tansu" in line and "broker" in line}


def test_demo_runs_and_cleans_up():
    before = _brokers()
    r = subprocess.run([sys.executable, "-m", "streamseq", "demo", "--records", "1500", "--duration", "120",
                        "--keys", "2"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "demo done: 1,500 observations fed, 1,500 consumed" in r.stdout
    assert "next:" in r.stdout  # live forecasts were shown
    assert _brokers() <= before, "the demo left its broker running"
