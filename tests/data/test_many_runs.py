"""Many recorded runs as one lazy dataset: folders, globs, lists; filters; streamed batches,
shuffles, samples and torch datasets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from gymnasium import spaces
from testing_env import SPACES, TestingEnv
from tests_helpers import assert_same_nested, make_testing_env, record_random

import relayrl_gym
from relayrl_gym.data.dataset import Dataset
from relayrl_gym.data.episodes import EPISODE_COLUMNS, episodes_of
from relayrl_gym.data.replay import Replay
from relayrl_gym.data.sources import ArrowRun, Where
from relayrl_gym.errors import DatasetError
from relayrl_gym.schema.batches import map_leaves

KEY = ["run_id", "actor_id", "episode_id", "step"]


_record = record_random


def _keys(table):
    return sorted(zip(*(table.column(k).to_pylist() for k in KEY)))


@pytest.fixture
def three_runs(tmp_path):
    root = tmp_path / "runs"
    runs = [_record(root, seed=0), _record(root / "a", seed=1), _record(root / "b" / "c", seed=2)]
    return root, [r.run_path for r in runs]


def test_a_folder_of_runs_is_their_union_once(three_runs, tmp_path):
    root, paths = three_runs
    ds = relayrl_gym.load(root)
    assert sorted(ds.run_ids) == sorted(relayrl_gym.load(p).run_id for p in paths)
    parts = [relayrl_gym.load(p).table for p in paths]
    assert len(ds) == sum(t.num_rows for t in parts) == ds.table.num_rows
    assert _keys(ds.table) == sorted(k for t in parts for k in _keys(t))
    # A list, a glob and the same run named twice give the same rows, once each.
    assert _keys(relayrl_gym.load([str(p) for p in paths] + [paths[0]]).table) == _keys(ds.table)
    assert len(relayrl_gym.load(str(root / "**" / "CartPole-v1-*"))) == len(ds)
    # A copy of a run beside the original would be read twice: refused, naming both places.
    shutil.copytree(paths[0], tmp_path / "copy")
    with pytest.raises(DatasetError, match=r"is at both .* load one of them"):
        relayrl_gym.load([paths[0], tmp_path / "copy"])
    with pytest.raises(DatasetError, match=r"this dataset holds 3 runs; ds\.run_ids"):
        ds.metadata  # noqa: B018
    assert set(ds.runs_metadata) == set(ds.run_ids)


def test_runs_with_other_spaces_are_refused_with_the_groups(tmp_path):
    cartpole = _record(tmp_path / "runs")
    box = _record(tmp_path / "runs", env=make_testing_env(), steps=5)
    with pytest.raises(DatasetError, match=r"2 different pairs of observation and action spaces"
                                           r"(.|\n)*group 1(.|\n)*group 2(.|\n)*load one group"
                       ) as err:
        relayrl_gym.load(tmp_path / "runs")
    assert cartpole.run_id in str(err.value) and box.run_id in str(err.value)
    assert len(relayrl_gym.load([box.run_path])) == 10
    with pytest.raises(DatasetError, match="no recorded run matches"):
        relayrl_gym.load(str(tmp_path / "nothing-*"))


def test_filters_equal_pandas_filters(three_runs):
    ds = relayrl_gym.load(three_runs[0])
    full = ds.to_pandas()
    run = ds.run_ids[1]
    actor = full[full.run_id == run].actor_id.iloc[0]
    cases = [
        (dict(runs=[run]), full.run_id == run),
        (dict(actors=[actor]), full.actor_id == actor),
        (dict(env_indices=[1]), full.env_index == 1),
        (dict(runs=[run], episodes=[0, 2]), (full.run_id == run) & full.episode_id.isin([0, 2])),
        (dict(model_versions=range(-1, 0)), full.model_version == -1),
        (dict(model_versions=[3]), full.model_version == 3),
        (dict(agents=[""], env_indices=[0]), (full.agent_id == "") & (full.env_index == 0)),
    ]
    for options, mask in cases:
        got = ds.filter(**options)
        want = full[mask]
        assert len(got) == len(want), options
        table = got.table
        assert _keys(table) == sorted(map(tuple, want[KEY].itertuples(index=False))), options
        # Observations come with the rows they belong to.
        if len(want):
            both = got.to_pandas().merge(want, on=KEY)
            assert all(np.array_equal(a, b) for a, b in zip(both.obs_x, both.obs_y))
    assert len(ds.filter(runs=[run]).filter(env_indices=[0])) == int(
        ((full.run_id == run) & (full.env_index == 0)).sum())
    with pytest.raises(DatasetError, match=r"`runs` names \['nope'\], which this dataset does "
                                           "not hold"):
        ds.filter(runs=["nope"])


def test_iter_batches_streams_every_row_once_in_order_or_shuffled(three_runs):
    ds = relayrl_gym.load(three_runs[0])
    columns = ["run_id", "actor_id", "episode_id", "step", "obs", "reward"]
    batches = list(ds.iter_batches(batch_size=50, columns=columns))
    assert [len(b["reward"]) for b in batches[:-1]] == [50] * (len(batches) - 1)
    assert sum(len(b["reward"]) for b in batches) == len(ds)
    assert len(list(ds.iter_batches(batch_size=50, drop_last=True))) == len(ds) // 50
    joined = {k: np.concatenate([b[k] for b in batches]) for k in columns}
    table = ds.to_table(columns)
    np.testing.assert_array_equal(joined["obs"], np.stack(table.column("obs").to_numpy(
        zero_copy_only=False)))
    assert joined["obs"].dtype == np.float32 and joined["obs"].shape == (len(ds), 4)
    joined["obs"][0] = 7.0  # the caller's arrays are writable
    keys = list(zip(*(joined[k].tolist() for k in KEY)))
    assert keys == list(zip(*(table.column(k).to_pylist() for k in KEY)))

    shuffled = list(ds.iter_batches(batch_size=64, columns=KEY, shuffle=True, seed=3,
                                    shuffle_buffer=100))
    got = [k for b in shuffled for k in zip(*(b[c].tolist() for c in KEY))]
    assert sorted(got) == sorted(keys) and got != keys
    again = [k for b in ds.iter_batches(batch_size=64, columns=KEY, shuffle=True, seed=3,
                                        shuffle_buffer=100) for k in zip(*(b[c].tolist()
                                                                           for c in KEY))]
    assert again == got
    with pytest.raises(DatasetError, match=r"`columns` names \['rewards'\].*choose from"):
        next(ds.iter_batches(columns=["rewards"]))
    with pytest.raises(DatasetError, match="`batch_size` must be >= 1, got 0"):
        next(ds.iter_batches(batch_size=0))


@pytest.mark.parametrize("name", ["box", "image", "discrete", "multidiscrete", "multibinary",
                                  "dict", "tuple"])
def test_sample_draws_recorded_rows_of_every_space(name, sink_dir):
    space = SPACES[name]
    envs = _record(sink_dir, env=lambda: TestingEnv(space, space, length=4), steps=30)
    ds = relayrl_gym.load(envs.run_path)
    full = ds.transitions()
    table = ds.to_table(KEY)
    where = {k: i for i, k in enumerate(zip(*(table.column(c).to_pylist() for c in KEY)))}
    drawn = ds.sample(64, seed=0, columns=[*KEY, "obs", "action", "next_obs", "reward"])
    rows = [where[k] for k in zip(*(drawn[c].tolist() for c in KEY))]

    for column in ("obs", "action", "next_obs", "reward"):
        want = map_leaves(lambda leaf: leaf[rows], getattr(full, column))
        assert_same_nested(drawn[column], want, dtypes=True)
    again = ds.sample(64, seed=0, columns=[*KEY, "obs", "action", "next_obs", "reward"])
    np.testing.assert_array_equal(again["reward"], drawn["reward"])
    assert space.contains(_first(drawn["obs"]))


def _first(batch):
    if isinstance(batch, dict):
        return {k: _first(v) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_first(v) for v in batch)
    return batch[0]


def test_sample_and_errors_of_an_empty_selection(three_runs):
    ds = relayrl_gym.load(three_runs[0])
    rng = np.random.default_rng(0)
    first, second = ds.sample(32, seed=rng), ds.sample(32, seed=rng)
    assert first["obs"].shape == (32, 4) and not np.array_equal(first["obs"], second["obs"])
    with pytest.raises(DatasetError, match="no transitions to sample"):
        ds.filter(model_versions=[7]).sample(4)


def test_to_torch_feeds_a_dataloader_with_workers(three_runs):
    ds = relayrl_gym.load(three_runs[0])
    data = ds.to_torch(columns=["obs", "action", "reward", "terminated"])
    assert len(data) == len(ds)
    loader = torch.utils.data.DataLoader(data, batch_size=40, num_workers=2)
    batches = list(loader)
    obs = torch.cat([b["obs"] for b in batches])
    assert obs.dtype == torch.float32 and obs.shape == (len(ds), 4)
    np.testing.assert_array_equal(obs.numpy(), ds.transitions().obs)
    assert batches[0]["action"].dtype == torch.int64
    assert batches[0]["terminated"].dtype == torch.bool
    item = data[0]
    assert relayrl_gym.load(three_runs[0]).to_torch(["timestamp"])[0]["timestamp"].dtype == \
        torch.int64  # nanoseconds since the epoch, which collate can stack
    item["obs"][0] = 99.0  # a copy: the next read is unchanged
    assert data[0]["obs"][0] != 99.0
    with pytest.raises(IndexError, match="out of range"):
        data[len(ds)]


def test_observations_stored_once_are_whole_through_filters(sink_dir):
    image = spaces.Box(0, 255, (48, 32, 3), np.uint8)  # 4.6 KB: stored once
    envs = _record(sink_dir, env=lambda: TestingEnv(image, length=5), steps=23, actors=3)
    ds = relayrl_gym.load(envs.run_path)
    assert ds.table.schema.field("next_obs").nullable is False
    full = ds.transitions()
    env_index = ds.to_table(["env_index"]).column("env_index").to_numpy()
    one = ds.filter(env_indices=[1])
    got = np.concatenate([b["next_obs"] for b in one.iter_batches(7, columns=["next_obs"])])
    np.testing.assert_array_equal(got, full.next_obs[env_index == 1])


def test_len_and_summary_decode_no_observation(three_runs, monkeypatch):
    ds = relayrl_gym.load(three_runs[0])
    want = (len(ds), ds.summary())

    def refuse(*_):
        raise AssertionError("an observation was decoded")

    monkeypatch.setattr(type(ds.schema.obs), "from_arrow", refuse)
    assert (len(ds), ds.summary()) == want
    assert want[1].steps == want[0] and want[1].run_id == "3 runs"
    episodes = pc.sum(pc.cast(pc.or_(ds.table.column("terminated"),
                                     ds.table.column("truncated")), "int64")).as_py()
    assert want[1].episodes == episodes


def test_episodes_of_many_runs(three_runs):
    ds = relayrl_gym.load(three_runs[0])
    episodes = list(ds.episodes())
    assert sum(len(e) for e in episodes) == len(ds)
    finished = [e for e in episodes if e.terminations[-1] or e.truncations[-1]]
    assert len(finished) == ds.summary().episodes
    # Each episode's observations are its rows' obs, then the last row's next_obs.
    table = ds.to_table(["actor_id", "episode_id", "step"])
    t = ds.transitions()
    row = {k: i for i, k in enumerate(zip(*(table.column(c).to_pylist()
                                            for c in ("actor_id", "episode_id", "step"))))}
    for e in episodes:
        rows = [row[(e.actor_id, e.episode_id, step)] for step in range(len(e))]
        np.testing.assert_array_equal(e.observations[:-1], t.obs[rows])
        np.testing.assert_array_equal(e.observations[-1], t.next_obs[rows[-1]])
        np.testing.assert_array_equal(e.rewards, t.reward[rows])


_BOUNDED = """
import re, sys, numpy as np, relayrl_gym

