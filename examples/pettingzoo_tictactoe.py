"""SB3 PPO learns to beat a random tictactoe player, through a PettingZoo game turned into a
Gymnasium env by relayrl-gym; every move of both players is recorded.

`relayrl_gym.wrap(tictactoe_v3.env, actors=8, api="sb3", policies={"player_2": ...})` plays
player_2 with the given policy (here a random legal move) inside each of 8 game copies and
leaves player_1 to the learner: SB3 sees an ordinary VecEnv whose observation is player_1's
PettingZoo observation (board planes and action mask). Illegal moves end the game with -1, so
PPO also learns to play legal moves. Both players' transitions land in <sink>/<run_id>/.
Run: python examples/pettingzoo_tictactoe.py [--total-timesteps 50000] [--sink DIR]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pettingzoo.classic import tictactoe_v3
from stable_baselines3 import PPO

import relayrl_gym


@dataclass
class Config:
    total_timesteps: int = 50_000
    actors: int = 8  # game copies
    eval_games: int = 300
    seed: int = 0
    sink: str = "relayrl_runs"


PPO_KWARGS: dict[str, Any] = dict(n_steps=256, batch_size=256, n_epochs=4, gamma=0.99,
                                  learning_rate=1e-3, ent_coef=0.01)


def random_player(seed: int) -> Callable[[dict[str, np.ndarray]], int]:
    """The opponent: a uniformly random legal move."""
    rng = np.random.default_rng(seed)
    return lambda obs: int(rng.choice(np.flatnonzero(obs["action_mask"])))


def score(model: PPO, games: int, seed: int) -> tuple[float, float, float]:
    """Win, draw and loss rates of the model (player_1, greedy) against the random player."""
    env = relayrl_gym.wrap(tictactoe_v3.env(), policies={"player_2": random_player(seed)},
                           sink=None)
    outcomes = []
    for game in range(games):
        obs, _ = env.reset(seed=seed + game)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            done = terminated or truncated
        outcomes.append(np.sign(reward))
    env.close()
    result = np.array(outcomes)
    return float((result > 0).mean()), float((result == 0).mean()), float((result < 0).mean())


def main(cfg: Config) -> relayrl_gym.Dataset:
    torch.set_num_threads(1)
    env = relayrl_gym.wrap(tictactoe_v3.env, actors=cfg.actors, api="sb3", sink=cfg.sink,
                           policies={"player_2": random_player(cfg.seed)})
    model = PPO("MultiInputPolicy", env, seed=cfg.seed, device="cpu", **PPO_KWARGS)
    win, draw, loss = score(model, cfg.eval_games, seed=10_000)
    print(f"before training: win rate {win:.2f}  draw {draw:.2f}  loss {loss:.2f} "
          f"({cfg.eval_games} games against a random player)")
    model.learn(total_timesteps=cfg.total_timesteps)
    win, draw, loss = score(model, cfg.eval_games, seed=10_000)
    print(f"after {cfg.total_timesteps} steps: win rate {win:.2f}  draw {draw:.2f}  "
          f"loss {loss:.2f} ({cfg.eval_games} games against a random player)")
    env.close()

    ds = relayrl_gym.load(env.run_path)
    print(f"dataset: {env.run_path}")
    print(ds.summary())
    return ds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(Config()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    main(Config(**vars(parser.parse_args())))
