"""A sink that fails while its backlog cannot spill either (a full disk): the next step() says
so, memory stays bounded, and what was dropped is counted."""

from __future__ import annotations

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
