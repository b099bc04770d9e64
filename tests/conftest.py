from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def sink_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    """Every test must leave no relayrl-gym thread running (clean shutdown invariant)."""
    yield
    leaked = [t.name for t in threading.enumerate()
              if t.name.startswith("relayrl") and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


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


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the fleet tests (4 CPU slots on this machine), shut down at
    the end."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()
