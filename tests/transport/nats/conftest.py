"""Fixtures of the NATS transport tests: private nats-server processes with JetStream."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# A submodule: this folder itself would pass for a namespace package `nats` without nats-py.
pytest.importorskip("nats.js")

from nats_servers import NATS_SERVER, NatsCluster, NatsServer

if not os.access(NATS_SERVER, os.X_OK):
    pytest.skip(f"no nats-server binary ({NATS_SERVER})", allow_module_level=True)


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsServer]:
    """A started single server with JetStream in tmp_path/nats, stopped (or killed) after."""
    server = NatsServer(tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path) -> Iterator[NatsCluster]:
    """A started 3-server JetStream cluster (under a second to start), stopped after."""
    cluster = NatsCluster(tmp_path)
    try:
        yield cluster.start()
    finally:
        cluster.close()
