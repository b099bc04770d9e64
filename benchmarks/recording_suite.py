"""Recording cost across env kinds: each recorded loop against its unrecorded anchor.

Every case times, for both sides, the whole life of the env: construction (`wrap()` or the
anchor's own constructor), reset, N steps and `close()` (which flushes every recorded row).
The sides alternate round by round in one process (`_common.interleave`), after one untimed
warm-up run of each at --quick length; each recorded round writes to a fresh temporary
directory, deleted once measured. Printed per case: the median rate of each side, the ratio
of the medians, and the median of the per-round ratios (each round's recorded rate over the
same round's anchor), which the closing table reports against its target.

Cases (`--cases a,b`): cartpole-readme, cartpole-torch, halfcheetah, ant, pong, image-cheap,
tictactoe, pistonball, sb3-ppo. `--quick` runs tiny step counts (a smoke test, not a
measurement: construction dominates and the ratios are low).
Run: python benchmarks/recording_suite.py [--cases ...] [--rounds 5] [--sb3-rounds 3] [--quick]
Needs: pip install -e ".[bench]"
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, play_turns

import relayrl_gym

NUM_ENVS = 4
SB3_ENVS = 8
# benchmarks/sb3_training.py's (RL Zoo's, schedules made constant).
PPO_KWARGS: dict[str, Any] = dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                                  n_epochs=20, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2)


@dataclass(frozen=True)
class Case:
    """One loop: its anchor, its recorded twin, optional extra columns and closing notes."""

    loop: str
    target: float
    unit: str
    anchor: tuple[str, Callable[[], float]]
    recorded: tuple[str, Callable[[], float]]
    extras: dict[str, Callable[[], float]] = field(default_factory=dict)
    notes: Callable[[], list[str]] = list


class RecordedRound:
    """A fresh sink directory for one recorded round, removed when the round is measured."""

    def __enter__(self) -> Path:
        self.root = Path(tempfile.mkdtemp(prefix="relayrl-suite-"))
        return self.root

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- loops: each returns steps per second, construction to close() --------------------------

def vector_rate(make: Callable[[], Any], steps: int, act: Callable[[Any, Any], Any],
                after: Callable[[Any], None] | None = None) -> float:
    start = time.perf_counter()
    envs = make()
    obs, _ = envs.reset(seed=0)
    envs.action_space.seed(0)
    for _ in range(steps):
        obs, *_ = envs.step(act(envs, obs))
    envs.close()
    rate = steps * envs.num_envs / (time.perf_counter() - start)
    if after is not None:
        after(envs)
    return rate  # env steps (transitions) per second


def random_actions(envs: Any, obs: Any) -> Any:
    return envs.action_space.sample()


def aec_rate(make: Callable[[], Any], steps: int) -> float:
    """benchmarks/pettingzoo_recording.py's loop: seeded legal moves, agent turns per second."""
    start = time.perf_counter()
    env = make()
    env.reset(seed=0)
    play_turns(env, steps)
    env.close()
    return steps / (time.perf_counter() - start)


def parallel_rate(make: Callable[[], Any], steps: int) -> float:
    """Joint steps per second, every agent acting from its own action space."""
    start = time.perf_counter()
    env = make()
    env.reset(seed=0)
    for i, agent in enumerate(env.possible_agents):
        env.action_space(agent).seed(i)
    for _ in range(steps):
        if not env.agents:
            env.reset()
        env.step({agent: env.action_space(agent).sample() for agent in env.agents})
    env.close()
    return steps / (time.perf_counter() - start)


def sync_vector(make_env: Callable[[], gym.Env], n: int = NUM_ENVS) -> gym.vector.SyncVectorEnv:
    return gym.vector.SyncVectorEnv([make_env] * n)


def wrapped_vector_rate(env: Any, steps: int, act: Callable[[Any, Any], Any] = random_actions,
                        after: Callable[[Any], None] | None = None) -> float:
    with RecordedRound() as root:
        return vector_rate(lambda: relayrl_gym.wrap(env, actors=NUM_ENVS, sink=root), steps, act,
                           after)


def vector_case(env: str | Callable[[], gym.Env], loop: str, target: float, steps: int,
                act: Callable[[Any, Any], Any] = random_actions,
                after: Callable[[Any], None] | None = None) -> Case:
    """An env id or factory: `SyncVectorEnv` of 4 copies against `wrap(env, actors=4)`."""
    make_env = (lambda: gym.make(env)) if isinstance(env, str) else env
    return Case(
        loop=loop, target=target, unit="env steps/s",
        anchor=("SyncVectorEnv", lambda: vector_rate(lambda: sync_vector(make_env), steps, act)),
        recorded=("wrap -> Arrow", lambda: wrapped_vector_rate(env, steps, act, after)),
    )


# --- cases -----------------------------------------------------------------------------------

