"""Games whose agents have different spaces: one run per group of agents with the same
(observation space, action space), each an ordinary run with its own schema.

The real game here is MPE's simple_adversary (mpe2): ``adversary_0`` sees Box(8,), the good
agents ``agent_0`` and ``agent_1`` Box(10,), every agent acts in Discrete(5).
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("pettingzoo")
pytest.importorskip("mpe2")

from mpe2 import simple_adversary_v3
from pettingzoo.classic import rps_v2
from pettingzoo.test import parallel_api_test
from pettingzoo.utils.env import ParallelEnv
from tests_helpers import assert_same_nested

import relayrl_gym
from relayrl_gym.errors import ConfigError
from relayrl_gym.sinks.arrow import ArrowSink

ADVERSARY, GOOD = ["adversary_0"], ["agent_0", "agent_1"]
AGENTS = ADVERSARY + GOOD
OBS = {"adversary_0": spaces.Box(-np.inf, np.inf, (8,), np.float32),
       "agent_0": spaces.Box(-np.inf, np.inf, (10,), np.float32)}


def _play_parallel(env, seed: int, steps: int, rng_seed: int = 0):
    """Seeded random actions for ``steps`` joint steps (a finished game is reset); returns
    every output and each agent's transitions, one list per episode."""
    rng = np.random.default_rng(rng_seed)
    obs, infos = env.reset(seed=seed)
    outputs, lived = [(obs, infos)], {a: [[]] for a in env.possible_agents}
    for _ in range(steps):
        if not env.agents:
            obs, infos = env.reset(seed=None)
            outputs.append((obs, infos))
            for episodes in lived.values():
                episodes.append([])
            continue
        actions = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
        nxt, rewards, term, trunc, infos = env.step(actions)
        outputs.append((nxt, rewards, term, trunc, infos))
        for a, action in actions.items():
            lived[a][-1].append((obs[a], action, rewards[a], nxt[a], term[a], trunc[a]))
        obs = {**obs, **nxt}
    return outputs, lived


def _play_aec(env, seed: int, games: int, rng_seed: int = 0):
    """Whole games with seeded random actions; returns what ``last()`` gave at each turn and
    each agent's transitions (turn to turn), one list per episode."""
    rng = np.random.default_rng(rng_seed)
    seen, lived = [], {a: [] for a in env.possible_agents}
    for g in range(games):
        env.reset(seed=seed if g == 0 else None)
        pending: dict[str, Any] = {}
        for episodes in lived.values():
            episodes.append([])
        for agent in env.agent_iter():
            obs, reward, term, trunc, _ = env.last()
            seen.append((agent, obs, reward, term, trunc))
            if agent in pending:
                before, action = pending.pop(agent)
                lived[agent][-1].append((before, action, reward, obs, term, trunc))
            action = None if term or trunc else int(rng.integers(env.action_space(agent).n))
            if action is not None:
                pending[agent] = (np.array(obs), action)
            env.step(action)
    return seen, lived


def _check_runs(env, lived: dict[str, list[list[tuple]]], copies: int = 1) -> None:
    """Each group's run loads with its own schema, names its siblings, and holds exactly the
    transitions each of its agents lived (``lived``: one list per episode, in order)."""
    assert env.run_path is None and set(env.run_ids) == set(AGENTS)
    assert env.run_ids["agent_1"] == env.run_ids["agent_0"] != env.run_ids["adversary_0"]
    for group in (ADVERSARY, GOOD):
        run_id = env.run_ids[group[0]]
        assert run_id == f"{env.run_id}.{group[0]}"
        ds = relayrl_gym.load(env.run_paths[group[0]])
        assert ds.run_id == run_id and ds.observation_space == OBS[group[0]]
        assert ds.action_space == spaces.Discrete(5)
        meta = ds.metadata
        assert meta["agents"] == group and meta["game_agents"] == AGENTS
        assert meta["game_runs"] == env.run_ids
        rows = ds.to_pandas()
        assert set(rows["run_id"]) == {run_id} and set(rows["agent_id"]) == set(group)
        # slots renumbered within the run: dense actor ids, slot c * K + k
        assert len(meta["actor_ids"]) == copies * len(group)
        assert [meta["actor_ids"][i] for i in rows["env_index"]] == rows["actor_id"].tolist()
        assert set(rows["env_index"]) == set(range(copies * len(group)))
        for env_index, mine in rows.groupby("env_index"):
            assert set(mine["agent_id"]) == {group[env_index % len(group)]}
        # episode ids unique within the run: one agent and steps 0..n-1 each
        for _, episode in rows.groupby("episode_id"):
            assert episode["agent_id"].nunique() == 1
            assert episode["step"].tolist() == list(range(len(episode)))
            for before, after in zip(episode["next_obs"].iloc[:-1], episode["obs"].iloc[1:]):
                np.testing.assert_array_equal(before, after)
        if copies == 1:
            for agent in group:
                mine = rows[rows["agent_id"] == agent]
                episodes = [e for e in lived[agent] if e]
                assert mine["episode_id"].nunique() == len(episodes)
                expected = [t for e in episodes for t in e]
                assert len(mine) == len(expected)
                for (_, row), (obs, action, reward, nxt, term, trunc) in zip(mine.iterrows(),
                                                                              expected):
                    np.testing.assert_array_equal(row["obs"], obs)
                    np.testing.assert_array_equal(row["next_obs"], nxt)
                    assert (row["action"], row["reward"], row["terminated"],
                            row["truncated"]) == (action, reward, term, trunc)


