"""PettingZoo: steps/s of wrapped, recorded games against the unwrapped games.

1. rps (ParallelEnv): `relayrl_gym.wrap(rps_v2.parallel_env())` recording to Arrow vs the raw
   ParallelEnv (joint steps/s, same actions).
2. tictactoe (AECEnv): `relayrl_gym.wrap(tictactoe_v3.env())` recording to Arrow vs the raw
   AECEnv (agent turns/s, same seeded legal moves).
3. A learner against an exported policy in 16 tictactoe copies: the wrapped vector env (the
   opponent answered by one batched model call per step) vs the raw games with one model call
   per game per move (what a hand-written loop over copies does).
Prints steps/s of each and the ratios (wrapped / raw).
Run: python benchmarks/pettingzoo_recording.py [--steps 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, play_turns
from pettingzoo.classic import rps_v2, tictactoe_v3

import relayrl_gym

COPIES = 16


def parallel_rate(make, steps: int) -> float:
    env = make()
    actions = np.random.default_rng(0).integers(0, 3, (steps, 2)).tolist()
    env.reset(seed=0)
    start = time.perf_counter()
    for a0, a1 in actions:
        if not env.agents:
            env.reset()
        env.step({"player_0": a0, "player_1": a1})
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def aec_rate(make, steps: int) -> float:
    env = make()
    env.reset(seed=0)
    start = time.perf_counter()
    play_turns(env, steps)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def opponent_module():
    import torch
    from gymnasium import spaces

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(18, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 9))
    return relayrl_gym.ModelModule.from_torch(net, spaces.Box(0, 1, (3, 3, 2), np.int8),
                                              spaces.Discrete(9))


def vector_rate(module, root: str, steps: int) -> float:
    envs = relayrl_gym.wrap(tictactoe_v3.env, actors=COPIES, sink=root,
                            policies={"player_2": module})
    _, infos = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // COPIES):
        # a finished game shows no legal move: its action is ignored (the game resets)
        actions = [int(rng.choice(np.flatnonzero(m))) if m.any() else 0
                   for m in infos["action_mask"]]
        _, _, _, _, infos = envs.step(np.array(actions))
    rate = (steps // COPIES) * COPIES / (time.perf_counter() - start)
    envs.close()
    return rate  # learner steps/s (each with the opponent's reply)


def raw_loop_rate(module, steps: int) -> float:
    games = [tictactoe_v3.env() for _ in range(COPIES)]
    for c, game in enumerate(games):
        game.reset(seed=c)
    rng = np.random.default_rng(0)
    done = 0
    start = time.perf_counter()
    while done < steps:
        for game in games:  # the learner's move, then the opponent's, one model call each
            if not game.agents:
                game.reset()
                continue
            obs, _, terminated, truncated, _ = game.last()
            if terminated or truncated:
                while game.agents:
                    game.step(None)
                continue
            game.step(int(rng.choice(np.flatnonzero(obs["action_mask"]))))
            done += 1
            obs, _, terminated, truncated, _ = game.last()
            if terminated or truncated:
                while game.agents:
                    game.step(None)
                continue
            action, _ = module.step(obs["observation"][None], obs["action_mask"][None])
            game.step(int(action[0]))
    rate = done / (time.perf_counter() - start)
    for game in games:
        game.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5_000, help="steps per round and case")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="relayrl-bench-pz-")
    module = opponent_module()
    steps = args.steps
    results = interleave({
        "rps raw ParallelEnv": lambda: parallel_rate(rps_v2.parallel_env, steps),
        "rps wrap -> Arrow": lambda: parallel_rate(
            lambda: relayrl_gym.wrap(rps_v2.parallel_env(), sink=root), steps),
        "tictactoe raw AECEnv": lambda: aec_rate(tictactoe_v3.env, steps),
        "tictactoe wrap -> Arrow": lambda: aec_rate(
            lambda: relayrl_gym.wrap(tictactoe_v3.env(), sink=root), steps),
        f"vs policy: raw loop, {COPIES} games": lambda: raw_loop_rate(module, steps),
        f"vs policy: wrap(actors={COPIES}) -> Arrow": lambda: vector_rate(module, root, steps),
    }, args.rounds)
    for name, rate in results.items():
        print(f"{name:40s} {rate:12,.0f} steps/s")
    names = list(results)
    for raw, wrapped, what in ((0, 1, "rps parallel"), (2, 3, "tictactoe AEC"),
                               (4, 5, "learner vs exported policy")):
        print(f"ratio {what:30s} {results[names[wrapped]] / results[names[raw]]:.2f}x "
              "(wrapped+recorded / raw)")


if __name__ == "__main__":
    main()
