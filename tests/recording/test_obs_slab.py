"""The stepping thread's observation copies (`ObsSlab`) and the once layout's reused zero rows
(`ZeroRows`): blocks built from them hold exactly the recorded rows, and a batch a sink keeps
is never written into afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from gymnasium import spaces
from tests_helpers import make_testing_env

import relayrl_gym
from relayrl_gym.recording.slab import ObsSlab, ZeroRows, joined
from relayrl_gym.sinks.arrow import ArrowSink

IMAGE = spaces.Box(0, 255, (24, 24, 8), np.uint8)  # 4.5 KiB: the once layout under "auto"
COMPARED = ["env_index", "episode_id", "step", "obs", "action", "reward", "next_obs",
            "terminated", "truncated"]


class KeepingSink(ArrowSink):
    """Writes to Arrow files and also keeps every batch it is handed, with a deep copy of it
    taken then (a replay buffer holding the batches zero-copy does the same)."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.kept: list[tuple[pa.RecordBatch, pa.RecordBatch]] = []

    def write(self, batch: pa.RecordBatch) -> None:
        copy = pa.RecordBatch.from_arrays(
            [pa.concat_arrays([column]) for column in batch.columns], schema=batch.schema)
        self.kept.append((batch, copy))
        super().write(batch)


def _record(sink: Any, steps: int, mode: str = "next_step", pause: float = 0.0,
            **kwargs: Any) -> Any:
    envs = relayrl_gym.wrap(make_testing_env(obs_space=IMAGE, length=9), actors=3, sink=sink,
                            autoreset_mode=mode, **kwargs)
    envs.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        envs.step(rng.integers(0, 2, 3))
        if pause:
            time.sleep(pause)
    envs.close()
    return envs


def test_batches_a_sink_keeps_are_never_written_into_by_later_blocks(tmp_path: Path) -> None:
    sink = KeepingSink(tmp_path / "kept")  # "auto": these images are stored once
    _record(sink, steps=120, batch_rows=12)
    assert len(sink.kept) >= 25  # blocks enough to reuse every zeroed buffer several times
    for batch, copy in sink.kept:
        assert batch.equals(copy)
    stored = pa.Table.from_batches([b for b, _ in sink.kept])
    assert stored.column("next_obs").null_count > stored.num_rows / 2  # stored once


