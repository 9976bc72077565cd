"""What a new user meets first: data mistakes give one line and a non-zero exit, a file out of time order
is sorted or named, degenerate setups warn, progress agrees with the summary. Every input is one the
issue saw (issue 11), built from the parking sample so the times are real."""
from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from streamseq.commands import main

ROOT = Path(__file__).resolve().parents[1]
PARKING = ROOT / "replay_data" / "parking.csv"
FAST = ["--models", "naive,seasonal_naive", "--horizon", "3", "--no-report"]


def parking_rows(n_keys: int = 3, n: int = 900) -> list[tuple[str, datetime, str]]:
    """The first ``n`` rows of ``n_keys`` car parks, in file (time) order."""
    with open(PARKING) as f:
        rows = list(csv.DictReader(f))
    keys = sorted({r["SystemCodeNumber"] for r in rows})[:n_keys]
    out = [(r["SystemCodeNumber"], datetime.fromisoformat(r["LastUpdated"]), r["Occupancy"])
           for r in rows if r["SystemCodeNumber"] in keys]
    return out[:n]


def write_csv(path: Path, rows, fmt=lambda t: t.isoformat(sep=" "), sep: str = ",") -> Path:
    path.write_text(sep.join(["key", "ts", "value"]) + "\n"
                    + "".join(sep.join([k, fmt(t), v]) + "\n" for k, t, v in rows))
    return path