def anon():
    text = open("/proc/self/status").read()
    return int(re.search(r"RssAnon:\\s+(\\d+)", text).group(1)) * 1024

ds = relayrl_gym.load(sys.argv[1])
columns = ["obs", "next_obs", "reward"]
next(ds.iter_batches(128, columns=columns))  # imports, pools warmed
before, peaks, rows, seen = anon(), [], 0, 0
for batch in ds.iter_batches(128, columns=columns):
    rows += len(batch["reward"])
    seen += batch["obs"].nbytes + batch["next_obs"].nbytes
    peaks.append(anon())
third = len(peaks) // 3
print(rows, seen, max(peaks) - before, max(peaks[third:]) - max(peaks[:third]))
"""


@pytest.fixture(scope="module")
def large_run(tmp_path_factory):
    image = spaces.Box(0, 255, (64, 64, 3), np.uint8)  # random pixels: zstd cannot shrink them
    sink = tmp_path_factory.mktemp("large")
    envs = _record(sink, env=lambda: TestingEnv(image, length=50), steps=3600, actors=4)
    return envs.run_path


def test_iterating_a_dataset_five_times_the_budget_keeps_memory_bounded(large_run):
    budget = 64 * 1024 * 1024
    # Arrow on the system allocator and glibc with a fixed mmap threshold: every large block
    # freed goes back to the system, instead of allocators keeping pools whose high-water
    # marks wander; what is measured is what is held.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),
           "ARROW_DEFAULT_MEMORY_POOL": "system"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_BOUNDED), str(large_run)],
                         capture_output=True, text=True, timeout=300, check=True,
                         env=env).stdout
    rows, seen, growth, later = map(int, out.split())
    assert rows == len(relayrl_gym.load(large_run)) > 13000
    assert seen >= 5 * budget  # the decoded observations streamed through
    print(f"streamed {seen / 2**20:.0f} MiB; private memory grew by {growth / 2**20:.1f} MiB, "
          f"{later / 2**20:.1f} MiB of it after the first third")
    assert growth < budget, f"private memory grew by {growth / 2**20:.1f} MiB"
    assert later < 16 * 1024 * 1024  # flat: what the first third needed is reused after it


def test_filters_on_any_column_of_observations_stored_once(sink_dir):
    image = spaces.Box(0, 255, (48, 32, 3), np.uint8)  # 4.6 KB: stored once
    envs = _record(sink_dir, env=lambda: TestingEnv(image, length=5), steps=23, actors=3)
    ds = relayrl_gym.load(envs.run_path)
    full = ds.transitions()
    table = ds.to_table(["actor_id", "model_version"])
    actor = table.column("actor_id")[0].as_py()
    mine = np.array(table.column("actor_id").to_pylist()) == actor
    one = ds.filter(actors=[actor])
    got = np.concatenate([b["next_obs"] for b in one.iter_batches(7)])
    np.testing.assert_array_equal(got, full.next_obs[mine])
    assert len(ds.filter(model_versions=[-1]).transitions().next_obs) == len(ds)
    assert ds.filter(actors=[actor]).sample(5, seed=0)["next_obs"].shape == (5, 48, 32, 3)


def test_a_run_being_recorded_is_read_as_it_was_when_opened(tmp_path):
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=tmp_path, flush_interval=0.001,
                            batch_rows=8)
    envs.reset(seed=0)
    stop = threading.Event()

    def record():
        while not stop.is_set():
            envs.step(envs.action_space.sample())

    thread = threading.Thread(target=record)
    thread.start()
    try:
        time.sleep(0.3)
        for _ in range(3):
            ds = relayrl_gym.load(envs.run_path)
            rows = len(ds)
            time.sleep(0.05)  # the part being written grows meanwhile
            assert ds.sample(4, seed=0)["obs"].shape == (4, 4)
            assert len(ds) == rows == sum(len(b["reward"]) for b in ds.iter_batches(64))
    finally:
        stop.set()
        thread.join()
        envs.close()


def test_to_torch_hands_strings_over_as_they_are(sink_dir):
    envs = _record(sink_dir, steps=10)
    data = relayrl_gym.load(envs.run_path).to_torch(columns=["reward", "run_id", "actor_id"])
    item = data[0]
    assert item["run_id"] == envs.run_id and isinstance(item["actor_id"], str)
    assert item["reward"].dtype == torch.float64


def test_batches_of_a_database_run_are_the_callers(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    envs = _record(url, steps=10)
    ds = relayrl_gym.load(f"{url}?run={envs.run_id}")
    first = next(ds.iter_batches(100))
    first["reward"] -= 100.0
    first["obs"][:] = 0.0
    again = next(ds.iter_batches(100))
    assert (again["reward"] == 1.0).all() and (again["obs"] != 0.0).any()


def test_globs_and_spellings_name_runs_once(three_runs, monkeypatch):
    root, _ = three_runs
    (root / "returns.png").write_bytes(b"not a run")
    assert sorted(relayrl_gym.load(str(root / "**")).run_ids) == sorted(
        relayrl_gym.load(root).run_ids)
    assert len(relayrl_gym.load(str(root / "*")).run_ids) == 3
    monkeypatch.chdir(root.parent)
    both = relayrl_gym.load(["runs", str(root.resolve())])
    assert len(both.run_ids) == 3


def test_filter_values_of_the_wrong_type_are_named(three_runs):
    ds = relayrl_gym.load(three_runs[0])
    assert len(ds.filter(episodes=0)) == len(ds.filter(episodes=[0]))
    assert len(ds.filter(agents="")) == len(ds)
    with pytest.raises(DatasetError, match=r"`agents` takes agent names \(str\), got 1"):
        ds.filter(agents=[1])
    with pytest.raises(DatasetError, match=r"`model_versions` takes integers, got '1'"):
        ds.filter(model_versions=["1"])
    with pytest.raises(DatasetError, match=r"`env_indices` takes integers, got 0.5"):
        ds.filter(env_indices=[0.5])


def test_runs_with_other_policy_outputs_read_together(tmp_path):
    env = gym.make("CartPole-v1")

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pi, self.v = torch.nn.Linear(4, 2), torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.pi(x), self.v(x)[:, 0]

    torch.manual_seed(0)
    one = relayrl_gym.ModelModule.from_torch(torch.nn.Linear(4, 2), env.observation_space,
                                             env.action_space, path=tmp_path / "one",
                                             format="onnx", action_head="sample")
    two = relayrl_gym.ModelModule.from_torch(TwoHeads(), env.observation_space,
                                             env.action_space, path=tmp_path / "two",
                                             format="onnx", action_head="sample",
                                             extra_outputs=("value",))
    runs = [relayrl_gym.collect("CartPole-v1", policy=p, actors=2, steps=40, seed=0,
                                sink=tmp_path / "runs").run_path for p in (one, two)]
    runs.append(relayrl_gym.collect("CartPole-v1", actors=2, steps=40, seed=0,
                                    sink=tmp_path / "runs").run_path)
    for order in (runs, runs[::-1], [runs[2], runs[0]]):
        ds = relayrl_gym.load(order)
        rows = sum(len(b["reward"]) for b in ds.iter_batches(4096, ["data", "reward"]))
        assert rows == len(ds)
        data = next(ds.iter_batches(len(ds), ["data"]))["data"]
        table = ds.to_table(["data"]).column("data").combine_chunks()
        assert sorted(data) == sorted(f.name for f in table.type)
        for name in data:
            np.testing.assert_array_equal(data[name], table.field(name).to_numpy(
                zero_copy_only=False))
        assert ds.sample(3, seed=0, columns=["data"])["data"].keys() == data.keys()


def test_episodes_of_filters_that_empty_a_batch(sink_dir):
    image = spaces.Box(0, 255, (48, 32, 3), np.uint8)  # stored once: filtered after reading
    envs = _record(sink_dir, env=lambda: TestingEnv(image, length=5), steps=23, actors=3,
                   batch_rows=8)
    ds = relayrl_gym.load(envs.run_path)
    last = int(ds.to_table(["episode_id"]).column("episode_id").to_numpy().max())
    (episode,) = ds.filter(episodes=[last]).episodes()
    assert episode.episode_id == last


def test_a_glob_passes_over_folders_without_runs(three_runs):
    root, _ = three_runs
    (root / "tb").mkdir()  # collect --tensorboard runs/tb beside the runs
    assert len(relayrl_gym.load(str(root / "*")).run_ids) == 3


def test_ranges_name_integers_only(three_runs):
    ds = relayrl_gym.load(three_runs[0])
    with pytest.raises(DatasetError, match=r"`actors` takes actor names \(str\), got 0"):
        ds.filter(actors=range(2))


def test_rows_are_chosen_after_next_obs_is_restored(sink_dir):
    # A filter that drops a kept row's successor (a policy swapped mid-episode does, with
    # model_versions): the successor still gives the kept row its next observation.
    image = spaces.Box(0, 255, (48, 32, 3), np.uint8)
    envs = _record(sink_dir, env=lambda: TestingEnv(image, length=5), steps=23, actors=3)
    ds = relayrl_gym.load(envs.run_path)
    full, steps = ds.transitions(), ds.to_table(["step"]).column("step").to_numpy()
    early = Dataset([ArrowRun(envs.run_path)], Where(pc.field("step") < 2, frozenset({"step"})))
    np.testing.assert_array_equal(early.transitions().next_obs, full.next_obs[steps < 2])


def test_sample_reaches_every_row(sink_dir):
    ds = relayrl_gym.load(_record(sink_dir, env=make_testing_env(length=4), steps=5).run_path)
    drawn, table = ds.sample(500, seed=0, columns=KEY), ds.to_table(KEY)
    assert set(zip(*(drawn[c].tolist() for c in KEY))) == set(
        zip(*(table.column(c).to_pylist() for c in KEY)))


def test_replay_of_several_batches_keeps_their_order():
    replay = Replay.build(iter([{"x": np.arange(3.0)}, {"x": np.arange(3.0, 5.0)}]), rows=5)
    assert replay.take(np.arange(5))["x"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_episodes_of_interleaved_rows_in_small_batches(sink_dir):
    # Senders of a collector interleave: rows of an episode in several batches, out of order.
    ds = relayrl_gym.load(_record(sink_dir, steps=60, actors=3).run_path)
    want = {e.episode_id: e for e in ds.episodes()}
    table, rng = ds.to_table(list(EPISODE_COLUMNS)), np.random.default_rng(0)
    batches = [b.take(pa.array(rng.permutation(b.num_rows)))
               for b in table.to_batches(max_chunksize=5)]
    got = list(episodes_of(batches, ds.schema))
    assert sorted(e.episode_id for e in got) == sorted(want)
    for e in got:
        np.testing.assert_array_equal(e.observations, want[e.episode_id].observations)
        np.testing.assert_array_equal(e.rewards, want[e.episode_id].rewards)


def test_shuffle_starts_from_different_files(tmp_path):
    for seed in range(3):
        _record(tmp_path / "runs" / str(seed), seed=seed)
    ds = relayrl_gym.load(tmp_path / "runs")
    firsts = {next(ds.iter_batches(1, columns=["run_id"], shuffle=True, seed=s,
                                   shuffle_buffer=1))["run_id"][0] for s in range(10)}
    assert len(firsts) > 1
