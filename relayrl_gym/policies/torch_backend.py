"""TorchScript models through ``torch.jit.load`` (the ``torch`` extra)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relayrl_gym.errors import ModelError
from relayrl_gym.policies.backends import ModelSignature, import_optional
from relayrl_gym.policies.device import DeviceType

__all__ = ["TorchScriptBackend"]


def _torch_device(torch: Any, device: DeviceType) -> tuple[DeviceType, str | None]:
    if device is DeviceType.CUDA and not torch.cuda.is_available():
        return DeviceType.CPU, ("CUDA was asked for but torch sees no CUDA device; running on "
                                "the CPU")
    mps = getattr(torch.backends, "mps", None)
    if device is DeviceType.MPS and not (mps is not None and mps.is_available()):
        return DeviceType.CPU, "MPS was asked for but torch has no MPS device; running on the CPU"
    return device, None


class TorchScriptBackend:
    """Runs a TorchScript module (``torch.jit.save`` output) under ``torch.inference_mode``.

    The module is loaded straight onto its device (``map_location``); CUDA or MPS that torch
    cannot use fall back to the CPU, saying why in ``fallback``. The module may return one
    tensor or a tuple of tensors.

    >>> import torch
    >>> from gymnasium import spaces
    >>> from relayrl_gym.policies import ModelModule
    >>> module = ModelModule.from_torch(torch.nn.Linear(3, 2), spaces.Box(-1, 1, (3,)),
    ...                                 spaces.Discrete(2), format="torchscript")
    >>> backend = TorchScriptBackend(module.model_bytes(), DeviceType.CPU)
    >>> backend.run(np.zeros((5, 3), np.float32))[0].shape
    (5, 2)
    """

    def __init__(
        self, source: Path | bytes, device: DeviceType, name: str | None = None
    ) -> None:
        """Args:
        source: the ``.pt`` file, or the module's serialized bytes.
        device: where to run it (CPU, CUDA or MPS; not DEFAULT).
        name: what to call the model in error messages (default: the file, if any).
        """
        torch: Any = import_optional("torch", "torch")
        self._torch = torch
        self._device, self._fallback = _torch_device(torch, device)
        self._torch_device = torch.device(self._device.value)
        if name is None:
            name = "the in-memory model" if isinstance(source, bytes) else str(source)
        try:
            with warnings.catch_warnings():
                # torch >= 2.9 marks TorchScript deprecated; loading it is what a .pt asks for.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(
                    io.BytesIO(source) if isinstance(source, bytes) else str(source),
                    map_location=self._torch_device)
        except Exception as err:  # torch raises RuntimeError, ValueError or zipfile errors
            raise ModelError(f"cannot load {name} as a TorchScript module: {err}. Check that it "
                             "was written by torch.jit.save (re-export it if needed)") from err
        module.eval()
        self._module = module
        self._signature = ModelSignature(*self._guess_input(module), output_names=None,
                                         guessed=True)

    @staticmethod
    def _guess_input(module: Any) -> tuple[tuple[int | None, ...] | None, str | None]:
        """TorchScript keeps no input shapes: guess (batch, in_features) from a leading Linear.

        Only the first parameter is looked at; a wrong guess fails the validation forward pass,
        whose error asks for the observation space.
        """
        first = next(iter(module.parameters()), None)
        if first is None or not first.dtype.is_floating_point:
            return None, None
        dtype = str(first.dtype).removeprefix("torch.")
        return ((None, int(first.shape[1])) if first.dim() == 2 else None), dtype

    @property
    def device(self) -> DeviceType:
        return self._device

    @property
    def fallback(self) -> str | None:
        return self._fallback

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def run(self, obs: np.ndarray) -> Sequence[np.ndarray]:
        torch = self._torch
        try:
            with torch.inference_mode():
                # A copy: a model that works in place must not change the caller's observations
                # (and torch.from_numpy cannot take read-only arrays).
                out = self._module(torch.tensor(obs, device=self._torch_device))
        except Exception as err:  # TorchScript raises torch.jit.Error / RuntimeError
            raise ModelError(f"the TorchScript model failed on an input of shape {obs.shape} and "
                             f"dtype {obs.dtype}: {err}") from err
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        if not all(isinstance(o, torch.Tensor) for o in outputs):
            raise ModelError("the TorchScript model must return a tensor or a tuple of tensors, "
                             f"got {type(out).__name__}")
        return [o.cpu().numpy() for o in outputs]
