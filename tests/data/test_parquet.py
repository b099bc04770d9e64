"""Parquet export: files the Hub's ``datasets``, DuckDB and pyarrow read back as the dataset."""

from __future__ import annotations

import datasets
import duckdb
import numpy as np
import polars
import pyarrow.parquet as pq
import pytest
from gymnasium import spaces
from testing_env import TestingEnv
from tests_helpers import record_random

import relayrl_gym
from relayrl_gym.errors import DatasetError

KEY = ["run_id", "actor_id", "episode_id", "step"]


def _record(sink, env="CartPole-v1", steps=80, seed=0):
    return record_random(sink, env=env, steps=steps, seed=seed)


@pytest.fixture
def two_runs(tmp_path):
    root = tmp_path / "runs"
    _record(root, seed=0)
    _record(root, seed=1)
    return relayrl_gym.load(root)


def test_export_reads_back_the_same_rows_everywhere(two_runs, tmp_path):
    ds = two_runs
    out = ds.export_parquet(tmp_path / "pq", file_bytes=8_000)
    files = sorted((out / "data").glob("*.parquet"))
    assert len(files) > 2 and files[0].name == f"train-00000-of-{len(files):05d}.parquet"
    want = ds.table.sort_by([(k, "ascending") for k in KEY])

    back = pq.read_table(out / "data").sort_by([(k, "ascending") for k in KEY])
    assert back.equals(want)  # every column, types (fixed-size lists, timestamps) included

    rows = duckdb.sql(f"SELECT run_id, actor_id, episode_id, step, obs, reward, terminated "
                      f"FROM '{out}/data/*.parquet' ORDER BY run_id, actor_id, episode_id, "
                      "step").fetchall()
    assert len(rows) == len(ds)
    np.testing.assert_array_equal(np.array([r[4] for r in rows], np.float32),
                                  np.stack(want.column("obs").to_numpy(zero_copy_only=False)))
    assert [r[5] for r in rows] == want.column("reward").to_pylist()

    frame = polars.read_parquet(out / "data" / "*.parquet").sort(KEY)
    assert frame.height == len(ds) and str(frame.schema["obs"]) == "Array(Float32, shape=(4,))"
    np.testing.assert_array_equal(frame["obs"].to_numpy(),
                                  np.stack(want.column("obs").to_numpy(zero_copy_only=False)))

    hub = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train",
                                cache_dir=str(tmp_path / "hf"))
    assert hub.num_rows == len(ds)
    hub = hub.sort(KEY)
    np.testing.assert_array_equal(np.array(hub["obs"], np.float32),
                                  np.stack(want.column("obs").to_numpy(zero_copy_only=False)))
    assert hub["action"] == want.column("action").to_pylist()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "path: data/train-*" in card
    assert f"{len(ds)} rows in {len(files)} Parquet file(s)" in card
    assert all(run_id in card for run_id in ds.run_ids) and "Discrete(2)" in card


def test_filters_apply_and_images_keep_their_bytes(sink_dir, tmp_path):
    image = spaces.Box(0, 255, (48, 32, 3), np.uint8)  # stored once in the Arrow files
    envs = _record(sink_dir, env=lambda: TestingEnv(image, length=5), steps=12)
    ds = relayrl_gym.load(envs.run_path).filter(env_indices=[1])
    out = ds.export_parquet(tmp_path / "pq")
    back = pq.read_table(out / "data")
    assert back.num_rows == len(ds) and set(back.column("env_index").to_pylist()) == {1}
    t = ds.transitions()
    next_obs = np.stack(back.column("next_obs").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(next_obs.reshape(t.next_obs.shape), t.next_obs)


def test_nothing_is_overwritten(two_runs, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists and is not an empty folder"):
        two_runs.export_parquet(taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(DatasetError, match="no rows to export"):
        two_runs.filter(model_versions=[4]).export_parquet(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_bad_options_and_a_failed_export_leave_nothing(two_runs, tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"`compression` must be one of .*zstd, got 'bogus'"):
        two_runs.export_parquet(tmp_path / "a", compression="bogus")
    with pytest.raises(DatasetError, match=r"`file_bytes` must be an int >= 1, got 0"):
        two_runs.export_parquet(tmp_path / "a", file_bytes=0)
    assert not (tmp_path / "a").exists()

    def full_disk(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", full_disk)
    with pytest.raises(OSError, match="No space left"):
        two_runs.export_parquet(tmp_path / "new" / "nested" / "pq")
    assert not (tmp_path / "new").exists()  # the folders it made are gone
