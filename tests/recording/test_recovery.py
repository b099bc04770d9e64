"""A sink that comes back after an outage catches up a little at a time: step() never stalls."""

from __future__ import annotations

import time

import numpy as np

import relayrl_gym
from relayrl_gym.sinks.arrow import ArrowSink


class Recovering(ArrowSink):
    """Down while ``down``; once back, every write takes ``delay`` seconds (a database
    writing one transaction per batch)."""

    def __init__(self, root, delay):
        super().__init__(root)
        self.down = True
        self.delay = delay

    def write(self, batch):
        if self.down:
            raise ConnectionError("sink is down")
        time.sleep(self.delay)
        super().write(batch)


def test_step_does_not_stall_while_a_recovered_sink_catches_up(tmp_path):
    flaky = Recovering(tmp_path / "flaky", delay=0.01)
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=[tmp_path / "ok", flaky],
                            router_scale=0, batch_rows=64, flush_interval=0.2)
    delivery = envs.agent.writer.deliveries[1]
    delivery.retry_initial = delivery.retry_max = 0.05  # retried soon after it is back
    try:
        envs.reset(seed=0)
        actions = np.random.default_rng(0).integers(0, 2, (3000, 4))
        for i in range(3000):  # down: ~180 batches wait, each 0.01 s of work once it is back
            envs.step(actions[i])
        envs.flush()
        waiting = delivery.rows_waiting
        flaky.down = False
        longest = 0.0
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 2.0:
            begun = time.perf_counter()
            envs.step(actions[i % 3000])
            longest = max(longest, time.perf_counter() - begun)
            i += 1
        assert delivery.rows_delivered > waiting / 4  # it catches up while stepping goes on
        assert longest < 0.5, longest  # and no step waits for the whole backlog (~1.8 s)
    finally:
        envs.close()  # delivers the rest
    ok = relayrl_gym.load(tmp_path / "ok" / envs.run_id).table
    got = relayrl_gym.load(tmp_path / "flaky" / envs.run_id).table
    assert got.num_rows == ok.num_rows > 12000
    assert got.drop_columns(["timestamp"]).equals(ok.drop_columns(["timestamp"]))
