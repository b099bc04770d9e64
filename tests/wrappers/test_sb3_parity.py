"""The SB3 front end does what DummyVecEnv does with the same factory, edge cases included."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor
from testing_env import TestingEnv

import relayrl_gym


def _both(factory, n=2, **kwargs):
    return (relayrl_gym.wrap(factory, actors=n, api="sb3", **kwargs),
            DummyVecEnv([factory] * n))


def test_envs_and_step_before_reset_as_dummy_vec_env(sink_dir):
    ours, theirs = _both(lambda: TestingEnv(length=3), sink=sink_dir)
    try:
        assert [type(e) for e in ours.envs] == [type(e) for e in theirs.envs]
        for _ in range(4):  # DummyVecEnv lets the env decide; TestingEnv steps unreset
            a = np.array([1, 0])
            got, want = ours.step(a), theirs.step(a)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[2], want[2])
    finally:
        ours.close()
        theirs.close()
    assert len(relayrl_gym.load(ours.run_path)) == 2 * 3  # the unreset first step has no obs


def test_env_is_wrapped_answers_truly_and_vec_monitor_counts_once(sink_dir):
    bare = relayrl_gym.wrap(lambda: gym.make("CartPole-v1"), actors=2, api="sb3",
                            sink=sink_dir)
    by_id = relayrl_gym.wrap("CartPole-v1", actors=2, api="sb3", sink=None)
    try:
        assert bare.env_is_wrapped(Monitor) == [False, False]  # as DummyVecEnv([factory])
        assert by_id.env_is_wrapped(Monitor) == [True, True]  # as make_vec_env(env_id)
        monitor = VecMonitor(bare)  # no "already wrapped" warning: it is not
        monitor.reset()
        episodes = []
        while not episodes:
            *_, infos = monitor.step(np.array([0, 0]))
            episodes = [info["episode"] for info in infos if "episode" in info]
        assert set(episodes[0]) == {"r", "l", "t"}
    finally:
        bare.close()
        by_id.close()


class _InfoEnv(TestingEnv):
    """Env 0 reports an int, env 1 a float under the same info key."""

    def __init__(self, value):
        super().__init__(length=4)
        self.value = value

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {"score": self.value, "name": "x"}


def test_each_env_info_reaches_the_caller_unchanged(sink_dir):
    # Through Gymnasium's vector info, env 1's 0.25 would become int 0 (env 0 set the dtype).
    values = iter([1, 0.25])
    factory = [lambda: _InfoEnv(next(values))]
    ours = relayrl_gym.wrap(factory[0], actors=2, api="sb3", sink=sink_dir)
    try:
        ours.reset()
        _, _, _, infos = ours.step(np.array([0, 0]))
        assert [info["score"] for info in infos] == [1, 0.25]
        assert type(infos[1]["score"]) is float and infos[0]["name"] == "x"
    finally:
        ours.close()


DICT_ACTIONS = spaces.Dict({"a": spaces.Discrete(3), "b": spaces.Box(0, 1, (2,), np.float32)})


def test_dict_actions_given_per_env_as_dummy_vec_env(sink_dir):
    made = []

    def make():
        made.append(TestingEnv(action_space=DICT_ACTIONS))
        return made[-1]

    ours = relayrl_gym.wrap(make, actors=2, api="sb3", sink=sink_dir)
    try:
        ours.reset()
        per_env = [{"a": 2, "b": np.array([0.5, 0.5], np.float32)},
                   {"a": 1, "b": np.array([0.0, 1.0], np.float32)}]
        ours.step(per_env)
        assert [int(env.last_action["a"]) for env in made[-2:]] == [2, 1]
    finally:
        ours.close()
    recorded = relayrl_gym.load(ours.run_path).transitions().action
    assert recorded["a"].tolist() == [2, 1]


def test_creation_errors_as_dummy_vec_env():
    shared = TestingEnv()
    with pytest.raises(ValueError, match="same instance"):
        relayrl_gym.wrap(lambda: shared, actors=2, api="sb3", sink=None)
    # Gymnasium's own error for a deprecated id reaches SB3's fallback (it catches it).
    with pytest.raises(gym.error.DeprecatedEnv):
        relayrl_gym.wrap("Pendulum-v0", actors=2, api="sb3", sink=None)


class _SeedOnlyEnv(TestingEnv):
    """An env whose reset takes no options (SB3 test envs are written so)."""

    def reset(self, seed=None):  # type: ignore[override]
        return super().reset(seed=seed)


def test_reset_without_options_and_extra_action_rows_as_dummy_vec_env(sink_dir):
    ours, theirs = _both(lambda: _SeedOnlyEnv(length=3), sink=sink_dir)
    try:
        ours.seed(3)
        theirs.seed(3)
        np.testing.assert_array_equal(ours.reset(), theirs.reset())
        actions = np.array([1, 0, 1, 1])  # more rows than envs: DummyVecEnv uses the first two
        got, want = ours.step(actions), theirs.step(actions)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    finally:
        ours.close()
        theirs.close()
    assert len(relayrl_gym.load(ours.run_path)) == 2
