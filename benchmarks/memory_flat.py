"""Memory: RSS while recording CartPole-v1 (4 actors) stays flat as steps and episodes grow.

Target (DESIGN.md): recording a million steps or a billion costs the same RSS.
Prints RSS every --every transitions and the growth between the first and the last sample.
Run: python benchmarks/memory_flat.py [--steps 2000000] [--every 200000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import numpy as np

import relayrl_gym


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2_000_000, help="transitions to record")
    parser.add_argument("--every", type=int, default=200_000)
    args = parser.parse_args()
    actors = 4
    envs = relayrl_gym.wrap("CartPole-v1", actors=actors, sink=tempfile.mkdtemp())
    envs.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, (4096, actors))
    samples = []
    for i in range(args.steps // actors):
        envs.step(actions[i % 4096])
        if (i * actors) % args.every == 0 and i:
            samples.append((i * actors, rss_mib()))
            print(f"  {i * actors:>9} steps  RSS {samples[-1][1]:7.1f} MiB", flush=True)
    envs.close()
    rows = len(relayrl_gym.load(envs.run_path))
    (first_steps, first), (last_steps, last) = samples[0], samples[-1]
    print(f"recorded {rows} transitions; RSS {first:.1f} MiB at {first_steps} steps -> "
          f"{last:.1f} MiB at {last_steps} steps: growth {last - first:+.1f} MiB "
          f"({(last - first) / first:+.1%})")


if __name__ == "__main__":
    main()