@pytest.mark.parametrize("run_id", [None, "mix"], ids=["generated-id", "given-id"])
def test_parallel_game_records_one_run_per_group(run_id, sink_dir):
    make = lambda: simple_adversary_v3.parallel_env(max_cycles=6)  # noqa: E731
    raw_out, lived = _play_parallel(make(), seed=5, steps=20)
    env = relayrl_gym.wrap(make, sink=str(sink_dir), run_id=run_id)
    out, _ = _play_parallel(env, seed=5, steps=20)
    env.close()
    assert len(raw_out) == len(out)  # transparent
    for raw, wrapped in zip(raw_out, out):
        for r, w in zip(raw, wrapped):
            assert_same_nested(r, w)
    if run_id is not None:
        assert env.run_id == "mix"
        assert env.run_ids == {"adversary_0": "mix.adversary_0", "agent_0": "mix.agent_0",
                               "agent_1": "mix.agent_0"}
    assert env.run_paths == {a: sink_dir / env.run_ids[a] for a in AGENTS}
    assert sorted(p.name for p in sink_dir.iterdir()) == sorted(set(env.run_ids.values()))
    _check_runs(env, lived)
    assert "RecordedParallelEnv" in str(env) and repr(env)


def test_aec_game_records_one_run_per_group(sink_dir):
    make = lambda: simple_adversary_v3.env(max_cycles=5)  # noqa: E731
    raw_seen, lived = _play_aec(make(), seed=2, games=3)
    env = relayrl_gym.wrap(make(), sink=sink_dir)
    seen, _ = _play_aec(env, seed=2, games=3)
    env.close()
    assert len(seen) == len(raw_seen)
    for raw, wrapped in zip(raw_seen, seen):
        for r, w in zip(raw, wrapped):
            assert_same_nested(r, w)
    assert all(len(episode) == 5 for episodes in lived.values() for episode in episodes)
    _check_runs(env, lived)
    assert "RecordedAECEnv" in str(env) and repr(env)


def _adversary_module(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    return relayrl_gym.ModelModule.from_torch(net, OBS["adversary_0"], spaces.Discrete(5),
                                              format="onnx", path=tmp_path / "adversary")


@pytest.mark.parametrize("policy", ["callable", "model"])
@pytest.mark.parametrize("turn_based", [False, True], ids=["parallel", "aec"])
def test_single_agent_view_records_every_agent(turn_based, policy, sink_dir, tmp_path):
    adversary = (_adversary_module(tmp_path) if policy == "model" else
                 (lambda obs: int(obs[0] > 0)))
    make = simple_adversary_v3.env if turn_based else simple_adversary_v3.parallel_env
    env = relayrl_gym.wrap(make(max_cycles=4), sink=sink_dir,
                           policies={"adversary_0": adversary, "agent_1": lambda obs: 2})
    assert env.observation_space == OBS["agent_0"]
    rng = np.random.default_rng(0)
    for game in range(2):
        env.reset(seed=game)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(5)))
            done = terminated or truncated
    env.close()
    assert env.run_path is None and repr(env).endswith(f"run_id={env.run_id!r})")
    adversary_rows = relayrl_gym.load(env.run_paths["adversary_0"]).to_pandas()
    good_rows = relayrl_gym.load(env.run_paths["agent_0"]).to_pandas()
    assert len(adversary_rows) == 8 and adversary_rows["episode_id"].nunique() == 2
    assert set(adversary_rows["model_version"]) == {0 if policy == "model" else -1}
    assert good_rows.groupby("agent_id").size().to_dict() == {"agent_0": 8, "agent_1": 8}
    assert set(good_rows["action"][good_rows["agent_id"] == "agent_1"]) == {2}
    assert good_rows["episode_id"].nunique() == 4


