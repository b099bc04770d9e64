"""Nested batches (numpy arrays, or dicts / tuples of them, as Dict / Tuple spaces give):
one way to walk their leaves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any

import numpy as np

__all__ = ["concat", "copy_batch", "map_leaves", "owned"]


def map_leaves(fn: Callable[..., Any], batch: Any, *others: Any) -> Any:
    """``fn(leaf, *matching leaves of others)`` for every leaf, in the batch's structure.

    >>> map_leaves(lambda a, b: a + b, {"x": np.ones(2)}, {"x": np.ones(2)})["x"].tolist()
    [2.0, 2.0]
    """
    if isinstance(batch, np.ndarray):  # the common, flat case first
        return fn(batch, *others)
    if isinstance(batch, dict):
        return {k: map_leaves(fn, v, *(o[k] for o in others)) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(map_leaves(fn, v, *(o[i] for o in others)) for i, v in enumerate(batch))
    return fn(batch, *others)


def _copy_leaf(leaf: Any) -> Any:
    return leaf.copy() if isinstance(leaf, np.ndarray) else deepcopy(leaf)


def copy_batch(batch: Any) -> Any:
    """A copy nobody else can modify."""
    return batch.copy() if type(batch) is np.ndarray else map_leaves(_copy_leaf, batch)


_IMMUTABLE = (int, float, bool, str, bytes, type(None))


def owned(value: Any) -> Any:
    """A value of a space (one row, possibly nested) that nobody else can modify: arrays are
    copied, immutable scalars kept, any other leaf made an array (as `np.array` does).

    >>> obs = {"a": np.zeros(2), "n": 3}
    >>> copy = owned(obs); obs["a"][0] = 1
    >>> copy["a"].tolist(), copy["n"]
    ([0.0, 0.0], 3)
    """
    kind = type(value)
    if kind is np.ndarray:
        return value.copy()
    if kind is dict:
        return {k: owned(v) for k, v in value.items()}
    if kind is tuple:
        return tuple(owned(v) for v in value)
    if kind in _IMMUTABLE or isinstance(value, np.generic):
        return value
    return map_leaves(np.array, value)


def _concat_leaves(*leaves: Any) -> np.ndarray:
    return np.concatenate(leaves) if len(leaves) > 1 else np.asarray(leaves[0])


def concat(parts: Sequence[Any]) -> Any:
    """The parts (batches of the same structure) joined along their first axis."""
    return map_leaves(_concat_leaves, parts[0], *parts[1:])
