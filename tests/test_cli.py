"""The replay CLI end to end: outputs, determinism, bad input, usage errors."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from streamseq.commands import main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "replay_data"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name,end,models", [
    ("parking", "2016-10-25", "gru,lstm,snarimax,holt_winters,naive,seasonal_naive"),
    ("stocks", "2014-06-01", "gru,lstm,naive,seasonal_naive"),
    ("energy", "2016-01-20", "gru,naive,seasonal_naive"),
])
def test_replay_on_replay_data(tmp_path, capsys, name, end, models):
    out = tmp_path / name
    rc = main(["replay", "--config", str(DATA / f"{name}.toml"), "--end", end, "--models", models,
               "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    for m in models.split(","):
        assert m in printed  # the metrics table on the terminal
    fc = pl.read_parquet(out / "forecasts.parquet")
    assert fc.columns == ["key", "model", "model_version", "origin", "step", "target_ts", "mean", "lo", "hi"]
    assert set(fc["model"].unique()) == set(models.split(",")) | {"ensemble"}
    H = fc["step"].max()
    assert fc["step"].min() == 1 and fc.group_by("key", "model", "origin").len()["len"].unique().to_list() == [H]
    metrics = pl.read_csv(out / "metrics.csv")
    overall = metrics.filter(pl.col("step") == "all")
    assert set(overall["model"]) == set(fc["model"].unique())
    assert (overall["count"] > 0).all()
    html = (out / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64" in html


def test_same_input_same_bytes(tmp_path):
    args = ["replay", str(DATA / "synthetic.parquet"), "--key-col", "key", "--time-col", "ts",
            "--value-col", "value", "--interval", "1h", "--horizon", "6", "--season", "24",
            "--models", "gru,lstm,seasonal_naive", "--end", "2024-01-15", "--no-progress", "--no-report"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert sha(tmp_path / "a" / "forecasts.parquet") == sha(tmp_path / "b" / "forecasts.parquet")
    assert main(args + ["--seed", "1", "--out", str(tmp_path / "c")]) == 0
    assert sha(tmp_path / "a" / "forecasts.parquet") != sha(tmp_path / "c" / "forecasts.parquet")


def test_bad_rows_go_to_dead_letters_and_the_run_goes_on(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    lines = ["key,ts,value"]
    for h in range(48):
        for k in ("a", "b"):
            lines.append(f"{k},2024-01-01 {h % 24:02d}:10:00,{h}".replace("2024-01-01", f"2024-01-0{1 + h // 24}"))
    lines += [
        ",2024-01-02 23:20:00,1",  # missing key
        "a,not-a-time,1",  # unparsable time
        "a,2024-01-02 23:30:00,abc",  # non-numeric
        "a,2024-01-02 23:40:00,inf",  # non-finite
        "a,2024-01-01 00:30:00,5",  # far too late
    ]
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = main(["replay", str(csv), "--key-col", "key", "--time-col", "ts", "--value-col", "value",
               "--interval", "1h", "--horizon", "2", "--season", "24", "--models", "naive",
               "--out", str(out), "--no-progress", "--no-report"])
    assert rc == 0
    assert "5 dead letters" in capsys.readouterr().out
    letters = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    assert len(letters) == 5
    reasons = " | ".join(d["reason"] for d in letters)
    for word in ("missing key", "unparsable time", "non-numeric", "non-finite", "too late"):
        assert word in reasons
    rows = sorted(d["offset"] for d in letters)
    assert rows == [96, 97, 98, 99, 100]
    assert all(d["source"].endswith("bad.csv") for d in letters)
    assert pl.read_parquet(out / "forecasts.parquet").height > 0


@pytest.mark.parametrize("args,needle", [
    (["replay", "/nonexistent/x.csv", "--key-col", "k", "--time-col", "t", "--value-col", "v"], "x.csv"),
    (["replay", "{csv}", "--key-col", "nope", "--time-col", "ts", "--value-col", "value"], "nope"),
    (["replay", "{csv}", "--key-col", "key", "--time-col", "ts", "--value-col", "value", "--interval", "fortnight"], "windowing.interval"),
    (["replay", "{csv}", "--key-col", "key", "--time-col", "ts", "--value-col", "value", "--models", "prophet"], "forecast.models"),
])
def test_usage_errors_exit_2_with_one_line_before_any_work(tmp_path, capsys, args, needle):
    csv = tmp_path / "ok.csv"
    csv.write_text("key,ts,value\na,2024-01-01 00:00:00,1\n")
    out = tmp_path / "out"
    rc = main([a.replace("{csv}", str(csv)) for a in args] + ["--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("streamseq: error:")
    assert not out.exists()


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).with_name("streamseq")
    r = subprocess.run([str(exe), "replay", str(DATA / "stocks.csv"), "--key-col", "symbol", "--time-col", "date",
                        "--value-col", "close", "--interval", "1d", "--gap", "skip", "--horizon", "3", "--season", "5",
                        "--models", "naive,seasonal_naive", "--end", "2013-06-01", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert r.returncode == 0, r.stderr
    assert "seasonal_naive" in r.stdout and (tmp_path / "o" / "report.html").exists()


def test_fit_first_sets_the_event_time_fit():
    from streamseq.commands import build_parser
    from streamseq.commands.args import config_from_args as _config_from_args

    a = build_parser().parse_args(["replay", "--config", str(DATA / "stocks.toml"), "--fit-first", "40",
                                   "--out", "x"])
    cfg = _config_from_args(a)
    assert cfg.trainer.fit_first == 40 and cfg.trainer.every_windows == 0
    from streamseq.trainer import RetrainSchedule, Trainer

    assert RetrainSchedule.from_config(cfg).first_windows == 40
    assert {"gru", "lstm"} <= set(Trainer(cfg, store=None).models)  # the fit covers the RNNs
