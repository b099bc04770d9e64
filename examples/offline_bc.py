"""Offline training from a recorded dataset: behaviour cloning on CartPole.

1. Record a demonstrator's experience: a hand-written controller (push the cart toward the
   side the pole falls to) that takes a random action 20% of the time.
2. Train a small MLP offline on the recorded (obs, action) pairs, fed by
   `Dataset.to_torch()` through a torch `DataLoader`; no env is stepped while training.
3. Export the clone as a ModelModule (ONNX), collect with it, and compare its return with
   random actions and with the demonstrator's.

Run: python examples/offline_bc.py [--steps 50000] [--epochs 5]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import relayrl_gym


@dataclass
class Config:
    steps: int = 50_000  # demonstration transitions recorded
    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-3
    epsilon: float = 0.2  # how often the demonstrator acts at random
    actors: int = 4
    eval_steps: int = 10_000
    seed: int = 0
    sink: str = "relayrl_runs"
    policy_dir: str = ""  # where the exported ModelModule goes (default: a temp directory)


def demonstrator(epsilon: float, seed: int):
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        lean = (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)
        random = rng.integers(0, 2, len(obs))
        return np.where(rng.random(len(obs)) < epsilon, random, lean)

    return act


def clone(ds: relayrl_gym.Dataset, config: Config) -> torch.nn.Module:
    """Behaviour cloning: a classifier of the recorded actions given the observations."""
    torch.manual_seed(config.seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    loader = torch.utils.data.DataLoader(ds.to_torch(columns=["obs", "action"]),
                                         batch_size=config.batch_size, shuffle=True)
    for epoch in range(config.epochs):
        total, batches = 0.0, 0
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(net(batch["obs"]), batch["action"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        print(f"epoch {epoch + 1}: loss {total / batches:.3f}")
    return net


def main(config: Config) -> None:
    data = relayrl_gym.collect("CartPole-v1", policy=demonstrator(config.epsilon, config.seed),
                               actors=config.actors, steps=config.steps, sink=config.sink,
                               seed=config.seed)
    ds = relayrl_gym.load(data.run_path)
    print(f"dataset: {data.run_path} ({len(ds)} transitions)")
    net = clone(ds, config)
    env = gym.make("CartPole-v1")
    path = Path(config.policy_dir or tempfile.mkdtemp(prefix="cartpole-bc-")) / "bc"
    module = relayrl_gym.ModelModule.from_torch(net, env.observation_space, env.action_space,
                                                path=path, format="onnx")
    random = relayrl_gym.collect("CartPole-v1", actors=config.actors, steps=config.eval_steps,
                                 sink=None, seed=config.seed + 1)
    cloned = relayrl_gym.collect("CartPole-v1", policy=module, actors=config.actors,
                                 steps=config.eval_steps, sink=None, seed=config.seed + 1)
    print(f"return with random actions:  {random.mean_return:.1f}")
    print(f"return of the demonstrations: {ds.summary().mean_return:.1f}")
    print(f"return of the clone ({path}): {cloned.mean_return:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Config):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                            default=f.default)
    main(Config(**vars(parser.parse_args())))
