"""The metadata a bare ``.onnx`` / ``.pt`` file gets when it comes without ``metadata.json``.

- Input: the observation space when given, else the model's declared input (ONNX), else a guess
  from a leading Linear layer (TorchScript); the batch axis must be dynamic.
- Outputs: found by one forward pass on a batch of two observations. The first output is the one
  the action head reads; further outputs are extra outputs named after the model's output names
  (ONNX) or ``output_1``, ``output_2``... (TorchScript).
- Action head, when not given: ``argmax`` for a Discrete action space, ``identity`` for a Box;
  with no action space either, ``argmax`` when the output is (batch, n) with n > 1 (logits or
  Q-values: the common case of an exported discrete policy), else ``identity``. A continuous
  policy with several action dimensions therefore needs its ``action_space`` (or
  ``action_head="identity"``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from gymnasium import spaces

from relayrl_gym.errors import ModelError
from relayrl_gym.policies.backends import ModelBackend
from relayrl_gym.policies.metadata import ModelMetadata, default_spaces

__all__ = ["MODEL_SUFFIXES", "infer_metadata", "probe_batch"]

MODEL_SUFFIXES = {".onnx": "onnx", ".pt": "pt", ".pth": "pt"}
"""Bare model file suffixes and the ``model_type`` each one means."""


def probe_batch(space: spaces.Space, rows: int) -> np.ndarray:
    """``rows`` observations of ``space`` to try a model on, the same on every call.

    Box values are drawn from the bounds clipped to [-1, 1] (a Box up to float32's max, as
    CartPole's, would otherwise feed 1e38 and overflow the model into NaN).

    >>> batch = probe_batch(spaces.Box(-np.inf, np.inf, (2,)), 3)
    >>> batch.shape, bool(abs(batch).max() <= 1)
    ((3, 2), True)
    """
    if isinstance(space, spaces.Box):
        low = np.clip(-1.0, space.low, space.high)
        high = np.clip(1.0, space.low, space.high)
        values = np.random.default_rng(0).uniform(low, high, (rows, *space.shape))
        return values.astype(space.dtype)
    space = copy.deepcopy(space)
    space.seed(0)
    return np.stack([np.asarray(space.sample()) for _ in range(rows)])


def _input(
    path: Path, backend: ModelBackend, observation_space: spaces.Space | None
) -> tuple[tuple[int, ...], str]:
    """The (batch-first) input shape and dtype of the model."""
    signature = backend.signature
    declared, dtype = signature.input_shape, signature.input_dtype
    if observation_space is not None:
        shape = tuple(observation_space.shape or ())
        if signature.guessed:
            declared = None
        if declared is not None and (len(declared) != len(shape) + 1 or any(
                d is not None and d != s for d, s in zip(declared[1:], shape))):
            raise ModelError(
                f"{path.name} takes inputs of shape {declared} (None: any size), which does not "
                f"fit the observation space {observation_space} (rows of shape {shape})")
        space_dtype = np.dtype(observation_space.dtype or np.float32)
        if dtype is None or (signature.guessed and space_dtype.kind in "biu"):
            dtype = space_dtype.name  # integer observations feed embeddings, not the first weight
    elif declared is None or any(d is None for d in declared[1:]):
        raise ModelError(
            f"cannot infer the observation shape of {path.name} (it declares {declared}); pass "
            "observation_space=... to load_from_path, or save the model with metadata.json")
    else:
        shape = tuple(int(d) for d in declared[1:])  # type: ignore[arg-type]
    if declared is not None and declared[0] is not None:
        raise ModelError(
            f"{path.name} has a fixed batch size of {declared[0]}; ModelModule needs a dynamic "
            "batch axis: re-export it with dynamic_axes={'<input>': {0: 'batch'}} (as "
            "ModelModule.from_torch does)")
    return (-1, *shape), dtype or "float32"


def infer_metadata(
    path: Path,
    backend: ModelBackend,
    *,
    observation_space: spaces.Space | None = None,
    action_space: spaces.Space | None = None,
    action_head: str | None = None,
) -> ModelMetadata:
    """Metadata for the bare model file ``path`` already loaded in ``backend``."""
    input_shape, input_dtype = _input(path, backend, observation_space)
    probe = np.zeros((2, *input_shape[1:]), input_dtype)
    try:
        outputs = backend.run(probe)
    except ModelError as err:
        raise ModelError(f"{path.name} failed on a batch of two zero observations of shape "
                         f"{input_shape[1:]} and dtype {input_dtype}: pass the right "
                         f"observation_space to load_from_path ({err})") from err
    first = outputs[0]
    if action_head is None:
        if action_space is not None:
            action_head = "argmax" if isinstance(action_space, spaces.Discrete) else "identity"
        else:
            action_head = "argmax" if first.ndim == 2 and first.shape[1] > 1 else "identity"
    output_shape = (-1, *first.shape[1:])
    if observation_space is None or action_space is None:
        default_obs, default_act = default_spaces(input_shape, input_dtype, output_shape,
                                                  first.dtype.name, action_head)
        observation_space = default_obs if observation_space is None else observation_space
        action_space = default_act if action_space is None else action_space
    names = backend.signature.output_names or [f"output_{i}" for i in range(len(outputs))]
    return ModelMetadata(
        model_file=path.name, model_type=_model_type(path), input_dtype=input_dtype,
        input_shape=input_shape, output_dtype=first.dtype.name, output_shape=output_shape,
        action_head=action_head, observation_space=observation_space, action_space=action_space,
        extra_outputs=tuple(names[1:len(outputs)]),
    )


def _model_type(path: Path) -> str:
    try:
        return MODEL_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ModelError(
            f"{path} is neither a model directory (with metadata.json) nor a model file with a "
            f"known suffix ({', '.join(MODEL_SUFFIXES)})") from None
