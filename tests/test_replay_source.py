"""File replay: formats, event-time merge, chunking, resume, bad input, bounds, pacing."""
from __future__ import annotations

import gzip
import json
import shutil
from datetime import UTC, datetime, timedelta, timezone
from itertools import accumulate

import numpy as np
import polars as pl
import pytest

from streamseq.clock import ManualClock
from streamseq.errors import ConfigError, InputError
from streamseq_connectors.replay import ReplaySource

NS = 1_000_000_000
T0 = datetime(2024, 1, 1)
T0_NS = 1_704_067_200 * NS
ISO = "%Y-%m-%dT%H:%M:%S"


def frame(n: int, offset_s: int = 0, step_s: int = 3, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "sensor": [f"s{i}" for i in rng.integers(0, 5, n)],
            "time": [T0 + timedelta(seconds=offset_s + i * step_s) for i in range(n)],
            "temp": rng.normal(20, 2, n).round(3),
            "hum": rng.uniform(30, 60, n).round(3),
        }
    )


def write(df: pl.DataFrame, path, fmt: str) -> str:
    path = str(path)
    if fmt == "parquet":
        df.write_parquet(path)
        return path
    text = df.with_columns(pl.col("time").dt.strftime(ISO)) if df.schema.get("time") == pl.Datetime else df
    if fmt == "csv":
        text.write_csv(path)
    elif fmt == "csv.gz":
        text.write_csv(path[:-3])
        with open(path[:-3], "rb") as f, gzip.open(path, "wb") as g:
            shutil.copyfileobj(f, g)
    else:
        text.write_ndjson(path)
    return path


def source(files, **kw) -> ReplaySource:
    return ReplaySource([str(f) for f in files], "sensor", "time", kw.pop("values", ["temp", "hum"]), **kw)


def drain(part, max_batches: int | None = None):
    """(records, letters) in the order returned."""
    records, letters = [], []
    batches = 0
    while not part.exhausted and (max_batches is None or batches < max_batches):
        batch, dead = part.next_batch()
        batches += 1
        records += [
            (k, int(t), tuple(v.tolist()), int(p), int(o))
            for k, t, v, p, o in zip(batch.keys, batch.ts, batch.values, batch.partition, batch.offset)
        ]
        letters += [(d.reason, d.source, d.partition, d.offset, d.key) for d in dead]
    return records, letters


def run(files, **kw):
    return drain(source(files, **kw).build_part("replay", None))


def expected_records(dfs: list[pl.DataFrame]):
    """Rows of sorted files merged by (event time, file index, row)."""
    rows = []
    for i, df in enumerate(dfs):
        for r, (k, t, a, b) in enumerate(df.iter_rows()):
            ns = int(t.replace(tzinfo=UTC).timestamp()) * NS
            rows.append((k, ns, (a, b), i, r))
    return sorted(rows, key=lambda x: (x[1], x[3], x[4]))


# -- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "csv.gz"])
def test_each_format_is_read_in_file_order(tmp_path, fmt):
    df = frame(40)
    path = write(df, tmp_path / f"data.{fmt}", fmt)
    records, letters = run([path], chunk_rows=16)
    assert letters == []
    assert records == expected_records([df])
    batch, _ = source([path]).build_part("replay", None).next_batch()
    assert batch.ts.dtype == np.int64 and batch.values.dtype == np.float64 and batch.values.shape == (40, 2)
    assert batch.partition.dtype == np.int32 and batch.offset.dtype == np.int64 and batch.keys.dtype == object


def test_parquet_timezone_aware_and_date_times(tmp_path):
    aware = pl.DataFrame(
        {"sensor": ["a", "b"], "time": [datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))] * 2,
         "temp": [1.0, 2.0], "hum": [1, 2]}
    ).with_columns(pl.col("time").dt.convert_time_zone("Europe/Paris"))
    aware.write_parquet(tmp_path / "aware.parquet")
    records, _ = run([tmp_path / "aware.parquet"])
    assert [r[1] for r in records] == [T0_NS, T0_NS]
    assert records[1][2] == (2.0, 2.0)  # integer value column read as float
    dates = pl.DataFrame({"sensor": ["a"], "time": [T0.date()], "temp": [1.0], "hum": [1.0]})
    dates.write_parquet(tmp_path / "dates.parquet")
    assert run([tmp_path / "dates.parquet"])[0][0][1] == T0_NS


