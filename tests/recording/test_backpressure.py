"""A slow sink slows stepping instead of letting rows pile up in the writer's queue."""

from __future__ import annotations

import time

import numpy as np

import relayrl_gym
from relayrl_gym.sinks.arrow import ArrowSink


def test_a_slow_sink_slows_stepping_and_the_queue_stays_within_one_interval(tmp_path):
    class Slow(ArrowSink):
        def write(self, batch):
            time.sleep(0.05)
            super().write(batch)

    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=Slow(tmp_path), router_scale=0,
                            flush_interval=0.25, batch_rows=64)
    writer = envs.agent.writer
    envs.reset(seed=0)
    actions = np.zeros((4096, 4), np.int64)
    queued = []
    started = time.monotonic()
    steps = 0
    while time.monotonic() - started < 2.0:
        envs.step(actions[steps % 4096])
        queued.append(writer.rows_queued)
        steps += 1
    envs.close()
    # The sink takes 64 rows per 0.05 s, 1280 a second: stepping (~100k rows/s unhindered)
    # goes at its pace, and what waits in memory is what it writes within the interval.
    assert steps * 4 <= 1280 * 2.5
    assert max(queued) <= 4 * 64, max(queued)
    assert len(relayrl_gym.load(envs.run_path)) > 0
