"""Nested batches (numpy arrays, or dicts / tuples of them, as Dict / Tuple spaces give):
one way to walk their leaves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any

import numpy as np

__all__ = ["concat", "copy_batch", "map_leaves"]


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


_IMMUTABLE = (int, float, bool, str, bytes, type(None))


def copy_batch(batch: Any) -> Any:
    """A copy nobody else can modify: arrays copied, dicts and tuples walked, immutable
    scalars kept (as `copy.deepcopy` keeps them, without its dispatch), anything else deep
    copied.

    >>> obs = {"a": np.zeros(2), "n": 3}
    >>> copy = copy_batch(obs); obs["a"][0] = 1
    >>> copy["a"].tolist(), copy["n"]
    ([0.0, 0.0], 3)
    """
    if isinstance(batch, np.ndarray):  # the common, flat case first
        return batch.copy()
    if isinstance(batch, dict):
        return {k: copy_batch(v) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(copy_batch(v) for v in batch)
    if type(batch) in _IMMUTABLE or isinstance(batch, np.generic):
        return batch
    return deepcopy(batch)


def _concat_leaves(*leaves: Any) -> np.ndarray:
    return np.concatenate(leaves) if len(leaves) > 1 else np.asarray(leaves[0])


def concat(parts: Sequence[Any]) -> Any:
    """The parts (batches of the same structure) joined along their first axis."""
    return map_leaves(_concat_leaves, parts[0], *parts[1:])
