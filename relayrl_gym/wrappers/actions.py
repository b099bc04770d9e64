"""Action batches: split per env as SyncVectorEnv does, and made the recorder's own.

The envs judge their actions (CartPole asserts, Pendulum clips), exactly as under
`gymnasium.vector.SyncVectorEnv`: nothing here checks bounds. What recording needs (one action
per env, of the space's shape and dtype) is checked before any env steps, and a failure raises
the exception type Gymnasium raises for it, with what was wrong in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import concatenate, create_empty_array, iterate

from relayrl_gym.errors import ActionError, add_note

__all__ = ["ActionBatcher"]


class ActionBatcher:
    """Splits an action batch into one action per env, and builds the batch to record.

    >>> batcher = ActionBatcher(spaces.Discrete(2), spaces.MultiDiscrete([2, 2]), 2)
    >>> batcher.split([0, 1])
    [0, 1]
    >>> batcher.recorded([0, 1], [0, 1])
    array([0, 1])
    >>> batcher.split(np.array([0, 1, 1]))
    Traceback (most recent call last):
    ...
    relayrl_gym.errors.ActionError: the action batch holds 3 actions, expected 2 (one per env)
    """

    def __init__(self, space: spaces.Space, batch_space: spaces.Space, n: int) -> None:
        """Args:
        space: one env's action space.
        batch_space: the vector env's action space.
        n: the number of envs.
        """
        self.space, self.batch_space, self.n = space, batch_space, n
        self._array = isinstance(space, spaces.Box | spaces.Discrete | spaces.MultiDiscrete |
                                 spaces.MultiBinary)
        self._shape = (n, *(space.shape or ()))
        self._dtype = space.dtype
        self._convert: Callable[[Any, list[Any]], Any] = (
            self._as_array if self._array else self._concatenated)

    def split(self, actions: Any) -> list[Any]:
        """One action per env, as `gymnasium.vector.utils.iterate` yields them."""
        if type(actions) is np.ndarray and actions.dtype != object:
            items = list(actions)
        else:
            items = list(iterate(self.batch_space, actions))  # TypeError, as Gymnasium's
        if len(items) != self.n:  # SyncVectorEnv's zip(strict=True) raises ValueError
            raise ActionError(f"the action batch holds {len(items)} actions, expected "
                              f"{self.n} (one per env)")
        return items

    def recorded(self, actions: Any, items: list[Any]) -> Any:
        """A new batch of the space's shape and dtype, holding ``items`` (the recorder keeps
        it: nothing the caller holds is shared)."""
        try:
            return self._convert(actions, items)
        except (TypeError, ValueError) as err:
            add_note(err, f"relayrl-gym records each action as {self.space}: the batch must hold "
                         f"one such action per env (num_envs={self.n})")
            raise

    def _as_array(self, actions: Any, items: list[Any]) -> np.ndarray:
        if type(actions) is np.ndarray and actions.shape == self._shape:
            return actions.astype(self._dtype)  # a copy: the caller may reuse its array
        array = np.array(items, dtype=self._dtype)
        if array.shape != self._shape:
            raise ActionError(f"the action batch must have shape {self._shape} (one action of "
                              f"{self.space} per env), got actions of shape "
                              f"{np.shape(items[0])}")
        return array

    def _concatenated(self, actions: Any, items: list[Any]) -> Any:
        out = create_empty_array(self.space, self.n, fn=np.empty)
        return concatenate(self.space, items, out)  # type: ignore[arg-type]
