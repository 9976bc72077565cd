"""The streamseq.forecast/v1 message: round trip, schema, determinism, null intervals."""
from __future__ import annotations

import jsonschema
import numpy as np
import orjson
import polars as pl
import pytest

from streamseq.forecast_json import (
    SCHEMA_PATH,
    Forecast,
    ForecastDecodeError,
    decode_forecast,
    encode_forecasts,
    forecasts_to_frame,
    load_schema,
    parse_rfc3339_ns,
)
from streamseq.records import FORECAST_SCHEMA, ForecastBatch
from streamseq.timeutil import iso

H = 3600 * 10**9
ORIGIN = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z


def make_batch(n: int = 3, horizon: int = 4, with_interval: bool = True) -> ForecastBatch:
    rng = np.random.default_rng(7)
    mean = rng.normal(size=(n, horizon))
    if with_interval:
        lo, hi = mean - 1.0, mean + 1.0
    else:
        lo, hi = np.full((n, horizon), np.nan), np.full((n, horizon), np.nan)
    return ForecastBatch(
        model="gru", model_version="v3", origin=ORIGIN, interval="1h", targets=ORIGIN + H * np.arange(1, horizon + 1),
        keys=np.array([f"sensor-{i}" for i in range(n)], dtype=object),
        mean=mean, lo=lo, hi=hi, produced_at=ORIGIN + 5 * 10**9 + 123,
    )


@pytest.fixture(scope="module")
def validator():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_round_trip_keeps_every_field():
    batch = make_batch()
    messages = encode_forecasts(batch)
    assert [k for k, _ in messages] == [b"sensor-0", b"sensor-1", b"sensor-2"]
    for i, (_, value) in enumerate(messages):
        f = decode_forecast(value)
        assert isinstance(f, Forecast)
        assert f.key == f"sensor-{i}"
        assert f.id == f"sensor-{i}|2024-01-01T00:00:00Z|gru|v3"
        assert (f.origin, f.interval_ns, f.model, f.model_version) == (ORIGIN, H, "gru", "v3")
        assert f.produced_at == batch.produced_at
        assert f.horizon == 4
        assert [s.step for s in f.steps] == [1, 2, 3, 4]
        assert [s.target_ts for s in f.steps] == [ORIGIN + j * H for j in range(1, 5)]
        np.testing.assert_array_equal([s.mean for s in f.steps], batch.mean[i])
        np.testing.assert_array_equal([s.lo for s in f.steps], batch.lo[i])
        np.testing.assert_array_equal([s.hi for s in f.steps], batch.hi[i])


def test_messages_validate_against_schema(validator):
    for batch in (make_batch(), make_batch(with_interval=False)):
        for _, value in encode_forecasts(batch):
            validator.validate(orjson.loads(value))


def test_schema_documents_every_field():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    step = schema["properties"]["steps"]["items"]
    assert step["additionalProperties"] is False
    for props in (schema["properties"], step["properties"]):
        for name, prop in props.items():
            assert prop.get("title") and prop.get("description"), name


def test_schema_rejects_unknown_and_missing_fields(validator):
    value = orjson.loads(encode_forecasts(make_batch(n=1))[0][1])
    assert validator.is_valid(value)
    assert not validator.is_valid({**value, "extra": 1})
    assert not validator.is_valid({k: v for k, v in value.items() if k != "produced_at"})
    assert not validator.is_valid({**value, "origin": "2024-01-01 00:00:00"})


def test_encoding_is_deterministic():
    a = encode_forecasts(make_batch())
    b = encode_forecasts(make_batch())
    assert a == b


def test_null_interval_is_json_null(validator):
    batch = make_batch(n=2, with_interval=False)
    batch.lo[1, 2] = 0.25  # one step of one key has an interval already
    messages = encode_forecasts(batch)
    first = orjson.loads(messages[0][1])
    assert all(s["lo"] is None and s["hi"] is None for s in first["steps"])
    second = decode_forecast(messages[1][1])
    assert second.steps[2].lo == 0.25 and second.steps[2].hi is None
    assert second.steps[0].lo is None
    for _, value in messages:
        validator.validate(orjson.loads(value))


def test_diverged_mean_becomes_null_not_nan(validator):
    batch = make_batch(n=1)
    batch.mean[0, 0] = np.inf
    _, value = encode_forecasts(batch)[0]
    assert b"NaN" not in value and b"Infinity" not in value
    validator.validate(orjson.loads(value))
    assert decode_forecast(value).steps[0].mean is None


