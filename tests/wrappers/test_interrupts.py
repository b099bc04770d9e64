"""Ctrl-C and failing env steps leave a wrapped env usable (after reset) and closable."""

from __future__ import annotations

import _thread
import threading
import time

import numpy as np
import pytest
from tests_helpers import make_testing_env

import relayrl_gym
from relayrl_gym.errors import StateError


def _interrupt_main_after(seconds: float) -> threading.Thread:
    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    return timer


@pytest.mark.parametrize("router_scale", [0, 4], ids=["inline", "threaded"])
def test_ctrl_c_during_a_step_leaves_the_env_resettable_and_closable(router_scale, sink_dir):
    envs = relayrl_gym.wrap(make_testing_env(sleep=0.2, length=50), actors=4, sink=sink_dir,
                            router_scale=router_scale)
    envs.reset(seed=0)
    envs.step(np.zeros(4, dtype=np.int64))
    timer = _interrupt_main_after(0.05)
    with pytest.raises(KeyboardInterrupt):
        for _ in range(20):  # the interrupt lands during one of these steps
            envs.step(np.zeros(4, dtype=np.int64))
    timer.join()
    with pytest.raises(StateError, match=r"previous step\(\) failed \(KeyboardInterrupt.*reset"):
        envs.step(np.zeros(4, dtype=np.int64))
    envs.reset(seed=1)
    for _ in range(3):
        envs.step(np.ones(4, dtype=np.int64))
    started = time.monotonic()
    envs.close()
    assert time.monotonic() - started < 5
    ds = relayrl_gym.load(envs.run_path)
    assert len(ds) >= 4 * 4  # the steps before the interrupt and after the reset
    assert ds.summary().unfinished_episodes == 8  # per env: one cut by the reset, one by close


def test_an_env_that_raises_mid_batch_asks_for_a_reset(sink_dir):
    calls = {"n": 0}

    def step_fn(env, action):
        calls["n"] += 1
        if calls["n"] == 7:  # the third env of the second vector step
            raise RuntimeError("physics exploded")
        env.t += 1
        return env._obs(), 1.0, False, False, {}

    envs = relayrl_gym.wrap(make_testing_env(step_fn=step_fn, length=50), actors=4,
                            sink=sink_dir, router_scale=0)
    envs.reset(seed=0)
    envs.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(RuntimeError, match="physics exploded"):
        envs.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(StateError, match="RuntimeError: physics exploded"):
        envs.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(StateError, match="after a failed step"):
        envs.reset(options={"reset_mask": np.array([True, False, False, False])})
    envs.reset(seed=0)
    envs.step(np.zeros(4, dtype=np.int64))
    envs.close()
    table = relayrl_gym.load(envs.run_path).table
    assert table.num_rows == 8  # the step before the failure and the one after the reset
