"""Fixtures of the transport tests."""

from __future__ import annotations

import pytest

pytest.importorskip("zmq")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Default folders (relayrl_runs/, spill files) land in the test's own directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def server(tmp_path):
    """A collector with a model publisher on free loopback ports, writing tmp_path/collected."""
    from relayrl_gym.transport import TrainingServer

    srv = TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                         models="tcp://127.0.0.1:*")
    yield srv
    srv.close()
