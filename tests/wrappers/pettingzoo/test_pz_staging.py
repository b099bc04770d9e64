"""Game rows on their way to the sinks: batched per run, yet on disk within a flush interval,
each with its own timestamp; wrappers that answer the game's state themselves are obeyed."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest

pytest.importorskip("pettingzoo")

import itertools

from pettingzoo.classic import tictactoe_v3
from pettingzoo.utils.wrappers.base import BaseWrapper

import relayrl_gym
from relayrl_gym.data.arrow_reader import read_run_dir


def _moves(env, turns, rng):
    for _ in range(turns):
        if not env.agents:
            env.reset()
        obs, _, term, trunc, _ = env.last()
        env.step(None if term or trunc else int(rng.choice(np.flatnonzero(obs["action_mask"]))))


def test_rows_of_a_paused_game_reach_the_files_within_a_flush_interval(tmp_path):
    # Fewer rows than a batch: only the writer's time-based flush can take them.
    env = relayrl_gym.wrap(tictactoe_v3.env(), sink=tmp_path, flush_interval=0.2)
    env.reset(seed=0)
    for move in (4, 0, 8, 2, 6):  # nobody wins
        env.step(move)
    recorded = 4  # a move is a row once its player's next turn comes: all but the last
    deadline = time.monotonic() + 5.0
    rows = 0
    while time.monotonic() < deadline:  # nothing steps, flushes or closes meanwhile
        rows = read_run_dir(env.run_path)[0].num_rows
        if rows == recorded:
            break
        time.sleep(0.05)
    found_after = time.monotonic() - (deadline - 5.0)
    env.close()
    assert rows == recorded
    assert found_after < 2.0, found_after  # a tick of the writer, not the close
    assert len(relayrl_gym.load(env.run_path)) == recorded


def test_each_row_keeps_the_time_its_transition_finished(tmp_path):
    env = relayrl_gym.wrap(tictactoe_v3.env(), sink=tmp_path)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    _moves(env, 4, rng)
    time.sleep(0.05)  # rows before and after the pause are in one batch of the run
    _moves(env, 4, rng)
    env.close()
    stamps = relayrl_gym.load(env.run_path).table.column("timestamp").to_pylist()
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert all(gap >= 0 for gap in gaps)
    assert max(gaps) >= 0.05  # the pause shows between two rows, not before all of them


class _DoubledRewards(BaseWrapper):
    """Answers ``rewards`` and ``_cumulative_rewards`` itself from its first step on (its own
    attributes, set after the reset): every reward doubled."""

    def step(self, action):
        super().step(action)
        inner = self.env.unwrapped
        self.rewards = {a: 2 * r for a, r in inner.rewards.items()}
        self._cumulative_rewards = {a: 2 * r for a, r in inner._cumulative_rewards.items()}


class _ShownAgents(BaseWrapper):
    """Answers ``agents`` itself, with a property (in reverse order)."""

    @property
    def agents(self):
        return list(reversed(self.env.unwrapped.agents))


def _won_game(env):
    env.reset(seed=0)
    for move in (0, 3, 1, 4, 2):  # player_1 wins with its third move
        env.step(move)
    seen = (env.agent_selection, env.last()[1:4], dict(env.rewards),
            dict(env._cumulative_rewards), list(env.agents))
    while env.agents:
        env.step(None)
    return seen


def test_a_wrapper_answering_the_game_state_itself_is_what_the_caller_and_the_rows_see(
        tmp_path):
    raw = _won_game(_DoubledRewards(tictactoe_v3.env()))
    assert raw[1] == (-2, True, False)  # the doubled rewards, as the caller's loop sees them
    env = relayrl_gym.wrap(_DoubledRewards(tictactoe_v3.env()), sink=tmp_path)
    assert _won_game(env) == raw
    env.close()
    rows = relayrl_gym.load(env.run_path).to_pandas()
    assert sorted(rows["reward"].tolist()) == [-2, 0, 0, 0, 2]

    shown = relayrl_gym.wrap(_ShownAgents(tictactoe_v3.env()), sink=None)
    shown.reset(seed=0)
    assert shown.agents == ["player_2", "player_1"]
    shown.close()


def test_an_env_reusing_its_observation_arrays_is_recorded_as_it_was_seen(tmp_path):
    class Reusing(BaseWrapper):
        """Hands out one array per agent, rewritten in place at every observe."""

        def __init__(self, env):
            super().__init__(env)
            self.buffers = {}

        def observe(self, agent):
            obs = self.env.observe(agent)
            mine = self.buffers.setdefault(agent, {k: np.empty_like(v) for k, v in obs.items()})
            for key, value in obs.items():
                mine[key][...] = value
            return mine

    env = relayrl_gym.wrap(Reusing(tictactoe_v3.env()), sink=tmp_path)
    env.reset(seed=0)
    seen = []
    for move in (4, 0, 8, 2):
        obs, *_ = env.last()
        seen.append((env.agent_selection, obs["observation"].copy()))
        env.step(move)
    env.close()
    rows = relayrl_gym.load(env.run_path).to_pandas()
    for (agent, obs), (_, row) in zip(seen, rows.sort_values("timestamp").iterrows()):
        assert row["agent_id"] == agent
        assert np.array_equal(row["obs"]["observation"], obs)


@pytest.mark.parametrize("layout", ["once", "pairs"])
def test_game_rows_keep_every_next_observation_in_either_layout(toy_game, tmp_path, layout):
    # Agents come and go (toy_game): a row's next obs is the obs of the agent's next row when
    # that is recorded with it, and its own array otherwise.
    def play(env):
        rng = np.random.default_rng(0)
        obs, infos = env.reset(seed=5)
        lived = []
        for _ in range(40):
            if not env.agents:
                obs, infos = env.reset()
            actions = {a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"])))
                       for a in env.agents}
            nxt, *_, infos = env.step(actions)
            lived += [(a, obs[a].copy(), nxt[a].copy()) for a in actions if a in nxt]
            obs = nxt
        return lived

    expected = play(toy_game())
    sink = relayrl_gym.ArrowSink(tmp_path, obs_layout=layout)
    env = relayrl_gym.wrap(toy_game(), sink=sink)
    seen = play(env)  # the same seeded moves as the raw game, and the same observations
    assert [(a, o.tolist(), n.tolist()) for a, o, n in seen] == \
        [(a, o.tolist(), n.tolist()) for a, o, n in expected]
    env.close()
    stored = pa.concat_tables(pa.ipc.open_file(str(path)).read_all()
                              for path in sorted(env.run_path.glob("*.arrow")))
    nulls = stored.column("next_obs").null_count
    assert (nulls > 0) if layout == "once" else (nulls == 0)  # once where it could be
    rows = relayrl_gym.load(env.run_path).to_pandas()
    assert len(rows) == len(expected)
    by_agent = {}
    for agent, obs, nxt in expected:
        by_agent.setdefault(agent, []).append((obs, nxt))
    for agent, pairs in by_agent.items():
        mine = rows[rows["agent_id"] == agent]
        assert len(mine) == len(pairs)
        for (_, row), (obs, nxt) in zip(mine.iterrows(), pairs):
            assert np.array_equal(row["obs"], obs) and np.array_equal(row["next_obs"], nxt)
