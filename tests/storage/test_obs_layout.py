"""Observations stored once (``ArrowSink(obs_layout="once")``): the same transitions back as
the ``pairs`` layout, about half the bytes for images, readable after a crash, and never a
``next_obs`` that was not recorded."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from gymnasium import spaces
from testing_env import SPACES
from tests_helpers import make_testing_env

import relayrl_gym
from relayrl_gym.errors import ConfigError
from relayrl_gym.sinks.arrow import ArrowSink
from relayrl_gym.storage import obs_layout
from relayrl_gym.storage.run_dir import read_in_progress

IMAGE = spaces.Box(0, 255, (32, 32, 4), np.uint8)  # 4 KiB: stored once under "auto"
#: Every column that does not depend on the run (its id, actor names, wall clock).
COMPARED = ["agent_id", "env_index", "episode_id", "step", "obs", "action", "reward",
            "next_obs", "terminated", "truncated", "model_version", "info"]


def _record(root: Path, layout: str, *, obs_space: spaces.Space = IMAGE, mode: str = "next_step",
            steps: int = 60, batch_rows: int = 16, length: int = 7) -> Path:
    envs = relayrl_gym.wrap(make_testing_env(obs_space=obs_space, length=length, info=True),
                            actors=3, sink=ArrowSink(root, obs_layout=layout),
                            autoreset_mode=mode, batch_rows=batch_rows, run_id=layout)
    envs.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        envs.step(rng.integers(0, 2, 3))
    envs.close()
    return envs.run_path


def _files_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in run.glob("part-*.arrow"))


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_once_reads_back_the_same_transitions_as_pairs(tmp_path: Path, mode: str) -> None:
    # Episodes of 7 steps in blocks of 16 rows: episode ends and block ends both fall mid-batch.
    once = relayrl_gym.load(_record(tmp_path, "once", mode=mode)).table
    pairs = relayrl_gym.load(_record(tmp_path, "pairs", mode=mode)).table
    # Under NEXT_STEP each 7-step episode is followed by a reset pseudo-step (not recorded).
    assert once.num_rows == pairs.num_rows == 60 * 3 - (3 * (60 // 8) if mode == "next_step" else 0)
    assert once.select(COMPARED).equals(pairs.select(COMPARED))
    assert once.schema.field("next_obs").nullable is False  # the logical schema, as recorded
    # Whole transitions: each continuing row's next_obs is the obs of that env's next row.
    table = once.to_pandas()
    obs, next_obs = (np.stack(table[c].to_numpy()) for c in ("obs", "next_obs"))
    continuing = 0
    for _, rows in table.groupby(["env_index", "episode_id"]).groups.items():
        for a, b in itertools.pairwise(sorted(rows, key=lambda r: table["step"][r])):
            assert np.array_equal(next_obs[a], obs[b])
            continuing += 1
    assert continuing > once.num_rows / 2


def test_once_stores_each_continuing_observation_once(tmp_path: Path) -> None:
    once_run = _record(tmp_path, "once", steps=200, batch_rows=64, length=50)
    pairs_run = _record(tmp_path, "pairs", steps=200, batch_rows=64, length=50)
    files = sorted(once_run.glob("part-*.arrow"))
    with pa.ipc.open_file(files[0]) as reader:
        stored = reader.read_all()
    assert obs_layout.is_once(stored.schema)
    # Only rows whose next transition is not in the same batch keep their next_obs:
    # an episode's last row and each env's last row in a batch.
    kept = stored.column("next_obs").is_valid().to_numpy(zero_copy_only=False)
    assert 0 < kept.sum() < 0.15 * len(kept)
    # Random (incompressible) images: the files hold about one observation a row.
    ratio = _files_bytes(once_run) / _files_bytes(pairs_run)
    assert ratio < 0.6, ratio


def test_auto_picks_once_for_images_and_pairs_for_small_observations(tmp_path: Path) -> None:
    image = _record(tmp_path / "image", "auto")
    small = _record(tmp_path / "small", "auto", obs_space=SPACES["box"])
    for run, once in ((image, True), (small, False)):
        with pa.ipc.open_file(next(run.glob("part-*.arrow"))) as reader:
            assert obs_layout.is_once(reader.schema) is once


def test_a_crashed_run_in_the_once_layout_reads_back_whole_transitions(tmp_path: Path) -> None:
    envs = relayrl_gym.wrap(make_testing_env(obs_space=IMAGE, length=5), actors=2,
                            sink=ArrowSink(tmp_path, obs_layout="once"), batch_rows=8)
    envs.reset(seed=0)
    for _ in range(40):
        envs.step(np.array([0, 1]))
    envs.agent.recorder.flush()
    # Read while the part is still in progress, as after a SIGKILL.
    in_progress = next(envs.run_path.glob(".part-*.inprogress"))
    assert any(b.column("next_obs").null_count for b in read_in_progress(in_progress))
    table = relayrl_gym.load(envs.run_path).table
    assert table.column("next_obs").null_count == 0
    envs.close()
    assert relayrl_gym.load(envs.run_path).table.slice(0, table.num_rows).select(
        COMPARED).equals(table.select(COMPARED))


def test_a_next_obs_unlike_the_next_rows_obs_is_kept() -> None:
    # Row 0's next_obs differs from row 1's obs (the env changed it in between): stored.
    schema = _image_schema(3)
    batch = _batch(schema, obs=[[1, 1, 1], [2, 2, 2]], next_obs=[[9, 9, 9], [3, 3, 3]])
    stored = obs_layout.stored_schema(schema)
    compacted = obs_layout.compact(batch, stored)
    assert compacted.column("next_obs").null_count == 0
    same = _batch(schema, obs=[[1, 1, 1], [2, 2, 2]], next_obs=[[2, 2, 2], [3, 3, 3]])
    compacted = obs_layout.compact(same, stored)
    assert compacted.column("next_obs").is_null().to_pylist() == [True, False]
    assert obs_layout.restore(compacted, schema).equals(same)


def test_a_null_next_obs_without_a_next_row_is_refused() -> None:
    schema = _image_schema(3)
    stored = obs_layout.stored_schema(schema)
    batch = _batch(schema, obs=[[1, 1, 1], [2, 2, 2]], next_obs=[[2, 2, 2], [3, 3, 3]])
    cut = obs_layout.compact(batch, stored).slice(0, 1)  # its next row is gone
    with pytest.raises(relayrl_gym.errors.DatasetError, match="no next transition"):
        obs_layout.restore(cut, schema)


def test_bad_layouts_are_refused_with_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="obs_layout"):
        ArrowSink(tmp_path, obs_layout="twice")
    with pytest.raises(ConfigError, match="array observations"):
        relayrl_gym.wrap(make_testing_env(obs_space=SPACES["dict"]), actors=1,
                         sink=ArrowSink(tmp_path, obs_layout="once"))


def test_a_game_stores_each_agents_observations_once(tmp_path: Path) -> None:
    pytest.importorskip("mpe2")
    from mpe2 import simple_spread_v3

    def play(layout: str) -> tuple[pa.Table, int]:
        env = relayrl_gym.wrap(simple_spread_v3.parallel_env(max_cycles=9),
                               sink=ArrowSink(tmp_path / layout, obs_layout=layout),
                               batch_rows=20)
        env.reset(seed=1)
        rng = np.random.default_rng(0)
        for _ in range(30):
            if not env.agents:
                env.reset()
            env.step({a: int(rng.integers(5)) for a in env.agents})
        env.close()
        stored = sum(b.column("next_obs").null_count
                     for part in env.run_path.glob("part-*.arrow")
                     for b in pa.ipc.open_file(part).read_all().to_batches())
        return relayrl_gym.load(env.run_path).table, stored

    (once, nulls), (pairs, none) = play("once"), play("pairs")
    # Three agents' rows interleave in each batch: each agent's next row is found by agent_id.
    assert none == 0 and nulls > once.num_rows / 2
    assert once.num_rows == pairs.num_rows > 0
    assert once.select(COMPARED).equals(pairs.select(COMPARED))


def _image_schema(width: int) -> pa.Schema:
    image = pa.list_(pa.uint8(), width)
    return pa.schema([
        pa.field("env_index", pa.int32(), nullable=False),
        pa.field("agent_id", pa.string(), nullable=False),
        pa.field("episode_id", pa.int64(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("obs", image, nullable=False),
        pa.field("next_obs", image, nullable=False),
    ])


def _batch(schema: pa.Schema, obs: list[list[int]], next_obs: list[list[int]]) -> pa.RecordBatch:
    n = len(obs)
    return pa.record_batch([pa.array([0] * n, pa.int32()), pa.array([""] * n),
                            pa.array([0] * n, pa.int64()), pa.array(range(n), pa.int64()),
                            pa.array(obs, schema.field("obs").type),
                            pa.array(next_obs, schema.field("next_obs").type)], schema=schema)


def test_beside_another_sink_the_arrow_sink_stores_once_and_the_other_whole(
        tmp_path: Path) -> None:
    # The recorder builds whole transitions for SQLite; the Arrow sink makes its own copy once.
    envs = relayrl_gym.wrap(make_testing_env(obs_space=IMAGE, length=6), actors=2,
                            sink=[ArrowSink(tmp_path, obs_layout="once"),
                                  f"sqlite:///{tmp_path / 'runs.db'}"], batch_rows=10)
    envs.reset(seed=0)
    for _ in range(30):
        envs.step(np.array([1, 0]))
    envs.close()
    stored = [b for part in envs.run_path.glob("part-*.arrow")
              for b in pa.ipc.open_file(part).read_all().to_batches()]
    assert sum(b.column("next_obs").null_count for b in stored) > 20
    arrow = relayrl_gym.load(envs.run_path).table
    sql = relayrl_gym.load(f"sqlite:///{tmp_path / 'runs.db'}").table
    assert arrow.num_rows == sql.num_rows == 60 - 2 * (30 // 7)
    assert arrow.select(COMPARED).equals(sql.select(COMPARED))


def test_a_next_obs_differing_only_in_the_sign_of_a_zero_is_kept() -> None:
    # Rows handed over as separate arrays (a game, the agent API) are compared byte for byte.
    from relayrl_gym.core.transitions import TransitionBatch
    from relayrl_gym.recording.buffer import StepBlock
    from relayrl_gym.schema.transitions import TransitionSchema

    box = spaces.Box(-1, 1, (1024,), np.float32)
    schema = TransitionSchema.build(box, spaces.Discrete(2), metadata={})
    zeros, negative = np.zeros((1, 1024), np.float32), np.zeros((1, 1024), np.float32)
    negative[0, 0] = -0.0
    block = StepBlock()
    for step, (obs, next_obs) in enumerate([(zeros, negative), (zeros.copy(), zeros.copy())]):
        block.append(TransitionBatch(np.array([0], np.int32), np.array([0]), np.array([step]),
                                     obs, np.array([1]), 0.0, next_obs, (False,), (False,)), 0)
    [stored] = block.to_record_batches(schema, "r", ["a"], [""],
                                       once_schema=obs_layout.stored_schema(schema.arrow))
    assert stored.column("next_obs").null_count == 0  # kept: not the next row's obs
    back = obs_layout.restore(stored, schema.arrow)
    first = np.asarray(back.column("next_obs")[0].values)
    assert np.signbit(first[0])
