"""`relayrl_gym.collect`: run actors with a policy for a number of steps or episodes, recorded."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm

from relayrl_gym.errors import ConfigError
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT
from relayrl_gym.wrap import wrap

__all__ = ["CollectSummary", "collect"]


@dataclass(frozen=True)
class CollectSummary:
    """What a `collect` call did: counts, returns of finished episodes, where the data is."""

    run_id: str
    run_path: Path | None
    steps: int
    episodes: int
    mean_return: float
    std_return: float
    seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        return (f"run {self.run_id}: {self.steps} steps, {self.episodes} episodes, return "
                f"{self.mean_return:.2f} +/- {self.std_return:.2f}, "
                f"{self.steps_per_second:.0f} steps/s" +
                (f"\ndata: {self.run_path}" if self.run_path else ""))


def collect(
    env: Any,
    policy: Callable[[Any], Any] | Any = None,
    actors: int = 1,
    steps: int | None = None,
    episodes: int | None = None,
    sink: Any = DEFAULT_SINK_ROOT,
    seed: int | None = None,
    progress: bool = False,
    tensorboard: str | os.PathLike[str] | None = None,
    **wrap_kwargs: Any,
) -> CollectSummary:
    """Runs ``actors`` env copies until ``steps`` transitions or ``episodes`` episodes are done.

    Args:
        env: anything `relayrl_gym.wrap` takes.
        policy: a ModelModule or a path to one (batched inference, recorded with its version
            and outputs), a function ``policy(obs_batch) -> action_batch``, or None for random
            actions.
        actors: number of env copies.
        steps: stop once this many transitions are recorded (summed over actors; the last
            vector step may add up to ``actors - 1`` more).
        episodes: stop after this many finished episodes (summed over actors).
        sink: where transitions go (see `relayrl_gym.wrap`).
        seed: seeds the envs (actor i gets ``seed + i``) and the random policy.
        progress: show a progress bar.
        tensorboard: a folder to write episode returns, lengths and steps/s to as
            TensorBoard scalars while collecting (extra ``tensorboard``).
        **wrap_kwargs: passed to `relayrl_gym.wrap`.

    >>> import relayrl_gym
    >>> s = relayrl_gym.collect("CartPole-v1", actors=2, steps=100, sink=None, seed=0)
    >>> s.steps
    100
    """
    if steps is None and episodes is None:
        raise ConfigError("pass `steps=` or `episodes=` to say when collection stops")
    for name, value in (("steps", steps), ("episodes", episodes)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"`{name}` must be an int >= 1, got {value!r}")

    module = None
    if policy is not None and (isinstance(policy, str | os.PathLike) or
                               (hasattr(policy, "step") and hasattr(policy, "version"))):
        module, policy = policy, None
    envs = wrap(env, actors, sink=sink, policy=module, **wrap_kwargs)
    board = None
    if tensorboard is not None:
        try:
            from relayrl_gym.data.scalars import TensorBoardScalars

            board = TensorBoardScalars(tensorboard)
        except BaseException:
            envs.close()
            raise
    returns: list[float] = []
    done_steps = 0
    bar = tqdm(total=steps or episodes, unit="step" if steps else "episode", disable=not progress,
               dynamic_ncols=True)
    start = time.perf_counter()
    try:
        obs, _ = envs.reset(seed=seed)
        if seed is not None:
            envs.action_space.seed(seed)
        next_step = envs.autoreset_mode is AutoresetMode.NEXT_STEP
        running = np.zeros(envs.num_envs)
        lengths = np.zeros(envs.num_envs, dtype=np.int64)
        just_reset = np.zeros(envs.num_envs, dtype=bool)  # NEXT_STEP pseudo-steps to skip
        while (steps is None or done_steps < steps) and (episodes is None or
                                                          len(returns) < episodes):
            if module is not None:
                actions = envs.act(obs)
            else:
                actions = envs.action_space.sample() if policy is None else policy(obs)
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            real = ~just_reset
            counted = int(real.sum())
            done_steps += counted
            running[real] += rewards[real]
            lengths[real] += 1
            finished = (terminated | truncated) & real
            for i in np.flatnonzero(finished):
                returns.append(float(running[i]))
                if board is not None:
                    version = envs.agent.get_model_version()[i] if module is not None else -1
                    board.episode(float(running[i]), int(lengths[i]), done_steps,
                                  model_version=int(version))
                running[i], lengths[i] = 0.0, 0
            if board is not None:
                board.steps(done_steps)
            just_reset = finished if next_step else just_reset
            bar.update(counted if steps else int(finished.sum()))
    finally:
        bar.close()
        envs.close()
        if board is not None:
            board.close()
    seconds = time.perf_counter() - start
    arr = np.asarray(returns)
    return CollectSummary(
        run_id=envs.run_id, run_path=envs.run_path, steps=done_steps, episodes=len(returns),
        mean_return=float(arr.mean()) if len(arr) else math.nan,
        std_return=float(arr.std()) if len(arr) else math.nan, seconds=seconds)
