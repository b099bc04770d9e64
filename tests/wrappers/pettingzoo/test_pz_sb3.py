"""A real SB3 PPO learn() through the single-agent view of a PettingZoo game."""

from __future__ import annotations

import pytest

pytest.importorskip("pettingzoo")
pytest.importorskip("stable_baselines3")

from pettingzoo.classic import rps_v2, tictactoe_v3
from stable_baselines3 import PPO

import relayrl_gym


def test_ppo_learns_through_the_single_agent_view(tmp_path, pz_helpers):
    env = relayrl_gym.wrap(tictactoe_v3.env(), sink=tmp_path,
                           policies={"player_2": pz_helpers["random_legal"](0)})
    model = PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0,
                device="cpu")
    model.learn(total_timesteps=128)
    env.close()
    rows = relayrl_gym.load(env.run_path).to_pandas()
    mine = rows[rows["agent_id"] == "player_1"]
    assert len(mine) >= 100  # every learner step that ended (all but the last game's tail)
    assert set(rows["agent_id"]) == {"player_1", "player_2"}
    assert mine["terminated"].sum() >= 5  # whole games were played


def test_ppo_learns_through_copies_as_an_sb3_vec_env(tmp_path, ttt_module):
    opponent = ttt_module("onnx", action_head="sample")
    venv = relayrl_gym.wrap(tictactoe_v3.env, actors=4, api="sb3", sink=tmp_path,
                            policies={"player_1": opponent})
    assert venv.num_envs == 4
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0,
                device="cpu")
    model.learn(total_timesteps=128)
    venv.close()
    rows = relayrl_gym.load(venv.run_path).to_pandas()
    theirs = rows[rows["agent_id"] == "player_1"]
    assert (theirs["model_version"] == 0).all() and theirs["data"].notna().all()
    assert rows["actor_id"].nunique() == 8  # 4 copies x 2 agents


def test_ppo_on_rps_parameter_sharing(tmp_path):
    venv = relayrl_gym.wrap(lambda: rps_v2.parallel_env(max_cycles=10), actors=2, api="sb3",
                            sink=tmp_path)
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    venv.close()
    assert len(relayrl_gym.load(venv.run_path)) >= 64
