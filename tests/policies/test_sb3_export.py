"""ModelModule.from_sb3: exported SB3 policies act as ``model.predict(obs, deterministic=True)``.

The models are real SB3 models trained for a few hundred steps (enough to move the weights off
their initialisation; the tests compare actions, not returns).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from testing_env import SPACES, TestingEnv

from relayrl_gym.errors import ConfigError
from relayrl_gym.policies import ModelModule

TRAINED = {
    "ppo-cartpole": lambda: PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32,
                                n_epochs=2, seed=0, device="cpu").learn(128),
    "a2c-cartpole": lambda: A2C("MlpPolicy", "CartPole-v1", seed=0, device="cpu").learn(100),
    "dqn-cartpole": lambda: DQN("MlpPolicy", "CartPole-v1", learning_starts=50, train_freq=4,
                                seed=0, device="cpu").learn(200),
    "ppo-pendulum": lambda: PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32,
                                n_epochs=2, seed=0, device="cpu").learn(128),
    "ppo-sde-pendulum": lambda: PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32,
                                    n_epochs=1, use_sde=True, seed=0, device="cpu",
                                    policy_kwargs={"squash_output": True}).learn(64),
    "a2c-split-pendulum": lambda: A2C("MlpPolicy", "Pendulum-v1", seed=0, device="cpu",
                                      policy_kwargs={"share_features_extractor": False}
                                      ).learn(50),
    "sac-pendulum": lambda: SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, seed=0,
                                device="cpu").learn(80),
    "td3-pendulum": lambda: TD3("MlpPolicy", "Pendulum-v1", learning_starts=50, seed=0,
                                device="cpu").learn(80),
    "ddpg-pendulum": lambda: DDPG("MlpPolicy", "Pendulum-v1", learning_starts=50, seed=0,
                                  device="cpu").learn(80),
}
_cache: dict[str, object] = {}


def trained(name: str):
    if name not in _cache:
        _cache[name] = TRAINED[name]()
    return _cache[name]


def observations(model, n: int = 64) -> np.ndarray:
    space = model.observation_space
    space.seed(1)
    return np.stack([space.sample() for _ in range(n)])


def assert_same_actions(module: ModelModule, model, obs: np.ndarray) -> None:
    expected, _ = model.predict(obs, deterministic=True)
    actions, _ = module.step(obs)
    if isinstance(model.action_space, spaces.Discrete):
        np.testing.assert_array_equal(actions, expected)
    else:
        np.testing.assert_allclose(actions, expected, atol=1e-5)
        assert all(model.action_space.contains(a) for a in actions)


@pytest.mark.parametrize("name", list(TRAINED))
def test_onnx_acts_as_predict(name, tmp_path):
    model = trained(name)
    module = ModelModule.from_sb3(model, path=tmp_path / "policy")
    obs = observations(model)
    assert_same_actions(module, model, obs)
    assert_same_actions(ModelModule.load_from_path(tmp_path / "policy"), model, obs)


@pytest.mark.parametrize("name", ["ppo-cartpole", "dqn-cartpole", "ppo-pendulum", "sac-pendulum"])
def test_torchscript_acts_as_predict(name):
    model = trained(name)
    assert_same_actions(ModelModule.from_sb3(model, format="torchscript"), model,
                        observations(model))


@pytest.mark.parametrize("name", ["ppo-cartpole", "a2c-split-pendulum"])
def test_actor_critic_value(name):
    model = trained(name)
    obs = observations(model)
    _, data = ModelModule.from_sb3(model).step(obs)
    with torch.no_grad():
        values = model.policy.predict_values(torch.as_tensor(obs)).numpy()[:, 0]
    np.testing.assert_allclose(data["value"], values, atol=1e-5)


def test_stochastic_discrete_policy_records_log_probs():
    model = trained("ppo-cartpole")
    module = ModelModule.from_sb3(model, deterministic=False, format="torchscript")
    assert module.action_head == "sample"
    obs = observations(model, 256)
    actions, data = module.step(obs, rng=np.random.default_rng(0))
    with torch.no_grad():
        _, log_prob, _ = model.policy.evaluate_actions(torch.as_tensor(obs),
                                                       torch.as_tensor(actions))
    np.testing.assert_allclose(data["log_prob"], log_prob.numpy(), atol=1e-5)
    assert set(data) == {"log_prob", "value"}


def test_two_lines_from_training_to_actors(tmp_path):
    """The README's promise: train with SB3, deploy the policy as a ModelModule."""
    model = trained("ppo-cartpole")
    ModelModule.from_sb3(model, path=tmp_path / "cartpole", version=3)
    module = ModelModule.load_from_path(tmp_path / "cartpole")
    assert module.version == 3 and module.action_space == spaces.Discrete(2)
    assert_same_actions(module, model, observations(model))


def test_unsupported_sb3_exports():
    with pytest.raises(ConfigError, match="stochastic continuous actions are not supported"):
        ModelModule.from_sb3(trained("ppo-pendulum"), deterministic=False)
    with pytest.raises(ConfigError, match=r"DQN policy acts greedily .* deterministic=True"):
        ModelModule.from_sb3(trained("dqn-cartpole"), deterministic=False)
    multi = PPO("MlpPolicy", TestingEnv(action_space=SPACES["multidiscrete"]), device="cpu")
    with pytest.raises(ConfigError, match="cannot export an SB3 policy with "
                                          "MultiCategoricalDistribution"):
        ModelModule.from_sb3(multi)


@pytest.mark.parametrize(("obs_space", "action_space"), [
    ("image", spaces.Discrete(3)),  # uint8 images: SB3 scales them by 1/255 inside the graph
    ("box64-2d", spaces.Box(-2.0, 2.0, (2,), np.float32)),  # float64, 2-D observations
], ids=["image-discrete", "box64-box"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_sb3_observation_preprocessing(obs_space, action_space, fmt):
    model = PPO("MlpPolicy", TestingEnv(SPACES[obs_space], action_space), n_steps=32,
                batch_size=32, seed=0, device="cpu")
    module = ModelModule.from_sb3(model, format=fmt)
    assert module.metadata.input_dtype == np.dtype(SPACES[obs_space].dtype).name
    assert_same_actions(module, model, observations(model))
