"""Train a tiny torch policy on CartPole, export it as a ModelModule, collect a dataset with it.

1. Collect with random actions: the "before" return.
2. Train a small MLP with REINFORCE (a few minutes on a CPU with the defaults).
3. Export it (ONNX) and collect with 8 actors acting through it: the "after" return. Every
   transition is recorded with the model version that acted.

Run: python examples/train_export_collect.py [--episodes 600] [--collect-steps 20000]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import gymnasium as gym
import torch

import relayrl_gym


@dataclass
class Config:
    episodes: int = 600  # REINFORCE episodes
    lr: float = 0.01
    gamma: float = 0.99
    hidden: int = 32
    seed: int = 0
    actors: int = 8
    collect_steps: int = 20_000
    sink: str = "relayrl_runs"
    policy_dir: str = ""  # where the exported ModelModule goes (default: a temp directory)


def reinforce(config: Config) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    env = gym.make("CartPole-v1")
    net = torch.nn.Sequential(torch.nn.Linear(4, config.hidden), torch.nn.Tanh(),
                              torch.nn.Linear(config.hidden, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    for episode in range(config.episodes):
        obs, _ = env.reset(seed=config.seed + episode)
        log_probs, rewards = [], []
        done = False
        while not done:
            logits = net(torch.as_tensor(obs, dtype=torch.float32))
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            obs, reward, terminated, truncated, _ = env.step(int(action))
            rewards.append(float(reward))
            done = terminated or truncated
        returns, running = [], 0.0
        for r in reversed(rewards):
            running = r + config.gamma * running
            returns.append(running)
        target = torch.tensor(returns[::-1])
        target = (target - target.mean()) / (target.std() + 1e-8)
        loss = -(torch.stack(log_probs) * target).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (episode + 1) % 100 == 0:
            print(f"episode {episode + 1}: return {sum(rewards):.0f}")
    env.close()
    return net


def main(config: Config) -> None:
    before = relayrl_gym.collect("CartPole-v1", actors=config.actors,
                                 steps=config.collect_steps, sink=None, seed=config.seed)
    net = reinforce(config)
    policy_dir = Path(config.policy_dir or tempfile.mkdtemp(prefix="cartpole-")) / "pi"
    env = gym.make("CartPole-v1")
    module = relayrl_gym.ModelModule.from_torch(net, env.observation_space, env.action_space,
                                                path=policy_dir, format="onnx")
    after = relayrl_gym.collect("CartPole-v1", policy=module, actors=config.actors,
                                steps=config.collect_steps, sink=config.sink, seed=config.seed)
    print(f"return before training (random actions): {before.mean_return:.1f}")
    print(f"return after training ({policy_dir}):     {after.mean_return:.1f}")
    print(f"dataset: {after.run_path}")
    print(relayrl_gym.load(after.run_path).summary())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Config):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                            default=f.default)
    main(Config(**vars(parser.parse_args())))
