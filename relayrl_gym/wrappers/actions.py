"""Action-batch validation: wrong shape, dtype or out-of-space actions get a clear error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import iterate

from relayrl_gym.errors import ActionError

__all__ = ["batch_action_checker"]


def _as_array(actions: Any, space: spaces.Space, n: int) -> np.ndarray:
    try:
        array = np.asarray(actions)
    except (TypeError, ValueError) as err:
        raise ActionError(f"the action batch for {space} could not be read as an array: {err}"
                          ) from err
    expected = (n, *(space.shape or ()))
    if array.shape != expected:
        raise ActionError(f"the action batch must have shape {expected} (one action of {space} "
                          f"per env, num_envs={n}), got shape {array.shape}")
    return array


def _discrete(space: spaces.Discrete, n: int) -> Callable[[Any], np.ndarray]:
    low, high = int(space.start), int(space.start + space.n)
    expected = (n,)
    dtype = space.dtype

    def check(actions: Any) -> np.ndarray:
        # Runs every step: the common case (an int array of the right shape) takes no detour.
        array = actions if type(actions) is np.ndarray else _as_array(actions, space, n)
        if array.shape != expected:
            array = _as_array(array, space, n)
        if array.dtype.kind not in "iu":
            raise ActionError(f"actions for {space} must be integers, got dtype {array.dtype}")
        # For the few actions of a typical vector env, Python's min/max beat numpy's reductions.
        values = array.tolist() if n <= 256 else array
        if min(values) < low or max(values) >= high:
            i = int(np.flatnonzero((array < low) | (array >= high))[0])
            raise ActionError(f"action {array[i].item()!r} of env {i} is outside {space} "
                              f"(valid: {low}..{high - 1})")
        return array if array.dtype == dtype else array.astype(dtype)

    return check


def _box(space: spaces.Box, n: int) -> Callable[[Any], np.ndarray]:
    bounded = bool(np.any(np.isfinite(space.low)) or np.any(np.isfinite(space.high)))
    low, high = space.low, space.high

    def check(actions: Any) -> np.ndarray:
        array = _as_array(actions, space, n)
        if array.dtype.kind not in "biuf" or not np.can_cast(array.dtype, space.dtype,
                                                              "same_kind"):
            raise ActionError(f"actions for {space} must be numbers castable to {space.dtype}, "
                              f"got dtype {array.dtype}")
        if bounded:
            bad = ~((array >= low) & (array <= high))
            if bad.any():
                env, *cell = np.argwhere(bad)[0]
                raise ActionError(
                    f"action of env {env} is outside {space}: value "
                    f"{array[(env, *cell)].item()!r} at "
                    f"index {tuple(cell)} is not within [{low[tuple(cell)]}, "
                    f"{high[tuple(cell)]}]. Clip actions (e.g. np.clip(a, space.low, "
                    "space.high)) or use gymnasium.wrappers.ClipAction in the env factory")
        return array.astype(space.dtype, copy=False)

    return check


def _generic(space: spaces.Space, batch_space: spaces.Space, n: int) -> Callable[[Any], Any]:
    def check(actions: Any) -> Any:
        try:
            items = list(iterate(batch_space, actions))
        except Exception as err:
            raise ActionError(f"the action batch does not fit {batch_space}: {err}") from err
        if len(items) != n:
            raise ActionError(f"the action batch has {len(items)} actions, expected one per env "
                              f"(num_envs={n})")
        for i, item in enumerate(items):
            if not space.contains(item):
                raise ActionError(f"action {item} of env {i} is outside {space}")
        return _as_recorded(space, actions)

    return check


def _as_recorded(space: spaces.Space, batch: Any) -> Any:
    """A new batch with every leaf a numpy array of the space's dtype (the recorder's own)."""
    if isinstance(space, spaces.Dict):
        return {k: _as_recorded(s, batch[k]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_as_recorded(s, part) for s, part in zip(space.spaces, batch))
    return np.array(batch, dtype=space.dtype)


def batch_action_checker(space: spaces.Space, batch_space: spaces.Space, n: int
                         ) -> Callable[[Any], Any]:
    """Returns ``check(actions) -> actions as recorded``, raising `ActionError` on bad input.

    >>> check = batch_action_checker(spaces.Discrete(2), spaces.MultiDiscrete([2, 2]), 2)
    >>> check([0, 1])
    array([0, 1])
    >>> check([0, 2])
    Traceback (most recent call last):
    ...
    relayrl_gym.errors.ActionError: action 2 of env 1 is outside Discrete(2) (valid: 0..1)
    """
    if isinstance(space, spaces.Discrete):
        return _discrete(space, n)
    if isinstance(space, spaces.Box):
        return _box(space, n)
    return _generic(space, batch_space, n)
