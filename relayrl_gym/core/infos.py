"""`info_to_json`: an env's info dict as the JSON text the ``info`` column holds."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["info_to_json"]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


#: One encoder for every info (``json.dumps`` with ``default=`` builds a new one per call, which
#: costs as much as the encoding of a small info).
_ENCODER = json.JSONEncoder(default=_json_default, allow_nan=False)

#: Non-finite floats as JSON strings, as the protobuf JSON mapping writes them.
_NON_FINITE = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def info_to_json(info: dict[str, Any]) -> str | None:
    """Serialises one env's info dict as standard JSON; ``None`` for an empty info.

    numpy values become lists and numbers; NaN and infinities (not JSON) become the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; keys become strings.

    >>> info_to_json({"x": np.array([1.0, np.nan]), 3: np.float32(np.inf)})
    '{"x": [1.0, "NaN"], "3": "Infinity"}'
    """
    if not info:
        return None
    try:  # the common case: one C-accelerated pass
        return _ENCODER.encode(info)
    except (TypeError, ValueError):  # keys JSON cannot hold, non-finite floats, cycles
        try:
            return json.dumps(_plain(info), allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return json.dumps({"__unserializable__": repr(info)})


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data: str keys, lists, finite floats or their names."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return _plain(value.tolist())
    if isinstance(value, float):
        return value if value == value and value not in _NON_FINITE else \
            _NON_FINITE.get(value, "NaN")
    if value is None or isinstance(value, str | int | bool):
        return value
    return repr(value)
