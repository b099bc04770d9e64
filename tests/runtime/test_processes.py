"""router_scale="processes": each env in a process of its own (envs that hold the GIL or are
not thread-safe), with what the caller sees and what is recorded unchanged."""

from __future__ import annotations

import os
import signal

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from testing_env import TestingEnv

import relayrl_gym
from relayrl_gym.errors import RouterError, StateError

MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]


@pytest.mark.parametrize("mode", MODES, ids=["next_step", "same_step"])
def test_same_results_and_rows_as_inline(tmp_path, mode):
    def run(scale, sink):
        envs = relayrl_gym.wrap("CartPole-v1", actors=3, sink=sink, router_scale=scale,
                                autoreset_mode=mode, run_id="r")
        got = [envs.reset(seed=5)[0]]
        for t in range(120):
            got.extend(envs.step(np.array([t % 2, (t // 3) % 2, 1]))[:4])
        envs.close()
        return got, relayrl_gym.load(envs.run_path).table

    reference = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3,
                                         autoreset_mode=mode)
    expected = [reference.reset(seed=5)[0]]
    for t in range(120):
        expected.extend(reference.step(np.array([t % 2, (t // 3) % 2, 1]))[:4])
    reference.close()
    got, rows = run("processes", tmp_path / "processes")
    _, inline_rows = run(0, tmp_path / "inline")
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    keep = ["env_index", "episode_id", "step", "obs", "action", "reward", "next_obs",
            "terminated", "truncated"]
    assert rows.select(keep).equals(inline_rows.select(keep))


def _pid_env():
    def step(env, action):
        env.t += 1
        return env._obs(), 0.0, False, False, {"pid": os.getpid()}

    return TestingEnv(step_fn=step, render_mode="rgb_array")


def test_each_env_runs_in_its_own_process_and_is_reached_through_commands(sink_dir):
    envs = relayrl_gym.wrap(_pid_env, actors=3, sink=sink_dir, router_scale="processes")
    try:
        envs.reset(seed=0)
        _, _, _, _, infos = envs.step(np.zeros(3, dtype=np.int64))
        pids = set(infos["pid"].tolist())
        assert len(pids) == 3 and os.getpid() not in pids
        assert envs.get_attr("t") == (1, 1, 1)
        envs.set_attr("t", [5, 6, 7])
        assert envs.call("render")[0].shape == (4, 4, 3)
        assert envs.get_attr("t") == (5, 6, 7)
        assert envs.envs[0].observation_space == envs.single_observation_space
        assert envs.call_each(lambda env: env.unwrapped.t) == [5, 6, 7]
    finally:
        envs.close()
    assert envs.agent.router_scale == "processes"


def test_an_env_error_comes_back_as_itself(sink_dir):
    def explode(env, action):
        raise ZeroDivisionError("physics blew up")

    envs = relayrl_gym.wrap(lambda: TestingEnv(step_fn=explode), actors=2, sink=sink_dir,
                            router_scale="processes")
    envs.reset(seed=0)
    with pytest.raises(ZeroDivisionError, match="physics blew up"):
        envs.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(StateError, match=r"a previous step\(\) failed"):
        envs.step(np.zeros(2, dtype=np.int64))
    envs.close()


def test_a_killed_actor_process_is_named_not_waited_for(sink_dir):
    envs = relayrl_gym.wrap(_pid_env, actors=2, sink=sink_dir, router_scale="processes")
    envs.reset(seed=0)
    _, _, _, _, infos = envs.step(np.zeros(2, dtype=np.int64))
    os.kill(int(infos["pid"][1]), signal.SIGKILL)
    with pytest.raises(RouterError, match=r"the process of actor 1 died \(exit code -9\)"):
        envs.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(RouterError, match="died"):
        envs.close()
    assert len(relayrl_gym.load(envs.run_path)) == 2  # the step before is kept


def test_sb3_front_end_over_processes(sink_dir):
    from stable_baselines3.common.vec_env import DummyVecEnv

    ours = relayrl_gym.wrap(lambda: gym.make("CartPole-v1", max_episode_steps=15), actors=2,
                            api="sb3", sink=sink_dir, router_scale="processes")
    theirs = DummyVecEnv([lambda: gym.make("CartPole-v1", max_episode_steps=15)] * 2)
    try:
        ours.seed(2)
        theirs.seed(2)
        np.testing.assert_array_equal(ours.reset(), theirs.reset())
        for t in range(40):
            a = np.array([t % 2, 1])
            got, want = ours.step(a), theirs.step(a)
            for x, y in zip(got[:3], want[:3]):
                np.testing.assert_array_equal(x, y)
        assert ours.env_is_wrapped(gym.wrappers.TimeLimit) == [True, True]
    finally:
        ours.close()
        theirs.close()
