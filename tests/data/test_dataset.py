"""`relayrl_gym.load`: tables, numpy transitions, episodes, pandas, summaries."""

from __future__ import annotations

import numpy as np
import pytest
from tests_helpers import make_testing_env

import relayrl_gym
from relayrl_gym.errors import DatasetError


@pytest.fixture
def recorded(sink_dir):
    # length 4, reward = step index (1..4): every finished episode returns 10.
    envs = relayrl_gym.wrap(make_testing_env(length=4, info=True), actors=2, sink=sink_dir)
    envs.reset(seed=0)
    for _ in range(11):
        envs.step(np.array([0, 1]))
    envs.close()
    return relayrl_gym.load(envs.run_path), envs


def test_episodes_and_summary(recorded):
    ds, _envs = recorded
    # 11 vector steps: per env 4 real + 1 pseudo + 4 real + 1 pseudo + 1 real = 9 rows.
    assert len(ds) == 18
    episodes = list(ds.episodes())
    assert [len(e) for e in episodes].count(4) == 4
    finished = [e for e in episodes if e.terminations[-1]]
    assert all(e.total_reward == 10.0 for e in finished)
    assert all(len(e.observations) == len(e) + 1 for e in episodes)
    assert all((e.model_versions == -1).all() for e in episodes)
    summary = ds.summary()
    assert (summary.steps, summary.episodes, summary.unfinished_episodes) == (18, 4, 2)
    assert summary.mean_return == 10.0 and summary.std_return == 0.0
    assert summary.mean_length == 4.0
    assert sorted(a.actor_id for a in summary.actors) == sorted(ds.metadata["actor_ids"])
    assert [a.steps for a in summary.actors] == [9, 9]
    text = str(summary)
    assert "episodes 4 (+2 unfinished)" in text and "mean 10.000" in text


def test_metadata_travels_with_the_data(recorded):
    ds, envs = recorded
    meta = ds.metadata
    assert meta["run_id"] == envs.run_id == ds.run_id
    assert meta["num_envs"] == 2 and meta["autoreset_mode"] == "NextStep"
    assert meta["relayrl_gym_version"] == relayrl_gym.__version__
    assert ds.observation_space == envs.single_observation_space


def test_to_pandas_and_info(recorded):
    ds, _ = recorded
    frame = ds.to_pandas()
    assert len(frame) == len(ds)
    assert list(frame.columns) == ds.table.column_names
    assert frame["obs"].iloc[0].shape == (3,) and frame["obs"].iloc[0].dtype == np.float32
    assert frame["info"].iloc[0] == '{"t": 1, "vec": [0, 1]}'


def test_load_errors(tmp_path, recorded):
    with pytest.raises(DatasetError, match="no recorded run at"):
        relayrl_gym.load(tmp_path / "missing")
    _, envs = recorded
    # A folder of runs is a dataset of them.
    assert relayrl_gym.load(envs.run_path.parent).run_ids == [envs.run_id]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a relayrl-gym run directory"):
        relayrl_gym.load(tmp_path / "empty")


def test_empty_run_has_the_schema(sink_dir):
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir)
    envs.close()
    ds = relayrl_gym.load(envs.run_path)
    assert len(ds) == 0 and "obs" in ds.table.column_names
    assert ds.summary().steps == 0 and list(ds.episodes()) == []