def cartpole_readme(steps: int) -> Case:
    def no_sink() -> float:  # the wrapper's own cost, apart from recording
        return vector_rate(lambda: relayrl_gym.wrap("CartPole-v1", actors=NUM_ENVS, sink=None),
                           steps, random_actions)

    case = vector_case("CartPole-v1", "CartPole, README loop (4 envs)", 0.9, steps)
    return Case(case.loop, case.target, case.unit, case.anchor, case.recorded,
                extras={"wrap, sink=None": no_sink})


def cartpole_torch(steps: int) -> Case:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, 2))

    def act(envs: Any, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.as_tensor(obs)).argmax(dim=1).numpy()

    return vector_case("CartPole-v1", "CartPole, torch MLP policy (4 envs)", 0.9, steps, act)


def halfcheetah(steps: int) -> Case:
    return vector_case("HalfCheetah-v5", "MuJoCo HalfCheetah-v5 (4 envs)", 0.97, steps)


def ant(steps: int) -> Case:
    return vector_case("Ant-v5", "MuJoCo Ant-v5 (4 envs)", 0.97, steps)


def make_pong() -> gym.Env:
    import ale_py
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=1)
    return FrameStackObservation(AtariPreprocessing(env, frame_skip=4), 4)  # (4, 84, 84) uint8


def pong(steps: int) -> Case:
    return vector_case(make_pong, "Atari Pong, 4x84x84 frames (4 envs)", 0.97, steps)


class CheapImageEnv(gym.Env[np.ndarray, np.int64]):
    """An 84x84x4 uint8 frame stack that costs next to nothing to step; ends every 200 steps."""

    observation_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def __init__(self) -> None:
        self._frame = np.random.default_rng(0).integers(0, 256, (84, 84, 4), dtype=np.uint8)
        self._t = 0

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._frame.copy(), {}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        return np.roll(self._frame, self._t, axis=1), 0.0, self._t % 200 == 0, False, {}


def image_cheap(steps: int) -> Case:
    bytes_per_row: list[float] = []

    def measure_disk(envs: Any) -> None:
        size = sum(p.stat().st_size for p in Path(envs.run_path).rglob("*") if p.is_file())
        bytes_per_row.append(size / envs.agent.recorder.rows_recorded)

    def notes() -> list[str]:
        raw = int(np.prod(CheapImageEnv.observation_space.shape))
        return [f"bytes on disk per recorded transition: {statistics.median(bytes_per_row):,.0f}"
                f" (median over rounds; one observation is {raw:,} bytes)"]

    case = vector_case(CheapImageEnv, "cheap synthetic 84x84x4 image env (4 envs)", 0.6, steps,
                       after=measure_disk)
    return Case(case.loop, case.target, case.unit, case.anchor, case.recorded, notes=notes)


def tictactoe(steps: int) -> Case:
    from pettingzoo.classic import tictactoe_v3

    def recorded() -> float:
        with RecordedRound() as root:
            return aec_rate(lambda: relayrl_gym.wrap(tictactoe_v3.env(), sink=root), steps)

    return Case(loop="PettingZoo tictactoe (AEC)", target=0.85, unit="agent turns/s",
                anchor=("raw AECEnv", lambda: aec_rate(tictactoe_v3.env, steps)),
                recorded=("wrap -> Arrow", recorded))


def pistonball(steps: int) -> Case:
    from pettingzoo.butterfly import pistonball_v6

    def recorded() -> float:
        with RecordedRound() as root:
            return parallel_rate(lambda: relayrl_gym.wrap(pistonball_v6.parallel_env(), sink=root),
                                 steps)

    return Case(loop="PettingZoo pistonball (parallel, 20 agents, images)", target=0.85,
                unit="joint steps/s",
                anchor=("raw ParallelEnv", lambda: parallel_rate(pistonball_v6.parallel_env,
                                                                 steps)),
                recorded=("wrap -> Arrow", recorded))


def sb3_ppo(timesteps: int) -> Case:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    models: dict[str, PPO] = {}

    def train(side: str, make: Callable[[], Any]) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as sb3_training.py: the same, steady compute for both sides
        try:
            start = time.perf_counter()
            env = make()
            models[side] = PPO("MlpPolicy", env, seed=0, device="cpu", **PPO_KWARGS)
            models[side].learn(total_timesteps=timesteps)
            env.close()
            # learn() rounds up to whole rollouts (n_steps x envs), the same on both sides
            return models[side].num_timesteps / (time.perf_counter() - start)
        finally:
            torch.set_num_threads(threads)

    def recorded() -> float:
        with RecordedRound() as root:
            return train("wrapped", lambda: relayrl_gym.wrap(
                "CartPole-v1", actors=SB3_ENVS, api="sb3", sink=root))

    def notes() -> list[str]:
        theirs, ours = models["dummy"].policy.state_dict(), models["wrapped"].policy.state_dict()
        same = theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k])
                                                    for k in theirs)
        return [f"identical learned parameters (last round): {'yes' if same else 'NO'}"]

    return Case(
        loop="SB3 PPO CartPole, learn() wall clock (8 envs)", target=0.98, unit="timesteps/s",
        anchor=("DummyVecEnv + Monitor", lambda: train("dummy", lambda: DummyVecEnv(
            [lambda: Monitor(gym.make("CartPole-v1"))] * SB3_ENVS))),
        recorded=("wrap(api='sb3') -> Arrow", recorded),
        notes=notes,
    )


