"""Parameter sharing: the agents of ParallelEnv copies as slots of one vector env; agents that
are absent are padded, never stepped and never recorded."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

from pettingzoo.classic import rps_v2

import relayrl_gym
from relayrl_gym.wrappers.pettingzoo.vector import PettingZooVectorEnv


def test_rps_copies_are_transparent(tmp_path):
    envs = relayrl_gym.wrap(rps_v2.parallel_env, actors=3, api="gymnasium", sink=tmp_path)
    assert isinstance(envs, PettingZooVectorEnv) and envs.num_envs == 6
    raws = [rps_v2.parallel_env() for _ in range(3)]
    obs, _ = envs.reset(seed=10)
    raw_obs = [raw.reset(seed=10 + c)[0] for c, raw in enumerate(raws)]
    rng = np.random.default_rng(0)
    for _ in range(8):
        np.testing.assert_array_equal(obs, [o[a] for o in raw_obs for a in ("player_0",
                                                                            "player_1")])
        actions = rng.integers(0, 3, 6)
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        raw_out = [raw.step({"player_0": actions[2 * c], "player_1": actions[2 * c + 1]})
                   for c, raw in enumerate(raws)]
        raw_obs = [out[0] for out in raw_out]
        assert rewards.tolist() == [out[1][a] for out in raw_out for a in ("player_0",
                                                                            "player_1")]
        assert not terminated.any() and not truncated.any()
    envs.close()
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    assert len(rows) == 48 and rows["actor_id"].nunique() == 6


def test_padded_slots_next_step(toy_game, tmp_path):
    envs = relayrl_gym.wrap(lambda: toy_game(max_steps=4), actors=2, api="gymnasium",
                            sink=tmp_path)
    assert envs.agents == ["a0", "a1", "a2"] and envs.num_envs == 6
    obs, infos = envs.reset(seed=0)
    assert infos["active"].tolist() == [True, True, False] * 2  # a2 has not joined yet
    assert not obs[2].any() and infos["_action_mask"].tolist() == [True, True, False] * 2
    obs, rewards, terminated, truncated, infos = envs.step(np.ones(6, np.int64))
    assert infos["active"].all() and obs[2][0] == 1.0 and rewards[2] == 0.0  # a2 joined
    obs, rewards, terminated, truncated, infos = envs.step(np.ones(6, np.int64))
    assert terminated.tolist() == [True, False, False] * 2 and obs[0][0] == 2.0  # a0 ends
    obs, rewards, terminated, truncated, infos = envs.step(np.full(6, 2, np.int64))
    assert infos["active"].tolist() == [False, True, True] * 2  # a0 padded from now on
    assert not obs[0].any() and rewards[0] == 0.0 and not terminated[0]
    obs, rewards, terminated, truncated, infos = envs.step(np.ones(6, np.int64))
    assert truncated.tolist() == [False, True, True] * 2  # the games end
    obs, rewards, terminated, truncated, infos = envs.step(np.ones(6, np.int64))
    # NEXT_STEP: the reset pseudo-step (actions ignored, nothing recorded)
    assert not rewards.any() and not (terminated | truncated).any()
    assert obs[0][0] == 0.0 and infos["active"].tolist() == [True, True, False] * 2
    envs.close()
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    per_agent = rows.groupby("agent_id").size().to_dict()
    assert per_agent == {"a0": 4, "a1": 8, "a2": 6}  # 2 copies x (2, 4, 3) real steps
    assert not rows[rows["agent_id"] == "a0"]["action"].eq(2).any()  # padded: never stepped


def test_padded_slots_same_step_and_sb3(toy_game, tmp_path):
    envs = relayrl_gym.wrap(lambda: toy_game(max_steps=3), actors=2, api="gymnasium",
                            autoreset_mode="same_step", sink=tmp_path / "g")
    envs.reset(seed=0)
    envs.step(np.ones(6, np.int64))
    obs, _, terminated, _, infos = envs.step(np.ones(6, np.int64))
    # a0 is done mid-game: its last observation moves to final_obs, the slot shows padding
    assert terminated[0] and infos["_final_obs"].tolist() == [True, False, False] * 2
    assert infos["final_obs"][0][0] == 2.0 and not obs[0].any()
    obs, _, _, truncated, infos = envs.step(np.ones(6, np.int64))
    assert truncated.tolist() == [False, True, True] * 2
    assert infos["_final_obs"].tolist() == [False, True, True] * 2
    assert infos["final_obs"][1][0] == 3.0 and obs[1][0] == 0.0  # reset in the same step
    envs.close()

    venv = relayrl_gym.wrap(lambda: toy_game(max_steps=3), actors=2, api="sb3",
                            sink=tmp_path / "s")
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (6, 2)
    for _ in range(3):
        obs, _, dones, infos = venv.step(np.ones(6, np.int64))
    assert dones.tolist() == [False, True, True] * 2
    assert infos[1]["terminal_observation"][0] == 3.0 and infos[1]["TimeLimit.truncated"]
    assert venv.get_attr("possible_agents")[0] == ["a0", "a1", "a2"]
    venv.close()
    assert len(relayrl_gym.load(venv.run_path)) == 2 * (2 + 3 + 2)


def test_reset_mask_resets_only_the_chosen_copies(toy_game, tmp_path):
    envs = relayrl_gym.wrap(lambda: toy_game(max_steps=6), actors=2, api="gymnasium",
                            sink=tmp_path)
    envs.reset(seed=0)
    for _ in range(2):
        obs, *_ = envs.step(np.ones(6, np.int64))
    kept = obs[:3].copy()
    obs, infos = envs.reset(seed=[0, 50], options={"reset_mask": [False] * 3 + [True] * 3})
    raw_obs, _ = toy_game().reset(seed=50)
    np.testing.assert_array_equal(obs[:3], kept)  # copy 0 is left as it was
    np.testing.assert_array_equal(obs[3:5], [raw_obs["a0"], raw_obs["a1"]])
    assert infos["_active"].tolist() == [False] * 3 + [True] * 3
    envs.step(np.ones(6, np.int64))
    envs.close()
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    copy1_a1 = rows[(rows["agent_id"] == "a1") & (rows["env_index"] == 4)]
    assert copy1_a1["step"].tolist() == [0, 1, 0] and copy1_a1["episode_id"].nunique() == 2
    copy0_a1 = rows[(rows["agent_id"] == "a1") & (rows["env_index"] == 1)]
    assert copy0_a1["step"].tolist() == [0, 1, 2] and copy0_a1["episode_id"].nunique() == 1
