"""What `wrap` builds from what it is given, as SyncVectorEnv builds it from the same."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from testing_env import TestingEnv

import relayrl_gym
from relayrl_gym.errors import ConfigError


def test_a_list_of_factories_gives_each_actor_its_own(sink_dir):
    # CleanRL's make_env(idx): the factories differ per index.
    fns = [lambda i=i: gym.make("CartPole-v1", max_episode_steps=10 + i) for i in range(3)]
    envs = relayrl_gym.wrap(fns, sink=sink_dir)
    assert envs.num_envs == 3
    assert [spec.max_episode_steps for spec in envs.get_attr("spec")] == [10, 11, 12]
    envs.close()
    with pytest.raises(ConfigError, match="`actors` must match the 3 env factories"):
        relayrl_gym.wrap(fns, actors=2, sink=None)


def test_an_env_instance_is_actor_0_with_its_changes():
    env = gym.make("CartPole-v1")
    env.unwrapped.length = 0.25  # a change made after creation
    envs = relayrl_gym.wrap(env, actors=3, sink=None)
    assert envs.envs[0] is env
    assert [e.unwrapped.length for e in envs.envs] == [0.25, 0.5, 0.5]
    assert len({id(e) for e in envs.envs}) == 3
    envs.close()


@pytest.mark.parametrize("scale", [0, 2], ids=["inline", "threads"])
def test_a_factory_returning_one_instance_is_refused(scale):
    shared = TestingEnv()
    with pytest.raises(ConfigError, match="same instance for actors 0 and 1"):
        relayrl_gym.wrap(lambda: shared, actors=2, sink=None, router_scale=scale)


def test_envs_lists_the_copies_in_actor_order(sink_dir):
    envs = relayrl_gym.wrap("CartPole-v1", actors=3, sink=sink_dir, router_scale=3)
    assert [e.spec.id for e in envs.envs] == ["CartPole-v1"] * 3
    assert envs.envs == [actor.env for actor in envs.agent.actors]
    envs.close()


@pytest.mark.parametrize("sink", [True, False], ids=["recorded", "sink-none"])
def test_first_reset_with_a_full_reset_mask(sink_dir, sink):
    reference = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3)
    envs = relayrl_gym.wrap("CartPole-v1", actors=3, sink=sink_dir if sink else None)
    expected, _ = reference.reset(seed=4, options={"reset_mask": np.ones(3, dtype=bool)})
    obs, _ = envs.reset(seed=4, options={"reset_mask": np.ones(3, dtype=bool)})
    np.testing.assert_array_equal(obs, expected)
    envs.step(np.zeros(3, dtype=np.int64))
    reference.close()
    envs.close()


def _box_env(high: float) -> TestingEnv:
    return TestingEnv(obs_space=spaces.Box(-high, high, (3,), np.float32))


def test_observation_modes_as_sync_vector_env():
    fns = [lambda: _box_env(1.0), lambda: _box_env(2.0)]
    with pytest.raises(RuntimeError, match=r"spaces are not equivalent.*\(env 1\).*"
                                           r"use `observation_mode='different'` instead"):
        relayrl_gym.wrap(fns, sink=None)
    with pytest.raises(RuntimeError, match="observation_mode='same'"):
        gym.vector.SyncVectorEnv(fns)
    envs = relayrl_gym.wrap(fns, sink=None, observation_mode="different", copy=False)
    reference = gym.vector.SyncVectorEnv(fns, observation_mode="different", copy=False)
    assert envs.observation_space == reference.observation_space
    assert envs.single_observation_space == reference.single_observation_space
    assert envs.copy is False and envs.observation_mode == "different"
    envs.close()
    reference.close()
    odd = [lambda: _box_env(1.0),
           lambda: TestingEnv(obs_space=spaces.Box(-1, 1, (4,), np.float32))]
    with pytest.raises(ValueError, match=r"Expected all Box\.low shape to be equal"):
        gym.vector.SyncVectorEnv(odd, observation_mode="different")
    with pytest.raises(ValueError, match=r"Expected all Box\.low shape to be equal"):
        relayrl_gym.wrap(odd, sink=None, observation_mode="different")
    with pytest.raises(ValueError, match="Invalid `observation_mode`, expected: 'same' or"):
        relayrl_gym.wrap(fns, sink=None, observation_mode="other")