def test_frame_is_long_form():
    forecasts = [decode_forecast(v) for _, v in encode_forecasts(make_batch(n=2, horizon=3, with_interval=False))]
    frame = forecasts_to_frame(forecasts)
    assert frame.columns == ["key", "model", "model_version", "origin", "step", "target_ts",
                             "mean", "lo", "hi", "produced_at"]
    assert frame.height == 6
    assert frame.schema["origin"] == pl.Datetime("ns", "UTC")
    assert frame["lo"].null_count() == 6
    assert frame.filter(pl.col("key") == "sensor-1")["step"].to_list() == [1, 2, 3]
    assert forecasts_to_frame([]).height == 0


def test_sub_second_times_keep_nanoseconds():
    batch = make_batch(n=1, horizon=1)
    batch.origin += 1  # 1 ns past the hour
    batch.targets = batch.targets + 1
    f = decode_forecast(encode_forecasts(batch)[0][1])
    assert f.origin == ORIGIN + 1 and f.steps[0].target_ts == ORIGIN + 1 + H
    assert parse_rfc3339_ns("2024-01-01T00:00:00.5Z") == ORIGIN + 500_000_000


@pytest.mark.parametrize("value", [
    b"not json", b"[1, 2]", b'{"schema": "other/v9"}',
    b'{"schema": "streamseq.forecast/v1", "id": "x"}',
])
def test_decode_rejects_foreign_messages(value):
    with pytest.raises(ForecastDecodeError):
        decode_forecast(value)


def test_schema_file_is_package_data():
    assert SCHEMA_PATH.is_file()
    assert SCHEMA_PATH.parent.name == "schemas" and SCHEMA_PATH.parent.parent.name == "streamseq"


def reference_encode(batch: ForecastBatch) -> list[tuple[bytes, bytes]]:
    """The message as one Python object per forecast, dumped by orjson: what encode_forecasts must equal."""
    n, horizon = batch.mean.shape

    def number(a, i, j):
        if a is None or not np.isfinite(a[i, j]):
            return None
        return float(a[i, j])

    out = []
    for i in range(n):
        key = str(batch.keys[i])
        message = {
            "schema": FORECAST_SCHEMA,
            "id": f"{key}|{iso(batch.origin)}|{batch.model}|{batch.model_version}",
            "key": key,
            "origin": iso(batch.origin),
            "interval": batch.interval,
            "model": str(batch.model),
            "model_version": str(batch.model_version),
            "horizon": horizon,
            "steps": [{"step": j + 1, "target_ts": iso(int(batch.targets[j])),
                       "mean": number(batch.mean, i, j), "lo": number(batch.lo, i, j),
                       "hi": number(batch.hi, i, j)} for j in range(horizon)],
            "produced_at": iso(batch.produced_at),
        }
        out.append((key.encode("utf-8"), orjson.dumps(message)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_template_encoder_matches_the_object_encoder_byte_for_byte(seed, validator):
    rng = np.random.default_rng(seed)
    n, horizon = int(rng.integers(1, 40)), int(rng.integers(1, 30))
    mean = rng.normal(size=(n, horizon)) * 10.0 ** rng.integers(-12, 12, size=(n, horizon))
    mean[rng.random((n, horizon)) < 0.05] = np.nan
    mean[0, 0] = -0.0
    lo, hi = mean - rng.random((n, horizon)), mean + rng.random((n, horizon))
    lo[rng.random((n, horizon)) < 0.1] = np.nan
    hi[rng.random((n, horizon)) < 0.05] = np.inf
    keys = ["plain", 'quote"back\\slash', "100%s%d", "unicode-\u00e9\u6e29\U0001f321", "tab\tnewline\n"]
    origin = ORIGIN + seed * 1_500_000_123
    name, step = [("1h", H), ("15min", 15 * 60 * 10**9), ("1500ms", 1_500_000_000), ("1mo", None)][seed % 4]
    if step is None:  # calendar months: the targets are the month ends, of different lengths
        from streamseq.grid import parse_interval

        grid = parse_interval("1mo")
        targets = grid.end_of(grid.wid_of(origin - 1) + np.arange(1, horizon + 1))
    else:
        targets = origin + step * np.arange(1, horizon + 1)
    batch = ForecastBatch(
        model="gru%s" if seed % 2 else "lstm", model_version=["v1", "7", "a|b"][seed % 3],
        origin=origin, interval=name, targets=targets,
        keys=np.array([keys[i % len(keys)] + str(i) for i in range(n)], dtype=object),
        mean=mean, lo=None if seed == 3 else lo, hi=None if seed == 3 else hi,
        produced_at=ORIGIN + 5 * 10**9 + seed,
    )
    got = encode_forecasts(batch)
    assert got == reference_encode(batch)
    for _, value in got:
        validator.validate(orjson.loads(value))
