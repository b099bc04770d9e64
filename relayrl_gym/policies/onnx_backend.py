"""ONNX models through onnxruntime (the ``onnx`` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relayrl_gym.errors import ModelError
from relayrl_gym.policies.backends import ModelSignature, import_optional
from relayrl_gym.policies.device import DeviceType

__all__ = ["CPU_THREADS_ENV", "OnnxBackend", "onnx_dtype"]

#: Environment variable with the number of intra-op threads a CPU session uses (default 1).
CPU_THREADS_ENV = "RELAYRL_GYM_ONNX_THREADS"
_MAX_THREADS = 1024

_PROVIDERS = {DeviceType.CUDA: "CUDAExecutionProvider", DeviceType.MPS: "CoreMLExecutionProvider"}
_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(uint16)": "uint16",
    "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


def onnx_dtype(type_name: str) -> str | None:
    """The numpy dtype name of an onnxruntime tensor type string (``None`` if it has none).

    >>> onnx_dtype("tensor(float)")
    'float32'
    """
    return _DTYPES.get(type_name)


class OnnxBackend:
    """Runs an ONNX model in one onnxruntime ``InferenceSession`` (thread-safe ``run``).

    CPU runs on ``CPUExecutionProvider``; CUDA (and MPS, through CoreML) use their provider
    when onnxruntime has it and fall back to the CPU otherwise, saying why in ``fallback``.

    >>> import torch
    >>> from gymnasium import spaces
    >>> from relayrl_gym.policies import ModelModule
    >>> module = ModelModule.from_torch(torch.nn.Linear(3, 2), spaces.Box(-1, 1, (3,)),
    ...                                 spaces.Discrete(2), format="onnx")
    >>> backend = OnnxBackend(module.model_bytes(), DeviceType.CPU)
    >>> backend.run(np.zeros((5, 3), np.float32))[0].shape
    (5, 2)
    """

    def __init__(
        self, source: Path | bytes, device: DeviceType, name: str | None = None
    ) -> None:
        """Args:
        source: the ``.onnx`` file, or the model's serialized bytes.
        device: where to run it (CPU, CUDA or MPS; not DEFAULT).
        name: what to call the model in error messages (default: the file, if any).
        """
        ort: Any = import_optional("onnxruntime", "onnx")
        self._device = DeviceType.CPU
        self._fallback: str | None = None
        providers = ["CPUExecutionProvider"]
        wanted = _PROVIDERS.get(device)
        if wanted is not None:
            if wanted in ort.get_available_providers():
                providers.insert(0, wanted)
            else:
                self._fallback = (f"{device.name} was asked for but onnxruntime has no {wanted} "
                                  f"(install onnxruntime-gpu for CUDA); running on the CPU")
        if name is None:
            name = "the in-memory model" if isinstance(source, bytes) else str(source)
        # GPU sessions keep onnxruntime's defaults (their CPU fallback kernels may want them).
        options = _session_options(ort) if providers == ["CPUExecutionProvider"] else None
        try:
            self._session = ort.InferenceSession(
                source if isinstance(source, bytes) else str(source), options,
                providers=providers)
        except Exception as err:  # onnxruntime raises its own unexported exception types
            if "external data" in str(err).lower():
                raise ModelError(f"{name} keeps its weights in external data files, which "
                                 "relayrl-gym does not load yet; re-export the model into one "
                                 "file (under 2 GB)") from err
            raise ModelError(f"cannot load {name} as an ONNX model: {err}. Check that the file "
                             "is a complete ONNX model (re-export it if needed)") from err
        if wanted is not None and wanted in self._session.get_providers():
            self._device = device
        elif wanted is not None and self._fallback is None:
            self._fallback = (f"onnxruntime could not start {wanted} for {device.name}; "
                              "running on the CPU")
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{name} takes {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}); a policy model takes one "
                             "observation batch")
        self._input_name = inputs[0].name
        shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._signature = ModelSignature(
            input_shape=shape, input_dtype=onnx_dtype(inputs[0].type),
            output_names=tuple(self._output_names))
        self._session_run = self._session.run
        # On the CPU alone, call the session's core directly: the public ``run`` re-checks the
        # input names and rebuilds the output list on every call (about 4 us, a third of a
        # small policy's whole run) only to offer a fallback between execution providers.
        self._core: Any = getattr(self._session, "_sess", None)
        if self._session.get_providers() == ["CPUExecutionProvider"] and callable(
                getattr(self._core, "run", None)):
            self._session_run = self._core_run

    @property
    def device(self) -> DeviceType:
        return self._device

    @property
    def fallback(self) -> str | None:
        return self._fallback

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def _core_run(self, names: None, feed: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        try:
            outputs: Sequence[np.ndarray] = self._core.run(self._output_names, feed, None)
        except TypeError:  # an onnxruntime whose core call differs: the public path from now on
            self._session_run = self._session.run
            return self._session_run(None, feed)
        return outputs

    def run(self, obs: np.ndarray) -> Sequence[np.ndarray]:
        try:
            return self._session_run(None, {self._input_name: obs})
        except Exception as err:  # onnxruntime's exception types are not importable
            raise ModelError(f"the ONNX model failed on an input of shape {obs.shape} and dtype "
                             f"{obs.dtype}: {err}") from err


def _session_options(ort: Any) -> Any:
    """Session options for a policy: ``RELAYRL_GYM_ONNX_THREADS`` intra-op threads (default 1).

    onnxruntime's default is a spinning thread pool with one thread per core in every session.
    A policy here shares the cores with the actors' environments, the writer and often other
    policies, and a small policy network runs faster on one thread than split over several
    (CartPole's 4-64-64-2 MLP on 64 rows: 13 us against 17 us with the default pool).
    """
    options = ort.SessionOptions()
    value = os.environ.get(CPU_THREADS_ENV, "").strip() or "1"
    if not value.isdigit() or int(value) > _MAX_THREADS:
        raise ModelError(f"{CPU_THREADS_ENV} must be a whole number of threads from 0 to "
                         f"{_MAX_THREADS} (0: onnxruntime's default, one per core), got "
                         f"{value!r}")
    options.intra_op_num_threads = int(value)
    return options
