"""Parallelism: 8 actors on an env whose step releases the GIL (a 1 ms sleep, like I/O), with
one thread per actor (router_scale=8); and, with --hold-gil, on an env whose step holds the GIL
(a busy loop), with one process per actor (router_scale="processes").

Targets (DESIGN.md): >= 7x SyncVectorEnv's steps/s, and more than AsyncVectorEnv's.
Run: python benchmarks/parallel_envs.py [--steps 300] [--rounds 5] [--sleep 0.001] [--hold-gil]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, steps_per_second

import relayrl_gym

NUM_ENVS = 8


class SleepyEnv(gym.Env):
    """CartPole-sized observations; each step sleeps (the GIL is released while it waits)."""

    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, sleep: float = 0.001, hold_gil: bool = False):
        self.sleep = sleep
        self.hold_gil = hold_gil
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        if self.hold_gil:
            end = time.perf_counter() + self.sleep
            while time.perf_counter() < end:  # Python work: the GIL is held throughout
                pass
        else:
            time.sleep(self.sleep)
        self.t += 1
        return np.zeros(4, np.float32), 1.0, self.t >= 200, False, {}


def measure(make_envs, steps: int) -> float:
    envs = make_envs()
    envs.reset(seed=0)
    actions = np.zeros(NUM_ENVS, dtype=np.int64)
    for _ in range(20):
        envs.step(actions)
    rate = steps_per_second(lambda i: envs.step(actions), steps)
    envs.close()
    return rate * NUM_ENVS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="vector steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.001, help="seconds per env step")
    parser.add_argument("--hold-gil", action="store_true",
                        help="busy steps that hold the GIL, one process per actor")
    args = parser.parse_args()
    factory = [lambda: SleepyEnv(args.sleep, args.hold_gil)] * NUM_ENVS
    scale = "processes" if args.hold_gil else NUM_ENVS
    root = tempfile.mkdtemp(prefix="relayrl-bench-")
    chosen = {}

    def ours() -> float:
        def make():
            envs = relayrl_gym.wrap(lambda: SleepyEnv(args.sleep, args.hold_gil),
                                    actors=NUM_ENVS, sink=root, router_scale=scale)
            chosen["scale"] = envs.agent.router_scale
            return envs
        return measure(make, args.steps)

    med = interleave({
        "SyncVectorEnv": lambda: measure(lambda: gym.vector.SyncVectorEnv(factory), args.steps),
        "AsyncVectorEnv": lambda: measure(lambda: gym.vector.AsyncVectorEnv(factory), args.steps),
        "wrap(actors=8) -> Arrow": ours,
    }, args.rounds)
    base = med["SyncVectorEnv"]
    print(f"{NUM_ENVS} envs, step = {args.sleep * 1e3:.1f} ms sleep, {args.steps} vector steps x "
          f"{args.rounds} rounds (median env steps/s); router_scale chosen: {chosen['scale']}")
    for name, rate in med.items():
        print(f"  {name:26} {rate:>9.0f} steps/s   {rate / base:5.2f}x")
    ours_rate = med["wrap(actors=8) -> Arrow"]
    print(f"vs SyncVectorEnv (target >= 7): {ours_rate / base:.2f}x; "
          f"vs AsyncVectorEnv (target > 1): {ours_rate / med['AsyncVectorEnv']:.2f}x")


if __name__ == "__main__":
    main()
