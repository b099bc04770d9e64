"""A client process of the inference server tests.

``--mode raw``: asks the server ``--requests`` times for actions on random observations through
a `RemotePolicy` and checks each answer against the same model run locally (``--model``).
``--mode env``: steps ``wrap("CartPole-v1", actors=--envs, policy=URL, sink=--sink)`` with the
server's actions for ``--steps`` steps (``--sleep`` s between steps).
Prints one JSON line when done.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import relayrl_gym
from relayrl_gym.transport.inference.client import RemotePolicy


def raw(args: argparse.Namespace) -> dict:
    local = relayrl_gym.ModelModule.load_from_path(args.model)
    rng = np.random.default_rng(args.seed)
    mismatches = 0
    with RemotePolicy(args.url, timeout=args.timeout) as remote:
        for _ in range(args.requests):
            obs = rng.uniform(-2, 2, (args.envs, 4)).astype(np.float32)
            actions, _ = remote.step(obs)
            mismatches += int((actions != local.step(obs)[0]).sum())
        return {"requests": args.requests, "mismatches": mismatches, "retries": remote.retries}


def env(args: argparse.Namespace) -> dict:
    envs = relayrl_gym.wrap("CartPole-v1", actors=args.envs, sink=args.sink,
                            policy=f"{args.url}?timeout={args.timeout}",
                            autoreset_mode="same_step")
    print(json.dumps({"run_id": envs.run_id, "run_path": str(envs.run_path)}), flush=True)
    envs.reset(seed=args.seed)
    for _ in range(args.steps):
        envs.step(envs.act())
        if args.sleep:
            time.sleep(args.sleep)
    remote = envs._policy.runner.model
    retries = remote.retries
    envs.close()
    return {"steps": args.steps, "retries": retries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["raw", "env"], default="raw")
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--sink", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    print(json.dumps(raw(args) if args.mode == "raw" else env(args)), flush=True)


if __name__ == "__main__":
    main()
