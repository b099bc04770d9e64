"""wrap(ParallelEnv): the same ParallelEnv API, every agent's transitions recorded."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

from pettingzoo.classic import rps_v2
from pettingzoo.test import parallel_api_test
from pettingzoo.utils.env import ParallelEnv
from tests_helpers import assert_same_nested

import relayrl_gym


def _play(env, seed, steps, rng_seed=0):
    """Plays ``steps`` joint steps with seeded random actions; returns every output and, per
    agent, the transitions it lived (obs, action, reward, next obs, flags)."""
    rng = np.random.default_rng(rng_seed)
    obs, infos = env.reset(seed=seed)
    outputs, lived = [(obs, infos)], {}
    for _ in range(steps):
        if not env.agents:
            obs, infos = env.reset(seed=None)
            outputs.append((obs, infos))
            continue
        actions = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
        nxt, rewards, term, trunc, infos = env.step(actions)
        outputs.append((nxt, rewards, term, trunc, infos))
        for a, action in actions.items():
            lived.setdefault(a, []).append((obs[a], action, rewards[a], nxt[a], term[a],
                                            trunc[a]))
        obs = {**obs, **nxt}
    return outputs, lived


@pytest.mark.parametrize("make", [rps_v2.parallel_env, "toy"], ids=["rps", "toy"])
def test_parallel_api_test_passes(make, toy_game, tmp_path):
    env = relayrl_gym.wrap(toy_game() if make == "toy" else make(), sink=tmp_path)
    assert isinstance(env, ParallelEnv)
    parallel_api_test(env, num_cycles=200)
    env.close()
    assert len(relayrl_gym.load(env.run_path)) > 0


@pytest.mark.parametrize("make", [lambda: rps_v2.parallel_env(max_cycles=5), "toy"],
                         ids=["rps", "toy"])
def test_transparent_and_rows_are_what_each_agent_lived(make, toy_game, tmp_path):
    factory = (lambda: toy_game()) if make == "toy" else make
    raw_out, lived = _play(factory(), seed=7, steps=30)
    env = relayrl_gym.wrap(factory, sink=tmp_path)
    wrapped_out, _ = _play(env, seed=7, steps=30)
    env.close()
    assert len(raw_out) == len(wrapped_out)
    for raw, wrapped in zip(raw_out, wrapped_out):
        assert len(raw) == len(wrapped)
        for r, w in zip(raw, wrapped):
            assert_same_nested(r, w)
    ds = relayrl_gym.load(env.run_path)
    rows = ds.to_pandas()
    assert sorted(set(rows["agent_id"])) == sorted(lived)
    for agent, transitions in lived.items():
        mine = rows[rows["agent_id"] == agent]
        assert len(mine) == len(transitions)
        assert mine["actor_id"].nunique() == 1 and (mine["model_version"] == -1).all()
        for (_, row), (obs, action, reward, nxt, term, trunc) in zip(mine.iterrows(),
                                                                      transitions):
            np.testing.assert_array_equal(row["obs"], obs)
            np.testing.assert_array_equal(row["next_obs"], nxt)
            assert (row["action"], row["reward"], row["terminated"], row["truncated"]) == \
                (action, reward, term, trunc)


def test_late_and_early_agents_and_masks(toy_game, tmp_path):
    env = relayrl_gym.wrap(toy_game(max_steps=4), sink=tmp_path)
    _, infos = env.reset(seed=0)
    seen_masks = {a: [] for a in env.possible_agents}
    while env.agents:
        for a in env.agents:
            seen_masks[a].append(infos[a]["action_mask"].astype(bool).tolist())
        _, _, _, _, new_infos = env.step({a: 1 for a in env.agents})
        infos = {**infos, **new_infos}
    env.close()
    rows = relayrl_gym.load(env.run_path).to_pandas()
    a0, a1, a2 = (rows[rows["agent_id"] == a] for a in ("a0", "a1", "a2"))
    # a0 dies at step 2, a2 joins after step 1 (its first obs at t=1), a1 plays all 4 steps.
    assert a0["step"].tolist() == [0, 1] and a0["terminated"].tolist() == [False, True]
    assert a1["step"].tolist() == [0, 1, 2, 3] and a1["truncated"].tolist()[-1]
    assert [o[0] for o in a2["obs"]] == [1.0, 2.0, 3.0] and a2["truncated"].tolist()[-1]
    assert a2["episode_id"].nunique() == 1 and rows["episode_id"].nunique() == 3
    for agent, mine in (("a0", a0), ("a1", a1), ("a2", a2)):
        assert [list(m) for m in mine["mask"]] == seen_masks[agent]


def test_unrecorded_and_flush(tmp_path):
    env = relayrl_gym.wrap(rps_v2.parallel_env(), sink=None)
    assert env.run_path is None
    env.reset(seed=1)
    env.step({"player_0": 0, "player_1": 1})
    env.close()
    env = relayrl_gym.wrap(rps_v2.parallel_env(), sink=tmp_path)
    env.reset(seed=1)
    env.step({"player_0": 0, "player_1": 1})
    env.flush()
    assert len(relayrl_gym.load(env.run_path)) == 2  # flushed before close
    env.close()
    env.close()  # idempotent
