"""A wrapped env's own policy: ``envs.act(obs)`` answers with a ModelModule, recorded with its
version and outputs when those actions are stepped."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.policies.fitting import VersionCounter, fitting_model, model_data_type

__all__ = ["PolicyDriver"]


class PolicyDriver:
    """Acts for every env copy with one ModelModule (one batched call) and remembers what it
    answered, so that the step taking exactly those actions records the model version and the
    model's extra outputs (``data``). Hot-swappable between steps with `update`."""

    def __init__(self, model: Any, observation_space: spaces.Space,
                 action_space: spaces.Space) -> None:
        """Loads ``model`` (a ModelModule or a path to one) and checks it fits the env."""
        self.observation_space, self.action_space = observation_space, action_space
        self.model = fitting_model(model, observation_space, action_space, what="policy",
                                   owner="env")
        self.data_type: pa.DataType = model_data_type(self.model)
        self._versions = VersionCounter()
        self.version = self._versions.version_of(self.model)
        self._lock = threading.Lock()
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None

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
        """Swaps the model between steps; returns the version it runs as (see
        `VersionCounter`)."""
        module = fitting_model(model, self.observation_space, self.action_space, self.data_type,
                               what="policy", owner="env", replacing=True)
        with self._lock:
            self.version = self._versions.version_of(module)
            self.model = module
            return self.version
