"""A sink that fails while its backlog cannot spill either (a full disk): the next step() says
so, memory stays bounded, and what was dropped is counted."""

from __future__ import annotations

import contextlib
import errno
import time

import numpy as np
import pytest

import relayrl_gym
import relayrl_gym.recording.delivery as delivery
from relayrl_gym.errors import SinkError
from relayrl_gym.sinks.arrow import ArrowSink


class FullDisk(ArrowSink):
    """An Arrow sink on a disk with no space left: every write fails as the OS says it."""

    def write(self, batch):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_said_at_the_next_step_and_memory_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(delivery, "MAX_UNSPILLED_BYTES", 256 * 1024)
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the spill directory cannot be made under a file
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=FullDisk(tmp_path / "runs"),
                            batch_rows=64, flush_interval=0.05, spill_dir=blocked / "spill")
    envs.reset(seed=0)
    with pytest.raises(SinkError, match=r"No space left on device.*cannot be spilled to .*"
                                        r"rows are held in memory .*spill_dir= on another disk"):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            envs.step(np.zeros(4, dtype=np.int64))
    # Said once: stepping goes on (the caller decides), memory stays within the bound.
    deadline = time.monotonic() + 30
    (state,) = envs.agent.writer.deliveries
    while state.rows_dropped == 0 and time.monotonic() < deadline:
        try:
            envs.step(np.zeros(4, dtype=np.int64))
        except SinkError as err:  # the second stage: rows start to drop
            assert "were dropped" in str(err)
    assert state.rows_dropped > 0
    assert state.rows_waiting * 4 * 8 < 2 * 256 * 1024  # rows held stay near the bound
    with pytest.raises(SinkError, match="could not be written"):
        envs.close()


def _held_bytes(batches) -> int:
    """Bytes of the distinct Arrow buffers the batches keep alive (whole buffers, once each)."""
    sizes: dict[int, int] = {}
    for batch in batches:
        for column in batch.columns:
            for buffer in column.buffers():
                if buffer is not None:
                    sizes[buffer.address] = max(sizes.get(buffer.address, 0), buffer.size)
    return sum(sizes.values())


def test_a_backlog_of_cut_image_blocks_holds_no_more_memory_than_it_counts(tmp_path,
                                                                          monkeypatch):
    # Blocks of image rows are cut around NEXT_STEP reset rows into slices that share the
    # block's buffers. Kept in a backlog that cannot spill, each must hold only its own rows:
    # a small slice kept while the rest of its block is dropped must not keep the whole block.
    from gymnasium import spaces
    from testing_env import TestingEnv

    bound = 8 * 1024 * 1024
    monkeypatch.setattr(delivery, "MAX_UNSPILLED_BYTES", bound)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    image = spaces.Box(0, 255, (32, 32, 8), np.uint8)  # 8 KiB a row
    # Episodes of 49 steps plus the reset step, blocks of 50 steps: once lined up by a flush,
    # each block begins just before a reset step, so its first slice is one step long.
    envs = relayrl_gym.wrap(lambda: TestingEnv(obs_space=image, length=49), actors=4,
                            sink=FullDisk(tmp_path / "runs"), autoreset_mode="next_step",
                            batch_rows=200, flush_interval=5.0, spill_dir=blocked / "spill")
    envs.reset(seed=0)
    (state,) = envs.agent.writer.deliveries
    for step in range(1, 1501):
        with contextlib.suppress(SinkError):  # said, and stepping goes on
            envs.step(np.zeros(4, np.int64))
        if step == 48:
            envs.agent.writer.flush()
    dropped, held = state.rows_dropped, _held_bytes(list(state._memory))
    with pytest.raises(SinkError):
        envs.close()
    assert dropped > 0  # the bound was reached
    assert held < 2 * bound, held
