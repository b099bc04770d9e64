"""Recording cost: wrap(CartPole-v1, actors=4) recording to Arrow vs an unrecorded SyncVectorEnv.

Target (DESIGN.md): >= 0.9x SyncVectorEnv's steps/s. Prints steps/s of each and the ratio.
Run: python benchmarks/recording_overhead.py [--steps 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, steps_per_second

import relayrl_gym

NUM_ENVS = 4


def measure(make_envs, actions: np.ndarray) -> float:
    envs = make_envs()
    envs.reset(seed=0)
    for i in range(200):  # warm-up
        envs.step(actions[i])
    rate = steps_per_second(lambda i: envs.step(actions[i]), len(actions))
    envs.close()
    return rate * NUM_ENVS  # env steps (transitions) per second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10_000, help="vector steps per round")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    actions = np.random.default_rng(0).integers(0, 2, (args.steps, NUM_ENVS))
    root = tempfile.mkdtemp(prefix="relayrl-bench-")
    runs = {
        "SyncVectorEnv (unrecorded)": lambda: measure(
            lambda: gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * NUM_ENVS),
            actions),
        "wrap(actors=4) -> Arrow": lambda: measure(
            lambda: relayrl_gym.wrap("CartPole-v1", actors=NUM_ENVS, sink=root), actions),
        "wrap(actors=4), sink=None": lambda: measure(
            lambda: relayrl_gym.wrap("CartPole-v1", actors=NUM_ENVS, sink=None), actions),
    }
    med = interleave(runs, args.rounds)
    base = med["SyncVectorEnv (unrecorded)"]
    print(f"CartPole-v1, {NUM_ENVS} envs, {args.steps} vector steps x {args.rounds} rounds "
          "(median env steps/s)")
    for name, rate in med.items():
        print(f"  {name:30} {rate:>10.0f} steps/s   {rate / base:5.2f}x")
    print(f"recording ratio (target >= 0.9): {med['wrap(actors=4) -> Arrow'] / base:.2f}x")


if __name__ == "__main__":
    main()