# -- merge order --------------------------------------------------------------------------


def test_files_merge_in_event_time_order(tmp_path):
    dfs = [frame(30, offset_s=0, seed=1), frame(25, offset_s=1, seed=2), frame(20, offset_s=0, step_s=6, seed=3)]
    paths = [write(dfs[0], tmp_path / "a.parquet", "parquet"), write(dfs[1], tmp_path / "b.csv", "csv"),
             write(dfs[2], tmp_path / "c.jsonl", "jsonl")]
    records, letters = run(paths, chunk_rows=8)
    assert letters == []
    assert records == expected_records(dfs)  # equal times: lower file index first


def test_out_of_order_rows_keep_their_file_order(tmp_path):
    secs = [10, 5, 20, 15, 30, 1, 31]
    df = pl.DataFrame({"sensor": ["k"] * 7, "time": [T0 + timedelta(seconds=s) for s in secs],
                       "temp": [float(s) for s in secs], "hum": [0.0] * 7})
    path = write(df, tmp_path / "late.parquet", "parquet")
    records, _ = run([path], chunk_rows=3)
    assert [r[4] for r in records] == list(range(7))
    assert [r[1] for r in records] == [T0_NS + s * NS for s in secs]

    other = pl.DataFrame({"sensor": ["o"] * 4, "time": [T0 + timedelta(seconds=s) for s in (4, 12, 2, 25)],
                          "temp": [0.0] * 4, "hum": [0.0] * 4})
    path2 = write(other, tmp_path / "other.parquet", "parquet")
    records, _ = run([path, path2], chunk_rows=2)
    # Each file stays in file order; files interleave by their running maximum event time.
    for i in (0, 1):
        assert [r[4] for r in records if r[3] == i] == list(range([7, 4][i]))
    merge_key = []
    for i, s in enumerate((secs, [4, 12, 2, 25])):
        merge_key += [(pm, i, r) for r, pm in enumerate(accumulate(s, max))]
    assert [(r[3], r[4]) for r in records] == [(i, r) for _, i, r in sorted(merge_key)]


@pytest.mark.parametrize("seed", range(12))
def test_random_files_match_the_reference_merge_order(tmp_path, seed):
    """Random late rows and bad rows: output == rows sorted by (running max time, file, row)."""
    rng = np.random.default_rng(seed)
    paths, reference = [], []
    for f in range(int(rng.integers(1, 5))):
        n = int(rng.integers(0, 40))
        secs = np.cumsum(rng.choice([0, 1, 1, 2, 5], n)) - np.where(rng.random(n) < 0.2, rng.integers(0, 10, n), 0)
        good = rng.random(n) >= 0.1
        df = pl.DataFrame({"sensor": ["k"] * n, "time": pl.Series(1_704_067_200 + secs, dtype=pl.Int64),
                           "temp": np.where(good, 1.0, np.nan), "hum": np.ones(n)})
        paths.append(write(df, tmp_path / f"{f}.parquet", "parquet"))
        running = accumulate((int(s) if g else -(2**63) for s, g in zip(secs, good)), max)
        reference += [(pm, f, r, bool(g)) for r, (pm, g) in enumerate(zip(running, good))]
    reference.sort()
    chunk = int(rng.integers(1, 10))
    records, letters = run(paths, chunk_rows=chunk)
    assert [(r[3], r[4]) for r in records] == [(f, r) for _, f, r, g in reference if g]
    assert [(p, o) for _, _, p, o, _ in letters] == [(f, r) for _, f, r, g in reference if not g]


# -- chunking and resume ------------------------------------------------------------------


def mixed_files(tmp_path):
    """Three interleaved files, with bad rows, in three formats."""
    a = frame(60, offset_s=0, seed=4)
    a = a.with_columns(pl.when(pl.int_range(60) % 11 == 3).then(None).otherwise(pl.col("temp")).alias("temp"))
    b = frame(45, offset_s=1, step_s=4, seed=5).with_columns(pl.col("time").dt.strftime(ISO))
    b = b.with_columns(pl.when(pl.int_range(45) % 9 == 4).then(pl.lit("bad")).otherwise(pl.col("time")).alias("time"))
    c = frame(30, offset_s=2, step_s=5, seed=6)
    paths = [write(a, tmp_path / "a.parquet", "parquet"), write(b, tmp_path / "b.csv", "csv"),
             write(c, tmp_path / "c.jsonl", "jsonl")]
    return paths, 60 + 45 + 30


