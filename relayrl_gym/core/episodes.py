"""`EpisodeTracker`: the one place that knows which episode each slot is in, and its step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["EpisodeTracker"]

#: Slots to act on: an index array, a bool mask over every slot, a list of indices, or None
#: for every slot.
Slots = Any


class EpisodeTracker:
    """Episode id and step counter of every slot (env copy, agent of a game copy, actor).

    A slot is in no episode (id -1) until `start` or `start_missing` gives it a new run-unique
    id from ``new_id`` with step 0; `advance` counts a recorded transition; `end` takes the
    slot out of its episode (the next `start_missing` starts a new one). Each front end decides
    when an episode starts and ends (Gymnasium's autoreset modes, agents leaving a game, the
    client API's last action); this class holds the result, for all of them.

    ``ids`` and ``steps`` are replaced, never modified in place: a `TransitionBatch` may keep
    the arrays it was given. A tracker whose arrays are never handed out (``shared=False``:
    it gives out copies, as `number` does) is updated in place by `number`, for less work per
    row.

    >>> ids = iter(range(100))
    >>> tracker = EpisodeTracker(3, lambda: next(ids))
    >>> tracker.start([0, 2])
    >>> tracker.advance()
    >>> tracker.ids.tolist(), tracker.steps.tolist()
    ([0, -1, 1], [1, 1, 1])
    >>> tracker.end([2]); tracker.start_missing([1, 2])
    >>> tracker.ids.tolist(), tracker.steps.tolist()
    ([0, 2, 3], [1, 0, 0])
    """

    __slots__ = ("ids", "new_id", "shared", "steps")

    def __init__(self, slots: int, new_id: Callable[[], int] | None = None,
                 shared: bool = True) -> None:
        """Args:
        slots: how many slots (`grow` adds more).
        new_id: gives a new episode id (unique within the run); None: every episode is 0
            (nothing is recorded, only steps are counted).
        shared: the arrays may be handed out (True: never modified in place).
        """
        self.new_id = new_id
        self.shared = shared
        self.ids = np.full(slots, -1, np.int64)
        self.steps = np.zeros(slots, np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def grow(self, slots: int) -> None:
        """Makes room for ``slots`` slots (new ones in no episode)."""
        if slots <= len(self.ids):
            return
        extra = slots - len(self.ids)
        self.ids = np.concatenate([self.ids, np.full(extra, -1, np.int64)])
        self.steps = np.concatenate([self.steps, np.zeros(extra, np.int64)])

    def start(self, slots: Slots = None) -> None:
        """Starts a new episode in each of ``slots`` (None: every slot), at step 0."""
        where = _indices(slots, len(self.ids))
        if len(where):
            self.set(where, self._new_ids(len(where)), 0)

    def start_missing(self, slots: Slots = None) -> None:
        """Starts a new episode in each of ``slots`` that is in none."""
        where = _indices(slots, len(self.ids))
        self.start(where[self.ids[where] < 0])

    def advance(self, slots: Slots = None) -> None:
        """One more step in the episode of each of ``slots`` (None: every slot)."""
        if slots is None:
            self.steps = self.steps + 1
            return
        steps = self.steps.copy()
        steps[_indices(slots, len(steps))] += 1
        self.steps = steps

    def end(self, slots: Slots) -> None:
        """Takes each of ``slots`` out of its episode."""
        where = _indices(slots, len(self.ids))
        if len(where):
            self.set(where, -1, 0)

    def number(self, slots: Sequence[int], first: Sequence[bool], done: Sequence[bool]
               ) -> tuple[np.ndarray, np.ndarray]:
        """Episode id and step of each of a sequence of rows, in order (a slot may come more
        than once): a row marked ``first``, or of a slot in no episode, starts a new episode;
        every row counts a step; a row marked ``done`` ends its episode.

        >>> tracker = EpisodeTracker(2, iter(range(10)).__next__)
        >>> ids, steps = tracker.number([0, 1, 0, 0], [True, True, False, True],
        ...                             [False, False, True, False])
        >>> ids.tolist(), steps.tolist(), tracker.ids.tolist(), tracker.steps.tolist()
        ([0, 1, 0, 2], [0, 0, 1, 0], [2, 1], [1, 1])
        """
        current: dict[int, list[int]] = {}  # slot -> [episode id, step], the slots touched
        ids, steps = self.ids, self.steps
        out_ids, out_steps = [], []
        for slot, starts, ends in zip(slots, first, done):
            state = current.get(slot)
            if state is None:
                state = current[slot] = [int(ids[slot]), int(steps[slot])]
            if starts or state[0] < 0:
                state[0], state[1] = (self.new_id() if self.new_id is not None else 0), 0
            out_ids.append(state[0])
            out_steps.append(state[1])
            if ends:
                state[0], state[1] = -1, 0
            else:
                state[1] += 1
        if self.shared:
            ids, steps = ids.copy(), steps.copy()
        for slot, (episode, step) in current.items():
            ids[slot], steps[slot] = episode, step
        self.ids, self.steps = ids, steps
        return np.array(out_ids, np.int64), np.array(out_steps, np.int64)

    def set(self, slots: np.ndarray, ids: np.ndarray | list[int] | int,
            steps: np.ndarray | int) -> None:
        """Puts episode ids and steps (one per slot, or one for all) into the slots."""
        new_ids, new_steps = self.ids.copy(), self.steps.copy()
        new_ids[slots] = ids
        new_steps[slots] = steps
        self.ids, self.steps = new_ids, new_steps

    def move(self, old: int, new: int) -> None:
        """Carries slot ``old``'s episode over to slot ``new``; ``old`` is left in none."""
        self.grow(new + 1)
        self.set(np.array([new, old]), np.array([self.ids[old], -1]),
                 np.array([self.steps[old], 0]))

    def _new_ids(self, n: int) -> list[int] | int:
        new_id = self.new_id
        if new_id is None:
            return 0
        return [new_id() for _ in range(n)]


def _indices(slots: Slots, n: int) -> np.ndarray:
    if slots is None:
        return np.arange(n)
    where = np.asarray(slots)
    if where.dtype == np.bool_:
        return np.flatnonzero(where)
    return where.astype(np.intp, copy=False).reshape(-1)
