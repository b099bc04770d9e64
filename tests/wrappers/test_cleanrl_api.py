"""What CleanRL-style scripts rely on from a Gymnasium vector env, checked against SyncVectorEnv."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import RecordEpisodeStatistics
from gymnasium.wrappers.vector import RecordEpisodeStatistics as VectorRecordEpisodeStatistics

import relayrl_gym

MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]


def make_env(env_id: str = "CartPole-v1", max_episode_steps: int = 12):
    """CleanRL's factory: the episode statistics wrapper goes inside each env."""

    def thunk() -> gym.Env:
        return RecordEpisodeStatistics(gym.make(env_id, max_episode_steps=max_episode_steps))

    return thunk


@pytest.fixture
def pair(request, sink_dir):
    mode = request.param
    ours = relayrl_gym.wrap(make_env(), actors=3, autoreset_mode=mode, sink=sink_dir)
    theirs = SyncVectorEnv([make_env()] * 3, autoreset_mode=mode)
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_spaces_and_sizes_scripts_read(env_id, sink_dir):
    envs = relayrl_gym.wrap(env_id, actors=4, sink=sink_dir)
    sync = SyncVectorEnv([lambda: gym.make(env_id)] * 4)
    try:
        assert envs.num_envs == 4
        assert envs.single_observation_space == sync.single_observation_space
        assert envs.single_action_space == sync.single_action_space
        assert envs.observation_space == sync.observation_space
        assert envs.action_space == sync.action_space
        # CleanRL's network sizes and its discrete-only assertion
        assert np.array(envs.single_observation_space.shape).prod() == \
            np.array(sync.single_observation_space.shape).prod()
        if env_id == "CartPole-v1":
            assert isinstance(envs.single_action_space, gym.spaces.Discrete)
            assert envs.single_action_space.n == 2
        else:
            assert isinstance(envs.single_action_space, gym.spaces.Box)
            assert envs.action_space.sample().shape == (4, 1)
    finally:
        envs.close()
        sync.close()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name.lower())
def test_reset_with_an_int_seed_gives_env_i_seed_plus_i(mode, sink_dir):
    envs = relayrl_gym.wrap("CartPole-v1", actors=3, autoreset_mode=mode, sink=sink_dir)
    try:
        obs, info = envs.reset(seed=42)
        assert info == {}
        for i in range(3):
            single, _ = gym.make("CartPole-v1").reset(seed=42 + i)
            np.testing.assert_array_equal(obs[i], single)
    finally:
        envs.close()


@pytest.mark.parametrize("pair", MODES, ids=lambda m: m.name.lower(), indirect=True)
def test_five_tuple_steps_and_inner_episode_statistics(pair):
    """RecordEpisodeStatistics inside the factory: its stats reach the script where Gymnasium
    puts them (NEXT_STEP: ``info["episode"]``; SAME_STEP: ``info["final_info"]["episode"]``)."""
    ours, theirs = pair
    same_step = ours.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    np.testing.assert_array_equal(ours.reset(seed=1)[0], theirs.reset(seed=1)[0])
    actions = np.random.default_rng(0).integers(0, 2, (80, 3))
    returns: list[float] = []
    for a in actions:
        out = ours.step(a)
        want = theirs.step(a)
        assert len(out) == 5
        obs, rewards, terminations, truncations, infos = out
        assert obs.shape == (3, 4) and obs.dtype == np.float32
        assert rewards.dtype == np.float64 and terminations.dtype == truncations.dtype == np.bool_
        for got, expected in zip(out[:4], want[:4]):
            np.testing.assert_array_equal(got, expected)
        stats = infos.get("final_info", {}) if same_step else infos
        want_stats = want[4].get("final_info", {}) if same_step else want[4]
        assert ("episode" in stats) == ("episode" in want_stats)
        if "episode" in stats:
            mask = stats["_episode"]
            np.testing.assert_array_equal(mask, want_stats["_episode"])
            np.testing.assert_array_equal(mask, terminations | truncations)
            np.testing.assert_array_equal(stats["episode"]["r"], want_stats["episode"]["r"])
            np.testing.assert_array_equal(stats["episode"]["l"], want_stats["episode"]["l"])
            returns += stats["episode"]["r"][mask].tolist()
    assert len(returns) >= 5  # episodes end by termination and by truncation (12 steps)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name.lower())
def test_vector_episode_statistics_wrapper_outside(mode, sink_dir):
    """The vector wrapper outside (and none inside: Gymnasium refuses both on one key)."""
    def make():
        return gym.make("CartPole-v1", max_episode_steps=12)

    ours = VectorRecordEpisodeStatistics(
        relayrl_gym.wrap(make, actors=3, autoreset_mode=mode, sink=sink_dir))
    theirs = VectorRecordEpisodeStatistics(SyncVectorEnv([make] * 3, autoreset_mode=mode))
    try:
        ours.reset(seed=5)
        theirs.reset(seed=5)
        for a in np.random.default_rng(1).integers(0, 2, (80, 3)):
            *_, info = ours.step(a)
            *_, want = theirs.step(a)
            assert ("episode" in info) == ("episode" in want)
            if "episode" in info:
                np.testing.assert_array_equal(info["_episode"], want["_episode"])
                np.testing.assert_array_equal(info["episode"]["r"], want["episode"]["r"])
        assert len(ours.return_queue) >= 5
        assert list(ours.return_queue) == list(theirs.return_queue)
        assert list(ours.length_queue) == list(theirs.length_queue)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("pair", [AutoresetMode.SAME_STEP], ids=["same_step"], indirect=True)
def test_same_step_final_obs_for_truncation_bootstrapping(pair):
    """CleanRL's off-policy scripts swap ``infos["final_obs"][i]`` in for truncated envs."""
    ours, theirs = pair
    obs, _ = ours.reset(seed=9)
    theirs.reset(seed=9)
    swapped = 0
    for a in np.random.default_rng(2).integers(0, 2, (60, 3)):
        next_obs, _, terminations, truncations, infos = ours.step(a)
        *_, want = theirs.step(a)
        real_next_obs = next_obs.copy()
        for idx, trunc in enumerate(truncations):
            if trunc:
                real_next_obs[idx] = infos["final_obs"][idx]
                swapped += 1
        done = terminations | truncations
        if done.any():
            np.testing.assert_array_equal(infos["_final_obs"], done)
            np.testing.assert_array_equal(infos["_final_info"], want["_final_info"])
            for idx in np.flatnonzero(done):
                np.testing.assert_array_equal(infos["final_obs"][idx], want["final_obs"][idx])
                assert not np.array_equal(infos["final_obs"][idx], next_obs[idx])  # reset obs
        else:
            assert "final_obs" not in infos
        obs = real_next_obs
    assert swapped > 0 and obs.shape == (3, 4)