@pytest.mark.parametrize("chunk_rows", [1, 7, 50])
def test_chunk_size_does_not_change_the_stream(tmp_path, chunk_rows):
    paths, _ = mixed_files(tmp_path)
    whole = run(paths, chunk_rows=65_536)
    assert len(whole[1]) == 6 + 5  # null temps in a.parquet, bad times in b.csv
    assert run(paths, chunk_rows=chunk_rows) == whole


@pytest.mark.parametrize("n", [0, 1, 7, 13, 64, 134, 135])
def test_resume_after_n_records_continues_without_gap_or_duplicate(tmp_path, n):
    paths, total = mixed_files(tmp_path)
    records, letters = run(paths)
    first = source(paths, chunk_rows=max(n, 1)).build_part("replay", None)
    head_records, head_letters = drain(first, max_batches=1 if n else 0)
    assert len(head_records) + len(head_letters) == n
    state = json.loads(json.dumps(first.snapshot()))
    first.close()
    rest = source(paths, chunk_rows=5).build_part("replay", state)
    tail_records, tail_letters = drain(rest)
    assert head_records + tail_records == records
    assert sorted(head_letters + tail_letters) == sorted(letters)
    assert len(head_letters) + len(tail_letters) == len(letters)
    assert rest.exhausted and n <= total


def test_resume_from_every_batch_boundary(tmp_path):
    paths, _ = mixed_files(tmp_path)
    part = source(paths, chunk_rows=4).build_part("replay", None)
    seen: list = []
    states = [(0, part.snapshot())]
    while not part.exhausted:
        batch, dead = part.next_batch()
        seen += [(int(p), int(o)) for p, o in zip(batch.partition, batch.offset)]
        states.append((len(seen), json.loads(json.dumps(part.snapshot()))))
    for done, state in states[::5] + states[-1:]:
        records, _ = drain(source(paths, chunk_rows=9).build_part("replay", state))
        assert [(r[3], r[4]) for r in records] == seen[done:]


def test_resume_state_for_other_files_is_refused(tmp_path):
    paths, _ = mixed_files(tmp_path)
    state = source(paths).build_part("replay", None).snapshot()
    with pytest.raises(InputError):
        source(paths[:2]).build_part("replay", state)


# -- bad input ----------------------------------------------------------------------------


def test_every_kind_of_bad_csv_row_becomes_a_dead_letter(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "sensor,time,temp,hum\n"
        "a,2024-01-01T00:00:00,1.5,2\n"  # 0 good
        ",2024-01-01T00:00:01,1,1\n"  # 1 missing key
        "   ,2024-01-01T00:00:01,1,1\n"  # 2 blank key
        "b,abc,1,1\n"  # 3 unparsable time
        "c,,1,1\n"  # 4 missing time
        "d,2024-01-01T00:00:02,x1,1\n"  # 5 non-numeric
        "e,2024-01-01T00:00:02,nan,1\n"  # 6 NaN
        "f,2024-01-01T00:00:02,1,inf\n"  # 7 inf
        "g,2024-01-01T00:00:02,1,\n"  # 8 missing value
        "h,2024-01-01T00:00:03,3,4\n"  # 9 good
        "i\n"  # 10 short line: no time
    )
    records, letters = run([path], chunk_rows=3)
    assert [(r[0], r[4]) for r in records] == [("a", 0), ("h", 9)]
    assert records[1][2] == (3.0, 4.0)
    assert [(reason, offset, key) for reason, _, _, offset, key in letters] == [
        ("missing key", 1, None),
        ("missing key", 2, None),
        ("unparsable time 'abc'", 3, "b"),
        ("missing time", 4, "c"),
        ("non-numeric value in 'temp'", 5, "d"),
        ("non-finite value in 'temp'", 6, "e"),
        ("non-finite value in 'hum'", 7, "f"),
        ("missing value in 'hum'", 8, "g"),
        ("missing time", 10, "i"),
    ]
    assert {(src, part) for _, src, part, _, _ in letters} == {(str(path), 0)}
    dead = []
    part = source([path]).build_part("replay", None)
    while not part.exhausted:
        dead += part.next_batch()[1]
    assert json.loads(dead[2].payload) == {"sensor": "b", "time": "abc", "temp": "1", "hum": "1"}


