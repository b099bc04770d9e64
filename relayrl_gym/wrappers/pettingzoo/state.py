"""Where an AEC game's state lives below its wrappers, so that a recorded game reads it once
per turn instead of once per wrapper."""

from __future__ import annotations

from typing import Any

from pettingzoo.utils.wrappers.base import BaseWrapper
from pettingzoo.utils.wrappers.order_enforcing import OrderEnforcingWrapper

__all__ = ["STATE", "StateHolder"]

#: The attributes of an AEC game that describe whose turn it is and what each agent has.
STATE = frozenset({"agent_selection", "agents", "rewards", "_cumulative_rewards",
                   "terminations", "truncations", "infos", "num_agents"})

#: ``__getattr__`` of the wrappers that only pass attribute reads on (once the game is reset).
_PASSING = (BaseWrapper.__getattr__, OrderEnforcingWrapper.__getattr__)


def _shadows(wrapper: Any) -> bool:
    """Whether ``wrapper`` answers some `STATE` attribute itself (its own value, a property or
    its own ``__getattr__``) instead of passing the read to the env it wraps."""
    if type(wrapper).__getattr__ not in _PASSING:
        return True
    if STATE & vars(wrapper).keys():
        return True
    for cls in type(wrapper).__mro__:
        if cls is BaseWrapper:
            return False
        if STATE & vars(cls).keys():
            return True
    return False


class StateHolder:
    """Where the `STATE` attributes of a wrapped AEC game are read: the innermost env, or the
    first wrapper that answers one of them itself, so that reading them there gives what
    reading them on the outermost wrapper gives, without a hop per wrapper. Found once the
    game is reset (order enforcing refuses reads before) and again whenever a wrapper passed
    over gains or loses an attribute (one that starts to answer a read itself) or wraps
    another env (a game replaced in place).

    >>> from pettingzoo.classic import tictactoe_v3
    >>> env = tictactoe_v3.env()
    >>> env.reset(seed=0)
    >>> StateHolder(env).get() is env.unwrapped
    True
    """

    __slots__ = ("_env", "_holder", "_passed")

    def __init__(self, env: Any) -> None:
        self._env = env
        self._find()

    def _find(self) -> None:
        env, passed = self._env, []
        while isinstance(env, BaseWrapper) and not _shadows(env):
            attrs = vars(env)
            passed.append((attrs, len(attrs), env.env))
            env = env.env
        self._holder, self._passed = env, passed

    def get(self) -> Any:
        """The holder of the game's state now."""
        for attrs, size, inner in self._passed:
            if len(attrs) != size or attrs.get("env") is not inner:
                self._find()
                break
        return self._holder
