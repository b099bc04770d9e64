"""A wrapped env's own policy: ``envs.act(obs)`` answers with a ModelModule, recorded with its
version and outputs when those actions are stepped."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.errors import ConfigError

__all__ = ["PolicyDriver"]


class PolicyDriver:
    """Acts for every env copy with one ModelModule (one batched call) and remembers what it
    answered, so that the step taking exactly those actions records the model version and the
    model's extra outputs (``data``). Hot-swappable between steps with `update`."""

    def __init__(self, model: Any, observation_space: spaces.Space,
                 action_space: spaces.Space) -> None:
        """Loads ``model`` (a ModelModule or a path to one) and checks it fits the env."""
        from relayrl_gym.runtime.client import model_data_type

        self.observation_space, self.action_space = observation_space, action_space
        self.model = self._fit(model)
        self.version = int(self.model.version)
        self.data_type: pa.DataType = model_data_type(self.model)
        self._lock = threading.Lock()
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None

    def _fit(self, model: Any) -> Any:
        if isinstance(model, str | Path):
            from relayrl_gym.policies import ModelModule

            model = ModelModule.load_from_path(model)
        if not hasattr(model, "step") or not hasattr(model, "version"):
            raise ConfigError(f"`policy` must be a ModelModule or a path to one, got {model!r}; "
                              "for a plain function use relayrl_gym.collect(policy=fn)")
        if (model.observation_space != self.observation_space or
                model.action_space != self.action_space):
            raise ConfigError(
                f"the policy's spaces ({model.observation_space}, {model.action_space}) do not "
                f"fit the env's ({self.observation_space}, {self.action_space})")
        return model

    def act(self, obs: Any, mask: Any = None) -> np.ndarray:
        """One batched model call for every env copy; remembers the answer for `take`."""
        with self._lock:
            model, version = self.model, self.version
        actions, data = model.step(obs, mask)
        versions = np.full(len(actions), version, np.int64)
        # Our own copy: the caller may change the array it gets before stepping it.
        self._last = (actions, actions.copy(), versions, data)
        return actions

    def take(self, actions: Any) -> tuple[np.ndarray, dict[str, np.ndarray] | None] | None:
        """``(versions, data)`` when ``actions`` is what the last `act` returned (the env
        steps the policy's actions), else None (the caller chose them)."""
        last, self._last = self._last, None
        if last is None or actions is not last[0] or not np.array_equal(actions, last[1]):
            return None  # the caller's own actions (or the policy's, changed by the caller)
        return last[2], (last[3] or None)

    def forget(self) -> None:
        """Drops the last answer (the envs were reset: it no longer applies)."""
        self._last = None

    def update(self, model: Any) -> int:
        """Swaps the model between steps; returns its version (moving forward only)."""
        from relayrl_gym.runtime.client import model_data_type

        module = self._fit(model)
        if model_data_type(module) != self.data_type:
            raise ConfigError(f"the new policy's extra outputs ({model_data_type(module)}) "
                              f"differ from the run's ({self.data_type}); the old one keeps "
                              "running")
        with self._lock:
            new = int(module.version)
            self.version = new if new > self.version else self.version + 1
            self.model = module
            return self.version
