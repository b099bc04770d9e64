"""SB3 PPO on CartPole-v1: relayrl_gym.wrap(..., api="sb3") recording to Arrow vs DummyVecEnv.

Same seed, same steps, same hyperparameters (RL Zoo's, schedules made constant). Because the
wrapped env hands SB3 the same data as DummyVecEnv, the learning curves are the same: the script
checks that the learned parameters are identical and prints the mean training return of the last
100 episodes and a deterministic evaluation return of each. Target (issue #5): wall-clock ratio
(DummyVecEnv's time / wrapped time) >= 0.9 while every transition is recorded.
Run: python benchmarks/sb3_training.py [--timesteps 100000] [--rounds 3] [--n-envs 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave

import relayrl_gym

ENV_ID = "CartPole-v1"
PPO_KWARGS: dict[str, Any] = dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                                  n_epochs=20, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2)


def make_env() -> gym.Env:
    return gym.make(ENV_ID)


def train(env: VecEnv, timesteps: int, seed: int) -> tuple[PPO, float]:
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", **PPO_KWARGS)
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same, steady compute for both candidates
    root = tempfile.mkdtemp(prefix="relayrl-bench-sb3-")
    models: dict[str, PPO] = {}
    recorded: list[int] = []

    def dummy() -> float:
        env = DummyVecEnv([lambda: Monitor(make_env()) for _ in range(args.n_envs)])
        models["dummy"], seconds = train(env, args.timesteps, args.seed)
        env.close()
        return seconds

    def wrapped() -> float:
        env = relayrl_gym.wrap(make_env, actors=args.n_envs, api="sb3", sink=root)
        models["wrapped"], seconds = train(env, args.timesteps, args.seed)
        env.close()
        recorded.append(len(relayrl_gym.load(env.run_path)))
        return seconds

    med = interleave({"DummyVecEnv": dummy, "wrap(api='sb3') -> Arrow": wrapped}, args.rounds)

    print(f"PPO on {ENV_ID}, {args.n_envs} envs, {args.timesteps} steps, seed {args.seed}, "
          f"{args.rounds} rounds (median wall-clock of learn())")
    eval_env = DummyVecEnv([lambda: Monitor(make_env())])
    for (name, seconds), model in zip(med.items(), (models["dummy"], models["wrapped"])):
        train_return = np.mean([e["r"] for e in model.ep_info_buffer])
        eval_env.seed(args.seed)
        eval_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=20)
        print(f"  {name:26} {seconds:7.2f} s  last-100-episode training return "
              f"{train_return:6.1f}  evaluation return (20 episodes) {eval_return:6.1f}")
    theirs, ours = models["dummy"].policy.state_dict(), models["wrapped"].policy.state_dict()
    same = all(torch.equal(theirs[k], ours[k]) for k in theirs)
    print(f"identical learned parameters: {'yes' if same else 'NO'}")
    print(f"transitions recorded per wrapped run: {recorded[-1]}")
    ratio = med["DummyVecEnv"] / med["wrap(api='sb3') -> Arrow"]
    print(f"wall-clock ratio DummyVecEnv / wrapped (target >= 0.9): {ratio:.2f}x")


if __name__ == "__main__":
    main()
