"""wrap(AECEnv): the same AECEnv API; each agent's transitions span from its turn to its next."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

from pettingzoo.classic import connect_four_v3, tictactoe_v3
from pettingzoo.test import api_test
from pettingzoo.utils.conversions import parallel_to_aec
from pettingzoo.utils.env import AECEnv
from tests_helpers import assert_same_nested

import relayrl_gym

GAMES = {"tictactoe": tictactoe_v3.env, "connect_four": connect_four_v3.env}


def _play(env, seed, games=3, rng_seed=0):
    """Plays whole games with seeded random legal moves; returns what the caller saw at each
    turn and each agent's transitions by the turn-to-turn definition."""
    rng = np.random.default_rng(rng_seed)
    seen, lived, pending = [], {}, {}
    for g in range(games):
        env.reset(seed=seed if g == 0 else None)
        pending.clear()
        for agent in env.agent_iter():
            obs, reward, term, trunc, info = env.last()
            seen.append((agent, obs, reward, term, trunc, dict(env.rewards)))
            if agent in pending:
                before, action = pending.pop(agent)
                lived.setdefault(agent, []).append((before, action, reward, obs, term, trunc))
            if term or trunc:
                action = None
            else:
                mask = obs["action_mask"] if isinstance(obs, dict) else info["action_mask"]
                action = int(rng.choice(np.flatnonzero(mask)))
                pending[agent] = (obs, action)
            env.step(action)
    return seen, lived


@pytest.mark.parametrize("name", GAMES)
def test_api_test_passes(name, tmp_path):
    env = relayrl_gym.wrap(GAMES[name](), sink=tmp_path)
    assert isinstance(env, AECEnv)
    api_test(env, num_cycles=300)
    env.close()
    assert len(relayrl_gym.load(env.run_path)) > 0


def test_api_test_passes_on_a_parallel_game_turned_turn_based(toy_game, tmp_path):
    env = relayrl_gym.wrap(parallel_to_aec(toy_game()), sink=tmp_path)
    api_test(env, num_cycles=100)
    env.close()
    assert set(relayrl_gym.load(env.run_path).table.column("agent_id").to_pylist()) == \
        {"a0", "a1", "a2"}


@pytest.mark.parametrize("name", GAMES)
def test_transparent_and_rows_are_turn_to_turn(name, tmp_path):
    raw_seen, lived = _play(GAMES[name](), seed=3)
    env = relayrl_gym.wrap(GAMES[name], sink=tmp_path)  # a factory: called once by wrap
    seen, _ = _play(env, seed=3)
    env.close()
    assert len(seen) == len(raw_seen)
    for raw, wrapped in zip(raw_seen, seen):
        for r, w in zip(raw, wrapped):
            assert_same_nested(r, w)
    rows = relayrl_gym.load(env.run_path).to_pandas()
    for agent, transitions in lived.items():
        mine = rows[rows["agent_id"] == agent]
        assert len(mine) == len(transitions)
        for (_, row), (obs, action, reward, nxt, term, trunc) in zip(mine.iterrows(),
                                                                      transitions):
            assert_same_nested(row["obs"], obs)
            assert_same_nested(row["next_obs"], nxt)
            assert row["mask"].tolist() == obs["action_mask"].astype(bool).tolist()
            assert (row["action"], row["reward"], row["terminated"], row["truncated"]) == \
                (action, reward, term, trunc)
    assert rows.groupby("episode_id")["agent_id"].nunique().max() == 1  # one agent each


def test_a_won_game_recorded_by_hand(tmp_path):
    env = relayrl_gym.wrap(tictactoe_v3.env(), sink=tmp_path)
    env.reset(seed=0)
    for move in (0, 3, 1, 4, 2):  # player_1 takes the top row at its third move
        env.step(move)
    while env.agents:
        env.step(None)
    env.reset(seed=1)  # a transition in flight at a reset is dropped, never made up
    env.step(4)
    env.close()
    rows = relayrl_gym.load(env.run_path).to_pandas()
    p1, p2 = rows[rows["agent_id"] == "player_1"], rows[rows["agent_id"] == "player_2"]
    assert p1["action"].tolist() == [0, 1, 2] and p2["action"].tolist() == [3, 4]
    assert p1["reward"].tolist() == [0, 0, 1] and p2["reward"].tolist() == [0, -1]
    assert p1["terminated"].tolist() == [False, False, True]
    assert p2["terminated"].tolist() == [False, True]
    assert p1["step"].tolist() == [0, 1, 2] and p1["episode_id"].nunique() == 1
    # player_2 saw player_1's first two marks when it played 4 (its own plane is channel 0)
    assert p2["obs"].iloc[1]["observation"][0, :, 1].tolist() == [1, 1, 0]
    assert len(rows) == 5


def test_a_parallel_game_turned_turn_based_with_agents_dying_early_and_joining_late(
        toy_game, tmp_path):
    # a0 is terminated at step 2, a2 joins after step 1, the others are truncated at step 5:
    # rows must match a reference loop over the raw game, turn to turn, whole games only.
    make = lambda: parallel_to_aec(toy_game(max_steps=5))  # noqa: E731
    _, lived = _play(make(), seed=4, games=3)
    env = relayrl_gym.wrap(make, sink=tmp_path)
    _play(env, seed=4, games=3)
    env.close()
    rows = relayrl_gym.load(env.run_path).to_pandas()
    assert {a: len(t) for a, t in lived.items()} == {"a0": 6, "a1": 15, "a2": 12}
    for agent, transitions in lived.items():
        mine = rows[rows["agent_id"] == agent]
        assert len(mine) == len(transitions)
        for (_, row), (obs, action, reward, nxt, term, trunc) in zip(mine.iterrows(),
                                                                      transitions):
            np.testing.assert_array_equal(row["obs"], obs)
            np.testing.assert_array_equal(row["next_obs"], nxt)
            assert (row["action"], row["reward"], row["terminated"], row["truncated"]) == \
                (action, reward, term, trunc)
        for _, episode in mine.groupby("episode_id"):  # one whole game per episode
            assert episode["step"].tolist() == list(range(len(episode)))
            assert (episode["terminated"] | episode["truncated"]).tolist()[-1]
            for before, after in zip(episode["next_obs"].iloc[:-1], episode["obs"].iloc[1:]):
                np.testing.assert_array_equal(before, after)
    assert rows["mask"].notna().all()  # from info["action_mask"] at the agent's turn