# name: (builder, default steps, --quick steps). Steps are vector steps (4 envs), joint steps
# (pistonball), agent turns (tictactoe) or training timesteps (sb3-ppo); the defaults make an
# unrecorded round take about 2-3 s on one core (CartPole ~100k env steps/s, HalfCheetah ~14k,
# Ant ~4k, Pong ~1.7k, the cheap image env ~70k, tictactoe ~24k turns, pistonball ~90 steps/s).
CASES: dict[str, tuple[Callable[[int], Case], int, int]] = {
    "cartpole-readme": (cartpole_readme, 50_000, 100),
    "cartpole-torch": (cartpole_torch, 20_000, 100),
    "halfcheetah": (halfcheetah, 10_000, 50),
    "ant": (ant, 3_000, 50),
    "pong": (pong, 1_000, 30),
    "image-cheap": (image_cheap, 30_000, 100),
    "tictactoe": (tictactoe, 50_000, 300),
    "pistonball": (pistonball, 200, 10),
    "sb3-ppo": (sb3_ppo, 100_000, 2_000),
}


def warm_up(case: Case) -> None:
    """One untimed run of every side, so that first-use costs (lazy imports, MuJoCo's model
    compiler, torch's first call) land on no measured round; round 1's first side would pay
    them otherwise."""
    for run in (case.anchor[1], case.recorded[1], *case.extras.values()):
        run()


def run_case(name: str, case: Case, steps: int, rounds: int) -> float:
    """Runs and prints one case; returns the median of its per-round ratios."""
    per_round: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}

    def tracked(label: str, run: Callable[[], float]) -> Callable[[], float]:
        def once() -> float:
            start = time.perf_counter()
            per_round.setdefault(label, []).append(run())
            seconds.setdefault(label, []).append(time.perf_counter() - start)
            return per_round[label][-1]
        return once

    (anchor, _), (recorded, _) = case.anchor, case.recorded
    runs = {label: tracked(label, run)
            for label, run in (case.anchor, case.recorded, *case.extras.items())}
    med = interleave(runs, rounds)
    ratios = [r / a for a, r in zip(per_round[anchor], per_round[recorded])]
    ratio = statistics.median(ratios)
    print(f"\n{name}: {case.loop}, {steps:,} steps x {rounds} rounds "
          f"(median {case.unit}, construction to close)")
    for label, rate in med.items():
        print(f"  {label:26} {rate:12,.1f} {case.unit}  {rate / med[anchor]:5.2f}x  "
              f"({statistics.median(seconds[label]):.2f} s/round)")
    print(f"  recorded / unrecorded: {med[recorded] / med[anchor]:.2f}x of medians, "
          f"{ratio:.2f}x median per round (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"target >= {case.target}")
    for line in case.notes():
        print(f"  {line}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated case names (default: all)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per case (default 5; --quick: 2)")
    parser.add_argument("--sb3-rounds", type=int, default=None,
                        help="rounds of sb3-ppo (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny step counts (see CASES): a smoke test in well under a minute")
    args = parser.parse_args()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    rounds = args.rounds if args.rounds is not None else 2 if args.quick else 5
    sb3_rounds = args.sb3_rounds if args.sb3_rounds is not None else 1 if args.quick else 3
    if min(rounds, sb3_rounds) < 1:
        parser.error(f"--rounds and --sb3-rounds must be >= 1, got {rounds} and {sb3_rounds}")

    table = []
    for name in names:
        build, steps, quick_steps = CASES[name]
        steps = quick_steps if args.quick else steps
        warm_up(build(quick_steps))
        case = build(steps)
        ratio = run_case(name, case, steps, sb3_rounds if name == "sb3-ppo" else rounds)
        table.append((case.loop, ratio, case.target))

    print("\n| loop | recorded / unrecorded | target |\n|---|---|---|")
    for loop, ratio, target in table:
        mark = "" if ratio >= target else " (below)"
        print(f"| {loop} | {ratio:.2f}x{mark} | >= {target}x |")
    if args.quick:
        print("\n(--quick: tiny step counts, construction dominates; not a measurement)")


if __name__ == "__main__":
    main()
