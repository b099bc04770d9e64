"""Fleet throughput: workers=2 x actors=4 on Ray against wrap(actors=8) in one process, on an env
whose step sleeps 1 ms (the GIL is free meanwhile, as in C physics or a simulator).

Timed, interleaved over ``--rounds``:
- one process: ``wrap(SleepEnv, actors=8, router_scale=8)`` stepping ``--steps`` transitions
  with random actions, recording to an Arrow directory (wrap to close);
- fleet, steady: ``Fleet(workers=2, actors=4, router_scale=4)`` on a local Ray instance, the
  sum of the workers' transitions/s from their own open to their end;
- fleet, whole: the same run from ``Fleet(...)`` to the summary (placing the workers, building
  their envs, collecting, flushing and closing them).
Then the start-up cost: ``ray.init()`` of a local instance (once) and a fleet's start (its
workers placed and their envs built, Ray running).

On a 2-core machine the 1 ms sleeps overlap in every setup; what a second process adds is a
second interpreter (its own GIL) for the stepping and recording work around them.

Run: python benchmarks/fleet_throughput.py [--steps 16000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import relayrl_gym


class SleepEnv(gym.Env):
    """A 4-float observation, 2 actions, 200-step episodes; each step sleeps 1 ms."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action):
        time.sleep(0.001)
        self._t += 1
        return np.full(4, self._t / 200, np.float32), 1.0, False, self._t >= 200, {}


def one_process(steps: int, sink: Path) -> float:
    start = time.perf_counter()
    envs = relayrl_gym.wrap(SleepEnv, actors=8, sink=sink, router_scale=8)
    envs.reset(seed=0)
    for _ in range(steps // 8):
        envs.step(envs.action_space.sample())
    envs.close()
    return steps / (time.perf_counter() - start)


def fleet(steps: int, sink: Path) -> tuple[float, float]:
    """(steady transitions/s, whole-run transitions/s)."""
    start = time.perf_counter()
    summary = relayrl_gym.Fleet(SleepEnv, workers=2, actors=4, sink=sink,
                                router_scale=4).run(steps=steps)
    whole = summary.steps / (time.perf_counter() - start)
    steady = sum(w["steps_per_second"] for w in summary.per_worker)
    return steady, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray_init = time.perf_counter() - started
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    results: dict[str, list[float]] = {"one": [], "steady": [], "whole": [], "start": []}
    fleet(800, work / "warm")  # workers' first imports
    for i in range(args.rounds):
        results["one"].append(one_process(args.steps, work / f"one-{i}"))
        steady, whole = fleet(args.steps, work / f"fleet-{i}")
        results["steady"].append(steady)
        results["whole"].append(whole)
        begun = time.perf_counter()
        probe = relayrl_gym.Fleet(SleepEnv, workers=2, actors=4, sink=None).start()
        results["start"].append(time.perf_counter() - begun)
        probe.stop()
    one = statistics.median(results["one"])
    print(f"SleepEnv (1 ms steps), {args.steps} transitions, median of {args.rounds} rounds:")
    print(f"  wrap(actors=8, router_scale=8), one process  {one:9,.0f} transitions/s  1.00x")
    for key, name in (("steady", "fleet 2 x 4, steady"), ("whole", "fleet 2 x 4, whole run")):
        rate = statistics.median(results[key])
        print(f"  {name:44s} {rate:9,.0f} transitions/s  {rate / one:4.2f}x")
    print(f"start-up: ray.init() {ray_init:.1f} s (once); a fleet's start (2 workers placed, "
          f"envs built) {statistics.median(results['start']):.2f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
