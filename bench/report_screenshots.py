"""Screenshots of report.html and index.html in headless Chromium at desktop width, for a person to look at.

    python bench/report_screenshots.py [--out bench/results/screens] [--width 1440]

Runs two short backtests of replay_data/ (parking and stocks, a slice of each), writes their reports and
the index page that compares them, and renders each page to a PNG with Debian's chromium
(`apt-get install -y --no-install-recommends chromium`). It checks what a screenshot can: the page is
not wider than the window (no horizontal scrolling at desktop width), and every image on the page loaded.
Not part of the test suite: a browser is a heavy dependency for a check that needs eyes anyway.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The flags that work on these machines (no sandbox as root, no background network).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# Measures the page in the browser: its scroll width against the window, and images that failed.
PROBE = ("<script>window.addEventListener('load', () => { const imgs = [...document.images]; "
         "document.title = JSON.stringify({scroll: document.documentElement.scrollWidth, "
         "window: window.innerWidth, height: document.documentElement.scrollHeight, images: imgs.length, "
         "broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).length}); });</script>")


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("chromium not found: apt-get install -y --no-install-recommends chromium")
    return exe


def render(page: Path, png: Path, width: int, height: int) -> dict:
    """Screenshot ``page`` at width x height; the probe's measurements of the page."""
    exe = chromium()
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        common = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        dom = subprocess.run([*common, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
        subprocess.run([*common, f"--screenshot={png}", page.as_uri()], capture_output=True, timeout=120, check=True)
    probed.unlink()
    title = dom.stdout.split("<title>", 1)[1].split("</title>", 1)[0] if "<title>" in dom.stdout else "{}"
    return json.loads(title.replace("&quot;", '"')) if title.startswith("{") else {}


def main() -> int:
    from streamseq import config as config_mod
    from streamseq.backtesting import run_backtest
    from streamseq.report import write_index

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "screens"))
    p.add_argument("--width", type=int, default=1440)
    a = p.parse_args()
    out = Path(a.out)
    runs_dir = out / "runs"
    runs = []
    # What `streamseq backtest-all replay_data` does, on a slice of two streams.
    for name, end, models in (("parking", "2016-11-10", ["gru", "lstm", "snarimax", "naive", "seasonal_naive"]),
                              ("stocks", "2016-01-01", ["gru", "naive", "seasonal_naive"])):
        cfg = config_mod.load(ROOT / "replay_data" / f"{name}.toml")
        cfg.source.end, cfg.forecast.models = end, models
        res = run_backtest(cfg, runs_dir / name, progress=False,
                           command=f"streamseq replay --config replay_data/{name}.toml --end {end} "
                                   f"--models {','.join(models)}")
        runs.append({"name": name, "summary": res.summary, "metrics": res.metrics, "warnings": res.warnings})
    write_index(runs_dir / "index.html", runs)
    failed = False
    for page, height in ((runs_dir / "parking" / "report.html", 5200), (runs_dir / "stocks" / "report.html", 5200),
                         (runs_dir / "index.html", 900)):
        png = out / f"{page.parent.name if page.name == 'report.html' else 'index'}.png"
        m = render(page, png, a.width, height)
        ok = m.get("scroll", 0) <= m.get("window", 0) and m.get("broken", 1) == 0
        failed |= not ok
        print(f"{'ok ' if ok else 'BAD'} {png}  page {m.get('scroll')}x{m.get('height')} px in a {m.get('window')} px "
              f"window, {m.get('images')} images, {m.get('broken')} broken")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
