"""Observations and actions of every supported space round-trip exactly through Arrow."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces
from testing_env import SPACES, TestingEnv

import relayrl_gym
from relayrl_gym.schema.spaces import space_from_json, space_to_json


def _assert_equal_batch(got, want):
    if isinstance(want, dict):
        assert sorted(got) == sorted(want)
        for k in want:
            _assert_equal_batch(got[k], want[k])
    elif isinstance(want, tuple):
        for g, w in zip(got, want):
            _assert_equal_batch(g, w)
    else:
        want = np.asarray(want)
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want)


def _stack(items):
    first = items[0]
    if isinstance(first, dict):
        return {k: _stack([i[k] for i in items]) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack([i[j] for i in items]) for j in range(len(first)))
    return np.stack([np.asarray(i) for i in items])


@pytest.mark.parametrize("name", list(SPACES), ids=list(SPACES))
def test_space_json_roundtrip(name):
    space = SPACES[name]
    assert space_from_json(space_to_json(space)) == space


@pytest.mark.parametrize("obs_name", list(SPACES), ids=list(SPACES))
@pytest.mark.parametrize("act_name", ["box64-2d", "discrete", "multibinary", "dict", "tuple"])
def test_observations_and_actions_roundtrip(obs_name, act_name, sink_dir):
    obs_space, act_space = SPACES[obs_name], SPACES[act_name]
    envs = relayrl_gym.wrap(lambda: TestingEnv(obs_space, act_space, length=3), actors=2,
                            sink=sink_dir, autoreset_mode="same_step")
    envs.action_space.seed(0)
    obs, _ = envs.reset(seed=0)
    seen_obs, seen_act, seen_next = [], [], []
    for _ in range(7):
        action = envs.action_space.sample()
        nxt, _, term, trunc, info = envs.step(action)
        for i in range(2):
            seen_obs.append(_row(obs, i))
            seen_act.append(_row(action, i))
            done = term[i] or trunc[i]
            seen_next.append(info["final_obs"][i] if done else _row(nxt, i))
        obs = nxt
    envs.close()

    ds = relayrl_gym.load(envs.run_path)
    assert ds.observation_space == obs_space and ds.action_space == act_space
    order = np.lexsort((ds.table.column("env_index").to_numpy(),
                        ds.table.column("timestamp").cast("int64").to_numpy()))
    t = ds.transitions()
    _assert_equal_batch(_take(t.obs, order), _stack(seen_obs))
    _assert_equal_batch(_take(t.action, order), _stack(seen_act))
    _assert_equal_batch(_take(t.next_obs, order), _stack(seen_next))


def _row(batch, i):
    if isinstance(batch, dict):
        return {k: _row(v, i) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_row(v, i) for v in batch)
    return np.asarray(batch)[i]


def _take(batch, order):
    if isinstance(batch, dict):
        return {k: _take(v, order) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_take(v, order) for v in batch)
    return batch[order]


def test_image_observations_are_lossless(sink_dir):
    space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
    envs = relayrl_gym.wrap(lambda: TestingEnv(space, length=4), actors=2, sink=sink_dir)
    obs, _ = envs.reset(seed=5)
    first = obs.copy()
    for _ in range(3):
        envs.step(np.array([0, 1]))
    envs.close()
    t = relayrl_gym.load(envs.run_path).transitions()
    assert t.obs.shape == (6, 64, 64, 3) and t.obs.dtype == np.uint8
    np.testing.assert_array_equal(t.obs[:2], first)
