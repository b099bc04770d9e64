"""Distributed REINFORCE on CartPole with a Ray fleet: one learner, workers placed by Ray.

The learner runs a `relayrl_gym.TrainingServer`; a `relayrl_gym.Fleet` starts worker
processes on a Ray cluster (a local one here), each running ``wrap("CartPole-v1", actors=4,
policy=...)`` and streaming every transition to the server. The learner trains on complete
episodes of the current model version and publishes each update; every worker hot-swaps it
between steps. The mean return per version rises. The training pieces (episodes, REINFORCE,
export) are those of `zmq_learner.py`, beside this file.

Run: python examples/ray_fleet_learner.py [--versions 30] [--episodes 16] [--workers 2]
     [--ray-address auto] [--short]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from zmq_learner import Episodes, export, policy_net, reinforce

import relayrl_gym


def learn(versions: int, episodes_per_update: int, workers: int, actors: int,
          ray_address: str | None, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    work = Path(tempfile.mkdtemp(prefix="ray-fleet-learner-"))
    net = policy_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    returns: list[float] = []
    with relayrl_gym.TrainingServer(bind="tcp://127.0.0.1:*", sink=work / "runs",
                                    models="tcp://127.0.0.1:*") as server:
        version = server.publish_model(export(net, work / "model-0", version=0))
        fleet = relayrl_gym.Fleet("CartPole-v1", policy=work / "model-0", workers=workers,
                                  actors=actors, sink=server.sink_url, seed=seed,
                                  ray_address=ray_address, flush_interval=0.05)
        fleet.start()
        episodes = Episodes()
        waiting: list = []
        started = time.perf_counter()
        try:
            for batch in server.trajectories(timeout=60):
                waiting.extend(episodes.add(batch, version))
                if len(waiting) < episodes_per_update:
                    continue
                used, waiting = waiting[:episodes_per_update], []
                mean = float(np.mean([ep[2].sum() for ep in used]))
                returns.append(mean)
                print(f"version {version:3d}: mean return {mean:7.1f} over {len(used)} "
                      f"episodes ({time.perf_counter() - started:5.1f} s)", flush=True)
                if len(returns) >= versions:
                    break
                reinforce(net, optimizer, used, gamma=0.99)
                version = server.publish_model(export(net, work / f"model-{version + 1}",
                                                      version + 1))
        finally:
            summary = fleet.stop()
        print(summary, flush=True)
    first, last = np.mean(returns[:3]), np.mean(returns[-3:])
    print(f"mean return rose from {first:.1f} (first 3 versions) to {last:.1f} (last 3)")
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=30)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--ray-address", default=None,
                        help="the Ray cluster ('auto': the running one; default: a local one)")
    parser.add_argument("--short", action="store_true", help="a quick run (for the tests)")
    args = parser.parse_args()
    if args.short:
        args.versions, args.episodes = 25, 12
    learn(args.versions, args.episodes, args.workers, args.actors, args.ray_address)


if __name__ == "__main__":
    main()
