"""Minari export and import: real recordings written with the real minari package, read back
by Minari and by `relayrl_gym.load("minari:<id>")`, value for value."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from gymnasium import spaces
from testing_env import SPACES
from tests_helpers import assert_same_nested, make_testing_env

import relayrl_gym
from relayrl_gym.errors import DatasetError, MissingDependencyError

minari = pytest.importorskip("minari")

from minari.dataset.minari_storage import is_image_space  # noqa: E402
from minari.storage.datasets_root_dir import get_dataset_path  # noqa: E402

from relayrl_gym.data import minari_io  # noqa: E402

IMAGE = spaces.Box(0, 255, (32, 32, 3), np.uint8)  # >= 32x32: what Minari would JPEG-encode


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    """Every test writes its Minari datasets to a folder of its own."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def _record(env, sink_dir, steps, actors=2, seed=0, **kwargs):
    envs = relayrl_gym.wrap(env, actors=actors, sink=sink_dir, **kwargs)
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    envs.close()
    return relayrl_gym.load(envs.run_path)


def _finished(ds):
    return [e for e in ds.episodes() if e.terminations[-1] or e.truncations[-1]]


def _same_episodes(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, other in zip(ours, theirs):
        assert_same_nested(mine.observations, other.observations, dtypes=True)
        assert_same_nested(mine.actions, other.actions, dtypes=True)
        assert_same_nested(mine.rewards, np.asarray(other.rewards, np.float64), dtypes=True)
        assert_same_nested(mine.terminations, other.terminations, dtypes=True)
        assert_same_nested(mine.truncations, other.truncations, dtypes=True)


def test_cartpole_round_trip(sink_dir, monkeypatch):
    monkeypatch.setattr(minari_io, "_CHUNK", 3)  # several writes, and a remainder
    # A 15-step limit: episodes end by termination and by truncation.
    ds = _record("CartPole-v1", sink_dir, 150, max_episode_steps=15)
    summary = ds.summary()
    assert summary.episodes >= 8 and summary.unfinished_episodes > 0
    ids = ds.export_minari("relayrl/cartpole-random-v0", author="Ada", algorithm_name="random",
                           description="random actions")
    assert ids == ["relayrl/cartpole-random-v0"]
    mds = minari.load_dataset(ids[0])
    ours = _finished(ds)
    assert mds.total_episodes == summary.episodes == len(ours)
    assert mds.total_steps == sum(len(e) for e in ours)
    theirs = list(mds.iterate_episodes())
    _same_episodes(ours, theirs)
    assert any(e.truncations[-1] for e in theirs) and any(e.terminations[-1] for e in theirs)
    origins = list(mds.storage.get_episode_metadata(range(mds.total_episodes)))
    assert [m["relayrl_episode_id"] for m in origins] == [e.episode_id for e in ours]
    assert {m["relayrl_run_id"] for m in origins} == {ds.run_id}
    assert mds.observation_space == ds.observation_space
    assert mds.action_space == ds.action_space
    sampled = mds.sample_episodes(3)
    assert len(sampled) == 3 and all(len(e.observations) == len(e) + 1 for e in sampled)
    env = mds.recover_environment()
    assert env.spec.id == "CartPole-v1" and env.spec.max_episode_steps == 15  # as recorded
    env.close()
    meta = mds.storage.metadata
    assert meta["author"] == {"Ada"} and meta["algorithm_name"] == "random"
    assert meta["data_format"] == "arrow" and meta["jpeg_encoding"] is False
    assert meta["dataset_size"] == mds.storage.get_size() > 0  # measured once, at the end


def test_unfinished_episodes_on_request(sink_dir):
    ds = _record("CartPole-v1", sink_dir, 40)
    summary = ds.summary()
    ds.export_minari("cartpole-all-v0", include_unfinished=True)
    theirs = list(minari.load_dataset("cartpole-all-v0").iterate_episodes())
    assert len(theirs) == summary.episodes + summary.unfinished_episodes
    _same_episodes(list(ds.episodes()), theirs)
    cut = theirs[-summary.unfinished_episodes:]  # unfinished ones come last, flags as recorded
    assert not any(e.terminations[-1] or e.truncations[-1] for e in cut)


def test_images_are_stored_bit_for_bit(sink_dir):
    ds = _record(make_testing_env(obs_space=IMAGE, length=5), sink_dir, 12)
    assert is_image_space(ds.observation_space)  # JPEG would change these random pixels
    ds.export_minari("images-v0")
    mds = minari.load_dataset("images-v0")
    assert mds.storage.jpeg_encoding is False
    _same_episodes(_finished(ds), list(mds.iterate_episodes()))


@pytest.mark.parametrize(("obs", "act"), [
    (SPACES["dict"], SPACES["discrete"]),
    (SPACES["tuple"], SPACES["box64-2d"]),
    (SPACES["multidiscrete"], SPACES["multibinary"]),
], ids=["dict", "tuple", "multidiscrete"])
def test_nested_spaces_round_trip(sink_dir, obs, act):
    ds = _record(make_testing_env(obs_space=obs, action_space=act, length=3), sink_dir, 8)
    ds.export_minari("spaces/nested-v2")
    mds = minari.load_dataset("spaces/nested-v2")
    assert mds.observation_space == obs and mds.action_space == act
    assert mds.env_spec is None  # an env object of the caller: the spaces only
    _same_episodes(_finished(ds), list(mds.iterate_episodes()))
    back = relayrl_gym.load("minari:spaces/nested-v2")
    assert back.observation_space == obs and back.action_space == act
    _same_episodes(_finished(ds), list(back.episodes()))


def _play_tictactoe(sink_dir, games=4):
    from pettingzoo.classic import tictactoe_v3

    env = relayrl_gym.wrap(tictactoe_v3.env(), sink=sink_dir)
    rng = np.random.default_rng(0)
    for game in range(games):
        env.reset(seed=game)
        for _agent in env.agent_iter():
            obs, _, term, trunc, _ = env.last()
            env.step(None if term or trunc else int(rng.choice(np.flatnonzero(obs["action_mask"]))))
    env.close()
    return relayrl_gym.load(env.run_path)


def test_pettingzoo_one_dataset_per_agent(sink_dir):
    pytest.importorskip("pettingzoo")
    ds = _play_tictactoe(sink_dir)
    agents = ds.metadata["agents"]
    ids = ds.export_minari("relayrl/tictactoe-v0")
    assert ids == [f"relayrl/tictactoe-{a}-v0" for a in sorted(agents)]
    assert set(ids) <= set(minari.list_local_datasets())
    for agent, dataset_id in zip(sorted(agents), ids):
        mds = minari.load_dataset(dataset_id)
        ours = _finished(ds.filter(agents=[agent]))
        assert mds.total_episodes == len(ours) == 4
        _same_episodes(ours, list(mds.iterate_episodes()))
        origins = mds.storage.get_episode_metadata(range(mds.total_episodes))
        assert {m["agent_id"] for m in origins} == {agent}
        assert mds.env_spec is None  # a PettingZoo game is no Gymnasium env


def test_load_minari_gives_the_original_rows(sink_dir):
    ds = _record("CartPole-v1", sink_dir, 120)
    ds.export_minari("relayrl/cartpole-back-v0")
    back = relayrl_gym.load("minari:relayrl/cartpole-back-v0")
    ours = _finished(ds)
    assert back.run_id == "minari:relayrl/cartpole-back-v0"
    assert len(back) == sum(len(e) for e in ours)
    episodes = list(back.episodes())
    _same_episodes(ours, episodes)
    assert [e.episode_id for e in episodes] == list(range(len(ours)))
    # Row by row: the transitions of the finished episodes, in the same order.
    mine = ds.filter(episodes=[e.episode_id for e in ours]).to_table()
    order = {e.episode_id: i for i, e in enumerate(ours)}
    mine = mine.take(np.lexsort([mine["step"].to_numpy(),
                                 [order[i] for i in mine["episode_id"].to_pylist()]]))
    table = back.table
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "step"):
        assert table[name].equals(mine[name]), name
    assert set(table["model_version"].to_pylist()) == {-1}
    assert table["info"].null_count == len(table)
    assert len(back.filter(episodes=[1])) == len(ours[1])
    assert back.summary().episodes == len(ours)
    assert back.metadata["env_id"] == "CartPole-v1"


