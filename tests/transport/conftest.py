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


@pytest.fixture(scope="session")
def cartpole_policy(tmp_path_factory):
    """A small CartPole ModelModule directory (ONNX) and a function making more versions."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import gymnasium as gym

    from relayrl_gym.policies import ModelModule

    env = gym.make("CartPole-v1")
    root = tmp_path_factory.mktemp("policies")

    def make(seed: int, version: int = 0):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                                  torch.nn.Linear(16, 2))
        module = ModelModule.from_torch(net, env.observation_space, env.action_space,
                                        path=root / f"pi{seed}", format="onnx")
        module.version = version
        return module

    return make
