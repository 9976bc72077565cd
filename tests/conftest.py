"""Shared pytest fixtures. Broker code lives in tests/kafka_broker.py."""
from __future__ import annotations

import pytest
from kafka_broker import TansuBroker, start_tansu


@pytest.fixture(scope="session")
def kafka_broker():
    """One Tansu broker for the whole session: ``.bootstrap``, ``.pid``, ``.client_settings()``."""
    broker = start_tansu()
    try:
        yield broker
    finally:
        broker.stop()
        broker.remove_logs()


@pytest.fixture
def unique_topic(kafka_broker: TansuBroker):
    """A factory of fresh topic names: ``unique_topic("obs")`` -> 'obs-3-1a2b3c4d'."""
    return kafka_broker.unique_topic