@pytest.mark.parametrize("api", ["gymnasium", "sb3"])
def test_parameter_sharing_records_policy_agents_of_other_spaces(api, sink_dir):
    if api == "sb3":
        pytest.importorskip("stable_baselines3")
    envs = relayrl_gym.wrap(lambda: simple_adversary_v3.parallel_env(max_cycles=3), actors=2,
                            api=api, sink=sink_dir, policies={"adversary_0": lambda obs: 1})
    assert envs.num_envs == 4  # 2 copies x (agent_0, agent_1)
    assert envs.run_path is None and set(envs.run_ids) == set(AGENTS)
    assert repr(envs).endswith(f"run_id={envs.run_id!r})")
    if api == "sb3":
        envs.seed(0)
        envs.reset()
    else:
        envs.reset(seed=0)
    for _ in range(3):
        envs.step(np.zeros(4, np.int64))
    envs.close()
    assert set(relayrl_gym.load(envs.run_paths["adversary_0"]).table["action"].to_pylist()) \
        == {1}
    _check_runs(envs, {}, copies=2)


def test_sqlite_sink_holds_both_runs(tmp_path):
    pytest.importorskip("sqlalchemy")
    from relayrl_gym.data.sql_reader import list_sql_runs

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = relayrl_gym.wrap(simple_adversary_v3.parallel_env(max_cycles=4), sink=url,
                           run_id="mix")
    _, lived = _play_parallel(env, seed=1, steps=4)
    env.close()
    assert env.run_paths == {a: None for a in AGENTS}
    assert sorted(list_sql_runs(url)) == ["mix.adversary_0", "mix.agent_0"]
    for agent in ("adversary_0", "agent_0"):
        ds = relayrl_gym.load(f"{url}?run={env.run_ids[agent]}")
        assert ds.observation_space == OBS[agent]
        assert ds.metadata["game_runs"] == env.run_ids
        assert len(ds) == 4 * (1 if agent == "adversary_0" else 2)
    rows = relayrl_gym.load(f"{url}?run=mix.agent_0").to_pandas()
    mine = rows[rows["agent_id"] == "agent_1"]
    np.testing.assert_array_equal(np.stack(mine["obs"]),
                                  np.stack([t[0] for t in lived["agent_1"][0]]))


class _SpySink(ArrowSink):
    started = 0  # runs started by this instance

    def start(self, run_id, schema) -> None:
        self.started += 1
        super().start(run_id, schema)


@pytest.mark.parametrize("as_list", [False, True], ids=["sink", "list"])
def test_a_sink_object_cannot_hold_several_runs(as_list, sink_dir, tmp_path):
    sink = _SpySink(sink_dir)
    spec = [str(tmp_path / "also"), sink] if as_list else sink
    with pytest.raises(ConfigError, match=r"`sink` holds a _SpySink object, which records one "
                                          r"run, and this game records 2 runs, one per group "
                                          r"of agents with the same spaces \(\[\['adversary_0'"
                                          r"\], \['agent_0', 'agent_1'\]\]\); pass a "
                                          r"directory or URL string instead \(e.g. "
                                          r"sink='relayrl_runs' or sink='sqlite:///runs.db'\)"):
        relayrl_gym.wrap(simple_adversary_v3.parallel_env(), sink=spec)
    assert sink.started == 0
    assert not (tmp_path / "also").exists() and not (sink_dir.exists() and
                                                     any(sink_dir.iterdir()))
    sink.close()
    env = relayrl_gym.wrap(rps_v2.parallel_env(), sink=sink)  # one run: a Sink object is fine
    env.close()
    assert sink.started == 1


@pytest.mark.parametrize("run_id", [None, "rps-run"], ids=["generated-id", "given-id"])
def test_one_group_games_are_one_run_as_before(run_id, sink_dir):
    env = relayrl_gym.wrap(rps_v2.parallel_env(), sink=sink_dir, run_id=run_id)
    env.reset(seed=0)
    env.step({"player_0": 0, "player_1": 1})
    env.close()
    if run_id is not None:
        assert env.run_id == run_id
    assert env.run_path == sink_dir / env.run_id
    assert env.run_ids == {"player_0": env.run_id, "player_1": env.run_id}
    assert env.run_paths == {"player_0": env.run_path, "player_1": env.run_path}
    assert [p.name for p in sink_dir.iterdir()] == [env.run_id]
    ds = relayrl_gym.load(env.run_path)
    assert ds.run_id == env.run_id and ds.metadata["agents"] == ["player_0", "player_1"]
    assert "game_runs" not in ds.metadata and "game_agents" not in ds.metadata
    unrecorded = relayrl_gym.wrap(rps_v2.parallel_env(), sink=None)
    assert (unrecorded.run_id, unrecorded.run_path, unrecorded.run_ids,
            unrecorded.run_paths) == (None, None, {}, {})
    unrecorded.close()


