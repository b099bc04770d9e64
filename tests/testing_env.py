"""A tiny deterministic env with configurable spaces, episode length and hooks, for edge cases."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SPACES: dict[str, spaces.Space] = {
    "box": spaces.Box(-1.0, 1.0, (3,), np.float32),
    "box64-2d": spaces.Box(-5.0, 5.0, (2, 3), np.float64),
    "image": spaces.Box(0, 255, (8, 6, 3), np.uint8),
    "discrete": spaces.Discrete(5, start=2),
    "multidiscrete": spaces.MultiDiscrete([3, 4, 2]),
    "multibinary": spaces.MultiBinary(5),
    "dict": spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float32),
                         "flag": spaces.Discrete(2),
                         "nested": spaces.Dict({"img": spaces.Box(0, 255, (2, 2), np.uint8)})}),
    "tuple": spaces.Tuple((spaces.Discrete(3), spaces.Box(0, 1, (2,), np.float32))),
}


class TestingEnv(gym.Env):
    """Observations drawn from the space with the env's seeded RNG; episodes of ``length`` steps.

    Reward = step index within the episode; terminates at ``length`` (or truncates, if
    ``truncate``). ``step_fn`` / ``reset_fn`` override behaviour; ``sleep`` makes a step block
    (releasing the GIL) for that many seconds. Every method call records the thread it ran on.
    """

    __test__ = False  # not a pytest test class
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, obs_space: spaces.Space | None = None,
                 action_space: spaces.Space | None = None, length: int = 5,
                 truncate: bool = False, info: bool = False, sleep: float = 0.0,
                 step_fn: Callable[..., Any] | None = None, render_mode: str | None = None):
        # Own copies: _obs re-seeds the space, which must not race between env copies.
        self.observation_space = copy.deepcopy(obs_space or SPACES["box"])
        self.action_space = copy.deepcopy(action_space or spaces.Discrete(2))
        self.length, self.truncate, self.with_info, self.sleep = length, truncate, info, sleep
        self.step_fn = step_fn
        self.render_mode = render_mode
        self.t = 0
        self.threads: set[int] = {threading.get_ident()}
        self.last_action: Any = None
        self.closed = False

    def _obs(self) -> Any:
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        return self.observation_space.sample()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.threads.add(threading.get_ident())
        self.t = 0
        return self._obs(), ({"reset": True} if self.with_info else {})

    def step(self, action: Any):
        self.threads.add(threading.get_ident())
        if self.sleep:
            time.sleep(self.sleep)
        if self.step_fn is not None:
            return self.step_fn(self, action)
        self.last_action = action
        self.t += 1
        done = self.t >= self.length
        info = {"t": self.t, "vec": np.arange(2) * self.t} if self.with_info else {}
        return (self._obs(), float(self.t), done and not self.truncate, done and self.truncate,
                info)

    def render(self):
        self.threads.add(threading.get_ident())
        return np.full((4, 4, 3), self.t, dtype=np.uint8)

    def close(self):
        self.threads.add(threading.get_ident())
        self.closed = True