def test_bad_parquet_values_become_dead_letters(tmp_path):
    df = pl.DataFrame(
        {
            "sensor": ["a", None, "c", "d", "e", "f"],
            "time": [T0, T0, None, T0, T0, T0],
            "temp": [1.0, 1.0, 1.0, float("nan"), None, 2.0],
            "hum": [1.0, 1.0, 1.0, 1.0, 1.0, float("-inf")],
        }
    )
    path = write(df, tmp_path / "bad.parquet", "parquet")
    records, letters = run([path])
    assert [r[4] for r in records] == [0]
    assert [(reason, offset) for reason, _, _, offset, _ in letters] == [
        ("missing key", 1), ("missing time", 2), ("non-finite value in 'temp'", 3),
        ("missing value in 'temp'", 4), ("non-finite value in 'hum'", 5),
    ]
    part = source([path]).build_part("replay", None)
    payload = json.loads(part.next_batch()[1][2].payload)
    assert payload["temp"] == "nan" and payload["sensor"] == "d"


def test_bad_json_lines_become_dead_letters(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"sensor":"a","time":"2024-01-01T00:00:00Z","temp":1,"hum":2}\n'
        '{"sensor": oops\n'
        "\n"  # blank line: no record, no letter
        "[1,2]\n"
        '{"sensor":"b","time":"2024-01-01T00:00:01Z","temp":[1],"hum":2}\n'
        '{"sensor":"c","time":"2024-01-01T00:00:02Z","temp":"warm","hum":2}\n'
        '{"sensor":"d","time":"2024-01-01T00:00:03Z","temp":3.5,"hum":"4"}\n'
    )
    records, letters = run([path], chunk_rows=4)
    assert [(r[0], r[4], r[2]) for r in records] == [("a", 0, (1.0, 2.0)), ("d", 6, (3.5, 4.0))]
    assert [(reason, offset) for reason, _, _, offset, _ in letters] == [
        ("invalid JSON", 1), ("not a JSON object", 3), ("nested value in 'temp'", 4),
        ("non-numeric value in 'temp'", 5),
    ]
    assert run([path], chunk_rows=1) == (records, letters)


