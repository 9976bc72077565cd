"""The HTML run report, and the terminal progress line of a running replay."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from streamseq import evaluation as ev
from streamseq.clock import ManualClock
from streamseq.progress import Progress
from streamseq.report import write_report

EVIL = "<script>alert(1)</script>"
HORIZON = 6


def replay_frames(n_windows: int = 120) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Hourly sine-ish series for three keys and two models, the way replay writes them."""
    rng = np.random.default_rng(7)
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    keys = [EVIL, "station-2", "station 3 & co"]
    ends = [t0 + timedelta(hours=i) for i in range(n_windows)]
    act_rows, fc_rows = [], []
    for k, key in enumerate(keys):
        y = 50 + 10 * np.sin(np.arange(n_windows) * 2 * np.pi / 24) + rng.normal(0, 1, n_windows) + k
        filled = rng.random(n_windows) < 0.03
        act_rows += [(key, ends[i], float(y[i]), bool(filled[i])) for i in range(n_windows)]
        for o in range(24, n_windows):
            for step in range(1, HORIZON + 1):
                target = o + step
                for model, bias, width in (("naive", 0.0, None), ("gru", 1.0, 4.0)):
                    mean = float(y[o - 24 + step]) + bias if target < n_windows else float(y[o]) + bias
                    if model == "gru" and o == 60 and step == 2:
                        mean = 1e200  # one diverged forecast
                    lo = None if width is None else mean - width
                    hi = None if width is None else mean + width
                    fc_rows.append((key, model, ends[o], step, ends[o] + timedelta(hours=step), mean, lo, hi))
    actuals = pl.DataFrame(
        act_rows, schema={"key": pl.String, "end": pl.Datetime("ns", "UTC"), "value": pl.Float64, "filled": pl.Boolean},
        orient="row",
    )
    forecasts = pl.DataFrame(
        fc_rows,
        schema={"key": pl.String, "model": pl.String, "origin": pl.Datetime("ns", "UTC"), "step": pl.Int16,
                "target_ts": pl.Datetime("ns", "UTC"), "mean": pl.Float64, "lo": pl.Float64, "hi": pl.Float64},
        orient="row",
    ).with_columns(model_version=pl.lit("1")).select(
        "key", "model", "model_version", "origin", "step", "target_ts", "mean", "lo", "hi"
    )
    return forecasts, actuals


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    forecasts, actuals = replay_frames()
    metrics = ev.score(forecasts, actuals, season=24)
    out = tmp_path_factory.mktemp("report")
    path = out / "report.html"
    summary = {"input files": "data/<pedestrians>.csv", "records": 360, "dead letters": 0,
               "models": ["naive", "gru"], "horizon": HORIZON, "duration": "1.2 s"}
    kwargs = dict(title="Replay & <test>", metrics=metrics, forecasts=forecasts, actuals=actuals, summary=summary)
    write_report(path, **kwargs)
    return out, path, path.read_text(encoding="utf-8"), metrics, kwargs


def test_single_self_contained_file(report):
    out, path, text, _, _ = report
    assert [p.name for p in out.iterdir()] == ["report.html"]
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "http://" not in text and "https://" not in text
    for ref in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text):
        assert ref.startswith("data:image/png;base64,")
    assert text.count('src="data:image/png;base64,') == 2 + 3  # step, time, three keys
    assert "<link" not in text


def test_metrics_tables(report):
    _, _, text, metrics, _ = report
    _, rows = ev.overall_table(metrics)
    for cells in rows:
        row_html = r"<td[^>]*".join(re.escape(f">{c}</td>") for c in cells)
        assert re.search(row_html, text), cells
    assert "Metrics by horizon step" in text
    assert "Diverged forecasts" in text  # gru's 1e200


def test_user_text_is_escaped(report):
    _, _, text, _, _ = report
    assert EVIL not in text
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Replay &amp; &lt;test&gt;" in text
    assert "data/&lt;pedestrians&gt;.csv" in text


def test_deterministic(report, tmp_path):
    _, _, text, _, kwargs = report
    again = tmp_path / "again.html"
    write_report(again, **kwargs)
    assert again.read_text(encoding="utf-8") == text


def test_no_forecasts_still_writes(tmp_path):
    forecasts, actuals = replay_frames(40)
    forecasts = forecasts.head(0)
    metrics = ev.score(forecasts, actuals, season=24)
    write_report(tmp_path / "r.html", title="empty", metrics=metrics, forecasts=forecasts, actuals=actuals, summary={})
    assert "<table" in (tmp_path / "r.html").read_text()


# -- Progress -----------------------------------------------------------------


class FakeStream:
    def __init__(self, tty: bool):
        self.tty = tty
        self.writes: list[str] = []

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.writes)


def test_progress_on_a_terminal_redraws_at_most_five_times_a_second():
    clock, stream = ManualClock(), FakeStream(tty=True)
    p = Progress(1000, stream=stream, clock=clock)
    clock.advance(2.0)
    p.update(500, 20)
    assert stream.text.startswith("\r")
    assert "records 500 (250/s)" in stream.text and "windows 20 (10.0/s)" in stream.text
    assert "50.0%" in stream.text and "ETA 0:02" in stream.text
    n = len(stream.writes)
    clock.advance(0.1)
    p.update(550, 22)  # too soon: not drawn
    assert len(stream.writes) == n
    clock.advance(0.15)
    p.update(600, 24)
    assert len(stream.writes) == n + 1 and "60.0%" in stream.writes[-1]
    p.close()
    assert stream.text.endswith("\n") and stream.text.count("\n") == 1
    p.close()  # idempotent
    assert stream.text.count("\n") == 1


def test_progress_shorter_line_covers_the_previous_one():
    clock, stream = ManualClock(), FakeStream(tty=True)
    p = Progress(None, stream=stream, clock=clock)
    clock.advance(1.0)
    p.update(123_456, 1000)
    clock.advance(1.0)
    p.update(123_456, 1000)
    assert len(stream.writes[-1]) >= len(stream.writes[-2])
    assert "%" not in stream.text and "ETA" not in stream.text  # total unknown


def test_progress_not_a_terminal_prints_only_a_summary():
    clock, stream = ManualClock(), FakeStream(tty=False)
    p = Progress(1000, stream=stream, clock=clock)
    for i in range(1, 11):
        clock.advance(1.0)
        p.update(100 * i, 10 * i)
    assert stream.writes == []
    p.close()
    assert stream.text == "records 1,000 in 0:10 (100/s), windows 100 (10.0/s)\n"


def test_progress_enabled_overrides_the_terminal_check():
    clock, forced = ManualClock(), FakeStream(tty=False)
    p = Progress(10, stream=forced, clock=clock, enabled=True)
    clock.advance(1.0)
    p.update(5, 1)
    assert forced.writes and forced.writes[0].startswith("\r")

    silent = FakeStream(tty=True)
    with Progress(10, stream=silent, clock=clock, enabled=False) as q:
        clock.advance(1.0)
        q.update(10, 2)
    assert silent.writes == []


def test_progress_past_the_total_is_done():
    clock, stream = ManualClock(), FakeStream(tty=True)
    p = Progress(100, stream=stream, clock=clock)
    clock.advance(1.0)
    p.update(150, 3)
    assert "100.0%" in stream.text and "ETA 0:00" in stream.text
