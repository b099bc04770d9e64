"""Game rows on their way to the sinks: batched per run, yet on disk within a flush interval,
each with its own timestamp; wrappers that answer the game's state themselves are obeyed."""

from __future__ import annotations

import contextlib
import gc
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest

pytest.importorskip("pettingzoo")

import itertools

from gymnasium import spaces
from pettingzoo.classic import tictactoe_v3
from pettingzoo.utils.env import ParallelEnv
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


def _vector_game(sink, close):
    envs = relayrl_gym.wrap(tictactoe_v3.env(), actors=2, sink=sink, flush_interval=30,
                            policies={"player_2": lambda obs: int(np.flatnonzero(
                                obs["action_mask"])[0])})
    obs, _ = envs.reset(seed=0)
    for _ in range(10):
        obs, *_ = envs.step(np.array([np.flatnonzero(m)[0] for m in obs["action_mask"]]))
    path = envs.run_path
    if close:
        envs.close()
    return path


def test_a_vector_game_dropped_without_close_writes_every_row(tmp_path):
    closed = _vector_game(tmp_path / "closed", close=True)
    dropped = _vector_game(tmp_path / "dropped", close=False)
    gc.collect()  # the env is in a reference cycle: the collector finalizes it
    assert len(relayrl_gym.load(dropped)) == len(relayrl_gym.load(closed)) == 28


class _Refusing(ParallelEnv):
    """Two agents; a step with action 2 raises before anything changes."""

    metadata = {"name": "refusing_v0"}
    possible_agents = ["a", "b"]

    def __init__(self):
        self.agents = []

    def observation_space(self, agent):
        return spaces.Box(0, 100, (2,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(3)

    def reset(self, seed=None, options=None):
        self.t = 0
        self.agents = list(self.possible_agents)
        return {a: np.zeros(2, np.float32) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        if 2 in actions.values():
            raise ValueError("action 2 is not allowed here")
        self.t += 1
        return ({a: np.full(2, self.t, np.float32) for a in self.agents},
                {a: float(actions[a]) for a in self.agents}, dict.fromkeys(self.agents, False),
                dict.fromkeys(self.agents, self.t >= 3), {a: {} for a in self.agents})


def test_a_step_the_game_refused_is_not_recorded(tmp_path):
    env = relayrl_gym.wrap(_Refusing(), sink=tmp_path / "parallel")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not allowed"):
        env.step({"a": 2, "b": 2})
    env.step({"a": 1, "b": 0})  # the step the game took
    env.close()
    assert relayrl_gym.load(env.run_path).table.column("action").to_pylist() == [1, 0]

    game = relayrl_gym.wrap(tictactoe_v3.env(), sink=tmp_path / "aec")
    game.reset(seed=0)
    with pytest.raises(AssertionError):  # outside the action space: AssertOutOfBounds says no
        game.step(99)
    for move in (4, 0, 8):
        game.step(move)
    game.close()
    assert relayrl_gym.load(game.run_path).table.column("action").to_pylist() == [4, 0]


class _Rematch(BaseWrapper):
    """Starts a new game in place of one that ended (its inner env is replaced)."""

    def step(self, action):
        super().step(action)
        if not self.env.agents:
            self.env = tictactoe_v3.env()
            self.env.reset()


def test_a_wrapper_replacing_its_game_is_followed():
    def turns(env):
        env.reset(seed=0)
        seen = []
        for _ in range(12):
            obs, _, term, trunc, _ = env.last()
            env.step(None if term or trunc else int(np.flatnonzero(obs["action_mask"])[0]))
            seen.append((env.agent_selection, list(env.agents)))
        return seen

    raw = turns(_Rematch(tictactoe_v3.env()))
    assert turns(relayrl_gym.wrap(_Rematch(tictactoe_v3.env()), sink=None)) == raw


def test_ctrl_c_while_rows_are_put_together_loses_and_renumbers_nothing(tmp_path, monkeypatch):
    from relayrl_gym.wrappers.pettingzoo import runs

    def game(sink):
        env = relayrl_gym.wrap(tictactoe_v3.env(), sink=sink, batch_rows=4)
        env.reset(seed=0)
        rng = np.random.default_rng(3)
        for _ in range(30):
            with contextlib.suppress(KeyboardInterrupt):  # the move was taken; the rows wait
                _moves(env, 1, rng)
        env.close()
        return relayrl_gym.load(env.run_path).to_pandas()

    clean = game(tmp_path / "clean")
    build, interrupted = runs._batch, []

    def interrupted_once(*args):
        interrupted.append(True)
        if len(interrupted) == 3:  # mid-episode: numbering that is not rolled back shows
            raise KeyboardInterrupt  # as if Ctrl-C arrived while a batch was put together
        return build(*args)

    monkeypatch.setattr(runs, "_batch", interrupted_once)
    rows = game(tmp_path / "interrupted")
    assert len(interrupted) > 3
    columns = ["agent_id", "action", "reward", "step", "terminated"]
    assert rows[columns].equals(clean[columns])
    assert (rows["episode_id"].diff().fillna(0) != 0).sum() == \
        (clean["episode_id"].diff().fillna(0) != 0).sum()


class _Frames(ParallelEnv):
    """Three agents seeing frames large enough for the writer thread to build their blocks;
    each frame tells the step and the agent apart."""

    metadata = {"name": "frames_v0"}
    possible_agents = ["a", "b", "c"]

    def __init__(self):
        from relayrl_gym.recording.recorder import WRITER_BUILDS_FROM

        self.size = WRITER_BUILDS_FROM
        self.agents = []

    def observation_space(self, agent):
        return spaces.Box(0, 255, (self.size,), np.uint8)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def _frames(self):
        return {a: np.full(self.size, (7 * self.t + i) % 251, np.uint8)
                for i, a in enumerate(self.agents)}

    def reset(self, seed=None, options=None):
        self.t = 0
        self.agents = list(self.possible_agents)
        return self._frames(), {a: {} for a in self.agents}

    def step(self, actions):
        self.t += 1
        done = self.t % 5 == 0
        return (self._frames(), {a: float(actions[a]) for a in self.agents},
                dict.fromkeys(self.agents, done), dict.fromkeys(self.agents, False),
                {a: {} for a in self.agents})


def test_large_game_frames_built_by_the_writer_are_recorded_as_seen(tmp_path):
    env = relayrl_gym.wrap(_Frames(), sink=tmp_path)
    recorder = env.recording.runs[0].recorder
    build, here, lists = recorder.to_record_batches, [], []

    def spied(block):  # where each block is built, and whether its obs came as row lists
        if block.arrow is None:
            here.append(threading.current_thread() is threading.main_thread())
            lists.append(any(type(batch[3]) is list for batch in block.batches))
        return build(block)

    recorder.to_record_batches = spied
    obs, _ = env.reset(seed=0)
    lived = []
    for t in range(23):
        if not env.agents:
            obs, _ = env.reset()
        nxt, *_ = env.step({a: t % 2 for a in env.agents})
        lived += [(a, int(obs[a][0]), int(nxt[a][0])) for a in obs]
        obs = nxt
    env.close()
    rows = relayrl_gym.load(env.run_path).to_pandas()
    got = [(r.agent_id, int(r.obs[0]), int(r.next_obs[0])) for r in rows.itertuples()]
    assert sorted(got) == sorted(lived) and len(got) == len(lived)
    assert here and not any(here) and all(lists)  # built by the writer, stacked only there
    assert all(len(set(r.obs)) == 1 and len(set(r.next_obs)) == 1 for r in rows.itertuples())
