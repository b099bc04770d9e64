"""From a torch ``nn.Module`` to a ModelModule: exported to ONNX or TorchScript with a dynamic
batch axis, checked, and optionally saved."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces

from relayrl_gym.errors import ConfigError, ModelError
from relayrl_gym.policies.backends import import_optional, resolve_device
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.policies.heads import HEADS, head_output_shape
from relayrl_gym.policies.infer import probe_batch
from relayrl_gym.policies.loading import load_backend
from relayrl_gym.policies.metadata import ModelMetadata, check_observation_space

if TYPE_CHECKING:
    from relayrl_gym.policies.module import ModelModule

__all__ = ["FORMATS", "default_head", "export_torch"]

FORMATS = {"onnx": ("onnx", "model.onnx"), "torchscript": ("pt", "model.pt")}
"""Export formats: name -> (``model_type``, model file name)."""

ONNX_OPSET = 17
_EXAMPLE_ROWS = 3  # traced with 3 rows and validated with 2: a batch size baked in shows up


def default_head(action_space: spaces.Space) -> str:
    """``argmax`` for Discrete, ``identity`` for Box; a clear error for other spaces.

    >>> default_head(spaces.Discrete(3)), default_head(spaces.Box(-1, 1, (2,)))
    ('argmax', 'identity')
    """
    if isinstance(action_space, spaces.Discrete):
        return "argmax"
    if isinstance(action_space, spaces.Box):
        return "identity"
    raise ConfigError(f"ModelModule supports Discrete and Box action spaces, got {action_space}")


def _graph(torch: Any, net: Any, cast_to: Any) -> Any:
    """``net`` with the input cast to its weights' dtype inside the graph (``cast_to``)."""

    class PolicyGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, obs: Any) -> Any:
            return self.net(obs if cast_to is None else obs.to(cast_to))

    return PolicyGraph()




def _serialize(torch: Any, graph: Any, example: Any, model_type: str,
               output_names: Sequence[str]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based ONNX exporter warns that it is deprecated in favour of the
        # torch.export one, which needs onnxscript; it stays the one used here (see README).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if model_type == "onnx":
            names = ["obs", *output_names]
            torch.onnx.export(graph, (example,), buffer, input_names=["obs"],
                              output_names=list(output_names), opset_version=ONNX_OPSET,
                              dynamic_axes={name: {0: "batch"} for name in names}, dynamo=False)
        else:
            torch.jit.save(torch.jit.trace(graph, (example,)), buffer)
    return buffer.getvalue()


def export_torch(
    net: Any,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    *,
    path: str | os.PathLike[str] | None = None,
    format: str = "onnx",
    action_head: str | None = None,
    extra_outputs: Sequence[str] = (),
    version: int = 0,
    device: DeviceType | str = DeviceType.DEFAULT,
    cast_input: bool = True,
    module_class: type[ModelModule],
) -> ModelModule:
    """Exports ``net`` (observation batch -> action output [, extra outputs...]).

    ``net`` maps a ``(batch, *observation_shape)`` tensor to the output the action head reads:
    logits or Q-values ``(batch, n)`` for Discrete, actions ``(batch, *shape)`` for Box (they
    are clipped to the bounds at ``step``). If it returns a tuple, the outputs after the first
    are extra outputs named by ``extra_outputs`` (a ``(batch, 1)`` value lands in ``data`` as
    ``(batch,)``). The exported model has a dynamic batch axis and takes observations in the
    observation space's dtype.

    Args:
        net: the torch module (left in the training mode it was in).
        observation_space: a Box, Discrete, MultiDiscrete or MultiBinary space.
        action_space: a Discrete or Box space.
        path: if given, the directory the module is saved to (``ModelModule.save``).
        format: ``"onnx"`` (onnxruntime) or ``"torchscript"`` (traced; torch).
        action_head: ``"argmax"`` / ``"sample"`` (Discrete), ``"identity"`` (Box); by default
            argmax for Discrete and identity for Box.
        extra_outputs: names of the outputs after the first.
        version: the policy version the module reports.
        device: the module's ``default_device`` and where it runs (``DEFAULT``: the CPU).
        cast_input: cast Box / MultiBinary observations to the dtype of ``net``'s weights
            inside the exported graph (so float64 or uint8 observations can be fed as they are).
        module_class: the ModelModule class to build (`ModelModule.from_torch` passes its own).

    Raises:
        ConfigError: an unknown format or head, a head that does not fit the action space, or
            outputs that ``extra_outputs`` does not name.
        ModelError: the export failed, or the exported model does not fit the spaces.
        MissingDependencyError: torch (or, for ONNX, onnx / onnxruntime) is not installed.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    head = default_head(action_space) if action_head is None else action_head
    if head not in HEADS:
        raise ConfigError(f"action_head must be one of {', '.join(HEADS)}, got {head!r}")
    head_output_shape(head, action_space)  # raises ConfigError when head and space do not fit
    check_observation_space(observation_space)
    torch: Any = import_optional("torch", "torch")
    model_type, model_file = FORMATS[format]
    if model_type == "onnx":
        import_optional("onnx", "onnx")  # torch's exporter builds the graph with it
    params = list(net.parameters())
    net_device = params[0].device if params else torch.device("cpu")
    weights = next((p.dtype for p in params if p.dtype.is_floating_point), torch.float32)
    casts = cast_input and isinstance(observation_space, (spaces.Box, spaces.MultiBinary))
    graph = _graph(torch, net, weights if casts else None)
    example = torch.from_numpy(probe_batch(observation_space, _EXAMPLE_ROWS)).to(net_device)
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = graph(example)
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outputs) != 1 + len(extra_outputs):
            raise ConfigError(
                f"net returns {len(outputs)} outputs but extra_outputs names "
                f"{len(extra_outputs)} ({list(extra_outputs)}): the first output is the action "
                "output, name each further one, e.g. extra_outputs=('value',)")
        first = "actions" if head == "identity" else "logits"
        try:
            blob = _serialize(torch, graph, example, model_type, [first, *extra_outputs])
        except Exception as err:  # torch's exporters raise many unrelated types
            raise ModelError(f"cannot export the net to {format}: {err}") from err
    finally:
        net.train(training)
    resolved = resolve_device(device, "cpu")
    metadata = ModelMetadata(
        model_file=model_file, model_type=model_type,
        input_dtype=np.dtype(observation_space.dtype or np.float32).name,
        input_shape=(-1, *(observation_space.shape or ())),
        output_dtype=str(outputs[0].dtype).removeprefix("torch."),
        output_shape=(-1, *outputs[0].shape[1:]), action_head=head,
        observation_space=observation_space, action_space=action_space,
        default_device=resolved.value, version=version, extra_outputs=tuple(extra_outputs),
    )
    backend = load_backend(model_type, blob, resolved)
    if backend.fallback is not None:
        warnings.warn(backend.fallback, stacklevel=3)
    module = module_class(backend, metadata, blob)
    module.validate()
    if path is not None:
        module.save(path)
    return module
