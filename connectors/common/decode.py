"""JSON observation messages -> (ObservationBatch, dead letters): the decoding rules of every Kafka client.

Messages are JSON objects, e.g. ``{"key": "s1", "ts": "2024-01-01T00:00:00Z", "temp": 21.5}``.
The series key is the message key (``key_field=None``) or a field; the event time
is an RFC 3339 / ISO 8601 string (no offset = UTC) or an epoch number in
``time_unit``; value fields are JSON numbers (a number sent as a string is a dead letter).
Anything else becomes a DeadLetter with a reason and its topic, partition and offset.

Records come per partition as columns (``decode_columns``: message keys, values, offsets), or as
objects with ``key``, ``value``, ``topic``, ``partition`` and ``offset`` attributes (``decode``:
kafka-python's ConsumerRecord).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from operator import itemgetter

import numpy as np
import orjson

from streamseq.records import MAX_ABS_VALUE, MAX_KEY_BYTES, DeadLetter, ObservationBatch, key_fault

TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
MIN_TS_NS = 0  # 1970-01-01
MAX_TS_NS = int(datetime(2201, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000_000  # exclusive: end of 2200

_ISO_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?))?\s*(Z|z|[+-]\d{2}:?\d{2})?"
)


class JsonObservationDecoder:
    """Kafka records -> (ObservationBatch, dead letters): one orjson.loads per record, arrays at the end."""

    def __init__(self, key_field: str | None, time_field: str, value_fields: list[str],
                 time_unit: str = "ms", max_record_bytes: int = 1_000_000):
        self.key_field = key_field
        self.time_field = time_field
        self.value_fields = list(value_fields)
        self.unit_ns = TIME_UNITS[time_unit]
        self.max_record_bytes = max_record_bytes

    def decode(self, groups: Iterable[tuple[int, list]]) -> tuple[ObservationBatch, list[DeadLetter]]:
        """``groups``: (partition id, records in offset order) per Kafka partition; a record has ``key``,
        ``value``, ``topic``, ``partition`` and ``offset`` attributes (kafka-python's ConsumerRecord)."""
        return self.decode_columns([(pid, rs[0].topic, rs[0].partition, [r.key for r in rs], [r.value for r in rs],
                                     [r.offset for r in rs]) for pid, rs in groups if rs])

    def decode_columns(self, groups: Iterable[tuple[int, str, int, list, list, list]]
                       ) -> tuple[ObservationBatch, list[DeadLetter]]:
        """``groups``: (partition id, topic, partition, message keys, message values, offsets) per Kafka
        partition, in offset order: what any client gives, with no Python object per record."""
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        key_field, time_field, fields = self.key_field, self.time_field, self.value_fields
        max_bytes = self.max_record_bytes
        get_values, single = itemgetter(*fields), len(fields) == 1
        letters: list[DeadLetter] = []
        keys: list[str] = []
        flat: list[float] = []
        offsets: list[int] = []
        rows: list[int] = []  # index in its group of each record kept, for dead letters found after vectorised checks
        kept_groups: list = []
        pids: list[int] = []
        counts: list[int] = []
        iso_idx: list[int] = []
        iso_str: list[str] = []
        int_idx: list[int] = []
        int_val: list[int] = []
        float_idx: list[int] = []
        float_val: list[float] = []

        def letter(group, i: int, reason: str, key: str | None = None) -> DeadLetter:
            _, topic, partition, raw_keys, raw_values, raw_offsets = group
            rk = raw_keys[i]
            if key is None and rk is not None and len(rk) <= MAX_KEY_BYTES:
                key = rk.decode("utf-8", "replace")
            return DeadLetter(reason, topic, partition, raw_offsets[i], raw_values[i], key)

        for group in groups:
            pid, _, _, raw_keys, raw_values, raw_offsets = group

            def dead(i: int, reason: str, key: str | None = None, group=group) -> None:
                letters.append(letter(group, i, reason, key))

            start = len(keys)
            for i, v in enumerate(raw_values):
                if v is None:
                    dead(i, "empty_value: null message value")
                    continue
                if len(v) > max_bytes:
                    dead(i, f"too_large: {len(v)} bytes > max_record_bytes {max_bytes}")
                    continue
                if v[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark some producers write
                    v = v[3:]
                try:
                    obj = loads(v)
                except JSONDecodeError as e:
                    code = "invalid_utf8" if "UTF-8" in str(e) else "not_json"
                    dead(i, f"{code}: {e}")
                    continue
                if type(obj) is not dict:
                    dead(i, f"not_object: JSON {type(obj).__name__}, expected an object")
                    continue
                if key_field is None:
                    k = raw_keys[i]
                    if k is None:
                        dead(i, "missing_key: message has no key")
                        continue
                    try:
                        k = k.decode("utf-8")
                    except UnicodeDecodeError:
                        dead(i, "invalid_key: message key is not UTF-8")
                        continue
                else:
                    k = obj.get(key_field)
                    if type(k) is not str:
                        if k is None:
                            dead(i, f"missing_key: no field {key_field!r}")
                            continue
                        if type(k) is not int:
                            dead(i, f"invalid_key: field {key_field!r} is {type(k).__name__}")
                            continue
                        k = str(k)
                if not k or len(k) * 4 > MAX_KEY_BYTES or k.isspace():
                    fault = key_fault(k)
                    if fault is not None:
                        dead(i, f"{fault[0]}: {fault[1]}", k if fault[0] == "missing_key" else None)
                        continue
                t = obj.get(time_field)
                tt = type(t)
                if tt is not str and tt is not int and tt is not float:
                    if t is None:
                        dead(i, f"missing_time: no field {time_field!r}", k)
                    else:
                        dead(i, f"bad_time: field {time_field!r} is {tt.__name__}", k)
                    continue
                try:
                    row = get_values(obj)
                except KeyError as e:
                    dead(i, f"missing_value: no field {e.args[0]!r}", k)
                    continue
                if single:
                    row = (row,)
                for x in row:
                    if type(x) is not float and type(x) is not int:
                        row = _coerce_row(row, fields)
                        break
                if type(row) is str:
                    dead(i, row, k)
                    continue
                n = len(keys)
                if tt is str:
                    iso_idx.append(n)
                    iso_str.append(t)
                elif tt is int:
                    int_idx.append(n)
                    int_val.append(t)
                else:
                    float_idx.append(n)
                    float_val.append(t)
                keys.append(k)
                flat.extend(row)
                offsets.append(raw_offsets[i])
                rows.append(i)
            pids.append(pid)
            counts.append(len(keys) - start)
            kept_groups.append(group)

        n, width = len(keys), len(fields)
        if n == 0:
            return ObservationBatch.empty(width), letters
        values = np.array(flat, dtype=np.float64).reshape(n, width)
        ts = np.zeros(n, dtype=np.int64)
        time_ok = np.zeros(n, dtype=bool)
        if iso_idx:
            parsed, ok = parse_iso_times(iso_str)
            ts[iso_idx], time_ok[iso_idx] = parsed, ok
        if int_idx:
            parsed, ok = self._epoch_ints(int_val)
            ts[int_idx], time_ok[int_idx] = parsed, ok
        if float_idx:
            parsed, ok = self._epoch_floats(float_val)
            ts[float_idx], time_ok[float_idx] = parsed, ok
        in_range = time_ok & (ts >= MIN_TS_NS) & (ts < MAX_TS_NS)
        finite = np.isfinite(values).all(axis=1)
        bounded = (np.abs(values) <= MAX_ABS_VALUE).all(axis=1)
        keep = in_range & finite & bounded
        key_array = np.empty(n, dtype=object)
        key_array[:] = keys
        batch = ObservationBatch(
            keys=key_array,
            ts=ts,
            values=values,
            partition=np.repeat(np.array(pids, dtype=np.int32), counts),
            offset=np.array(offsets, dtype=np.int64),
        )
        if keep.all():
            return batch, letters
        group_of = np.repeat(np.arange(len(kept_groups)), counts)
        for i in np.flatnonzero(~keep):
            g, r = kept_groups[group_of[i]], rows[i]
            if not time_ok[i]:
                letters.append(letter(g, r, f"bad_time: cannot read {self.time_field!r} as a time", keys[i]))
            elif not in_range[i]:
                letters.append(letter(g, r, f"time_out_of_range: {self.time_field!r} outside years 1970..2200",
                                      keys[i]))
            elif not finite[i]:
                bad = [f for f, x in zip(self.value_fields, values[i]) if not np.isfinite(x)]
                letters.append(letter(g, r, f"non_finite: {', '.join(bad)}", keys[i]))
            else:
                bad = [f for f, x in zip(self.value_fields, values[i]) if abs(x) > MAX_ABS_VALUE]
                letters.append(letter(g, r, f"value_out_of_range: {', '.join(bad)} beyond ±{MAX_ABS_VALUE:g}",
                                      keys[i]))
        return batch.take(np.flatnonzero(keep)), letters

    # Epoch numbers always read as times; one outside 1970..2200 maps to -1 ns, which the range check rejects.

    def _epoch_ints(self, vals: list[int]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = MIN_TS_NS // self.unit_ns, MAX_TS_NS // self.unit_ns
        try:
            raw = np.array(vals, dtype=np.int64)
            fits = (raw >= lo) & (raw < hi)
        except OverflowError:  # beyond int64: certainly out of range, find which one by one
            fits = np.array([lo <= v < hi for v in vals], dtype=bool)
            raw = np.array([v if f else 0 for v, f in zip(vals, fits)], dtype=np.int64)
        return np.where(fits, raw * self.unit_ns, -1), np.ones(len(vals), dtype=bool)

    def _epoch_floats(self, vals: list[float]) -> tuple[np.ndarray, np.ndarray]:
        raw = np.array(vals, dtype=np.float64)
        fits = np.isfinite(raw) & (raw * self.unit_ns >= MIN_TS_NS) & (raw * self.unit_ns < MAX_TS_NS)
        raw = np.where(fits, raw, 0.0)
        whole = np.floor(raw)  # whole units exactly, then the fraction: no 256 ns float steps at 1.7e18
        ns = whole.astype(np.int64) * self.unit_ns + np.round((raw - whole) * self.unit_ns).astype(np.int64)
        return np.where(fits, ns, -1), np.ones(len(vals), dtype=bool)


def _coerce_row(row: list, fields: list[str]) -> list[float] | str:
    """Slow path for a row with a non-number: the dead-letter reason (strings are never numbers)."""
    out = []
    for f, x in zip(fields, row):
        tx = type(x)
        if tx is float or tx is int:
            out.append(x)
        elif x is None:
            return f"missing_value: no field {f!r}"
        elif tx is str:
            # A number sent as a string is a producer bug: dead-letter it rather than guess.
            try:
                as_float = float(x)
            except ValueError:
                return f"non_numeric: field {f!r} is {x[:40]!r}"
            if not np.isfinite(as_float):
                return f"non_finite: field {f!r} is {x[:40]!r}"
            return f"non_numeric: field {f!r} is the string {x[:40]!r}, not a JSON number"
        else:
            return f"non_numeric: field {f!r} is {tx.__name__}"
    return out


def parse_iso_times(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 / RFC 3339 strings -> (int64 ns, ok mask); no offset means UTC; 9 fraction digits kept.

    Years far outside 1970..2200 parse to a time before 1970, so range checks reject them.

    >>> ns, ok = parse_iso_times(["1970-01-01T00:00:01.5Z", "1970-01-01 02:00:00+02:00", "soon"])
    >>> ns.tolist(), ok.tolist()
    ([1500000000, 0, 0], [True, True, False])
    """
    n = len(texts)
    ns = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return ns, ok
    arr = np.array(texts)
    fast = np.strings.endswith(arr, "Z") & (np.strings.slice(arr, 4, 5) == "-") & \
        ((np.strings.slice(arr, 10, 11) == "T") | (np.strings.str_len(arr) == 11))
    if fast.any():
        try:  # RFC 3339 in UTC, the usual case: numpy parses them all in C
            subset = arr[fast]
            years = np.strings.slice(subset, 0, 4).astype(np.int64)
            if years.min() < 1969 or years.max() > 2201:  # datetime64[ns] wraps outside 1678..2262
                raise ValueError("year outside 1969..2201")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = np.strings.slice(subset, 0, -1).astype("datetime64[ns]").view(np.int64)
        except ValueError:
            fast[:] = False
        else:
            ns[fast] = parsed
            ok[fast] = parsed != np.iinfo(np.int64).min  # NaT
            if fast.all():
                return np.where(ok, ns, 0), ok
    rest = np.flatnonzero(~fast)
    rest_ns, rest_ok = _parse_iso_slow([texts[i] for i in rest])
    ns[rest], ok[rest] = rest_ns, rest_ok
    return np.where(ok, ns, 0), ok


def _parse_iso_slow(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One regex per string: offsets, date-only, space separator, odd years; then one numpy parse."""
    n = len(texts)
    naive = [""] * n
    offsets = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    match = _ISO_TIME.fullmatch
    for i, s in enumerate(texts):
        m = match(s)
        if m is None:
            ok[i] = False
            naive[i] = "NaT"
            continue
        date, clock, tz = m.groups()
        if not 1969 <= int(date[:4]) <= 2201:  # datetime64[ns] wraps silently outside 1678..2262
            naive[i] = "1900-01-01"  # parses, and fails the 1970..2200 range check as it should
            continue
        naive[i] = f"{date}T{clock}" if clock else date
        if tz is not None and tz not in ("Z", "z"):
            sign = 1 if tz[0] == "+" else -1
            offsets[i] = sign * (int(tz[1:3]) * 3600 + int(tz[-2:]) * 60) * 1_000_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = np.array(naive, dtype="datetime64[ns]").view(np.int64)
        except ValueError:  # an impossible date somewhere (month 13): find it one by one
            parsed = np.zeros(n, dtype=np.int64)
            for i, s in enumerate(naive):
                try:
                    parsed[i] = np.datetime64(s, "ns").view(np.int64)
                except ValueError:
                    ok[i] = False
    ok &= parsed != np.iinfo(np.int64).min  # NaT
    return np.where(ok, parsed - offsets, 0), ok
