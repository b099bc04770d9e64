"""The model backend interface (a Protocol) and how a saved model picks its backend.

A backend runs one loaded model: a batch of observations in, the model's output arrays out. Two
ship with relayrl-gym: ONNX through onnxruntime (``OnnxBackend``) and TorchScript through torch
(``TorchScriptBackend``); each imports its runtime only when a model of its kind is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

import numpy as np

from relayrl_gym.errors import ConfigError, missing_extra
from relayrl_gym.policies.device import DeviceType

__all__ = ["ModelBackend", "ModelSignature", "import_optional", "resolve_device"]


@dataclass(frozen=True)
class ModelSignature:
    """What a model file declares about its input and outputs (``None`` where it does not).

    >>> ModelSignature(input_shape=(None, 4), input_dtype="float32", output_names=("logits",))
    ModelSignature(input_shape=(None, 4), input_dtype='float32', output_names=('logits',), \
guessed=False)
    """

    input_shape: tuple[int | None, ...] | None
    """The input shape, ``None`` for dynamic axes; ``None`` when the format does not say."""
    input_dtype: str | None
    output_names: tuple[str, ...] | None
    """The names of the outputs, in order; ``None`` when the format does not say."""
    guessed: bool = False
    """True when the input was guessed from the weights (TorchScript), not declared."""


class ModelBackend(Protocol):
    """Runs one loaded model on numpy batches.

    ``run`` takes a C-contiguous batch of the model's input dtype and returns every output of
    the model, in order, as numpy arrays with the batch axis first. It must be safe to call from
    several threads at once. ``device`` is where the model actually runs (after any fallback),
    ``fallback`` says why it differs from the device asked for (``None`` when it does not).

    >>> class Zeros:  # any object with these four members is a backend
    ...     device, fallback = DeviceType.CPU, None
    ...     signature = ModelSignature((None, 2), "float32", ("logits",))
    ...     def run(self, obs):
    ...         return [np.zeros((len(obs), 3), np.float32)]
    >>> backend: ModelBackend = Zeros()
    >>> backend.run(np.zeros((4, 2), np.float32))[0].shape
    (4, 3)
    """

    @property
    def device(self) -> DeviceType: ...

    @property
    def fallback(self) -> str | None: ...

    @property
    def signature(self) -> ModelSignature: ...

    def run(self, obs: np.ndarray) -> Sequence[np.ndarray]: ...


def import_optional(module: str, extra: str) -> ModuleType:
    """Imports an optional dependency, or raises the error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra(module, extra) from err


def resolve_device(device: DeviceType | str, default: str) -> DeviceType:
    """The concrete device asked for: ``DEFAULT`` means the model's ``default_device``.

    >>> resolve_device(DeviceType.DEFAULT, "cpu"), resolve_device("cuda", "cpu")
    (<DeviceType.CPU: 'cpu'>, <DeviceType.CUDA: 'cuda'>)
    """
    try:
        device = DeviceType(device.lower() if isinstance(device, str) else device)
    except ValueError as err:
        names = ", ".join(d.value for d in DeviceType)
        raise ConfigError(f"device must be a DeviceType or one of {names}, got {device!r}") from err
    return DeviceType(default) if device is DeviceType.DEFAULT else device
