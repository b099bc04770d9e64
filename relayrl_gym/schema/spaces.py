"""Gymnasium spaces to and from JSON: a dataset can be read back without the code that wrote
it."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from relayrl_gym.errors import DatasetError, UnsupportedSpaceError

__all__ = ["SUPPORTED_SPACES", "space_from_json", "space_to_json", "unsupported_space"]

#: The Gymnasium space kinds relayrl-gym records (nested in one another as deep as needed).
SUPPORTED_SPACES = ("Box", "Discrete", "MultiDiscrete", "MultiBinary", "Text", "Dict", "Tuple",
                    "Sequence", "Graph", "OneOf")


def unsupported_space(space: spaces.Space) -> UnsupportedSpaceError:
    """The error for a space no codec covers (a custom `gymnasium.spaces.Space` subclass).

    >>> class Ring(spaces.Space):
    ...     pass
    >>> print(unsupported_space(Ring()))  # doctest: +ELLIPSIS
    cannot record a Ring space (...); relayrl-gym records Box, Discrete, MultiDiscrete, ...
    """
    return UnsupportedSpaceError(
        f"cannot record a {type(space).__name__} space ({space}); relayrl-gym records "
        f"{', '.join(SUPPORTED_SPACES[:-1])} and {SUPPORTED_SPACES[-1]} spaces, nested in one "
        "another as deep as needed. Give the env one of those (a custom space can often be "
        "written as a Dict, Tuple or Sequence of them), or pass sink=None to run without "
        "recording."
    )


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
    if isinstance(space, spaces.Text):
        return {"type": "Text", "min_length": space.min_length, "max_length": space.max_length,
                "charset": space.characters}
    if isinstance(space, spaces.Sequence):
        return {"type": "Sequence", "space": space_to_json(space.feature_space),
                "stack": bool(space.stack)}
    if isinstance(space, spaces.Graph):
        return {"type": "Graph", "node_space": space_to_json(space.node_space),
                "edge_space": None if space.edge_space is None else
                space_to_json(space.edge_space)}
    if isinstance(space, spaces.OneOf):
        return {"type": "OneOf", "spaces": [space_to_json(s) for s in space.spaces]}
    raise unsupported_space(space)


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
    if kind == "Text":
        return spaces.Text(data["max_length"], min_length=data["min_length"],
                           charset=data["charset"])
    if kind == "Sequence":
        return spaces.Sequence(space_from_json(data["space"]), stack=data["stack"])
    if kind == "Graph":
        edge_space = data["edge_space"]
        return spaces.Graph(space_from_json(data["node_space"]),
                            None if edge_space is None else space_from_json(edge_space))
    if kind == "OneOf":
        return spaces.OneOf([space_from_json(v) for v in data["spaces"]])
    raise DatasetError(f"unknown space description {data!r} in dataset metadata")