def run(capsys, args: list[str]) -> tuple[int, str, str]:
    rc = main(["replay", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamseq: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- data mistakes: one line, exit 2, nothing written --------------------------------------


@pytest.mark.parametrize("name,fmt,extra,needle", [
    ("header-only", None, [], "no data rows (only a header)"),
    ("day-first", lambda t: t.strftime("%d/%m/%Y %H:%M"), [], "give --time-format '%d/%m/%Y %H:%M'"),
    ("us", lambda t: t.strftime("%m/%d/%Y %I:%M %p"), [], "give --time-format '%m/%d/%Y %I:%M %p'"),
    ("epoch-ms", lambda t: str(int(t.replace(tzinfo=UTC).timestamp() * 1000)), [], "give --time-unit ms"),
    ("end-before-first", None, ["--end", "2000-01-01"], "no records before --end 2000-01-01: the data run from "
                                                        "2016-10-04"),
])
def test_data_mistakes_are_one_line_and_exit_2(tmp_path, capsys, name, fmt, extra, needle):
    rows = [] if name == "header-only" else parking_rows()
    path = write_csv(tmp_path / f"{name}.csv", rows, **({"fmt": fmt} if fmt else {}))
    out = tmp_path / "out"
    rc, _, err = run(capsys, [str(path), "--out", str(out), "--no-progress", *FAST, *extra])
    assert rc == 2
    line = one_line_error(err)
    assert needle in line, line
    if name != "end-before-first":  # found before any work: no output folder
        assert not out.exists()


def test_the_suggested_time_format_works(tmp_path, capsys):
    path = write_csv(tmp_path / "day-first.csv", parking_rows(), fmt=lambda t: t.strftime("%d/%m/%Y %H:%M"))
    rc, out, err = run(capsys, [str(path), "--out", str(tmp_path / "o"), "--no-progress", "--time-format",
                                "%d/%m/%Y %H:%M", *FAST])
    assert rc == 0, err
    assert "900 records" in out and "0 dead letters" in out


def test_every_row_dead_later_in_the_file_names_the_reasons(tmp_path, capsys):
    """Times parse, values never do: the run ends with the top reasons, an example and a hint."""
    rows = [(k, t, "n/a") for k, t, _ in parking_rows()]
    path = write_csv(tmp_path / "novalues.csv", rows)
    rc, _, err = run(capsys, [str(path), "--out", str(tmp_path / "o"), "--no-progress", *FAST])
    assert rc == 2
    line = one_line_error(err)
    assert "no records to replay: 900 of 900 rows are dead letters: 900 non-numeric value in" in line
    assert "row 1 of novalues.csv" in line and "check --value-col and --sep" in line
    assert "dead_letter.jsonl" in line


def test_most_rows_dead_warns_with_reasons_and_goes_on(tmp_path, capsys):
    rows = [(k, t, v if i % 3 == 0 else "n/a") for i, (k, t, v) in enumerate(parking_rows())]
    path = write_csv(tmp_path / "half.csv", rows)
    rc, out, err = run(capsys, [str(path), "--out", str(tmp_path / "o"), "--no-progress", *FAST])
    assert rc == 0
    assert "streamseq: warning: 600 of 900 rows are dead letters: 600 non-numeric value in" in err
    assert "600 dead letters" in out


def test_separator(tmp_path, capsys):
    path = write_csv(tmp_path / "semi.csv", parking_rows(), sep=";")
    rc, _, err = run(capsys, [str(path), "--out", str(tmp_path / "o"), "--no-progress", *FAST])
    assert rc == 2
    assert "the header looks ';'-separated: give --sep ';'" in one_line_error(err)
    rc, out, err = run(capsys, [str(path), "--sep", ";", "--out", str(tmp_path / "o"), "--no-progress", *FAST])
    assert rc == 0, err
    assert "900 records" in out and "0 dead letters" in out
    tabs = write_csv(tmp_path / "tabs.csv", parking_rows(), sep="\t")
    rc, out, err = run(capsys, [str(tabs), "--sep", "\\t", "--out", str(tmp_path / "t"), "--no-progress", *FAST])
    assert rc == 0, err


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_out_that_cannot_be_a_folder(tmp_path, capsys, where):
    path = write_csv(tmp_path / "ok.csv", parking_rows())
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "sub"
    rc, _, err = run(capsys, [str(path), "--out", str(out), "--no-progress", *FAST])
    assert rc == 2
    line = one_line_error(err)
    assert f"--out {out}" in line
    assert blocker.read_text() == "x"


# -- a file out of time order ---------------------------------------------------------------


def test_unsorted_file_is_sorted_and_said_so(tmp_path, capsys):
    """Sorted by key, then time (the usual export): without sorting most rows would be too late."""
    rows = parking_rows()
    by_key = write_csv(tmp_path / "by-key.csv", sorted(rows, key=lambda r: (r[0], r[1])))
    in_order = write_csv(tmp_path / "in-order.csv", rows)
    rc, out, err = run(capsys, [str(by_key), "--out", str(tmp_path / "a"), "--no-progress", *FAST])
    assert rc == 0
    assert "by-key.csv: not in time order (" in err and "replaying it sorted by time" in err
    assert "900 records" in out and "0 dead letters" in out
    rc, _, err = run(capsys, [str(in_order), "--out", str(tmp_path / "b"), "--no-progress", *FAST])
    assert rc == 0 and "not in time order" not in err
    a = pl.read_parquet(tmp_path / "a" / "forecasts.parquet")
    b = pl.read_parquet(tmp_path / "b" / "forecasts.parquet")
    assert a.equals(b)  # sorted, the file gives what the file in time order gives

    rc, out, err = run(capsys, [str(by_key), "--no-sort", "--out", str(tmp_path / "c"), "--no-progress", *FAST])
    assert rc == 0
    assert "rows are dead letters:" in err and "too late" in err and "sort the file by time" in err


def test_a_few_late_rows_are_not_a_reason_to_sort(tmp_path, capsys):
    rows = parking_rows()
    rows.append((rows[0][0], rows[0][1], "1"))  # one record far too late
    path = write_csv(tmp_path / "late.csv", rows)
    rc, out, err = run(capsys, [str(path), "--out", str(tmp_path / "o"), "--no-progress", *FAST])
    assert rc == 0 and "not in time order" not in err
    assert "1 dead letters" in out


# -- progress, logging ----------------------------------------------------------------------


def test_progress_agrees_with_the_summary(tmp_path, capsys):
    rows = [(k, t, v if i % 10 else "n/a") for i, (k, t, v) in enumerate(parking_rows())]
    path = write_csv(tmp_path / "some-bad.csv", rows)
    rc, out, err = run(capsys, [str(path), "--out", str(tmp_path / "o"), *FAST])  # not a terminal: one summary line
    assert rc == 0
    progress = next(line for line in err.splitlines() if line.startswith("records "))
    summary = next(line for line in out.splitlines() if line.startswith("== "))
    assert progress.startswith("records 810 in ") and "dead letters 90" in progress
    windows = progress.split("windows ")[1].split(" ")[0]
    assert "810 records" in summary and f"{windows} windows" in summary and "90 dead letters" in summary


def test_replay_honours_the_configured_log_level(tmp_path, capsys):
    data = write_csv(tmp_path / "ok.csv", parking_rows())
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[source]\nfiles = ["{data}"]\n[logging]\nlevel = "ERROR"\n')
    root = logging.getLogger()
    before = root.level
    try:
        rc, _, _ = run(capsys, ["--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress", *FAST])
        assert rc == 0 and root.level == logging.ERROR
        rc, _, _ = run(capsys, ["--config", str(cfg), "-v", "--out", str(tmp_path / "o"), "--no-progress", *FAST])
        assert rc == 0 and root.level == logging.DEBUG
    finally:
        root.setLevel(before)


def test_kafka_client_lines_only_with_verbose():
    from streamseq import logs

    root = logging.getLogger()
    before = root.level, list(root.handlers)
    try:
        logs.setup("INFO", "text", stream=io.StringIO())
        assert logging.getLogger("kafka").level == logging.CRITICAL
        logs.setup("DEBUG", "text", stream=io.StringIO())
        assert logging.getLogger("kafka").level == logging.DEBUG
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]


# -- degenerate setups --------------------------------------------------------------------


def synthetic_csv(path: Path, n_keys: int, n: int, every_h: int = 1) -> Path:
    """``n`` readings per key, one every ``every_h`` hours, with a daily pattern."""
    t0 = datetime(2024, 1, 1)
    rows = [(f"k{k}", t0 + timedelta(hours=i * every_h), str(10 + k + (i * every_h) % 24))
            for i in range(n) for k in range(n_keys)]
    return write_csv(path, rows)


@pytest.mark.parametrize("args,rows,needle", [
    (["--horizon", "48", "--season", "4"], (3, 30, 1), "horizon 48 is longer than the data: the longest key has 30 windows"),
    (["--horizon", "3"], (5, 48, 1), "only 0 scored forecast origins for 5 keys"),
    (["--horizon", "3", "--season", "2", "--interval", "1h"], (2, 60, 6), "the data come about every 6h and "
                                                                           "--interval is 1h; a longer --interval"),
    (["--horizon", "3", "--interval", "1d", "--season", "24"], (2, 200, 24), "season 24 × 1d windows = 24d is not a "
                                                                              "day, week, month, quarter or year"),
])
def test_degenerate_setups_warn_on_the_terminal_and_in_the_report(tmp_path, capsys, args, rows, needle):
    path = synthetic_csv(tmp_path / "s.csv", *rows)
    out = tmp_path / "o"
    rc, _, err = run(capsys, [str(path), "--out", str(out), "--no-progress", "--models", "naive,seasonal_naive", *args])
    assert rc == 0
    warning = next(line for line in err.splitlines() if needle in line)
    assert warning.startswith("streamseq: warning: ")
    html = (out / "report.html").read_text()
    banner = html.split('<div class="warn">')[1].split("</div>")[0]
    assert needle.split(":")[0] in banner


def test_a_sound_setup_does_not_warn(tmp_path, capsys):
    path = synthetic_csv(tmp_path / "s.csv", 2, 24 * 10)
    rc, _, err = run(capsys, [str(path), "--out", str(tmp_path / "o"), "--no-progress", *FAST])
    assert rc == 0 and "warning" not in err


# -- missing extras -------------------------------------------------------------------------


def test_missing_report_extra_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    path = write_csv(tmp_path / "ok.csv", parking_rows())
    rc = main(["replay", str(path), "--out", str(tmp_path / "o"), "--no-progress", "--models", "naive"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pip install 'streamseq[report]'" in one_line_error(err) and "--no-report" in err


def test_missing_module_names_its_extra():
    from streamseq.errors import MissingExtra

    err = MissingExtra.of(ModuleNotFoundError("No module named 'kafka'", name="kafka"), "the kafka transport")
    assert str(err) == "the kafka transport needs kafka, which is not installed: pip install 'streamseq[kafka]'"
    assert MissingExtra.of(ModuleNotFoundError("x", name="something_else"), "x") is None


@pytest.mark.parametrize("interval", [["1mo", "--timezone", "America/New_York"], ["1w", "--timezone", "Europe/Berlin"]])
def test_calendar_windows_in_a_time_zone_run(tmp_path, capsys, interval):
    """One window's end in a zone (a scalar through the grid's offset lookup) used to be a TypeError."""
    rc, out, err = run(capsys, [str(ROOT / "replay_data" / "stocks.csv"), "--key-col", "symbol", "--time-col", "date",
                                "--value-col", "close", "--interval", *interval, "--models", "naive", "--horizon", "2",
                                "--end", "2016-01-01", "--out", str(tmp_path / "o"), "--no-progress", "--no-report"])
    assert rc == 0, err
    ends = pl.read_parquet(tmp_path / "o" / "windows.parquet")["end"]
    local = ends.dt.convert_time_zone(interval[2])
    assert (local.dt.hour() == 0).all() and (local.dt.minute() == 0).all()  # local midnights
