"""``relayrl-gym keygen`` and ``relayrl-gym serve``, run as a user runs them."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from tests_helpers import start_serve

pytest.importorskip("zmq")

import relayrl_gym


def _cli(*args, cwd, timeout=60):
    return subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_keygen_then_serve_with_curve_keys(tmp_path):
    out = _cli("keygen", "keys", "--client", "a1", "--client", "a2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "keys" / "authorized").iterdir()} == {"a1.key",
                                                                              "a2.key"}
    assert "serve --curve-keys" in out.stdout
    serve, endpoint, _ = start_serve(tmp_path, "--sink", "collected", "--curve-keys", "keys",
                                     "--stats-every", "0.2")
    try:
        url = f"zmq+{endpoint}?curve={tmp_path / 'keys' / 'clients' / 'a2'}"
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=[tmp_path / "copy", url])
        envs.reset(seed=0)
        for _ in range(50):
            envs.step(envs.action_space.sample())
        envs.close()
        while "senders=1" not in (line := serve.stdout.readline()):
            assert line, serve.stderr.read()
        assert "rejected=0" in line
    finally:
        serve.send_signal(signal.SIGTERM)
        out_rest, _ = serve.communicate(timeout=20)
    assert serve.returncode == 0 and "stopped" in out_rest
    assert len(relayrl_gym.load(tmp_path / "collected" / envs.run_id)) == len(
        relayrl_gym.load(tmp_path / "copy" / envs.run_id))


def test_serve_errors_are_one_line_and_exit_2(tmp_path):
    out = _cli("serve", "--bind", "tcp://127.0.0.1", cwd=tmp_path)
    assert out.returncode == 2 and "must be HOST:PORT" in out.stderr
    out = _cli("serve", "--bind", "tcp://127.0.0.1:*", "--curve-keys", "nokeys", cwd=tmp_path)
    assert out.returncode == 2 and "relayrl-gym keygen" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_publishes_a_model_to_actors(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import time

    import gymnasium as gym

    env = gym.make("CartPole-v1")
    for name in ("start", "published"):
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        relayrl_gym.ModelModule.from_torch(net, env.observation_space, env.action_space,
                                           path=tmp_path / name, format="onnx")
    serve, endpoint, line = start_serve(tmp_path, "--sink", "collected", "--models",
                                        "tcp://0.0.0.0:*", "--publish", "published",
                                        "--stats-every", "0")
    try:
        assert "models on tcp://0.0.0.0:" in line
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=f"zmq+{endpoint}",
                                policy=tmp_path / "start")
        envs.reset(seed=0)
        deadline = time.monotonic() + 20
        while envs.agent.get_model_version() != [1, 1]:  # the wildcard host reached as 127.0.0.1
            assert time.monotonic() < deadline, "the published model never arrived"
            envs.step(envs.act())
        envs.close()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=20)
    assert serve.returncode == 0
