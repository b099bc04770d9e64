"""Gymnasium's vector info of a step whose envs all returned alike info dicts, built a key at a
time instead of an env and a key at a time."""

from __future__ import annotations

from typing import Any

import numpy as np

from relayrl_gym.schema.infos import InfosAlike

__all__ = ["VectorInfos"]


def _batched_as_numbers(kind: type) -> bool:
    """Whether `VectorEnv._add_info` batches values of this type into an array of it."""
    return kind in (int, float, bool) or issubclass(kind, np.number)


class VectorInfos:
    """Builds the info dict `gymnasium.vector.VectorEnv._add_info` builds for a step, when
    every env's info has the same keys in the same order (`InfosAlike`) and each key's values
    are numbers of one type (MuJoCo's rewards and positions, Atari's frame counts).

    The result is the same dict, key for key: each key's array of the type of its values
    (``np.zeros(num_envs, dtype=type(value))`` filled in), then its ``_key`` mask, all True.
    ``_add_info`` walks every env's every key and makes a mask per call; this makes one array
    per key, from the values in one C call. Anything else (values of several types under one
    key, arrays, nested dicts, ``_``-prefixed keys, ``final_obs``) returns None: the caller
    goes the ``_add_info`` way.

    >>> from relayrl_gym.schema.infos import RowInfos
    >>> alike = RowInfos().alike([{"x": 0.5, "n": 1}, {"x": 1.5, "n": 2}])
    >>> batched = VectorInfos()(alike)
    >>> batched["x"], batched["_x"], list(batched)
    (array([0.5, 1.5]), array([ True,  True]), ['x', '_x', 'n', '_n'])
    """

    __slots__ = ("_keys", "_masks", "_names", "_types")

    def __init__(self) -> None:
        self._keys: tuple[str, ...] = ()  # the keys and types last checked
        self._types: tuple[type, ...] = ()
        self._names: tuple[str, ...] = ()  # each key's mask name
        self._masks = np.ones(0, np.bool_)  # a mask with every env set, to copy

    def __call__(self, alike: InfosAlike) -> dict[str, Any] | None:
        """The step's vector info, or None where `_add_info` must build it."""
        keys, values, types = alike
        width = len(keys)
        rows = len(types) // width
        first = types[:width]
        if first * rows != types:  # a key whose values are of several types
            return None
        if keys is not self._keys or first != self._types:
            if not all(type(k) is str and not k.startswith("_") and k != "final_obs"
                       for k in keys) or not all(map(_batched_as_numbers, first)):
                return None
            self._keys, self._types = keys, first
            self._names = tuple(f"_{k}" for k in keys)
            self._masks = np.ones(rows, np.bool_)
        infos: dict[str, Any] = {}
        masks = self._masks
        try:
            for j, (key, name, kind) in enumerate(zip(keys, self._names, first, strict=True)):
                infos[key] = np.fromiter(values[j::width], kind, rows)
                infos[name] = masks.copy()
        except (TypeError, ValueError, OverflowError):  # (a value out of its type's range)
            return None
        return infos
