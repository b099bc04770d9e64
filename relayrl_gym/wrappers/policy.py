"""A wrapped env's own policy: ``envs.act(obs)`` answers with a ModelModule, recorded with its
version and outputs when those actions are stepped."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.models.runner import PolicyRunner, act_with

__all__ = ["PolicyDriver"]


class PolicyDriver:
    """Acts for every env copy with one ModelModule (one batched call) and remembers what it
    answered, so that the step taking exactly those actions records the model version and the
    model's extra outputs (``data``). Hot-swappable between steps with `update`."""

    def __init__(self, model: Any, observation_space: spaces.Space,
                 action_space: spaces.Space) -> None:
        """Loads ``model`` (a ModelModule or a path to one) and checks it fits the env."""
        self.runner = PolicyRunner(model, observation_space, action_space, what="policy",
                                   owner="env")
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None
        #: The version of the last answer (a served policy's may change from one to the next).
        self.answered = self.runner.version

    @property
    def model(self) -> Any:
        return self.runner.model

    @property
    def version(self) -> int:
        return self.runner.version

    @property
    def data_type(self) -> pa.DataType:
        return self.runner.data_type

    def act(self, obs: Any, mask: Any = None) -> np.ndarray:
        """One batched model call for every env copy; remembers the answer for `take`."""
        model, version = self.runner.current()
        actions, data, version = act_with(model, version, obs, mask)
        self.answered = version
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
        """Swaps the model between steps; returns the version it runs as."""
        self.answered = self.runner.update(model)
        return self.answered

    @property
    def remote(self) -> bool:
        """Whether an inference server acts (it follows new models itself)."""
        return self.runner.remote

    def close(self) -> None:
        """Closes the connection to an inference server this driver opened."""
        self.runner.close()
