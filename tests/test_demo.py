"""`streamseq demo` runs end to end for a bounded number of records and leaves no process behind."""
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _brokers_on(port: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,cmd"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:] if "tansu" in line and f"127.0.0.1:{port} " in line + " "]


def test_demo_runs_and_cleans_up():
    r = subprocess.run([sys.executable, "-m", "streamseq", "demo", "--records", "1500", "--duration", "120",
                        "--keys", "2"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "demo done: 1,500 observations fed, 1,500 consumed" in r.stdout
    assert "next:" in r.stdout  # live forecasts were shown
    port = int(re.search(r"local broker on 127\.0\.0\.1:(\d+)", r.stdout).group(1))
    assert _brokers_on(port) == [], "the demo left its broker running"
