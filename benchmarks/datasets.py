"""Datasets: streaming, sampling and Minari export of a recorded CartPole dataset on disk.

Targets (DESIGN.md):
- `Dataset.iter_batches` >= 0.8x the rows/s of a raw `pyarrow.dataset` scan of the same files
  decoded to numpy (the same six training columns, batches of 4096 rows);
- `Dataset.sample(256)` >= 0.5x the rate of sampling 256 rows from an in-memory numpy replay
  buffer of the same rows (the one-time decode of `sample`'s first call is reported apart);
- `Dataset.export_minari` faster than recording the same episodes with Minari's own
  `DataCollector` (as many CartPole steps with the recorded actions, then `create_dataset`;
  both in Minari's arrow storage).

Run: python benchmarks/datasets.py [--rows 1000000] [--rounds 5] [--episodes 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow.dataset as pads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave

import relayrl_gym

COLUMNS = ["obs", "action", "reward", "next_obs", "terminated", "truncated"]


def record(rows: int, root: str) -> Path:
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=root, router_scale=0)
    envs.reset(seed=0)
    while envs.agent.recorder.rows_recorded < rows:
        envs.step(envs.action_space.sample())
    envs.close()
    return envs.run_path


def raw_scan(run: Path) -> float:
    """Rows/s of a pyarrow.dataset scan decoded to numpy: the anchor."""
    start = time.perf_counter()
    rows = 0
    scan = pads.dataset(sorted(str(p) for p in run.glob("part-*.arrow")), format="ipc")
    for batch in scan.to_batches(columns=COLUMNS, batch_size=4096):
        # flatten(), not .values: a batch the scanner sliced to 4096 rows keeps its parent's
        # child array, offset; .values would hand back (and count) the parent's rows.
        batch.column("obs").flatten().to_numpy().reshape(-1, 4)
        batch.column("next_obs").flatten().to_numpy().reshape(-1, 4)
        for c in ("action", "reward", "terminated", "truncated"):
            batch.column(c).to_numpy(zero_copy_only=False)
        rows += batch.num_rows
    return rows / (time.perf_counter() - start)


def ours_scan(run: Path) -> float:
    start = time.perf_counter()
    rows = 0
    for batch in relayrl_gym.load(run).iter_batches(4096, COLUMNS):
        rows += len(batch["reward"])
    return rows / (time.perf_counter() - start)


def sample_rate(draw, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        draw()
    return calls / (time.perf_counter() - start)


def export_minari(run: Path, episodes: int) -> tuple[float, float, int]:
    """Seconds to export the first ``episodes`` finished episodes with relayrl-gym, and to
    record the same episodes with Minari's DataCollector; and the steps they hold."""
    import minari

    ds = relayrl_gym.load(run)
    kept = []
    for episode in ds.episodes():
        if episode.terminations[-1] or episode.truncations[-1]:
            kept.append(episode)
        if len(kept) == episodes:
            break
    ids = [e.episode_id for e in kept]
    subset = ds.filter(episodes=ids)
    start = time.perf_counter()
    subset.export_minari("bench/ours-v0")
    ours = time.perf_counter() - start

    # The anchor records as many CartPole steps with the recorded actions, episode after
    # episode (a replayed action sequence need not end its episode where the recording did).
    actions = np.concatenate([e.actions for e in kept])
    start = time.perf_counter()
    env = minari.DataCollector(gym.make("CartPole-v1"), record_infos=False, data_format="arrow")
    env.reset(seed=0)
    for action in actions:
        _, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            env.reset()
    env.create_dataset("bench/collector-v0", algorithm_name="random")
    env.close()
    theirs = time.perf_counter() - start
    return ours, theirs, sum(len(e) for e in kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20_000, help="sample calls per round")
    parser.add_argument("--episodes", type=int, default=2000, help="episodes for the export")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="relayrl-bench-")
    os.environ.setdefault("MINARI_DATASETS_PATH", tempfile.mkdtemp(prefix="relayrl-minari-"))
    run = record(args.rows, root)
    ds = relayrl_gym.load(run)
    print(f"CartPole dataset: {len(ds)} rows, "
          f"{sum(p.stat().st_size for p in run.iterdir()) / 2**20:.1f} MiB on disk")

    scans = interleave({"raw pyarrow.dataset scan -> numpy": lambda: raw_scan(run),
                        "Dataset.iter_batches(4096)": lambda: ours_scan(run)}, args.rounds)
    for name, rate in scans.items():
        print(f"  {name:36} {rate:>12.0f} rows/s")
    ratio = scans["Dataset.iter_batches(4096)"] / scans["raw pyarrow.dataset scan -> numpy"]
    print(f"iter_batches ratio (target >= 0.8): {ratio:.2f}x")

    start = time.perf_counter()
    ds.sample(1, seed=0)
    print(f"sample: first call decodes {len(ds)} rows to memory-mapped files in "
          f"{time.perf_counter() - start:.2f} s")
    t = ds.transitions()
    buffer = dict(zip(COLUMNS, t))
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(1)

    def in_memory() -> dict:
        rows = rng_a.integers(0, len(t.reward), size=256)
        return {k: v[rows] for k, v in buffer.items()}

    draws = interleave({"in-memory numpy buffer": lambda: sample_rate(in_memory, args.samples),
                        "Dataset.sample(256)": lambda: sample_rate(
                            lambda: ds.sample(256, seed=rng_b), args.samples)}, args.rounds)
    for name, rate in draws.items():
        print(f"  {name:36} {rate:>12.0f} samples/s of 256")
    ratio = draws["Dataset.sample(256)"] / draws["in-memory numpy buffer"]
    print(f"sample ratio (target >= 0.5): {ratio:.2f}x")

    ours, theirs, steps = export_minari(run, args.episodes)
    print(f"Minari: export of {args.episodes} episodes ({steps} steps) {ours:.2f} s; the same "
          f"episodes recorded with DataCollector {theirs:.2f} s: {theirs / ours:.1f}x faster")


if __name__ == "__main__":
    main()
