"""Loading a model file with the backend of its kind (each imports its runtime only then)."""

from __future__ import annotations

from pathlib import Path

from relayrl_gym.errors import ConfigError
from relayrl_gym.policies.backends import ModelBackend
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.policies.onnx_backend import OnnxBackend
from relayrl_gym.policies.torch_backend import TorchScriptBackend

__all__ = ["load_backend"]


def load_backend(
    model_type: str, source: Path | bytes, device: DeviceType, name: str | None = None
) -> ModelBackend:
    """Loads ``source`` (a file, or the model's bytes) with the backend of ``model_type``;
    ``name`` names the model in errors."""
    if model_type == "onnx":
        return OnnxBackend(source, device, name)
    if model_type == "pt":
        return TorchScriptBackend(source, device, name)
    raise ConfigError(f"model_type must be 'onnx' or 'pt', got {model_type!r}")
