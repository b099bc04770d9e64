"""Gymnasium spaces to and from JSON: a dataset can be read back without the code that wrote
it."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from relayrl_gym.errors import DatasetError, UnsupportedSpaceError

__all__ = ["space_from_json", "space_to_json"]


def _bound_to_json(bound: np.ndarray) -> Any:
    # Image spaces repeat one bound over millions of cells: store it once.
    flat = bound.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return {"fill": _scalar(flat[0])}
    return {"values": [_scalar(v) for v in flat]}


def _scalar(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value


def _bound_from_json(data: dict[str, Any], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if "fill" in data:
        fill = float(data["fill"]) if isinstance(data["fill"], str) else data["fill"]
        return np.full(shape, fill, dtype=dtype)
    values = [float(v) if isinstance(v, str) else v for v in data["values"]]
    return np.asarray(values, dtype=dtype).reshape(shape)


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """Describes a space as plain JSON-compatible data.

    >>> space_to_json(spaces.Discrete(3))
    {'type': 'Discrete', 'n': 3, 'start': 0, 'dtype': 'int64'}
    """
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound_to_json(space.low),
            "high": _bound_to_json(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start),
                "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist(),
                "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": list(space.shape)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    raise UnsupportedSpaceError(
        f"cannot record a {type(space).__name__} space ({space}); supported spaces are Box, "
        "Discrete, MultiDiscrete, MultiBinary, Dict and Tuple of those. Pass sink=None to run "
        "without recording."
    )


def space_from_json(data: dict[str, Any]) -> spaces.Space:
    """Rebuilds a space written by `space_to_json`.

    >>> space_from_json(space_to_json(spaces.MultiBinary(4)))
    MultiBinary(4)
    """
    kind = data.get("type")
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        shape = tuple(data["shape"])
        return spaces.Box(_bound_from_json(data["low"], shape, dtype),
                          _bound_from_json(data["high"], shape, dtype), shape=shape, dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data.get("start", 0),
                               dtype=np.dtype(data.get("dtype", "int64")))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(data["nvec"]), dtype=np.dtype(data["dtype"]),
                                    start=np.asarray(data["start"]))
    if kind == "MultiBinary":
        n = data["n"]
        return spaces.MultiBinary(n[0] if len(n) == 1 else n)
    if kind == "Dict":
        return spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
    if kind == "Tuple":
        return spaces.Tuple([space_from_json(v) for v in data["spaces"]])
    raise DatasetError(f"unknown space description {data!r} in dataset metadata")
