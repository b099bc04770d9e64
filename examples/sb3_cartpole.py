"""Train Stable-Baselines3 PPO, then DQN, on CartPole; every step they take is recorded.

An ordinary SB3 script with one line changed (marked "the one change" below): the vector env
comes from `relayrl_gym.wrap(..., api="sb3")` instead of `make_vec_env(...)`. SB3 trains on it
exactly as on its own DummyVecEnv, and each run's transitions land in <sink>/<run_id>/ as
Arrow files (training rollouts and the evaluation episodes alike).
Run: python examples/sb3_cartpole.py [--total-timesteps 100000] [--sink DIR]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy

import relayrl_gym


@dataclass
class Config:
    env_id: str = "CartPole-v1"
    total_timesteps: int = 100_000  # per algorithm
    seed: int = 0
    eval_episodes: int = 10
    sink: str = "relayrl_runs"


# Hyperparameters from the RL Baselines3 Zoo for CartPole-v1 (schedules made constant).
PPO_KWARGS: dict[str, Any] = dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                                  n_epochs=20, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2)
DQN_KWARGS: dict[str, Any] = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000,
                                  learning_starts=1000, gamma=0.99, target_update_interval=10,
                                  train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                                  exploration_final_eps=0.04,
                                  policy_kwargs=dict(net_arch=[256, 256]))


def train(algo: type[BaseAlgorithm], n_envs: int, cfg: Config,
          **hyperparams: Any) -> relayrl_gym.Dataset:
    # the one change: was `env = make_vec_env(cfg.env_id, n_envs=n_envs)`
    env = relayrl_gym.wrap(cfg.env_id, actors=n_envs, api="sb3", sink=cfg.sink)
    model = algo("MlpPolicy", env, seed=cfg.seed, **hyperparams)
    model.learn(total_timesteps=cfg.total_timesteps)
    mean, std = evaluate_policy(model, env, n_eval_episodes=cfg.eval_episodes)
    print(f"{algo.__name__}: evaluation return {mean:.1f} +/- {std:.1f} "
          f"({cfg.eval_episodes} episodes, {cfg.total_timesteps} training steps)")
    env.close()

    ds = relayrl_gym.load(env.run_path)
    print(f"dataset: {env.run_path}")
    print(ds.summary())
    return ds


def main(cfg: Config) -> list[relayrl_gym.Dataset]:
    return [train(PPO, 8, cfg, **PPO_KWARGS), train(DQN, 1, cfg, **DQN_KWARGS)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total-timesteps", type=int, default=Config.total_timesteps)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--sink", default=Config.sink)
    args = parser.parse_args()
    main(Config(total_timesteps=args.total_timesteps, seed=args.seed, sink=args.sink))
