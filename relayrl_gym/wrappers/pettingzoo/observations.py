"""What an agent's observation holds besides the observation: PettingZoo's action-mask
conventions, and the space a policy of that agent sees."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = ["MASK_KEY", "action_mask", "policy_input", "policy_space", "zeros_like"]

#: Where PettingZoo envs put the legal actions: ``obs["action_mask"]`` or ``info["action_mask"]``.
MASK_KEY = "action_mask"


def _masked_dict(value: Any) -> bool:
    return isinstance(value, dict) and MASK_KEY in value and "observation" in value


def action_mask(obs: Any, info: dict[str, Any] | None = None) -> np.ndarray | None:
    """The legal actions of an agent (bool array), from its observation dict or its info.

    >>> action_mask({"observation": np.zeros(2), "action_mask": np.array([1, 0], np.int8)})
    array([ True, False])
    >>> action_mask(np.zeros(2), {}) is None
    True
    """
    if isinstance(obs, dict) and MASK_KEY in obs:
        return np.asarray(obs[MASK_KEY], dtype=np.bool_)
    if info and MASK_KEY in info and info[MASK_KEY] is not None:
        return np.asarray(info[MASK_KEY], dtype=np.bool_)
    return None


def policy_space(space: spaces.Space) -> spaces.Space:
    """The observation space a policy of an agent takes: the ``"observation"`` entry of a
    ``Dict(observation=..., action_mask=...)`` space (the mask goes to the policy as its mask),
    else the space itself.

    >>> policy_space(spaces.Dict(observation=spaces.Box(0, 1, (3,)),
    ...                          action_mask=spaces.MultiBinary(2)))
    Box(0.0, 1.0, (3,), float32)
    """
    if isinstance(space, spaces.Dict) and MASK_KEY in space.spaces and \
            "observation" in space.spaces:
        return space["observation"]
    return space


def policy_input(obs: Any) -> Any:
    """The part of an agent's observation its policy takes (see `policy_space`)."""
    return obs["observation"] if _masked_dict(obs) else obs


def zeros_like(space: spaces.Space) -> Any:
    """An all-zero member-shaped value of ``space`` (the padding of an absent agent's slot)."""
    if isinstance(space, spaces.Dict):
        return {k: zeros_like(s) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(zeros_like(s) for s in space.spaces)
    if isinstance(space, spaces.Discrete):
        return np.int64(space.start)
    return np.zeros(space.shape or (), dtype=space.dtype)
