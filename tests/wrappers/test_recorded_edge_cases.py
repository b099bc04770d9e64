"""What is recorded in edge cases: caller-built Dict actions, odd info keys, masked resets, an
env dropped without close()."""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from testing_env import TestingEnv
from tests_helpers import make_testing_env

import relayrl_gym


# The caller passes a list for the Box part: gymnasium's Box.contains warns that it casts it.
@pytest.mark.filterwarnings("ignore:.*Casting input x to numpy array")
def test_dict_actions_built_by_the_caller_are_recorded_exactly(sink_dir):
    space = spaces.Dict({"d": spaces.Discrete(3), "b": spaces.Box(0, 1, (2,), np.float32)})
    envs = relayrl_gym.wrap(lambda: TestingEnv(action_space=space), actors=2, sink=sink_dir)
    envs.reset(seed=0)
    action = {"d": np.array([2, 1], dtype=np.int32), "b": [[0.5, 0.5], [0.25, 0.75]]}
    envs.step(action)
    envs.close()
    recorded = relayrl_gym.load(envs.run_path).transitions().action
    np.testing.assert_array_equal(recorded["d"], [2, 1])
    assert recorded["d"].dtype == np.int64 and recorded["b"].dtype == np.float32
    np.testing.assert_array_equal(recorded["b"], np.array([[0.5, 0.5], [0.25, 0.75]], np.float32))


def test_info_with_non_string_keys_is_recorded_not_raised(sink_dir):
    def step(env, action):
        return env._obs(), 1.0, False, False, {np.int64(3): "x", (1, 2): np.float32(0.5)}

    envs = relayrl_gym.wrap(lambda: TestingEnv(step_fn=step), actors=2, sink=sink_dir)
    envs.reset(seed=0)
    envs.step(np.array([0, 1]))
    envs.close()
    infos = relayrl_gym.load(envs.run_path).table.column("info").to_pylist()
    assert infos == ['{"3": "x", "(1, 2)": 0.5}'] * 2


def test_masked_reset_ignores_in_place_edits_of_returned_obs():
    mode = AutoresetMode.DISABLED
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None, autoreset_mode=mode)
    sync = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2, autoreset_mode=mode)
    for e in (envs, sync):
        e.reset(seed=0)
        obs, *_ = e.step(np.array([0, 1]))
        obs[:] = 999.0
    mask = np.array([True, False])
    ours, _ = envs.reset(options={"reset_mask": mask})
    theirs, _ = sync.reset(options={"reset_mask": mask})
    np.testing.assert_array_equal(ours, theirs)
    envs.close()
    sync.close()


def test_masked_reset_starts_a_new_episode_only_where_masked(sink_dir):
    envs = relayrl_gym.wrap(make_testing_env(length=50), actors=2, sink=sink_dir,
                            autoreset_mode="disabled")
    envs.reset(seed=0)
    envs.step(np.array([0, 1]))
    envs.reset(options={"reset_mask": np.array([True, False])})
    envs.step(np.array([0, 1]))
    envs.close()
    t = relayrl_gym.load(envs.run_path).table.sort_by("timestamp")
    env_index = t.column("env_index").to_pylist()
    steps = t.column("step").to_pylist()
    episodes = t.column("episode_id").to_pylist()
    by_env = {i: [(e, s) for k, (e, s) in enumerate(zip(episodes, steps)) if env_index[k] == i]
              for i in (0, 1)}
    assert [s for _, s in by_env[0]] == [0, 0] and by_env[0][0][0] != by_env[0][1][0]
    assert [s for _, s in by_env[1]] == [0, 1] and by_env[1][0][0] == by_env[1][1][0]


@pytest.mark.parametrize("router_scale", [0, 2], ids=["inline", "threaded"])
def test_an_env_dropped_without_close_is_collected_flushed_and_leaves_no_thread(router_scale,
                                                                               sink_dir):
    import gc

    def record_and_drop():
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir,
                                router_scale=router_scale)
        envs.reset(seed=0)
        for _ in range(5):
            envs.step(envs.action_space.sample())
        return envs.run_path

    run_path = record_and_drop()
    gc.collect()  # the env and its agent refer to each other: a cycle for the collector
    assert not [t.name for t in threading.enumerate() if t.name.startswith("relayrl")]
    assert len(relayrl_gym.load(run_path)) == 10
