"""Each actor's trajectory in progress, held in arrays indexed by actor slot.

The agent API hands over an observation, gets an action, and learns that action's reward at the
actor's next request (or when it flags its last action). A transition is complete only then:
``(obs, action, reward, next_obs)`` where ``next_obs`` is the next request's observation. This
table keeps each actor's pending half-transition and turns completed ones into recorded rows,
for many actors at once with numpy indexing instead of a Python loop per actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces

from relayrl_gym.core.episodes import EpisodeTracker
from relayrl_gym.core.transitions import TransitionBatch, batch_of
from relayrl_gym.errors import UnsupportedSpaceError

if TYPE_CHECKING:
    from relayrl_gym.recording.recorder import Recorder

__all__ = ["TrajectoryTable"]

_ARRAY_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiBinary, spaces.MultiDiscrete)


def _flags(value: bool | np.ndarray, rows: np.ndarray | slice, n: int) -> np.ndarray:
    if np.ndim(value) == 0:
        return np.full(n, bool(value))
    return np.asarray(value, np.bool_)[rows].copy()


class _Chain:
    """The pending steps of one list of actors that asks again and again (the steady state):
    kept as the last request's own arrays, so the next request records its transitions with
    no copying or indexing. Turned back into table rows before anything else touches them."""

    __slots__ = ("actions", "data", "episodes", "key", "no_flags", "obs", "slots", "slots32",
                 "steps", "versions")

    def __init__(self, key: object, slots: np.ndarray, obs: np.ndarray, actions: np.ndarray,
                 versions: np.ndarray, data: dict[str, np.ndarray], episodes: np.ndarray,
                 steps: np.ndarray) -> None:
        self.key, self.slots, self.slots32 = key, slots, slots.astype(np.int32)
        self.obs, self.actions, self.versions, self.data = obs, actions, versions, data
        self.episodes, self.steps = episodes, steps
        self.no_flags = np.zeros(len(slots), np.bool_)


class TrajectoryTable:
    """Pending steps of every actor slot and the rows they become.

    >>> table = TrajectoryTable(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), recorder=None)
    >>> slots = np.array([0, 1])
    >>> table.begin(slots, np.zeros((2, 2), np.float32), np.array([1, 0]), np.array([3, 3]))
    >>> table.pending[:2].tolist()
    [True, True]
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 recorder: Recorder | None, max_length: int = 0, capacity: int = 16) -> None:
        """Creates the table.

        Args:
            observation_space: one actor's observation space (array-valued spaces only).
            action_space: one actor's action space (array-valued spaces only).
            recorder: where completed transitions go (None: nowhere).
            max_length: a trajectory longer than this is cut (``truncated=True``); 0: never.
            capacity: slots allocated up front (the arrays grow as actors are added).
        """
        for name, space in (("observation", observation_space), ("action", action_space)):
            if not isinstance(space, _ARRAY_SPACES):
                raise UnsupportedSpaceError(
                    f"the agent API takes {name}s as one numpy array row per actor; "
                    f"{type(space).__name__} spaces are not supported (use Box, Discrete, "
                    "MultiBinary or MultiDiscrete, e.g. with gymnasium's FlattenObservation)")
        self.obs_shape = tuple(observation_space.shape or ())
        self.obs_dtype = np.dtype(observation_space.dtype)
        self.act_shape = tuple(action_space.shape or ())
        self.act_dtype = np.dtype(action_space.dtype)
        self.recorder = recorder
        self.max_length = int(max_length)
        self.capacity = 0
        self.prev_obs = np.zeros((0, *self.obs_shape), self.obs_dtype)
        self.prev_action = np.zeros((0, *self.act_shape), self.act_dtype)
        self.prev_version = np.zeros(0, np.int64)
        self.pending = np.zeros(0, np.bool_)
        #: Each slot's trajectory (episode id -1: none yet; the next request starts one).
        self.episodes = EpisodeTracker(0, recorder.new_episode_id if recorder else None)
        self.prev_data: dict[str, np.ndarray] = {}
        self.prev_mask: np.ndarray | None = None
        self.has_mask = np.zeros(0, np.bool_)
        self._chain: _Chain | None = None
        self.grow(capacity)

    def attach(self, recorder: Recorder | None) -> None:
        """Sends completed transitions to ``recorder`` (None: nowhere) from now on."""
        self.recorder = recorder
        self.episodes.new_id = recorder.new_episode_id if recorder is not None else None

    def grow(self, capacity: int) -> None:
        """Makes room for slots ``0 .. capacity - 1``."""
        if capacity <= self.capacity:
            return
        capacity = max(capacity, 2 * self.capacity)

        def extend(array: np.ndarray, fill: Any = 0) -> np.ndarray:
            out = np.full((capacity, *array.shape[1:]), fill, array.dtype)
            out[: len(array)] = array
            return out

        self.prev_obs = extend(self.prev_obs)
        self.prev_action = extend(self.prev_action)
        self.prev_version = extend(self.prev_version, -1)
        self.pending = extend(self.pending, False)
        self.episodes.grow(capacity)
        self.prev_data = {k: extend(v) for k, v in self.prev_data.items()}
        if self.prev_mask is not None:
            self.prev_mask = extend(self.prev_mask, True)
        self.has_mask = extend(self.has_mask, False)
        self.capacity = capacity

    def request(self, key: object, slots: np.ndarray, obs: np.ndarray, actions: np.ndarray,
                versions: np.ndarray, data: dict[str, np.ndarray], mask: np.ndarray | None,
                rewards: np.ndarray | float) -> None:
        """One request of actors ``slots``: completes their pending steps with ``rewards`` and
        ``obs`` (recorded) and makes ``obs``/``actions`` their new pending steps.

        ``key`` identifies the list of actors (the same object while it is unchanged); ``obs``,
        ``actions``, ``data``, ``versions`` and ``rewards`` (one per slot, or one float for
        all) are kept, not copied: the caller hands them over.
        """
        chain = self._chain
        if chain is not None and chain.key is key and mask is None:
            if self.recorder is not None:
                self.recorder.record(batch_of((
                    chain.slots32, chain.episodes, chain.steps, chain.obs, chain.actions,
                    rewards, obs, chain.no_flags, chain.no_flags, chain.versions, None, None,
                    None, None, chain.data or None, None, None)))
            # New arrays replace the old ones (which the recorder now holds), never modified.
            chain.obs, chain.actions, chain.versions, chain.data = obs, actions, versions, data
            chain.steps = chain.steps + 1
            return
        self.materialize()
        if not isinstance(rewards, np.ndarray):
            rewards = np.full(len(slots), rewards, np.float64)
        self.complete(slots, rewards, obs)
        self.begin(slots, obs, actions, versions, data, mask)
        if mask is None and not self.max_length:
            self._chain = _Chain(key, slots, obs, actions, versions, data,
                                 self.episodes.ids[slots], self.episodes.steps[slots])
            self.pending[slots] = False  # the chain holds these pending steps now

    def materialize(self) -> None:
        """Writes the chain's pending steps back into the table (before any other use)."""
        chain, self._chain = self._chain, None
        if chain is None:
            return
        self.begin(chain.slots, chain.obs, chain.actions, chain.versions, chain.data, None)
        self.episodes.set(chain.slots, chain.episodes, chain.steps)

    def complete(self, slots: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray | None,
                 terminated: bool | np.ndarray = False, truncated: bool | np.ndarray = False
                 ) -> int:
        """Closes the pending step of each slot that has one with its reward (one per slot)
        and next observation (None: the step's own observation, when the caller
        gives no final one); records those transitions. Returns how many rows were recorded.

        ``next_obs`` is kept by the recorder: the caller must not modify it afterwards.
        """
        self.materialize()
        waiting = self.pending[slots]
        if waiting.all():  # the steady state: every actor has a step waiting for its reward
            rows: np.ndarray | slice = slice(None)
            done_slots = slots
        elif waiting.any():
            rows = np.flatnonzero(waiting)
            done_slots = slots[rows]
        else:
            return 0
        n = len(done_slots)
        term = _flags(terminated, rows, n)
        trunc = _flags(truncated, rows, n)
        steps = self.episodes.steps[done_slots]
        if self.max_length:
            trunc |= ~term & (steps + 1 >= self.max_length)
        if self.recorder is not None:
            reward = rewards[rows].copy()
            following = None if next_obs is None else next_obs[rows]
            has_mask = self.has_mask[done_slots]
            if has_mask.all() or not has_mask.any():
                self._record(done_slots, steps, reward, following, term, trunc,
                             with_mask=bool(has_mask.any()))
            else:  # a call's mask is all-or-nothing: rows with and without one go apart
                for part, with_mask in ((has_mask, True), (~has_mask, False)):
                    pick = np.flatnonzero(part)
                    self._record(done_slots[pick], steps[pick], reward[pick],
                                 None if following is None else following[pick],
                                 term[pick], trunc[pick], with_mask=with_mask)
        self.pending[done_slots] = False
        self.episodes.advance(done_slots)
        if term.any() or trunc.any():
            self.episodes.end(done_slots[term | trunc])  # the next request starts a new one
        return n

    def _record(self, slots: np.ndarray, steps: np.ndarray, rewards: np.ndarray,
                next_obs: np.ndarray | None, terminated: np.ndarray, truncated: np.ndarray,
                with_mask: bool) -> None:
        assert self.recorder is not None
        obs = self.prev_obs[slots]
        self.recorder.record(TransitionBatch(
            slots.astype(np.int32), self.episodes.ids[slots], steps, obs, self.prev_action[slots],
            rewards, obs if next_obs is None else next_obs, terminated,
            truncated, model_version=self.prev_version[slots],
            output_batch={k: v[slots] for k, v in self.prev_data.items()} or None,
            mask_batch=self.prev_mask[slots] if with_mask and self.prev_mask is not None
            else None))

    def begin(self, slots: np.ndarray, obs: np.ndarray, actions: np.ndarray,
              versions: np.ndarray, data: dict[str, np.ndarray] | None = None,
              mask: np.ndarray | None = None) -> None:
        """Stores each slot's new half-step: the observation it acted on and its action."""
        self.episodes.start_missing(slots)
        self.prev_obs[slots] = obs
        self.prev_action[slots] = actions
        self.prev_version[slots] = versions
        self.pending[slots] = True
        for key, values in (data or {}).items():
            store = self.prev_data.get(key)
            if store is None:
                store = np.zeros((self.capacity, *np.shape(values)[1:]), np.asarray(values).dtype)
                self.prev_data[key] = store
            store[slots] = values
        if mask is not None:
            if self.prev_mask is None or self.prev_mask.shape[1:] != mask.shape[1:]:
                self.prev_mask = np.ones((self.capacity, *mask.shape[1:]), np.bool_)
            self.prev_mask[slots] = mask
        self.has_mask[slots] = mask is not None

    def move(self, old: int, new: int) -> None:
        """Carries slot ``old``'s trajectory over to slot ``new`` (an actor renamed)."""
        self.materialize()
        self.grow(new + 1)
        for array in (self.prev_obs, self.prev_action, self.prev_version, self.pending,
                      self.has_mask, *self.prev_data.values()):
            array[new] = array[old]
        if self.prev_mask is not None:
            self.prev_mask[new] = self.prev_mask[old]
        self.episodes.move(old, new)
        self.drop(old)

    def drop(self, slot: int) -> None:
        """Forgets a slot's pending step (an action whose reward never came is not recorded)."""
        self.materialize()
        self.pending[slot] = False
        self.episodes.end([slot])
