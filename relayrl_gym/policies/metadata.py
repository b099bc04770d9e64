"""``metadata.json``: what a saved policy is, beside its model file, checked on the way in.

A ModelModule directory holds the model file and this JSON object::

    {
      "schema_version": 1,
      "model_file": "model.onnx",        # a file name inside the directory
      "model_type": "onnx",              # "onnx" or "pt" (TorchScript)
      "version": 0,                      # the policy version actors report
      "default_device": "cpu",           # "cpu", "cuda" or "mps"
      "input_dtype": "float32",  "input_shape": [-1, 4],     # -1: the batch axis
      "output_dtype": "float32", "output_shape": [-1, 2],    # the output the head reads
      "action_head": "argmax",           # "identity" (Box), "argmax" or "sample" (Discrete)
      "extra_outputs": ["value"],        # names of further outputs, stored in step()'s data
      "observation_space": {...}, "action_space": {...}      # relayrl_gym.schema.spaces JSON
    }

The spaces may be left out: the observation space is then an unbounded Box of the input shape,
the action space ``Discrete(n)`` for the discrete heads, an unbounded Box for ``identity``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from relayrl_gym.errors import ConfigError, DatasetError, ModelError, UnsupportedSpaceError
from relayrl_gym.policies.heads import HEADS, head_output_shape
from relayrl_gym.schema.spaces import space_from_json, space_to_json

__all__ = ["METADATA_FILE", "MODEL_TYPES", "SCHEMA_VERSION", "ModelMetadata",
           "check_observation_space", "default_spaces"]

METADATA_FILE = "metadata.json"
SCHEMA_VERSION = 1
MODEL_TYPES = ("onnx", "pt")
DEVICES = ("cpu", "cuda", "mps")
_ARRAY_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
_REQUIRED = ("model_file", "model_type", "input_dtype", "input_shape", "output_dtype",
             "output_shape", "action_head")
_OPTIONAL = ("schema_version", "version", "default_device", "extra_outputs",
             "observation_space", "action_space")


def default_spaces(
    input_shape: tuple[int, ...], input_dtype: str, output_shape: tuple[int, ...],
    output_dtype: str, action_head: str,
) -> tuple[spaces.Space, spaces.Space]:
    """The spaces assumed when none are given: unbounded Boxes, ``Discrete(n)`` for logits.

    >>> default_spaces((-1, 4), "float32", (-1, 2), "float32", "argmax")
    (Box(-inf, inf, (4,), float32), Discrete(2))
    """
    obs = spaces.Box(-np.inf, np.inf, input_shape[1:], np.dtype(input_dtype))
    if action_head == "identity":
        return obs, spaces.Box(-np.inf, np.inf, output_shape[1:], np.dtype(output_dtype))
    if len(output_shape) != 2:
        raise ModelError(
            f"action head {action_head!r} reads one logit per action, so the model output must "
            f"be (batch, actions); it is {_shape_text(output_shape)}. Use 'identity' for "
            "continuous actions or pass the action_space"
        )
    return obs, spaces.Discrete(output_shape[1])


def check_observation_space(space: spaces.Space) -> None:
    """Raises unless observations of ``space`` are single arrays a model can take as a batch."""
    if not isinstance(space, _ARRAY_SPACES):
        raise ModelError(
            f"observation space {space} is not supported by ModelModule: observations must be "
            "single arrays (Box, Discrete, MultiDiscrete, MultiBinary); flatten Dict/Tuple "
            "observations (gymnasium's FlattenObservation)"
        )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join("batch" if d == -1 else str(d) for d in shape) + ")"


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What a policy model takes and gives, and how its output becomes actions; validated.

    Shapes include the batch axis as ``-1``. Building one checks that the fields agree with
    each other (the output the head reads fits the action space, the input fits the
    observation space); the model itself is checked against it by ``ModelModule.validate``.

    >>> meta = ModelMetadata(
    ...     model_file="model.onnx", model_type="onnx", input_dtype="float32",
    ...     input_shape=(-1, 4), output_dtype="float32", output_shape=(-1, 2),
    ...     action_head="argmax", observation_space=spaces.Box(-1, 1, (4,)),
    ...     action_space=spaces.Discrete(2))
    >>> ModelMetadata.from_json(meta.to_json()) == meta
    True
    """

    model_file: str
    model_type: str
    input_dtype: str
    input_shape: tuple[int, ...]
    output_dtype: str
    output_shape: tuple[int, ...]
    action_head: str
    observation_space: spaces.Space
    action_space: spaces.Space
    default_device: str = "cpu"
    version: int = 0
    extra_outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ModelError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        name = self.model_file
        if (not isinstance(name, str) or not name or Path(name).name != name
                or name in (".", "..", "metadata.json")):
            raise ModelError(f"model_file must be a file name inside the model directory (no "
                             f"folders, not metadata.json), got {name!r}")
        if self.default_device not in DEVICES:
            raise ModelError(f"default_device must be one of {DEVICES}, got "
                             f"{self.default_device!r}")
        if type(self.version) is not int or self.version < 0:
            raise ModelError(f"version must be an int >= 0, got {self.version!r}")
        for field in ("input_shape", "output_shape"):
            shape = getattr(self, field)
            if (not shape or shape[0] != -1
                    or not all(type(d) is int and d >= 0 for d in shape[1:])):
                raise ModelError(f"{field} must be a list starting with -1 (the batch axis) "
                                 f"followed by sizes >= 0, got {list(shape)!r}")
        if self.action_head not in HEADS:
            raise ModelError(f"action_head must be one of {HEADS}, got {self.action_head!r}")
        self._check_spaces()

    def _check_spaces(self) -> None:
        check_observation_space(self.observation_space)
        if tuple(self.input_shape[1:]) != tuple(self.observation_space.shape or ()):
            raise ModelError(
                f"input_shape {_shape_text(self.input_shape)} does not fit the observation "
                f"space {self.observation_space}: the per-row input shape must equal the "
                "observation shape"
            )
        try:
            wanted = head_output_shape(self.action_head, self.action_space)
        except ConfigError as err:
            raise ModelError(str(err)) from err
        if tuple(self.output_shape[1:]) != wanted:
            raise ModelError(
                f"output_shape {_shape_text(self.output_shape)} does not fit the action space "
                f"{self.action_space} with action head {self.action_head!r}: it should be "
                f"{_shape_text((-1, *wanted))}. Check that the model was exported for this "
                "action space"
            )

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one observation row as the model takes it."""
        return tuple(self.input_shape[1:])

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict in the ``metadata.json`` layout."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model_file": self.model_file,
            "model_type": self.model_type,
            "version": self.version,
            "default_device": self.default_device,
            "input_dtype": self.input_dtype,
            "input_shape": list(self.input_shape),
            "output_dtype": self.output_dtype,
            "output_shape": list(self.output_shape),
            "action_head": self.action_head,
            "extra_outputs": list(self.extra_outputs),
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "metadata") -> ModelMetadata:
        """Reads and checks a ``metadata.json`` object; ``source`` names it in errors."""
        if not isinstance(data, dict):
            raise ModelError(f"{source} must hold a JSON object, got {type(data).__name__}")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ModelError(f"{source} lacks {', '.join(missing)}; see relayrl_gym.policies."
                             "metadata for the layout")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            warnings.warn(f"{source}: ignoring unknown keys {unknown}", stacklevel=2)
        schema = data.get("schema_version", SCHEMA_VERSION)
        if schema != SCHEMA_VERSION:
            raise ModelError(f"{source} has schema_version {schema!r}; this relayrl-gym reads "
                             f"version {SCHEMA_VERSION}: upgrade relayrl-gym")
        try:
            input_shape = _shape(data["input_shape"], "input_shape", source)
            output_shape = _shape(data["output_shape"], "output_shape", source)
            input_dtype = _dtype(data["input_dtype"], "input_dtype", source)
            output_dtype = _dtype(data["output_dtype"], "output_dtype", source)
            head = data["action_head"]
            if head not in HEADS:
                raise ModelError(f"{source}: action_head must be one of {HEADS}, got {head!r}")
            obs_space, act_space = (
                _space(data.get(key), key, source) for key in ("observation_space", "action_space")
            )
            if obs_space is None or act_space is None:
                default_obs, default_act = default_spaces(input_shape, input_dtype, output_shape,
                                                          output_dtype, head)
                obs_space = default_obs if obs_space is None else obs_space
                act_space = default_act if act_space is None else act_space
            extra = data.get("extra_outputs", [])
            if not isinstance(extra, list) or not all(isinstance(e, str) for e in extra):
                raise ModelError(f"{source}: extra_outputs must be a list of names, got {extra!r}")
            return cls(
                model_file=data["model_file"], model_type=data["model_type"],
                input_dtype=input_dtype, input_shape=input_shape, output_dtype=output_dtype,
                output_shape=output_shape, action_head=head, observation_space=obs_space,
                action_space=act_space, default_device=data.get("default_device", "cpu"),
                version=data.get("version", 0), extra_outputs=tuple(extra),
            )
        except ModelError as err:
            if str(err).startswith(source):
                raise
            raise ModelError(f"{source}: {err}") from err

    @classmethod
    def read(cls, directory: str | Path) -> ModelMetadata:
        """Reads ``directory/metadata.json``."""
        path = Path(directory) / METADATA_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ModelError(f"{directory} has no {METADATA_FILE}; a model directory holds "
                             f"{METADATA_FILE} beside the model file") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelError(f"cannot read {path}: {err}; it must be a JSON object") from err
        return cls.from_json(data, str(path))

    def write(self, directory: str | Path) -> Path:
        """Writes ``directory/metadata.json`` (the directory must exist); returns its path."""
        path = Path(directory) / METADATA_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def _shape(value: Any, key: str, source: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(d) is int for d in value):
        raise ModelError(f"{source}: {key} must be a list of ints (-1 for the batch axis), "
                         f"got {value!r}")
    return tuple(value)


def _dtype(value: Any, key: str, source: str) -> str:
    try:
        if not isinstance(value, str):
            raise TypeError(f"not a string: {value!r}")
        dtype = np.dtype(value)
        if dtype.kind not in "biuf":
            raise TypeError(f"{dtype} is not a number or bool type")
        return dtype.name
    except TypeError as err:
        raise ModelError(f"{source}: {key} must be a numeric or bool numpy dtype name such as "
                         f"'float32', got {value!r}") from err


def _space(value: Any, key: str, source: str) -> spaces.Space | None:
    if value is None:
        return None
    try:
        if not isinstance(value, dict):
            raise TypeError(f"expected a JSON object, got {type(value).__name__}")
        return space_from_json(value)
    except (DatasetError, UnsupportedSpaceError, KeyError, TypeError, ValueError,
            AttributeError) as err:
        raise ModelError(f"{source}: {key} is not a valid space description ({err}); write it "
                         "with relayrl_gym.schema.spaces.space_to_json") from err