def test_the_once_rows_equal_the_pairs_rows_across_blocks_and_autoresets(
        tmp_path: Path) -> None:
    # Blocks of 12 rows (4 steps of 3 envs), episodes of 9 steps: block ends, episode ends and
    # NEXT_STEP reset rows (dropped) fall everywhere in a block.
    once = _record(ArrowSink(tmp_path / "once", obs_layout="once"), 90, batch_rows=12)
    pairs = _record(ArrowSink(tmp_path / "pairs", obs_layout="pairs"), 90, batch_rows=12)
    once_rows = relayrl_gym.load(once.run_path).table.select(COMPARED)
    pairs_rows = relayrl_gym.load(pairs.run_path).table.select(COMPARED)
    assert once_rows.num_rows == 90 * 3 - 3 * (90 // 10)
    assert once_rows.equals(pairs_rows)


def test_full_blocks_of_a_vector_env_join_their_observations_without_a_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relayrl_gym.recording import buffer

    outcomes: list[bool] = []

    def spied(parts: Any) -> Any:
        span = joined(parts)
        outcomes.append(span is not None)
        return span

    monkeypatch.setattr(buffer, "joined", spied)
    _record(ArrowSink(tmp_path, obs_layout="once"), 80, batch_rows=12, flush_interval=60)
    # 80 steps of 3 envs: 20 full blocks of 4 steps, each one span of the slab.
    assert outcomes == [True] * 20, outcomes


def test_rows_handed_over_by_age_are_the_same_rows(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Slow steps and a short flush interval: blocks leave part filled, out of line with the
    # slab's arrays; the block after one begins in one array and ends in the next, and is
    # written as two batches instead of being joined by a copy. The next full blocks line up.
    from relayrl_gym.recording import buffer
    from relayrl_gym.schema.codecs import LeafCodec

    splits: list[int | None] = []
    copied: list[int] = []  # observations joined by a copy
    split_point, concat = buffer.split_point, LeafCodec.concat

    def spied_concat(codec: LeafCodec, parts: Any) -> Any:
        if codec.shape == IMAGE.shape:
            copied.append(len(parts))
        return concat(codec, parts)

    monkeypatch.setattr(buffer, "split_point", lambda parts: splits.append(
        split_point(parts)) or splits[-1])
    monkeypatch.setattr(LeafCodec, "concat", spied_concat)
    slow = _record(ArrowSink(tmp_path / "slow", obs_layout="once"), 40, pause=0.01,
                   batch_rows=30, flush_interval=0.05)
    assert any(at is not None for at in splits) and not copied, (splits, copied)
    monkeypatch.undo()
    fast = _record(ArrowSink(tmp_path / "fast", obs_layout="once"), 40, batch_rows=30)
    slow_rows = relayrl_gym.load(slow.run_path).table
    assert slow_rows.select(COMPARED).equals(
        relayrl_gym.load(fast.run_path).table.select(COMPARED))
    with pa.ipc.open_file(next(Path(slow.run_path).glob("part-*.arrow"))) as reader:
        sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
    assert len(sizes) > 40 * 3 // 30 and min(sizes) < 30  # some blocks left by age


@pytest.mark.parametrize("asked_at", [11, 14, 17])
def test_a_block_after_one_handed_over_early_is_written_without_copying_its_observations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked_at: int) -> None:
    # The writer asks for the rows mid-block: the next block begins in the middle of one of
    # the slab's arrays and ends in the next (three arrays exist by the time it is built).
    from relayrl_gym.recording import buffer
    from relayrl_gym.schema.codecs import LeafCodec

    copied: list[int] = []
    concat = LeafCodec.concat

    def spied_concat(codec: LeafCodec, parts: Any) -> Any:
        if codec.shape == IMAGE.shape:
            copied.append(len(parts))
        return concat(codec, parts)

    splits: list[int | None] = []
    split_point = buffer.split_point
    monkeypatch.setattr(buffer, "split_point", lambda parts: splits.append(
        split_point(parts)) or splits[-1])
    monkeypatch.setattr(LeafCodec, "concat", spied_concat)

    def run(root: Path, ask: bool) -> Any:
        envs = relayrl_gym.wrap(make_testing_env(obs_space=IMAGE, length=50), actors=3,
                                sink=ArrowSink(root, obs_layout="once"), batch_rows=30,
                                flush_interval=60)
        envs.reset(seed=1)
        for step in range(60):
            envs.step(np.array([step % 2] * 3))
            if ask and step == asked_at:
                assert envs.agent.recorder.ask_back()
        envs.close()
        return relayrl_gym.load(envs.run_path).table.select(COMPARED)

    asked = run(tmp_path / "asked", ask=True)
    assert [at for at in splits if at is not None] and not copied, (splits, copied)
    monkeypatch.undo()
    assert asked.equals(run(tmp_path / "plain", ask=False))


def test_joined_parts_are_one_span_only_when_consecutive() -> None:
    slab = ObsSlab((3,), np.float32, rows=8, rows_left=lambda: 100)
    a, b, c = (slab.copy(np.full((2, 3), i, np.float64)) for i in range(3))
    span = joined([a, b, c])
    assert span is not None and np.shares_memory(span, a) and not span.flags.writeable
    np.testing.assert_array_equal(span, np.repeat(np.arange(3.0), 2)[:, None] * np.ones(3))
    assert joined([a, c]) is None and joined([b, a]) is None
    assert joined([a, a.copy()]) is None and joined([a, b, b]) is None
    # Where the recorder's block will next be handed over, a new array begins.
    left = [5]
    slab = ObsSlab((3,), np.float32, rows=8, rows_left=lambda: left[0])
    first = slab.copy(np.zeros((2, 3)))
    left[0] = 3  # this copy is the obs of the block after next: a new array
    second = slab.copy(np.ones((2, 3)))
    assert not np.shares_memory(first.base, second.base)


def test_slab_arrays_are_reused_once_no_view_of_them_is_held() -> None:
    import weakref

    slab = ObsSlab((3,), np.float32, rows=2, rows_left=lambda: 100)  # 2 copies an array
    held = slab.copy(np.full((2, 3), 7.0))
    slab.copy(np.full((2, 3), 7.0))  # the rest of the array `held` is in
    first = slab.copy(np.full((2, 3), 1.0))  # the next array
    owner = weakref.ref(first.base)
    del first
    for i in range(40):  # many arrays' worth of copies, each let go of at once
        view = slab.copy(np.full((2, 3), i, np.float64))
        np.testing.assert_array_equal(view, i)
        del view
    np.testing.assert_array_equal(held, 7.0)  # a view still held: never written into
    assert owner() is not None  # kept, and handed out again instead of a new array
    assert any(slab.copy(np.zeros((2, 3))).base is owner() for _ in range(12))


def test_zero_rows_are_reused_only_when_nothing_holds_them() -> None:
    zeros = ZeroRows((4,), np.int16, rows=6)
    held = zeros.take(6)
    held[2] = 9
    zeros.written(held, np.arange(6) == 2)
    other = zeros.take(5)  # `held` is in use: another array
    assert not np.shares_memory(held, other) and not other.any()
    assert held[2].tolist() == [9] * 4
    del held
    again = zeros.take(6)  # the first array again, its written row zeroed
    assert not again.any()
    assert len(zeros._arrays) == 2


SMALL = spaces.Box(-1, 1, (5,), np.float64)  # 40 bytes: cut only where few rows drop


def _uneven_episodes(env: Any, action: Any, shortest: int = 2, longest: int = 12,
                     chance: float = 0.25) -> tuple[Any, ...]:
    """Episodes of 2 to 12 steps drawn by each env copy's own generator: the copies end
    episodes at different steps, so a reset row falls between other envs' rows."""
    env.t += 1
    done = env.t >= shortest and (env.t >= longest or env.np_random.random() < chance)
    return env._obs(), float(env.t), done, False, {}


def _long_uneven_episodes(env: Any, action: Any) -> tuple[Any, ...]:
    return _uneven_episodes(env, action, shortest=150, longest=400, chance=0.01)


@pytest.mark.parametrize(("space", "step_fn", "steps", "batch_rows", "layout"), [
    (IMAGE, _uneven_episodes, 60, 12, "once"),
    (IMAGE, _uneven_episodes, 60, 12, "pairs"),
    # Small rows: long episodes drop a few rows from blocks of 1 536.
    (SMALL, _long_uneven_episodes, 1500, 1536, "pairs"),
], ids=["image-once", "image-pairs", "small"])
def test_blocks_cut_around_reset_steps_hold_the_transitions_the_loop_saw(
        tmp_path: Path, space: spaces.Box, step_fn: Any, steps: int, batch_rows: int,
        layout: str) -> None:
    # NEXT_STEP: the step after an episode's end resets that env (a row not recorded), so the
    # blocks of large observations, and blocks that drop few rows, are cut around such rows
    # instead of filtered.
    envs = relayrl_gym.wrap(make_testing_env(obs_space=space, step_fn=step_fn),
                            actors=3, sink=ArrowSink(tmp_path, obs_layout=layout),
                            autoreset_mode="next_step", batch_rows=batch_rows)
    obs, _ = envs.reset(seed=1)
    rng = np.random.default_rng(0)
    resetting = np.zeros(3, np.bool_)
    expected = []
    for _ in range(steps):
        actions = rng.integers(0, 2, 3)
        following, rewards, terminated, truncated, _ = envs.step(actions)
        expected += [(i, obs[i].copy(), int(actions[i]), float(rewards[i]), following[i].copy(),
                      bool(terminated[i]), bool(truncated[i]))
                     for i in range(3) if not resetting[i]]
        resetting = terminated | truncated
        obs = following
    envs.close()
    rows = relayrl_gym.load(envs.run_path).table
    assert rows.num_rows == len(expected) < steps * 3 - 10
    with pa.ipc.open_file(next(Path(envs.run_path).glob("part-*.arrow"))) as reader:
        assert reader.num_record_batches > steps * 3 // batch_rows + 1  # more than blocks: cut
    shape = (len(expected), *space.shape)
    np.testing.assert_array_equal(rows.column("env_index").to_numpy(), [e[0] for e in expected])
    np.testing.assert_array_equal(np.stack(rows.column("obs").to_numpy(zero_copy_only=False))
                                  .reshape(shape), np.stack([e[1] for e in expected]))
    np.testing.assert_array_equal(rows.column("action").to_numpy(), [e[2] for e in expected])
    np.testing.assert_array_equal(rows.column("reward").to_numpy(), [e[3] for e in expected])
    np.testing.assert_array_equal(
        np.stack(rows.column("next_obs").to_numpy(zero_copy_only=False)).reshape(shape),
        np.stack([e[4] for e in expected]))
    assert rows.column("terminated").to_pylist() == [e[5] for e in expected]
    assert rows.column("truncated").to_pylist() == [e[6] for e in expected]
