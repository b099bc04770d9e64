"""Helpers of the NATS transport tests: recording to a stream beside a local copy, serving it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import relayrl_gym

TESTS = Path(__file__).parents[2]
ACTOR = TESTS / "transport" / "zmq_actor.py"  # records to any sink URL, beside a local copy


def record(url: str, local: Path, *, steps: int = 300, seed: int = 0, actors: int = 2,
           pause_at: int | None = None, pause=None, run_id: str | None = None) -> str:
    """Records CartPole to ``url`` and to the Arrow directory ``local`` (small batches: many
    messages); calls ``pause()`` at step ``pause_at``; returns the run id."""
    envs = relayrl_gym.wrap("CartPole-v1", actors=actors, sink=[local, url],
                            flush_interval=0.02, batch_rows=16, router_scale=0, run_id=run_id)
    rng = np.random.default_rng(seed)
    envs.reset(seed=seed)
    for step in range(steps):
        envs.step(rng.integers(0, 2, actors))
        if step == pause_at and pause is not None:
            pause()
    envs.close()
    return envs.run_id


def start_actor(url: str, local: Path, *args: str, cwd: Path) -> subprocess.Popen:
    """An actor process recording to ``url`` and ``local``; its first line names its run."""
    return subprocess.Popen([sys.executable, str(ACTOR), "--url", url, "--local", str(local),
                             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def start_serve(source: str, sink: Path, *args: str, cwd: Path) -> subprocess.Popen:
    """``relayrl-gym serve --source`` in its own process, once it says it consumes."""
    proc = subprocess.Popen([sys.executable, "-m", "relayrl_gym.cli.main", "serve",
                             "--source", source, "--sink", str(sink), "--stats-every", "0",
                             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    if "consuming" not in line:
        proc.kill()
        raise AssertionError(f"serve did not start: {line} {proc.stderr.read()}")
    return proc


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def loaded_rows(path: Path) -> int:
    try:
        return len(relayrl_gym.load(path))
    except relayrl_gym.errors.RelayRLError:
        return 0
