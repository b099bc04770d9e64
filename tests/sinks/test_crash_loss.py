"""SIGKILL loses at most one flush interval, whatever the sink: slow ones, failing ones.

Each test runs a real recording process with a deliberately slow sink (its ``write`` sleeps)
or one that is down, SIGKILLs it, and compares the rows it recorded (logged step by step to a
memory-mapped file, which survives the kill) with the rows the sink (or its spill) has.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import relayrl_gym

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 0.5  # flush_interval of the recording process
DELAY = 0.1  # seconds the slow sink sleeps in every write

_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import relayrl_gym
    from relayrl_gym.sinks.arrow import ArrowSink
    from relayrl_gym.sinks.sql import SQLSink

    kind, target, log_path, run_id = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    interval, delay, warm_up = float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])

    base = SQLSink if kind == "sql" else ArrowSink

    class Slow(base):
        def write(self, batch):
            time.sleep(delay)
            if kind == "down":
                raise ConnectionError("the sink is down")
            super().write(batch)

    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=Slow(target), run_id=run_id,
                            router_scale=0, flush_interval=interval, batch_rows=1024,
                            spill_dir=sys.argv[8])
    recorder = envs.agent.recorder
    # One row per step: (time the step began, rows recorded once it is done at the most).
    log = np.lib.format.open_memmap(log_path, mode="w+", dtype=np.int64, shape=(2_000_000, 2))
    actions = np.random.default_rng(0).integers(0, 2, (4096, 4))
    envs.reset(seed=0)
    started = time.monotonic()
    ready = False
    for i in range(len(log)):
        log[i] = time.time_ns(), recorder.rows_recorded + 4
        envs.step(actions[i % 4096])
        if not ready and time.monotonic() - started > warm_up:
            print("ready", flush=True)
            ready = True
""")


def _kill_when_ready(command, offset):
    """Starts ``command``, SIGKILLs it ``offset`` s after it prints "ready"; the kill's
    time.time_ns()."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(offset)
        killed_at = time.time_ns()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    return killed_at


def _steps_logged(log_path):
    """The (time, rows recorded) pairs the child logged before it was killed (a pair the kill
    cut in half, one value written and not the other, is left out)."""
    log = np.load(log_path, mmap_mode="r")
    return np.asarray(log[: min(np.count_nonzero(log[:, 0]), np.count_nonzero(log[:, 1]))])


def _kill_and_count(tmp_path, kind, url, offset, warm_up=1.5):
    """Runs the child until it has recorded for ``warm_up`` s, kills it ``offset`` s later;
    returns (seconds between the kill and the step that recorded the oldest row lost, rows
    lost, rows found)."""
    run_id = f"crash-{uuid.uuid4().hex[:12]}"
    spill = tmp_path / "spill"
    log_path = tmp_path / "steps.npy"
    killed_at = _kill_when_ready(
        [sys.executable, "-c", _CHILD, kind, url, str(log_path), run_id, str(INTERVAL),
         str(DELAY), str(warm_up), str(spill)], offset)
    log = _steps_logged(log_path)
    if kind == "down":
        found = len(relayrl_gym.load(spill / "sink0-Slow" / run_id))
    elif kind == "sql":
        found = len(relayrl_gym.load(f"{url}?run={run_id}"))
    else:
        found = len(relayrl_gym.load(Path(url) / run_id))
    assert 0 < found <= log[-1, 1]
    # The oldest row lost was recorded by the first step whose rows are not all there.
    first_lost = np.searchsorted(log[:, 1], found, side="right")
    window = (killed_at - log[first_lost, 0]) / 1e9 if first_lost < len(log) else 0.0
    return window, int(log[-1, 1] - found), found


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["arrow", "sqlite", "postgresql", "down"],
                         ids=["slow-arrow", "slow-sqlite", "slow-postgresql", "down-spilling"])
def test_sigkill_with_a_slow_or_failing_sink_loses_at_most_one_flush_interval(
        tmp_path, kind, request):
    # Without back-pressure, 8 queued blocks of 0.1 s each put 1-2 s between the rows recorded
    # and the rows written; a failing sink kept its backlog (up to 64 MiB) in memory only.
    windows = []
    for trial, offset in enumerate((0.17, 0.41)):
        run = tmp_path / str(trial)
        run.mkdir()
        if kind == "sqlite":
            url = f"sqlite:///{run / 'runs.db'}"
        elif kind == "postgresql":
            url = request.getfixturevalue("pg_url")
        else:
            url = str(run / "runs")
        window, _, _ = _kill_and_count(run, "sql" if "sql" in kind else kind, url, offset)
        windows.append(window)
    assert max(windows) <= INTERVAL + 0.05, windows


def test_a_fast_env_killed_keeps_rows_older_than_the_flush_interval(tmp_path):
    """Blocks leave the stepping thread by age too: with a 0.1 s interval and a CartPole
    stepping as fast as it can (its 8192-row blocks fill in ~0.3 s, and the writer's
    time-based flush may find the recorder busy each time it looks), a SIGKILL loses only
    the last interval's rows."""
    child = textwrap.dedent("""
        import sys, time
        import numpy as np
        import relayrl_gym
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sys.argv[1], run_id="fast",
                                flush_interval=0.1, router_scale=0)
        recorder = envs.agent.recorder
        log = np.lib.format.open_memmap(sys.argv[2], mode="w+", dtype=np.int64,
                                        shape=(4_000_000, 2))
        envs.reset(seed=0)
        started = time.monotonic()
        ready = False
        for i in range(len(log) * 16):
            if i % 16 == 0:  # every 16th step: logging each would slow the env it measures
                log[i // 16] = time.time_ns(), recorder.rows_recorded + 2
            envs.step(envs.action_space.sample())
            if not ready and time.monotonic() - started > 1.5:
                print("ready", flush=True)
                ready = True
    """)
    log_path = tmp_path / "steps.npy"
    losses = []
    for offset in (0.13, 0.29, 0.41):  # a few moments of a block's life
        killed_at = _kill_when_ready(
            [sys.executable, "-c", child, str(tmp_path / str(offset)), str(log_path)], offset)
        log = _steps_logged(log_path)
        found = len(relayrl_gym.load(tmp_path / str(offset) / "fast"))
        # The step that recorded the first row lost began this long before the kill.
        first_lost = int(np.searchsorted(log[:, 1], found + 1))
        losses.append((killed_at - int(log[first_lost, 0])) / 1e9)
    assert max(losses) < 0.1 + 0.1, losses  # the interval, and room for the kill itself