def test_a_file_that_stops_parsing_ends_in_one_dead_letter(tmp_path):
    n = 20_000
    df = pl.DataFrame({"sensor": ["a"] * n, "time": [f"2024-01-01T00:00:{i % 60:02d}" for i in range(n)],
                       "temp": [float(i) for i in range(n)], "hum": [1.0] * n})
    data = gzip.compress(df.write_csv().encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    part = source([path], chunk_rows=1000).build_part("replay", None)
    records, letters = drain(part)
    assert len(letters) == 1 and letters[0][0].startswith("unreadable from row")
    assert letters[0][3] == len(records) and [r[4] for r in records] == list(range(len(records)))
    state = json.loads(json.dumps(part.snapshot()))
    assert drain(source([path]).build_part("replay", state)) == ([], [])


# -- validation ---------------------------------------------------------------------------


def test_validate_names_the_missing_file_column_or_format(tmp_path):
    good = write(frame(3), tmp_path / "ok.csv", "csv")
    with pytest.raises(InputError, match="not found") as err:
        source([good, tmp_path / "nope.parquet"]).validate()
    assert "nope.parquet" in str(err.value)
    with pytest.raises(InputError) as err:
        ReplaySource([good], "sensor", "time", ["temp", "pressure"]).validate()
    assert "'pressure'" in str(err.value) and "ok.csv" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(InputError, match="unsupported"):
        source([tmp_path / "data.xlsx"]).validate()
    jsonl = write(frame(3), tmp_path / "ok.jsonl", "jsonl")
    with pytest.raises(InputError, match="'pressure'"):
        ReplaySource([jsonl], "sensor", "time", ["pressure"]).validate()
    with pytest.raises(ConfigError):
        source([good], start="yesterday")


# -- time ---------------------------------------------------------------------------------


def test_start_and_end_bound_event_time(tmp_path):
    df = frame(20, step_s=60)
    path = write(df, tmp_path / "d.parquet", "parquet")
    records, letters = run([path], start="2024-01-01T00:05:00", end="2024-01-01T00:10:00Z", chunk_rows=3)
    assert [r[4] for r in records] == [5, 6, 7, 8, 9]
    assert letters == []
    part = source([path], start="2024-01-01T00:05:00", chunk_rows=3).build_part("replay", None)
    drain(part, max_batches=1)
    rest, _ = drain(source([path], start="2024-01-01T00:05:00").build_part("replay", part.snapshot()))
    assert [r[4] for r in rest] == list(range(8, 20))


def test_numeric_epoch_times(tmp_path):
    secs = np.array([0, 1, 2, 30])
    base = pl.DataFrame({"sensor": ["a"] * 4, "temp": [1.0] * 4, "hum": [2.0] * 4})
    cases = [
        ("s.parquet", base.with_columns(time=pl.Series(1_704_067_200 + secs)), "s"),
        ("ms.parquet", base.with_columns(time=pl.Series((1_704_067_200 + secs) * 1000)), "ms"),
        ("f.parquet", base.with_columns(time=pl.Series(1_704_067_200 + secs + 0.25)), "s"),
        ("s.csv", base.with_columns(time=pl.Series(1_704_067_200 + secs)), "s"),
    ]
    for name, df, unit in cases:
        path = write(df, tmp_path / name, name.split(".")[1])
        records, letters = run([path], time_unit=unit)
        frac = NS // 4 if name.startswith("f") else 0
        assert [r[1] for r in records] == [T0_NS + s * NS + frac for s in secs], name
        assert letters == []


def test_time_text_variants(tmp_path):
    times = ["2024-01-01T00:00:00Z", "2024-01-01 00:00:01", "2024-01-01T01:00:02+01:00", "2024-01-01T00:00:03.25",
             "2024-01-01T00:00:04.123456789Z", "2024-01-02", "2024-01-02 00:01"]
    n = len(times)
    df = pl.DataFrame({"sensor": ["a"] * n, "time": times, "temp": [1.0] * n, "hum": [1.0] * n})
    path = write(df, tmp_path / "t.csv", "csv")
    records, letters = run([path])
    assert letters == []
    assert [r[1] - T0_NS for r in records] == [0, NS, 2 * NS, 3 * NS + NS // 4, 4 * NS + 123456789, 86400 * NS,
                                               86460 * NS]
    custom = pl.DataFrame({"sensor": ["a", "b"], "time": ["01/01/2024 00:00:05", "2024-01-01"], "temp": [1.0, 1.0],
                           "hum": [1.0, 1.0]})
    path = write(custom, tmp_path / "custom.csv", "csv")
    records, letters = run([path], time_format="%d/%m/%Y %H:%M:%S")
    assert [r[1] for r in records] == [T0_NS + 5 * NS]
    assert [reason for reason, *_ in letters] == ["unparsable time '2024-01-01'"]


def test_speed_releases_records_by_event_time(tmp_path):
    df = pl.DataFrame({"sensor": ["a"] * 4, "time": [T0 + timedelta(seconds=s) for s in (0, 10, 20, 30)],
                       "temp": [1.0, 2.0, 3.0, 4.0], "hum": [0.0] * 4})
    path = write(df, tmp_path / "paced.parquet", "parquet")
    clock = ManualClock(5 * NS)
    part = source([path], speed=10.0, clock=clock).build_part("replay", None)
    got = lambda: [int(o) for o in part.next_batch()[0].offset]  # noqa: E731
    assert got() == [0]
    assert got() == []
    clock.advance(0.999)
    assert got() == []
    clock.advance(0.002)
    assert got() == [1]
    clock.advance(0.99)
    assert got() == [] and not part.exhausted
    clock.advance(10)
    assert got() == [2, 3]
    assert part.exhausted


def test_total_rows_describe_and_single_partition(tmp_path):
    paths, total = mixed_files(tmp_path)
    src = source(paths)
    assert src.list_parts() == ["replay"]
    part = src.build_part("replay", None)
    assert part.partitioned_time is False
    assert part.total_rows == total
    assert part.origin(1) == (paths[1], 1)
    part.close()
