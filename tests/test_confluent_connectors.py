"""The librdkafka (confluent-kafka) connectors against a real Kafka-API broker (Tansu): no mocks of Kafka.

They must be interchangeable with the kafka-python ones on the same topics: the same
decoding, the same dead-letter and forecast bytes, a key on the same partition, the
same changelog semantics. Every wait loop is bounded.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition
from kafka.partitioner.default import murmur2

from streamseq import config as config_mod
from streamseq import plugins
from streamseq.compose import transport_name
from streamseq.errors import ConfigError
from streamseq.forecast_json import decode_forecast
from streamseq.records import DeadLetter, ForecastBatch, ObservationBatch
from streamseq_connectors.common import RestoreError, dead_letter_json
from streamseq_connectors.confluent import (
    ConfluentChangelog,
    ConfluentDeadLetterSink,
    ConfluentForecastSink,
    ConfluentProducerHandle,
    ConfluentSettings,
    ConfluentSource,
    TopicPartition,
    ensure_topics,
    iter_forecasts,
    read_forecasts_frame,
)
from streamseq_connectors.confluent.transport import ConfluentTransport
from streamseq_connectors.kafka import (
    ChangelogStore,
    KafkaDeadLetterSink,
    KafkaForecastSink,
    KafkaProducerHandle,
    KafkaSettings,
    KafkaSource,
    ProducerFencedError,
    TopicMismatchError,
    TopicSpec,
    changelog_spec,
)

pytestmark = pytest.mark.timeout(90)
kafka = pytest.mark.kafka

T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3600 * 10**9


@pytest.fixture
def shared(kafka_broker, unique_topic) -> dict:
    """[kafka] keys both clients read, with a fresh group: from the beginning, fast joins on Tansu."""
    return {**kafka_broker.client_settings(), "group_id": unique_topic("group"), "auto_offset_reset": "earliest"}


@pytest.fixture
def settings(shared) -> ConfluentSettings:
    return ConfluentSettings.from_dict(shared)


@pytest.fixture
def kp_settings(shared) -> KafkaSettings:
    return KafkaSettings.from_dict(shared)


def obs(key: str, i: int) -> tuple[bytes, bytes]:
    return key.encode(), orjson.dumps({"ts": T0_MS + i * 1000, "temp": float(i)})


def produce(settings: ConfluentSettings, topic: str, messages) -> None:
    handle = ConfluentProducerHandle(settings)
    try:
        for key, value in messages:
            handle.send(topic, value, key=key)
        handle.flush()
    finally:
        handle.close()


def read_until(part, n_records: int, n_letters: int = 0, timeout_s: float = 20.0):
    batches, letters = [], []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch, dead = part.next_batch()
        if len(batch):
            batches.append(batch)
        letters += dead
        if sum(map(len, batches)) >= n_records and len(letters) >= n_letters:
            break
    return (ObservationBatch.concat(batches) if batches else ObservationBatch.empty(1)), letters


def read_raw(kp_settings: KafkaSettings, topic: str, expected: int, timeout_s: float = 10.0) -> list:
    """Every record of ``topic``, read by kafka-python (the other client), in partition and offset order."""
    consumer = KafkaConsumer(**kp_settings.consumer_kwargs(group=False))
    try:
        tps = [KTopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out += records
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def forecast_batch(n: int, origin_h: int, horizon: int = 3) -> ForecastBatch:
    mean = np.arange(n * horizon, dtype=float).reshape(n, horizon) / 7 + origin_h
    return ForecastBatch(
        model="gru", model_version="7", origin=T0_MS * 10**6 + origin_h * HOUR, interval="1h",
        targets=T0_MS * 10**6 + origin_h * HOUR + HOUR * np.arange(1, horizon + 1),
        keys=np.array([f"sensor-{i}" for i in range(n)], dtype=object),
        mean=mean, lo=mean - 1, hi=mean + 1, produced_at=T0_MS * 10**6 + origin_h * HOUR + 10**9)


# --- settings and the transport choice (no broker) -------------------------------------

def test_settings_map_the_shared_keys_and_pass_librdkafka_properties_through():
    s = ConfluentSettings.from_dict({
        "client": "confluent", "bootstrap_servers": ["a:9092", "b:9092"], "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": "s3cr3t", "group_id": "g",
        "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_records": 2000,
        "auto_offset_reset": "none", "linger_ms": 10, "batch_size": 1_048_576, "max_request_size": 2_000_000,
        "request_timeout_ms": 7000, "compression.type": "lz4", "librdkafka": {"fetch.wait.max.ms": 50}})
    assert "s3cr3t" not in repr(s) and "***" in repr(s)
    c = s.consumer_config()
    assert c["bootstrap.servers"] == "a:9092,b:9092" and c["group.id"] == "g"
    assert (c["enable.auto.commit"], c["enable.auto.offset.store"]) == (False, False)
    assert (c["session.timeout.ms"], c["heartbeat.interval.ms"], c["auto.offset.reset"]) == (6000, 1000, "error")
    assert c["isolation.level"] == "read_uncommitted" and c["partition.assignment.strategy"] == "cooperative-sticky"
    assert c["fetch.wait.max.ms"] == 50 and c["compression.type"] == "lz4" and c["socket.timeout.ms"] == 7000
    p = s.producer_config()
    assert (p["linger.ms"], p["batch.size"], p["message.max.bytes"]) == (10, 1_048_576, 2_000_000)
    assert p["enable.idempotence"] is True and p["partitioner"] == "murmur2_random" and "transactional.id" not in p
    assert s.cooperative and not ConfluentSettings.from_dict(
        {"partition.assignment.strategy": "range,roundrobin"}).cooperative
    tx = s.replace(exactly_once=True, transactional_id="worker-1")
    assert tx.producer_config()["transactional.id"] == "worker-1"
    assert tx.consumer_config()["isolation.level"] == "read_committed"
    assert s.consumer_config(group=False)["group.id"] != "g"  # a reader never commits to the workers' group
    # librdkafka's own defaults where kafka-python's would cripple it
    assert (ConfluentSettings().linger_ms, ConfluentSettings().batch_size) == (5, 1_000_000)


@pytest.mark.parametrize("bad, where", [
    ({"bootstrap_server": "k:9092"}, "kafka.bootstrap_server"),  # a misspelt shared key
    ({"no.such.property": 1}, "kafka.no.such.property"),  # librdkafka does not know it
    ({"librdkafka": {"linger.ms": "soon"}}, "kafka.librdkafka.linger.ms"),  # set from a shared key
    ({"librdkafka": {"compression.type": "zip"}}, "kafka.librdkafka.compression.type"),  # a bad value
    ({"enable.auto.commit": True}, "kafka.enable.auto.commit"),  # the transport owns it
    ({"librdkafka": {"statistics.interval.ms": [1]}}, "kafka.librdkafka.statistics.interval.ms"),
    ({"client": "kafka-python"}, "kafka.client"),
    ({"librdkafka": "lz4"}, "kafka.librdkafka"),
])
def test_invalid_settings_are_config_errors_naming_the_key(bad, where):
    with pytest.raises(ConfigError) as e:
        ConfluentSettings.from_dict(bad)
    assert e.value.key == where


def test_the_client_setting_picks_the_transport_and_the_other_client_ignores_librdkafka_keys():
    assert transport_name(config_mod.from_dict({})) == "kafka"
    assert transport_name(config_mod.from_dict({"kafka": {"client": "kafka-python"}})) == "kafka"
    cfg = config_mod.from_dict({}, env={"STREAMSEQ_KAFKA__CLIENT": "confluent"})
    assert transport_name(cfg) == "confluent"
    assert plugins.load("transports", transport_name(cfg)) is ConfluentTransport
    with pytest.raises(ConfigError, match="kafka.client"):
        transport_name(config_mod.from_dict({"kafka": {"client": "librdkafka"}}))
    both = {"kafka": {"client": "kafka-python", "linger_ms": 10, "compression.type": "lz4",
                      "librdkafka": {"fetch.wait.max.ms": 50}}}
    kp = plugins.load("transports", "kafka").settings_from_config(config_mod.from_dict(both))
    assert kp.linger_ms == 10
    cf = ConfluentTransport.settings_from_config(config_mod.from_dict({"kafka": {**both["kafka"], "client": "confluent"}}))
    assert cf.linger_ms == 10 and cf.producer_config()["compression.type"] == "lz4"


def test_without_the_extra_the_confluent_client_is_one_line_naming_it_exit_2():
    """The default install has no confluent-kafka: the default transport still loads, and a worker
    with client = "confluent" stops at once with one line naming the extra (exit 2, a usage error)."""
    code = ("import sys; sys.modules['confluent_kafka'] = None\n"
            "import streamseq_connectors.kafka.transport  # the default transport still loads\n"
            "from streamseq.commands import main\n"
            "sys.exit(main(['worker', '--bootstrap-servers', '127.0.0.1:1']))\n")
    env = {**os.environ, "STREAMSEQ_KAFKA__CLIENT": "confluent"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamseq: error:"), out.stderr[-2000:]
    assert "pip install 'streamseq[confluent]'" in lines[0]


# --- source ------------------------------------------------------------------------

@kafka
def test_source_decodes_like_the_kafka_python_source(settings, kp_settings, unique_topic):
    """The same records, good and bad, give the same batch and the same dead letters on both clients."""
    topic = unique_topic("obs")
    ensure_topics(settings, [TopicSpec(topic, 3)])
    good = [obs(f"sensor-{i % 7}", i) for i in range(120)]
    bad = [(b"k", b"{not json"), (None, orjson.dumps({"ts": T0_MS, "temp": 1.0})), (b"k", None),
           (b"k", orjson.dumps({"ts": "yesterday", "temp": 1.0})), (b"k", orjson.dumps({"ts": T0_MS, "temp": "1"})),
           (b"k", b"\xef\xbb\xbf" + orjson.dumps({"ts": T0_MS, "temp": 2.0}))]  # a BOM: still valid
    produce(settings, topic, good[:60] + bad + good[60:])
    got = {}
    for name, source in (("confluent", ConfluentSource(settings, [topic], key_field=None, time_field="ts",
                                                        value_fields=["temp"])),
                         ("kafka-python", KafkaSource(kp_settings.replace(group_id=unique_topic("kp")), [topic],
                                                      key_field=None, time_field="ts", value_fields=["temp"]))):
        part = source.build_part("consumer", None)
        try:
            batch, letters = read_until(part, 121, 5)
        finally:
            part.close()
        order = np.lexsort((batch.offset, batch.partition))
        got[name] = (batch.take(order), sorted((d.partition, d.offset, d.reason, d.payload, d.key) for d in letters))
    (cb, cl), (kb, kl) = got["confluent"], got["kafka-python"]
    assert len(cb) == 121 and len(cl) == 5
    assert cl == kl
    for field in ("keys", "ts", "values", "partition", "offset"):
        np.testing.assert_array_equal(getattr(cb, field), getattr(kb, field))


@kafka
def test_commit_with_metadata_then_a_new_member_resumes_without_gap_or_duplicate(settings, kp_settings,
                                                                                  unique_topic):
    """Offsets committed with their metadata (the worker's stream-time clock): the next member resumes there,
    and both clients read back the same committed offset and metadata. (Tansu 0.6.0 keeps no offset
    metadata at all, for any client: both read it back empty there; real Kafka returns it.)"""
    topic = unique_topic("resume")
    ensure_topics(settings, [TopicSpec(topic, 2)])
    produce(settings, topic, [obs(f"k{i % 5}", i) for i in range(100)])
    source = ConfluentSource(settings, [topic], key_field=None, time_field="ts", value_fields=["temp"])
    clock = '{"format":"streamseq.clock/v1","st":1704067200000000000}'
    first = source.build_part("consumer", None)
    try:
        batch1, _ = read_until(first, 1)
        positions = first.position_offsets()
        first.commit({tp: (off, clock) for tp, off in positions.items()})
        other = KafkaConsumer(**kp_settings.consumer_kwargs())  # the same group, never joined
        try:
            for tp, off in positions.items():
                off_c, meta_c = first.committed_metadata(tp)
                theirs = other.committed(KTopicPartition(tp.topic, tp.partition), metadata=True)
                assert off_c == theirs.offset == off
                assert meta_c == (theirs.metadata or "") and meta_c in (clock, "")
        finally:
            other.close(autocommit=False)
    finally:
        first.close()
    produce(settings, topic, [obs(f"k{i % 5}", i) for i in range(100, 150)])
    second = source.build_part("consumer", None)
    try:
        batch2, _ = read_until(second, 150 - len(batch1))
    finally:
        second.close()
    seen = list(zip(batch1.partition.tolist(), batch1.offset.tolist())) + \
        list(zip(batch2.partition.tolist(), batch2.offset.tolist()))
    assert len(seen) == len(set(seen)) == 150


@kafka
def test_incremental_rebalance_reports_whole_assignments_and_commits_on_revoke(settings, unique_topic):
    """A second member joins while data flows: the first gives up two partitions (cooperative), committing
    in on_revoked, and its on_assigned then names the two it kept. Nothing is lost or read twice."""
    topic = unique_topic("rebalance")
    ensure_topics(settings, [TopicSpec(topic, 4)])
    source = ConfluentSource(settings.replace(max_poll_records=50), [topic], key_field=None, time_field="ts",
                             value_fields=["temp"])
    events: dict[str, list] = {"a": [], "b": []}

    def listen(name, part):
        def on_assigned(tps):
            events[name].append(("assigned", [tp.partition for tp in tps]))

        def on_revoked(tps):
            events[name].append(("revoked", [tp.partition for tp in tps]))
            part.commit({tp: off for tp, off in part.position_offsets().items() if tp in tps})
        part.set_rebalance_listener(on_assigned, on_revoked)

    handle = ConfluentProducerHandle(settings)
    produced = 0

    def produce_some(n):
        nonlocal produced
        for i in range(produced, produced + n):
            handle.send(topic, obs(f"k{i % 8}", i)[1], key=f"k{i % 8}".encode())
        handle.flush()
        produced += n

    a = source.build_part("consumer", None)
    listen("a", a)
    seen = []
    try:
        produce_some(100)
        batch, _ = read_until(a, 1)
        seen += zip(batch.partition.tolist(), batch.offset.tolist())
        b = source.build_part("consumer", None)
        listen("b", b)
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                split = len(a.assignment()) == 2 and len(b.assignment()) == 2
                if not split:
                    produce_some(10)
                elif len(seen) >= produced:
                    break
                for part in (a, b):
                    batch, _ = part.next_batch()
                    seen += zip(batch.partition.tolist(), batch.offset.tolist())
            assignments = (a.assignment(), b.assignment())
        finally:
            b.close()
    finally:
        a.close()
        handle.close()
    assert len(seen) == len(set(seen)) == produced, "duplicates or gaps across the rebalance"
    assert events["a"][0] == ("assigned", [0, 1, 2, 3])
    revoked = next(e for e in events["a"] if e[0] == "revoked")
    kept = sorted(set(range(4)) - set(revoked[1]))
    assert len(revoked[1]) == 2 and ("assigned", kept) in events["a"]  # whole assignment after the revocation
    assert sorted(tp.partition for tp in assignments[0] + assignments[1]) == [0, 1, 2, 3]
    assert isinstance(assignments[0][0], TopicPartition)


@kafka
def test_resume_state_overrides_committed_offsets(settings, unique_topic):
    topic = unique_topic("snap")
    ensure_topics(settings, [TopicSpec(topic, 1)])
    produce(settings, topic, [obs("k", i) for i in range(30)])
    source = ConfluentSource(settings, [topic], key_field=None, time_field="ts", value_fields=["temp"])
    part = source.build_part("consumer", {f"{topic}[0]": 25})
    try:
        batch, _ = read_until(part, 5)
        assert batch.offset.tolist() == [25, 26, 27, 28, 29]
        assert part.snapshot() == {f"{topic}[0]": 30}
        assert part.lag() == {TopicPartition(topic, 0): 0}
        part.rewind_to_committed()  # nothing committed: from the start again (auto_offset_reset earliest)
        batch, _ = read_until(part, 30)
        assert batch.offset.tolist() == list(range(30))
    finally:
        part.close()


# --- sinks: the same bytes, the same partitions ----------------------------------------

@kafka
def test_both_clients_put_a_key_on_the_same_partition_with_the_same_bytes(settings, kp_settings, unique_topic):
    """librdkafka's default partitioner is CRC32; the transport sets murmur2, the Java client's and
    kafka-python's: forecasts of a key land on the same partition whichever client the worker runs."""
    topics = {name: unique_topic(f"fc-{name}") for name in ("confluent", "kafka-python")}
    ensure_topics(settings, [TopicSpec(t, 5) for t in topics.values()])
    batches = [forecast_batch(40, 1), forecast_batch(40, 2)]
    for name, topic in topics.items():
        handle = ConfluentProducerHandle(settings) if name == "confluent" else KafkaProducerHandle(kp_settings)
        sink = (ConfluentForecastSink if name == "confluent" else KafkaForecastSink)(handle, topic)
        try:
            for b in batches:
                sink.write(b)
            sink.flush()
        finally:
            handle.close()
    rows = {name: [(r.partition, r.key, r.value) for r in read_raw(kp_settings, topic, 80)]
            for name, topic in topics.items()}
    assert len(rows["confluent"]) == 80 and rows["confluent"] == rows["kafka-python"]
    for p, key, _ in rows["confluent"]:
        assert p == (murmur2(key) & 0x7FFFFFFF) % 5
    assert len({p for p, _, _ in rows["confluent"]}) > 1
    frame = read_forecasts_frame(settings, topics["confluent"])
    assert frame.height == 80 * 3
    only = list(iter_forecasts(settings, topics["confluent"], key="sensor-2", max_idle_s=1.0, stop_at_end=True))
    assert [f.origin for f in only] == [T0_MS * 10**6 + HOUR, T0_MS * 10**6 + 2 * HOUR]


@kafka
def test_dead_letters_are_the_same_message_on_both_clients(settings, kp_settings, unique_topic):
    letters = [DeadLetter("not_json: x", "obs", 3, 41, b"{oops", "sensor-1"),
               DeadLetter("invalid_utf8: y", "obs", 0, 7, b"\xff\xfe\x00", None),
               DeadLetter("key_too_long: z", "obs", 1, 9, b"a" * 300_000, "K" * 5000)]
    topics = {name: unique_topic(f"dead-{name}") for name in ("confluent", "kafka-python")}
    ensure_topics(settings, [TopicSpec(t, 1) for t in topics.values()])
    for name, topic in topics.items():
        handle = ConfluentProducerHandle(settings) if name == "confluent" else KafkaProducerHandle(kp_settings)
        try:
            sink = (ConfluentDeadLetterSink if name == "confluent" else KafkaDeadLetterSink)(handle, topic)
            sink.write(letters)
            sink.flush()
        finally:
            handle.close()
    got = {name: [(r.key, r.value) for r in read_raw(kp_settings, topic, 3)] for name, topic in topics.items()}
    assert got["confluent"] == got["kafka-python"]
    assert [v for _, v in got["confluent"]] == [dead_letter_json(d) for d in letters]


@kafka
def test_an_oversized_record_is_counted_and_skipped_not_fatal(settings, unique_topic):
    topic = unique_topic("big")
    ensure_topics(settings, [TopicSpec(topic, 1)])
    handle = ConfluentProducerHandle(settings.replace(max_request_size=10_000))
    try:
        assert handle.send_keyed(topic, [(b"a", b"x" * 20_000), (b"b", b"small")]) == 1
        handle.flush()
        assert handle.too_large == 1
    finally:
        handle.close()


# --- changelog -------------------------------------------------------------------------

@kafka
def test_changelog_restore_keeps_latest_and_honours_tombstones_whoever_wrote_it(settings, kp_settings,
                                                                               unique_topic):
    topic = unique_topic("state")
    ensure_topics(settings, [changelog_spec(topic, 2)])
    handle = ConfluentProducerHandle(settings)
    store = ConfluentChangelog(handle, settings, topic)
    try:
        assert store.restore([0, 1]) == {}  # empty partitions answer quickly
        for round_ in range(3):
            for k in range(10):
                store.write(f"key-{k}", k % 2, f"v{round_}-{k}".encode())
        store.write("key-3", 1, None)
        store.write("key-4", 0, None)
        store.write("key-4", 0, b"back")
        store.write("key-6", 0, None)
        store.flush()
        expected = {f"key-{k}": f"v2-{k}".encode() for k in range(10) if k not in (3, 6)}
        expected["key-4"] = b"back"
        assert store.restore([0, 1]) == expected
        assert store.restore([1]) == {k: v for k, v in expected.items() if int(k[-1]) % 2 == 1}
    finally:
        handle.close()
    kp_handle = KafkaProducerHandle(kp_settings)
    try:  # the other client reads the same state from this changelog
        assert ChangelogStore(kp_handle, kp_settings, topic).restore([0, 1]) == expected
    finally:
        kp_handle.close()


@kafka
def test_changelog_restore_is_bounded_by_an_open_transaction(settings, unique_topic):
    """read_committed stops at another producer's open transaction: restore refuses the partial state
    (a retriable RestoreError, in bounded time); once the transaction commits, the full state restores."""
    topic = unique_topic("state-tx")
    ensure_topics(settings, [changelog_spec(topic, 1)])
    writer = ConfluentProducerHandle(settings.replace(exactly_once=True, transactional_id=unique_topic("w")))
    try:
        store = ConfluentChangelog(writer, settings, topic)
        store.write("a", 0, b"committed")
        writer.commit({}, None)
        store.write("a", 0, b"in flight")  # left open
        writer.flush()
        reader = ConfluentChangelog(writer, settings.replace(isolation_level="read_committed"), topic, idle_s=0.5)
        started = time.monotonic()
        with pytest.raises(RestoreError) as failed:
            reader.restore([0])
        assert failed.value.retriable
        assert time.monotonic() - started < 5
        writer.commit({}, None)
        assert reader.restore([0]) == {"a": b"in flight"}
    finally:
        writer.close()


# --- transactions ----------------------------------------------------------------------

@kafka
def test_transactional_produce_and_offsets_commit_atomically_and_fencing_is_its_own_error(settings,
                                                                                        unique_topic):
    topic, out = unique_topic("tx-in"), unique_topic("tx-out")
    ensure_topics(settings, [TopicSpec(topic, 1), TopicSpec(out, 1)])
    produce(settings, topic, [obs("k", i) for i in range(20)])
    tx = settings.replace(exactly_once=True, transactional_id=unique_topic("tx"))
    part = ConfluentSource(tx, [topic], key_field=None, time_field="ts", value_fields=["temp"]).build_part("consumer")
    handle = ConfluentProducerHandle(tx)
    tp = TopicPartition(topic, 0)
    try:
        read_until(part, 20)
        sink = ConfluentForecastSink(handle, out)
        sink.write(forecast_batch(2, 1))  # begins the transaction
        assert handle.in_transaction
        handle.abort()  # offsets of an aborted transaction are not committed
        assert part.committed(tp) is None
        sink.write(forecast_batch(2, 2))
        handle.commit({tp: (10, '{"format":"x"}')}, part)
        assert not handle.in_transaction and part.committed(tp) == 10
        sink.write(forecast_batch(2, 3))
        handle.commit(part.position_offsets(), part)
        assert part.committed(tp) == 20
        newer = ConfluentProducerHandle(tx)  # a newer instance with the same transactional_id fences this one
        try:
            with pytest.raises(ProducerFencedError):
                sink.write(forecast_batch(1, 4))
                handle.commit(part.position_offsets(), part)
            with pytest.raises(ProducerFencedError):  # and stays unusable
                handle.flush()
        finally:
            newer.close()
    finally:
        handle.close()
        part.close()


# --- admin, feed, the commands ------------------------------------------------------------

@kafka
def test_ensure_topics_is_idempotent_and_checks_partition_counts(settings, unique_topic):
    a, b = unique_topic("topic-a"), unique_topic("changelog-b")
    specs = [TopicSpec(a, 3), changelog_spec(b, 3)]
    assert ensure_topics(settings, specs) == {a: "created", b: "created"}
    assert ensure_topics(settings, specs) == {a: "exists", b: "exists"}
    with pytest.raises(TopicMismatchError, match=f"{a}.*3 partitions, expected 5"):
        ensure_topics(settings, [TopicSpec(a, 5)])


@kafka
def test_feed_and_forecasts_commands_run_on_the_confluent_client(kafka_broker, kp_settings, unique_topic, tmp_path):
    """``streamseq feed`` and ``streamseq forecasts`` pick the transport [kafka] client names."""
    obs_topic, fc_topic = unique_topic("cli-obs"), unique_topic("cli-fc")
    data = tmp_path / "in.csv"
    data.write_text("key,ts,value\n" + "".join(f"s{i % 3},2024-01-01T{i:02d}:00:00Z,{i}.5\n" for i in range(12)))
    env = {"STREAMSEQ_KAFKA__CLIENT": "confluent", "STREAMSEQ_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap}
    run = [sys.executable, "-m", "streamseq"]
    out = subprocess.run(run + ["feed", str(data), "--topic", obs_topic, "--key-col", "key", "--time-col", "ts",
                                "--value-col", "value"], capture_output=True, text=True, timeout=120,
                         env={**_env(), **env})
    assert out.returncode == 0 and "produced 12 observations" in out.stdout, out.stderr[-2000:]
    rows = read_raw(kp_settings, obs_topic, 12)
    assert len(rows) == 12 and all(orjson.loads(r.value)["key"].encode() == r.key for r in rows)
    settings = ConfluentSettings.from_dict({"bootstrap_servers": kafka_broker.bootstrap})
    ensure_topics(settings, [TopicSpec(fc_topic, 2)])
    handle = ConfluentProducerHandle(settings)
    try:
        ConfluentForecastSink(handle, fc_topic).write(forecast_batch(3, 1))
        handle.flush()
    finally:
        handle.close()
    out = subprocess.run(run + ["forecasts", "--topic", fc_topic, "--from-beginning", "--format", "json",
                                "--max-idle", "2"], capture_output=True, text=True, timeout=120, env={**_env(), **env})
    assert out.returncode == 0, out.stderr[-2000:]
    got = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert sorted(g["key"] for g in got) == ["sensor-0", "sensor-1", "sensor-2"]
    assert decode_forecast(read_raw(kp_settings, fc_topic, 3)[0].value).model == "gru"


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEQ_")}