def test_load_a_dataset_minari_wrote(tmp_path):
    """A dataset Minari made from its own buffers (not an export) reads as a run too."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(0)
    buffers = [EpisodeBuffer(observations=rng.random((n + 1, 4), dtype=np.float32),
                             actions=rng.integers(0, 2, n), rewards=np.ones(n),
                             terminations=np.arange(n) == n - 1, truncations=np.zeros(n, bool))
               for n in (3, 5)]
    with pytest.warns(UserWarning):  # Minari asks for an author, a description, ...
        minari.create_dataset_from_buffers("made/by-minari-v0", buffers, env="CartPole-v1",
                                           data_format="arrow")
    back = relayrl_gym.load("minari:made/by-minari-v0")
    assert len(back) == 8
    episodes = list(back.episodes())
    for buffer, episode in zip(buffers, episodes):
        assert_same_nested(buffer.observations, episode.observations, dtypes=True)
        assert_same_nested(buffer.actions, episode.actions, dtypes=True)
    assert [e.terminations[-1] for e in episodes] == [True, True]


def test_an_existing_id_is_never_overwritten(sink_dir):
    ds = _record("CartPole-v1", sink_dir, 80)
    ds.export_minari("relayrl/taken-v0")
    before = minari.load_dataset("relayrl/taken-v0").total_episodes
    with pytest.raises(DatasetError, match=r"already has a local dataset relayrl/taken-v0.*"
                                           r"'relayrl/taken-v1'"):
        ds.export_minari("relayrl/taken-v0", include_unfinished=True)
    assert minari.load_dataset("relayrl/taken-v0").total_episodes == before


def test_one_taken_agent_id_stops_every_agent(sink_dir):
    pytest.importorskip("pettingzoo")
    ds = _play_tictactoe(sink_dir, games=1)
    first, second = sorted(ds.metadata["agents"])
    # An agent's rows alone still name the agent: this writes ttt-<second>-v0.
    assert ds.filter(agents=[second]).export_minari("ttt-v0") == [f"ttt-{second}-v0"]
    with pytest.raises(DatasetError, match=f"ttt-{second}-v0"):
        ds.export_minari("ttt-v0")
    assert not get_dataset_path(f"ttt-{first}-v0").exists()


@pytest.mark.parametrize("bad", ["cartpole", "bad id!-v0", "name-vx"])
def test_an_invalid_id(sink_dir, minari_root, bad):
    ds = _record("CartPole-v1", sink_dir, 60)
    with pytest.raises(DatasetError, match=r"not a valid Minari dataset id.*name-v\(version\)"):
        ds.export_minari(bad)
    assert not list(minari_root.glob("**/data"))


def test_unknown_id_on_load():
    with pytest.raises(DatasetError, match=r"no local dataset 'relayrl/nothing-v0'.*"
                                           r"`minari list local`"):
        relayrl_gym.load("minari:relayrl/nothing-v0")


def test_no_finished_episodes(sink_dir):
    ds = _record("CartPole-v1", sink_dir, 5)  # shorter than any CartPole episode
    with pytest.raises(DatasetError, match=r"no finished episode.*include_unfinished=True"):
        ds.export_minari("unfinished-v0")
    assert not get_dataset_path("unfinished-v0").exists()
    assert ds.export_minari("unfinished-v0", include_unfinished=True) == ["unfinished-v0"]


def test_a_space_minari_cannot_store(sink_dir):
    seq = spaces.Sequence(spaces.Discrete(3))
    ds = _record(make_testing_env(obs_space=seq, length=2), sink_dir, 3)
    with pytest.raises(DatasetError, match=r"Minari cannot store the observation space Seq"):
        ds.export_minari("sequence-v0")
    assert not get_dataset_path("sequence-v0").exists()


def test_a_failed_write_leaves_nothing(sink_dir, monkeypatch):
    ds = _record("CartPole-v1", sink_dir, 80)

    def fail(storage, episodes):
        raise OSError("disk full")

    monkeypatch.setattr(minari_io, "_write", fail)
    with pytest.raises(OSError, match="disk full"):
        ds.export_minari("relayrl/failed-v0")
    assert not get_dataset_path("relayrl/failed-v0").exists()
    with pytest.raises(OSError, match="disk full"):
        ds.export_minari("brandnew/failed-v0")  # the namespace it made goes too
    assert not get_dataset_path("brandnew/failed-v0").parent.exists()


def test_a_minari_dataset_plots_by_its_episodes(sink_dir):
    from relayrl_gym.data.plots import episode_table

    ds = _record("CartPole-v1", sink_dir, 120)
    ds.export_minari("relayrl/plotted-v0")
    back = relayrl_gym.load("minari:relayrl/plotted-v0")
    ends = episode_table(back).column("end_step").to_pylist()
    assert ends == sorted(ends) and len(set(ends)) == len(ends) == back.summary().episodes
    assert ends[-1] == len(back)


def test_without_minari(sink_dir, monkeypatch):
    ds = _record("CartPole-v1", sink_dir, 5)
    monkeypatch.setitem(sys.modules, "minari", None)
    monkeypatch.delitem(sys.modules, "relayrl_gym.data.minari_io")  # imported again, and fails
    with pytest.raises(MissingDependencyError, match=r'relayrl-gym\[minari\]'):
        ds.export_minari("x-v0")
    with pytest.raises(MissingDependencyError, match=r'relayrl-gym\[minari\]'):
        relayrl_gym.load("minari:x-v0")
