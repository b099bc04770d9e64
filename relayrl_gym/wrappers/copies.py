"""The env copies of a vector env: distinct instances whose spaces batch as SyncVectorEnv's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Space
from gymnasium.spaces.utils import is_space_dtype_shape_equiv
from gymnasium.vector.utils import batch_differing_spaces, batch_space

from relayrl_gym.errors import ConfigError

__all__ = ["VectorSpaces", "check_distinct", "checked_reset_mask", "observation_mismatch",
           "vector_spaces"]


class VectorSpaces(NamedTuple):
    """A vector env's four spaces."""

    single_observation: Space[Any]
    observation: Space[Any]
    single_action: Space[Any]
    action: Space[Any]


def check_distinct(envs: Sequence[gym.Env]) -> None:
    """Refuses a factory that returned one instance for several actors (as DummyVecEnv does):
    the copies would share one state and step it once per actor."""
    seen: dict[int, int] = {}
    for i, env in enumerate(envs):
        j = seen.setdefault(id(env), i)
        if j != i:
            raise ConfigError(
                f"the env factory returned the same instance for actors {j} and {i}; each "
                "actor needs its own env: return a new env on every call (e.g. "
                "lambda: gym.make(...)), not one made outside the factory")


def vector_spaces(envs: Sequence[gym.Env], observation_mode: str | tuple[Space[Any], Space[Any]]
                  ) -> VectorSpaces:
    """The spaces `gymnasium.vector.SyncVectorEnv` builds from the same envs and
    ``observation_mode``, with the same errors (RuntimeError for copies that differ)."""
    first, n = envs[0], len(envs)
    single_action = first.action_space
    if isinstance(observation_mode, tuple) and len(observation_mode) == 2:
        observation, single_observation = observation_mode
        if not isinstance(observation, Space) or not isinstance(single_observation, Space):
            raise TypeError(f"`observation_mode` as a tuple must hold two spaces (batched, "
                            f"single), got {type(observation).__name__} and "
                            f"{type(single_observation).__name__}")
    elif observation_mode == "same":
        single_observation = first.observation_space
        observation = batch_space(single_observation, n)
    elif observation_mode == "different":
        single_observation = first.observation_space
        observation = batch_differing_spaces([env.observation_space for env in envs])
    else:  # Gymnasium's own words, which code written for SyncVectorEnv may look for
        raise ValueError(f"Invalid `observation_mode`, expected: 'same' or 'different' or "
                         f"tuple of single and batch observation space, actual got "
                         f"{observation_mode}")
    for i, env in enumerate(envs):
        if observation_mode == "same":
            if env.observation_space != single_observation:
                raise RuntimeError(
                    f"SyncVectorEnv(..., observation_mode='same') however the sub-environments "
                    f"observation spaces are not equivalent. single_observation_space="
                    f"{single_observation} (env 0), sub-environment observation_space="
                    f"{env.observation_space} (env {i}). If this is intentional, use "
                    "`observation_mode='different'` instead.")
        elif not is_space_dtype_shape_equiv(env.observation_space, single_observation):
            raise RuntimeError(
                f"env {i} has observation space {env.observation_space}, which does not share "
                f"the shape and dtype of {single_observation}; every copy's observations must")
        if env.action_space != single_action:
            raise RuntimeError(f"env {i} has action space {env.action_space}, env 0 has "
                               f"{single_action}; every copy must have the same action space")
    return VectorSpaces(single_observation, observation, single_action,
                        batch_space(single_action, n))


def observation_mismatch(space: Space[Any], items: Sequence[Any]) -> ValueError:
    """The error for per-env observations that do not batch into ``space``: it names the
    first env whose observation differs in shape or dtype, and what was expected."""
    shape, dtype = space.shape, getattr(space, "dtype", None)

    def differs(item: Any) -> bool:
        if shape is not None and np.shape(item) != shape:
            return True
        return dtype is not None and hasattr(item, "dtype") and \
            not np.can_cast(item.dtype, dtype, "same_kind")

    bad = next((i for i, item in enumerate(items) if differs(item)), None)
    if bad is None:
        return ValueError(f"the envs' observations do not fit the observation space {space}")
    item = items[bad]
    return ValueError(f"env {bad} returned an observation of shape {np.shape(item)} and dtype "
                      f"{getattr(item, 'dtype', type(item).__name__)}; its observation space "
                      f"{space} has shape {shape} and dtype {dtype}")


def checked_reset_mask(options: dict[str, Any] | None, n: int) -> np.ndarray | None:
    """Takes ``options["reset_mask"]`` out of ``options`` and checks it as SyncVectorEnv
    does, with its exceptions and words; None when there is none."""
    if not options or "reset_mask" not in options:
        return None
    mask = options.pop("reset_mask")
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(mask)}")
    if mask.shape != (n,):
        raise ValueError(f"`options['reset_mask']` must have shape `({n},)`, got {mask.shape}")
    if mask.dtype != np.bool_:
        raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {mask.dtype}")
    if not mask.any():
        raise ValueError(f"`options['reset_mask']` must contain a boolean array with at least "
                         f"one True value, got reset_mask={mask}")
    return mask
