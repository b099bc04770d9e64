"""Record a CartPole dataset with 4 actors, then read it back.

The one line that matters is `relayrl_gym.wrap(...)`: everything after it is an ordinary
Gymnasium vector-env loop, and every transition lands in ./relayrl_runs/<run_id>/.
Run: python examples/record_cartpole.py [--steps 20000] [--sink DIR]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

import relayrl_gym


@dataclass
class Config:
    env_id: str = "CartPole-v1"
    actors: int = 4
    steps: int = 20_000
    seed: int = 0
    sink: str = "relayrl_runs"


def main(cfg: Config) -> relayrl_gym.Dataset:
    envs = relayrl_gym.wrap(cfg.env_id, actors=cfg.actors, sink=cfg.sink)  # <- the one change
    obs, _ = envs.reset(seed=cfg.seed)
    envs.action_space.seed(cfg.seed)
    for _ in range(cfg.steps // cfg.actors):
        # A hand-written policy: push the cart toward the side the pole leans to.
        actions = np.where(obs[:, 2] > 0, 1, 0)
        flip = np.random.default_rng().random(cfg.actors) < 0.1  # some exploration
        actions = np.where(flip, envs.action_space.sample(), actions)
        obs, _rewards, _terminated, _truncated, _info = envs.step(actions)
    envs.close()

    ds = relayrl_gym.load(envs.run_path)
    print(f"dataset: {envs.run_path}")
    print(ds.summary())
    t = ds.transitions()
    print(f"transitions: obs {t.obs.shape} {t.obs.dtype}, actions {t.action.shape}")
    return ds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--sink", default=Config.sink)
    args = parser.parse_args()
    main(Config(steps=args.steps, sink=args.sink))
