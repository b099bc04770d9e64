"""Shared timing helpers for the benchmark scripts (interleaved rounds, medians)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import relayrl_gym

__all__ = ["interleave", "play_turns", "recorded_table", "steps_per_second"]


def steps_per_second(step: Callable[[int], None], steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps / (time.perf_counter() - start)


def play_turns(env: Any, steps: int) -> None:
    """``steps`` turns of a reset AEC game with seeded legal moves (a finished game is reset):
    the turn loop both PettingZoo benchmarks time."""
    rng = np.random.default_rng(0)
    for _ in range(steps):
        if not env.agents:
            env.reset()
        obs, _, terminated, truncated, _ = env.last()
        env.step(None if terminated or truncated else
                 int(rng.choice(np.flatnonzero(obs["action_mask"]))))


def interleave(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Runs each candidate once per round, alternating, and returns the median of each.

    Alternating rounds spreads machine noise (other processes, CPU frequency) over all
    candidates instead of biasing whichever ran during a quiet or busy period.
    """
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(run())
    return {name: statistics.median(values) for name, values in results.items()}


def recorded_table(rows: int, workdir: Path) -> pa.Table:
    """``rows`` real CartPole transitions (4 actors, random actions), recorded and read back."""
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=workdir, router_scale=0)
    envs.reset(seed=0)
    while envs.agent.recorder.rows_recorded < rows:
        envs.step(envs.action_space.sample())
    envs.close()
    return relayrl_gym.load(envs.run_path).table.slice(0, rows)


def recorded_batches(rows: int, batch_rows: int, workdir: Path
                     ) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    table = recorded_table(rows, workdir)
    # Each batch in its own buffers, as the writer builds them (a slice of a table would make
    # serializing copy and trim every column).
    batches = [pa.ipc.read_record_batch(pa.py_buffer(
        pa.record_batch(b.columns, schema=table.schema).serialize().to_pybytes()), table.schema)
        for b in table.to_batches(max_chunksize=batch_rows)]
    return table.schema, batches


def env_steps_per_second(sink: object, steps: int) -> float:
    """Transitions/s of ``wrap(CartPole-v1, actors=4)`` recording to ``sink`` (close included:
    every row delivered, for the ZMQ sink acknowledged)."""
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=sink, router_scale=0)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(64)]
    start = time.perf_counter()
    for i in range(steps):
        envs.step(actions[i % 64])
    envs.close()
    return 4 * steps / (time.perf_counter() - start)
