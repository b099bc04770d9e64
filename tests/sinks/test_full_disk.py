"""A real full disk (a 1 MiB tmpfs): the next step() says so, close() frees every file, and the
run reads back up to its last whole batch."""

from __future__ import annotations

import os
import subprocess
import time
import warnings

import numpy as np
import pytest
from testing_env import SPACES, TestingEnv

import relayrl_gym
from relayrl_gym.errors import SinkError
from relayrl_gym.sinks.arrow import ArrowSink


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs to make a small disk")
    try:
        yield mount
    finally:
        # A file left open makes this fail (EBUSY): close() must have let go of every file.
        busy = subprocess.run(["umount", str(mount)], capture_output=True).returncode
        if busy:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # no leftovers
        assert busy == 0, "a file on the full disk was left open"


def test_a_full_disk_is_said_at_the_next_step_and_close_frees_the_files(full_disk):
    envs = relayrl_gym.wrap(lambda: TestingEnv(obs_space=SPACES["image"], length=1000),
                            actors=2, sink=full_disk / "runs", batch_rows=64,
                            flush_interval=0.05)
    envs.reset(seed=0)
    with pytest.raises(SinkError, match=r"No space left on device.*cannot be spilled"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            envs.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(SinkError, match="could not be written"):
        envs.close()
    # A new run on the full disk is refused for what it is, and leaves no half-made directory
    # (which a retry would have called "already exists").
    sink = ArrowSink(full_disk / "runs")
    schema = relayrl_gym.load(envs.run_path).table.schema
    for _ in range(2):
        with pytest.raises(SinkError, match=r"No space left on device.*with free space"):
            sink.start("again", schema)
        assert not (full_disk / "runs" / "again").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a torn last part is read as far as whole
        rows = len(relayrl_gym.load(envs.run_path))
    assert rows > 0
