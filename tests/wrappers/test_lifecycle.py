"""Exit and close: never a hang, never a lost or half-closed step (threaded and inline)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from testing_env import TestingEnv

import relayrl_gym
from relayrl_gym.errors import StateError

_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    sys.path.insert(0, {tests!r})
    import relayrl_gym
    from testing_env import TestingEnv

    mode, sink, scale = sys.argv[1], sys.argv[2], sys.argv[3]
    scale = scale if scale == "processes" else int(scale)
    envs = relayrl_gym.wrap(lambda: TestingEnv(sleep=0.002, length=50), actors=4, sink=sink,
                            router_scale=scale)
    envs.reset(seed=0)
    for _ in range(20):
        envs.step(envs.action_space.sample())
    print(envs.run_path, flush=True)
    if mode == "raise":
        raise RuntimeError("uncaught")
    if mode == "sys_exit":
        sys.exit(3)
    if mode == "drop":
        del envs
    if mode == "ctrl_c":
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        while True:
            envs.step(envs.action_space.sample())
""")

_EXPECTED_RC = {"end": 0, "raise": 1, "sys_exit": 3, "drop": 0, "ctrl_c": -signal.SIGINT}


@pytest.mark.parametrize("scale", [4, 0, "processes"], ids=["threads", "inline", "processes"])
@pytest.mark.parametrize("mode", list(_EXPECTED_RC))
def test_exit_without_close_ends_the_process_and_keeps_every_step(
        tmp_path: Path, mode: str, scale: int) -> None:
    # Before: a threaded env dropped at exit waited forever on frozen actor threads.
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parents[1])))
    proc = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "runs"),
                           str(scale)], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (_EXPECTED_RC[mode], 130 if mode == "ctrl_c" else None), \
        proc.stderr
    if mode == "ctrl_c":
        assert "KeyboardInterrupt" in proc.stderr
    data = relayrl_gym.load(proc.stdout.splitlines()[0])
    # Every step was written by the exit hook; Ctrl-C stepped on past the first 20.
    assert len(data) >= 80 if mode == "ctrl_c" else len(data) == 80


@pytest.mark.parametrize("scale", [2, 0], ids=["threads", "inline"])
def test_close_from_another_thread_lets_the_step_in_flight_finish(sink_dir: Path,
                                                                  scale: int) -> None:
    made: list[TestingEnv] = []

    def make() -> TestingEnv:
        made.append(TestingEnv(sleep=0.003, length=1000))
        return made[-1]

    envs = relayrl_gym.wrap(make, actors=2, sink=sink_dir, router_scale=scale)
    envs.reset(seed=0)
    steps = 0
    watchdog = threading.Timer(0.1, envs.close)
    watchdog.start()
    with pytest.raises(StateError, match="closed"):
        while True:
            envs.step(np.zeros(2, dtype=np.int64))
            steps += 1
    watchdog.join()
    assert steps > 0
    assert all(env.closed for env in made)
    # Every step that returned was recorded: none was cut off by the close.
    assert len(relayrl_gym.load(envs.run_path)) == 2 * steps


def test_close_from_a_signal_handler_runs_after_the_step(sink_dir: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread")
    envs = relayrl_gym.wrap(lambda: TestingEnv(sleep=0.01, length=1000), actors=2,
                            sink=sink_dir, router_scale=2)
    envs.reset(seed=0)
    previous = signal.signal(signal.SIGALRM, lambda *_: envs.close())
    steps = 0
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        deadline = time.monotonic() + 30
        with pytest.raises(StateError, match="closed"):
            while time.monotonic() < deadline:
                envs.step(np.zeros(2, dtype=np.int64))
                steps += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert envs.closed
    assert len(relayrl_gym.load(envs.run_path)) == 2 * steps