class OddNames(ParallelEnv):
    """Two agents whose names are no directory names and whose spaces differ; 3 steps."""

    metadata = {"name": "odd_names_v0", "render_modes": []}

    def __init__(self) -> None:
        self.possible_agents = ["scout/1", "base camp"]
        self.render_mode = None
        self.agents: list[str] = []
        self._spaces = {"scout/1": (spaces.Box(0, 9, (2,), np.float32), spaces.Discrete(2)),
                        "base camp": (spaces.Discrete(4), spaces.Discrete(3))}
        self.t = 0

    def observation_space(self, agent: str) -> spaces.Space:
        return self._spaces[agent][0]

    def action_space(self, agent: str) -> spaces.Space:
        return self._spaces[agent][1]

    def _obs(self) -> dict[str, Any]:
        return {"scout/1": np.array([self.t, self.t], np.float32), "base camp": self.t}

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        self.t, self.agents = 0, list(self.possible_agents)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]):
        self.t += 1
        over = self.t >= 3
        obs = self._obs()
        out = (obs, {a: float(actions[a]) for a in self.agents},
               {a: over for a in self.agents}, {a: False for a in self.agents},
               {a: {} for a in self.agents})
        self.agents = [] if over else self.agents
        return out


def test_agent_names_are_made_safe_in_run_ids(sink_dir):
    parallel_api_test(OddNames(), num_cycles=5)
    env = relayrl_gym.wrap(OddNames(), sink=sink_dir, run_id="odd")
    env.reset(seed=0)
    while env.agents:
        env.step({"scout/1": 1, "base camp": 2})
    env.close()
    assert env.run_ids == {"scout/1": "odd.scout_1", "base camp": "odd.base_camp"}
    assert sorted(p.name for p in sink_dir.iterdir()) == ["odd.base_camp", "odd.scout_1"]
    scout = relayrl_gym.load(env.run_paths["scout/1"]).to_pandas()
    camp = relayrl_gym.load(env.run_paths["base camp"]).to_pandas()
    assert set(scout["agent_id"]) == {"scout/1"} and set(camp["agent_id"]) == {"base camp"}
    assert camp["obs"].tolist() == [0, 1, 2] and camp["next_obs"].tolist() == [1, 2, 3]
    assert scout["action"].tolist() == [1, 1, 1] and camp["terminated"].tolist()[-1]


def test_closing_closes_every_run_even_when_one_fails(sink_dir):
    env = relayrl_gym.wrap(simple_adversary_v3.parallel_env(max_cycles=3), sink=sink_dir)
    _play_parallel(env, seed=0, steps=3)
    first = env.recording.runs[0]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk gone")

    first.writer.flush = broken
    with pytest.raises(RuntimeError, match="disk gone"):
        env.close()
    env.close()  # idempotent: no second error
    # both runs were closed (the conftest fixture checks no writer thread is left) and hold
    # every row, the failing one included (its writer wrote them when it stopped)
    assert len(relayrl_gym.load(env.run_paths["adversary_0"])) == 3
    assert len(relayrl_gym.load(env.run_paths["agent_0"])) == 6


def test_a_dropped_env_flushes_every_run(sink_dir):
    env = relayrl_gym.wrap(simple_adversary_v3.env(max_cycles=3), sink=sink_dir)
    _play_aec(env, seed=0, games=1)
    paths = env.run_paths
    del env
    gc.collect()
    assert len(relayrl_gym.load(paths["adversary_0"])) == 3
    assert len(relayrl_gym.load(paths["agent_1"])) == 6


def test_a_run_that_cannot_open_closes_the_runs_opened_before(sink_dir):
    from relayrl_gym.errors import SinkError

    sink_dir.mkdir()
    (sink_dir / "mix.agent_0").write_text("a file where the second run's directory goes")
    with pytest.raises(SinkError, match=r"mix\.agent_0"):
        relayrl_gym.wrap(simple_adversary_v3.parallel_env(), sink=sink_dir, run_id="mix")
    # the first run was opened, then closed again: its writer stopped (the conftest fixture
    # checks no thread is left) and its directory is a complete, empty run
    assert relayrl_gym.load(sink_dir / "mix.adversary_0").table.num_rows == 0
