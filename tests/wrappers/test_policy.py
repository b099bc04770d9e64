"""wrap(env, policy=...): envs.act answers with an exported policy, recorded with its version."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pyarrow.compute as pc
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import relayrl_gym  # noqa: E402
from relayrl_gym.cli.main import main as cli  # noqa: E402
from relayrl_gym.errors import ConfigError, StateError  # noqa: E402
from relayrl_gym.policies import ModelModule  # noqa: E402

SPACES = gym.make("CartPole-v1")
OBS, ACT = SPACES.observation_space, SPACES.action_space


def _net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def _module(tmp_path, name="pi", seed=0, **kwargs):
    return ModelModule.from_torch(_net(seed), OBS, ACT, path=tmp_path / name, format="onnx",
                                  **kwargs)


@pytest.mark.parametrize("autoreset_mode", ["next_step", "same_step"])
def test_policy_actions_are_recorded_with_version_and_outputs(tmp_path, autoreset_mode):
    net = _net(0)
    module = ModelModule.from_torch(net, OBS, ACT, path=tmp_path / "pi", format="onnx",
                                    action_head="sample")
    module.seed(0)
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=tmp_path / "runs", policy=module,
                            autoreset_mode=autoreset_mode)
    envs.reset(seed=0)
    for t in range(120):
        if t == 60:
            assert envs.agent.update_model(_module(tmp_path, "pi2", seed=1,
                                                   action_head="sample")) == 1
            assert envs.agent.get_model_version() == [1] * 4
        # Now and then the caller acts itself.
        actions = envs.action_space.sample() if t % 10 == 9 else envs.act()
        envs.step(actions)
    envs.close()
    table = relayrl_gym.load(envs.run_path).table
    versions = table["model_version"].to_numpy()
    assert set(versions.tolist()) == {-1, 0, 1}
    own = table.filter(pc.equal(table["model_version"], -1))
    assert own["data"].null_count == own.num_rows  # the caller's actions have no policy outputs
    by_policy = table.filter(pc.not_equal(table["model_version"], -1))
    log_probs = np.array([d["log_prob"] for d in by_policy["data"].to_pylist()])
    assert (log_probs <= 0).all()
    # The recorded log-prob is the probability torch gives the recorded action.
    first = by_policy.filter(pc.equal(by_policy["model_version"], 0)).slice(0, 50)
    x = torch.tensor(np.stack(first["obs"].to_pylist()), dtype=torch.float32)
    expected = torch.log_softmax(net(x), dim=1).gather(
        1, torch.tensor(first["action"].to_pylist())[:, None])[:, 0].detach().numpy()
    got = np.array([d["log_prob"] for d in first["data"].to_pylist()])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_argmax_policy_acts_like_the_torch_net(tmp_path):
    net = _net(2)
    module = ModelModule.from_torch(net, OBS, ACT, path=tmp_path / "pi", format="onnx")
    envs = relayrl_gym.wrap("CartPole-v1", actors=3, sink=None, policy=module)
    obs, _ = envs.reset(seed=3)
    for _ in range(20):
        actions = envs.act(obs)
        torch_actions = net(torch.tensor(obs)).argmax(1).numpy()
        np.testing.assert_array_equal(actions, torch_actions)
        obs, *_ = envs.step(actions)
    envs.close()


def test_policy_errors(tmp_path):
    wrong = ModelModule.from_torch(torch.nn.Linear(3, 2), gym.spaces.Box(-1, 1, (3,)), ACT,
                                   path=tmp_path / "wrong", format="onnx")
    with pytest.raises(ConfigError, match=r"policy's spaces .* do not fit the env's"):
        relayrl_gym.wrap("CartPole-v1", actors=2, sink=None, policy=wrong)
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None)
    envs.reset(seed=0)
    with pytest.raises(StateError, match=r"no policy; create it with relayrl_gym.wrap"):
        envs.act()
    envs.close()
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None, policy=_module(tmp_path))
    with pytest.raises(StateError, match=r"act\(\) before reset\(\)"):
        envs.act()
    with pytest.raises(ConfigError, match="do not fit"):
        envs.agent.update_model(wrong)
    assert envs.agent.get_model_version() == [0, 0]
    envs.close()


def test_collect_and_the_cli_with_a_policy(tmp_path, capsys):
    _module(tmp_path)
    summary = relayrl_gym.collect("CartPole-v1", policy=tmp_path / "pi", actors=4, steps=400,
                                  sink=tmp_path / "runs", seed=0)
    table = relayrl_gym.load(summary.run_path).table
    assert summary.steps >= 400 and set(table["model_version"].to_pylist()) == {0}
    assert cli(["collect", "CartPole-v1", "--policy", str(tmp_path / "pi"), "--actors", "2",
                "--steps", "100", "--sink", str(tmp_path / "cli"), "--no-progress"]) == 0
    (run,) = (tmp_path / "cli").iterdir()
    assert set(relayrl_gym.load(run).table["model_version"].to_pylist()) == {0}
    assert cli(["collect", "CartPole-v1", "--policy", str(tmp_path / "missing"), "--steps",
                "10", "--no-progress"]) == 2
    assert "relayrl-gym collect: error:" in capsys.readouterr().err


def test_actions_changed_by_the_caller_are_recorded_as_the_callers(tmp_path):
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path / "runs",
                            policy=_module(tmp_path, action_head="sample"))
    envs.reset(seed=0)
    for t in range(6):  # fewer steps than any CartPole episode lasts: no reset pseudo-steps
        actions = envs.act()
        if t % 2:
            actions[:] = 1 - actions  # epsilon-greedy style edit in place
        envs.step(actions)
    envs.close()
    table = relayrl_gym.load(envs.run_path).table
    assert table["model_version"].to_pylist() == [0, 0, -1, -1] * 3
