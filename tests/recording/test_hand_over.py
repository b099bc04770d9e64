"""A full block is built into its Arrow batch on the thread that recorded it; nothing recorded
is lost when that goes wrong, Ctrl-C included."""

from __future__ import annotations

import numpy as np
import pytest

import relayrl_gym


def test_ctrl_c_while_a_block_is_built_loses_no_row(tmp_path, monkeypatch) -> None:
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, batch_rows=32)
    recorder = envs.agent.recorder
    build = recorder.to_record_batch
    interrupted = []

    def interrupted_once(block):
        if not interrupted and block.arrow is None:
            interrupted.append(block.n)
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the block was being built
        return build(block)

    monkeypatch.setattr(recorder, "to_record_batch", interrupted_once)
    envs.reset(seed=0)
    with pytest.raises(KeyboardInterrupt):
        for _ in range(100):
            envs.step(np.array([0, 1]))
    recorded = recorder.rows_recorded
    envs.close()
    assert interrupted == [32]
    assert len(relayrl_gym.load(envs.run_path)) == recorded, (recorded, interrupted)


def test_a_block_that_fails_to_build_is_built_again_by_the_writer(tmp_path,
                                                                         monkeypatch) -> None:
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, batch_rows=32)
    recorder = envs.agent.recorder
    build = recorder.to_record_batch
    calls = []

    def flaky(block):  # fails on the recording thread only, the first time
        calls.append(block.n)
        if len(calls) == 1:
            raise MemoryError("no memory for the batch just now")
        return build(block)

    monkeypatch.setattr(recorder, "to_record_batch", flaky)
    envs.reset(seed=0)
    for _ in range(40):
        envs.step(np.array([0, 1]))
    envs.close()
    assert calls[:2] == [32, 32]  # tried on the recording thread, then by the writer
    assert len(relayrl_gym.load(envs.run_path)) == recorder.rows_recorded > 64
