"""Whether a policy fits where it is put (an agent, a wrapped env), and the versions it runs as.

Shared by the agent API and ``wrap(env, policy=...)``: both load a model given as a path, refuse
one whose spaces or extra outputs do not match, and number the models they run.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.errors import ConfigError
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.policies.module import ModelModule

__all__ = ["VersionCounter", "fitting_model", "model_data_type"]


def model_data_type(model: Any) -> pa.DataType:
    """The Arrow type of a model's extra outputs (``data``), from one forward pass on sampled
    observations: a struct with one field per output, null type when there are none."""
    sample = np.stack([model.observation_space.sample() for _ in range(2)])
    _, data = model.step(sample)
    if not data:
        return pa.null()
    fields = []
    for key, values in sorted(data.items()):
        values = np.asarray(values)
        value_type = pa.from_numpy_dtype(values.dtype)
        width = int(np.prod(values.shape[1:])) if values.ndim > 1 else 0
        fields.append(pa.field(key, pa.list_(value_type, width) if width else value_type))
    return pa.struct(fields)


def fitting_model(model: Any, observation_space: spaces.Space | None = None,
                  action_space: spaces.Space | None = None,
                  data_type: pa.DataType | None = None, *, what: str = "model",
                  owner: str = "agent", replacing: bool = False,
                  device: DeviceType = DeviceType.DEFAULT) -> Any:
    """``model`` (a ModelModule, or a path to one, loaded on ``device``) once it is known to
    fit: the given spaces and, when ``data_type`` is given, the same extra outputs.

    Raises:
        ConfigError: naming what does not fit (``what``/``owner`` name the two sides; with
            ``replacing`` the message says the old model keeps running).
    """
    if isinstance(model, str | Path):
        model = ModelModule.load_from_path(model, device=device)
    if not hasattr(model, "step") or not hasattr(model, "version"):
        raise ConfigError(f"the {what} must be a ModelModule or a path to one, got {model!r}")
    kept = "; the old model keeps running" if replacing else ""
    if observation_space is not None and (model.observation_space != observation_space or
                                          model.action_space != action_space):
        raise ConfigError(
            f"the {what}'s spaces ({model.observation_space}, {model.action_space}) do not fit "
            f"the {owner}'s ({observation_space}, {action_space}){kept}")
    if data_type is not None:
        outputs = model_data_type(model)
        if outputs != data_type:
            raise ConfigError(f"the {what}'s extra outputs ({outputs}) differ from the run's "
                              f"({data_type}){kept}")
    return model


class VersionCounter:
    """Numbers the models something runs: a model object keeps the version it got; a new one
    gets its own ``version`` if that is above every version given so far, else one more than
    the highest (versions only move forward).

    >>> class M:
    ...     version = 0
    >>> counter, a, b = VersionCounter(), M(), M()
    >>> counter.version_of(a), counter.version_of(b), counter.version_of(a)
    (0, 1, 0)
    """

    def __init__(self) -> None:
        self._given: dict[int, tuple[Any, int]] = {}
        self._lock = threading.Lock()  # runners of one run may share a counter
        self.top = -1

    def version_of(self, model: Any) -> int:
        with self._lock:
            known = self._given.get(id(model))
            if known is not None and known[0] is model:
                return known[1]
            version = max(int(model.version), self.top + 1)
            self._given[id(model)] = (model, version)  # keeps the model: its id stays unique
            self.top = version
            return version
