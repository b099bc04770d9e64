"""`CollectionLoop`: a policy driving a wrapped env, counting what it collects.

One loop for `relayrl_gym.collect` in this process and for each worker of a `Fleet`: it steps
until a number of transitions or episodes (or a stop event), counts transitions (NEXT_STEP
reset pseudo-steps are not transitions and are not counted), finished episodes and their
returns, and reports progress to a callback.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

__all__ = ["CollectionLoop", "split_policy"]


def split_policy(policy: Any) -> tuple[Any, Callable[[Any], Any] | None]:
    """``(module, function)``: a ModelModule or a path to one goes to ``wrap(policy=)``
    (batched inference, recorded with its version), a function ``obs -> actions`` is called
    by the loop; None for both means random actions."""
    if policy is not None and (isinstance(policy, str | os.PathLike) or
                               (hasattr(policy, "step") and hasattr(policy, "version"))):
        return policy, None
    return None, policy


class CollectionLoop:
    """Steps ``envs`` with ``policy`` (see `split_policy`; None: random actions).

    ``steps``, ``episodes`` and ``returns`` grow as it runs; ``run`` may be called again to go
    on (the envs are reset on the first call only). Thread-safe to read while it runs.

    >>> import relayrl_gym
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None)
    >>> loop = CollectionLoop(envs, seed=0)
    >>> loop.run(steps=50); loop.steps >= 50, envs.close()
    (True, None)
    """

    def __init__(self, envs: Any, policy: Any = None, *, seed: int | None = None,
                 uses_module: bool = False,
                 on_episode: Callable[[float, int, int, int], None] | None = None) -> None:
        """Args:
            envs: a wrapped vector env.
            policy: a function ``obs -> actions`` (None: random actions, or ``envs.act``
                when ``uses_module``).
            seed: seeds the envs (actor i gets ``seed + i``) and the random actions.
            uses_module: the env has a policy (``wrap(policy=...)``): ``envs.act`` chooses.
            on_episode: called with (return, length, steps so far, model version) at each
                finished episode.
        """
        self.envs = envs
        self.policy = policy
        self.seed = seed
        self.uses_module = uses_module
        self.on_episode = on_episode
        self.steps = 0
        self.returns: list[float] = []
        self.seconds = 0.0
        self._obs: Any = None
        self._lock = threading.Lock()

    @property
    def episodes(self) -> int:
        return len(self.returns)

    def snapshot(self) -> tuple[int, list[float]]:
        """The steps and the returns so far, read together."""
        with self._lock:
            return self.steps, list(self.returns)

    def mean_return(self, last: int | None = None) -> float:
        """Mean return of the finished episodes (the ``last`` ones only), NaN if none."""
        with self._lock:
            values = self.returns[-last:] if last else list(self.returns)
        return float(np.mean(values)) if values else math.nan

    def run(self, steps: int | None = None, episodes: int | None = None,
            stop: threading.Event | None = None,
            progress: Callable[[int, int], None] | None = None) -> None:
        """Steps until ``steps`` transitions or ``episodes`` episodes in all (counting earlier
        calls), or until ``stop`` is set; ``progress(new_steps, new_episodes)`` after each
        vector step."""
        envs = self.envs
        start = time.perf_counter()
        if self._obs is None:
            self._obs, _ = envs.reset(seed=self.seed)
            if self.seed is not None:
                envs.action_space.seed(self.seed)
            self._running = np.zeros(envs.num_envs)
            self._lengths = np.zeros(envs.num_envs, dtype=np.int64)
            self._just_reset = np.zeros(envs.num_envs, dtype=bool)
        next_step = envs.autoreset_mode is AutoresetMode.NEXT_STEP
        try:
            while ((steps is None or self.steps < steps) and
                   (episodes is None or self.episodes < episodes) and
                   (stop is None or not stop.is_set())):
                if self.uses_module:
                    actions = envs.act(self._obs)
                elif self.policy is None:
                    actions = envs.action_space.sample()
                else:
                    actions = self.policy(self._obs)
                self._obs, rewards, terminated, truncated, _ = envs.step(actions)
                real = ~self._just_reset
                counted = int(real.sum())
                self._running[real] += rewards[real]
                self._lengths[real] += 1
                finished = (terminated | truncated) & real
                with self._lock:
                    self.steps += counted
                    for i in np.flatnonzero(finished):
                        self.returns.append(float(self._running[i]))
                for i in np.flatnonzero(finished):
                    if self.on_episode is not None:
                        version = (envs.agent.get_model_version()[i] if self.uses_module
                                   else -1)
                        self.on_episode(float(self._running[i]), int(self._lengths[i]),
                                        self.steps, int(version))
                    self._running[i], self._lengths[i] = 0.0, 0
                self._just_reset = finished if next_step else self._just_reset
                if progress is not None:
                    progress(counted, int(finished.sum()))
        finally:
            self.seconds += time.perf_counter() - start
