"""`relayrl_gym.collect`: run actors with a policy for a number of steps or episodes, recorded."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from relayrl_gym.collection.fleet import collect_with_fleet
from relayrl_gym.collection.loop import CollectionLoop, split_policy
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
    workers: int | None = None,
    backend: str = "local",
    **wrap_kwargs: Any,
) -> Any:
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
        workers: processes collecting at once, each with ``actors`` env copies and a run of
            its own (``backend="ray"``: Ray actors placed on a Ray cluster; see
            `relayrl_gym.Fleet`); ``steps`` / ``episodes`` are shared among them. Returns a
            `FleetSummary` then.
        backend: ``"local"`` (this process) or ``"ray"``.
        **wrap_kwargs: passed to `relayrl_gym.wrap` (with ``backend="ray"``, also the
            `relayrl_gym.Fleet` options: ``num_cpus``, ``num_gpus``, ``resources``,
            ``strategy``, ``ray_address``, ``ray_init``, ``max_restarts``).

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

    if backend not in ("local", "ray"):
        raise ConfigError(f"`backend` must be 'local' or 'ray', got {backend!r}")
    if backend == "ray" or workers is not None:
        if tensorboard is not None:
            raise ConfigError("`tensorboard` is for collect in this process; a fleet's "
                              "episodes reach TensorBoard through `relayrl-gym serve "
                              "--tensorboard DIR` on its sink")
        return collect_with_fleet(env, policy, actors=actors, steps=steps, episodes=episodes,
                                  sink=sink, seed=seed, progress=progress,
                                  workers=1 if workers is None else workers,
                                  **wrap_kwargs)
    module, function = split_policy(policy)
    envs = wrap(env, actors, sink=sink, policy=module, **wrap_kwargs)
    board = None
    if tensorboard is not None:
        try:
            from relayrl_gym.data.scalars import TensorBoardScalars

            board = TensorBoardScalars(tensorboard)
        except BaseException:
            envs.close()
            raise
    def episode(episode_return: float, length: int, step: int, version: int) -> None:
        if board is not None:
            board.episode(episode_return, length, step, model_version=version)

    loop = CollectionLoop(envs, function, seed=seed, uses_module=module is not None,
                          on_episode=episode if board is not None else None)
    bar = tqdm(total=steps or episodes, unit="step" if steps else "episode", disable=not progress,
               dynamic_ncols=True)

    def advanced(new_steps: int, new_episodes: int) -> None:
        if board is not None:
            board.steps(loop.steps)
        bar.update(new_steps if steps else new_episodes)

    try:
        loop.run(steps=steps, episodes=episodes, progress=advanced)
    finally:
        bar.close()
        envs.close()
        if board is not None:
            board.close()
    arr = np.asarray(loop.returns)
    return CollectSummary(
        run_id=envs.run_id, run_path=envs.run_path, steps=loop.steps, episodes=loop.episodes,
        mean_return=float(arr.mean()) if len(arr) else math.nan,
        std_return=float(arr.std()) if len(arr) else math.nan, seconds=loop.seconds)
