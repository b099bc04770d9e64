"""One run of a recorded game: its agents' finished transitions, waiting to go to the
recorder in batches, numbered into episodes in the order they finished."""

from __future__ import annotations

import itertools
import operator
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from relayrl_gym.core.episodes import EpisodeTracker
from relayrl_gym.core.transitions import TransitionBatch
from relayrl_gym.recording.pipeline import RunRecording
from relayrl_gym.schema.batches import map_leaves
from relayrl_gym.wrappers.pettingzoo.tracker import AgentTransition

__all__ = ["ROWS_PER_BATCH", "GameRun", "feed"]


#: Finished transitions of a run handed to its recorder together (at most; fewer when a
#: recorder buffer holds fewer): one batch of many rows costs far less per row than one each.
ROWS_PER_BATCH = 256


class GameRun(RunRecording):
    """One run of a recorded game: the agents of one `SpaceGroup`, slot ``copy * K + k`` for
    agent ``k`` of the group in game copy ``copy``, its recorder and background writer.

    Finished transitions wait in ``rows`` until a batch is full (``chunk``), a flush or close
    hands them over, or the writer takes them for its time-based flush (`Recorder.feeder`):
    no row waits longer than a flush interval, as in the recorder's own buffer.
    """

    def __init__(self, recording: RunRecording, agents: list[Any]) -> None:
        super().__init__(recording.run_id, recording.recorder, recording.writer,
                         recording.run_path)
        self.agents = agents
        #: Each slot's episode (the slots of every game copy).
        self.episodes = EpisodeTracker(len(self.recorder.actor_ids),
                                       self.recorder.new_episode_id, shared=False)
        self.rows: list[AgentTransition] = []
        self.chunk = min(ROWS_PER_BATCH, self.recorder.capacity)

    def add(self, rows: list[AgentTransition]) -> None:
        """Takes ``rows`` (all of this run, in step order); a full batch goes to the recorder,
        as every waiting row does when the writer asks for them (`Recorder.ask_back`). Called
        with the game's lock held."""
        self.rows.extend(rows)
        if len(self.rows) >= self.chunk or self.recorder.asked_back:  # full, or asked for
            self.hand_over()

    def hand_over(self) -> None:
        """Records the waiting rows (called with the game's lock held)."""
        for batch, stamps in self.take():
            self.recorder.record(batch, stamps)

    def take(self) -> list[tuple[TransitionBatch, np.ndarray]]:
        """The waiting rows as batches (see `batches`), no longer waiting (called with the
        game's lock held). Interrupted (Ctrl-C) while they are put together, they keep
        waiting, numbered as before."""
        made = self.batches(self.rows)
        self.rows = []
        return made

    def batches(self, rows: list[AgentTransition]
                ) -> list[tuple[TransitionBatch, np.ndarray]]:
        """``rows`` (in step order) as one batch, with each row's timestamp; each row gets its
        episode id and step here, so they follow the rows' order whichever thread stepped
        their game (called with the game's lock held). Rows whose values do not stack (an
        observation of another shape) go one batch each, for the recorder to report."""
        if not rows:
            return []
        episodes = self.episodes
        before = episodes.ids.copy(), episodes.steps.copy()
        try:
            episode_ids, steps = episodes.number(
                [r.slot for r in rows], [r.first for r in rows],
                [r.terminated or r.truncated for r in rows])
            try:
                return [_batch(rows, episode_ids, steps, self.recorder.build_on_writer)]
            except Exception:
                return [_batch(rows[i:i + 1], episode_ids[i:i + 1], steps[i:i + 1])
                        for i in range(len(rows))]
        except BaseException:  # nothing made: the rows are numbered again when they go
            episodes.ids, episodes.steps = before
            raise


def _batch(rows: list[AgentTransition], episode_ids: np.ndarray, steps: np.ndarray,
           rows_of_obs: bool = False) -> tuple[TransitionBatch, np.ndarray]:
    """``rows_of_obs``: the ``obs`` column may stay a list of the rows' arrays, stacked when
    the block is built (by the writer thread, for large observations: one copy less here)."""
    # One C-level transpose of the rows into their columns (tuples), read from there.
    (_, slots, _, obs, actions, rewards, next_obs, terminated, truncated, versions, infos,
     masks, data, stamps) = zip(*rows)
    n = len(rows)
    info_of = ({i: info for i, info in enumerate(infos) if info is not None}
               if _nones(infos) < n else None)
    mask_of, mask_batch = None, None
    masks_missing = _nones(masks)
    if masks_missing == 0 and len({m.shape for m in masks}) == 1:
        mask_batch = np.array(masks)  # one shape for every row: one array
    elif masks_missing < n:
        mask_of = {i: mask for i, mask in enumerate(masks) if mask is not None}
    outputs = {i: d for i, d in enumerate(data) if d} if any(data) else None
    next_values, next_from = _next_obs(obs, next_obs)
    first = obs[0]
    obs_column: Any = list(obs)
    if not (rows_of_obs and type(first) is np.ndarray and all(
            type(o) is np.ndarray and o.shape == first.shape and o.dtype == first.dtype
            for o in obs)):
        obs_column = _rows(obs)
    batch = TransitionBatch(
        np.array(slots, np.int32), episode_ids, steps, obs_column, _rows(actions), rewards,
        next_values, terminated, truncated,
        model_version=(versions[0] if len(set(versions)) == 1 else
                       np.array(versions, np.int64)),
        infos=info_of, masks=mask_of, outputs=outputs, mask_batch=mask_batch,
        next_from=next_from)
    return batch, np.array(stamps, np.int64)


def _nones(column: tuple[Any, ...]) -> int:
    """How many of ``column`` are None (by identity: arrays do not compare to None)."""
    return sum(map(operator.is_, column, itertools.repeat(None)))


def _next_obs(obs: tuple[Any, ...], next_obs: tuple[Any, ...]) -> tuple[Any, np.ndarray | None]:
    """The ``next_obs`` column of rows and its ``next_from``: an agent's next observation is
    the very copy its next transition holds as ``obs`` (see `AgentTracker`), so a row whose
    next transition is among the rows names that row instead of copying the array
    (observations that are one array each; others are copied)."""
    first = obs[0]
    if type(first) is not np.ndarray or len(obs) < 2:
        return _rows(next_obs), None
    row_of = {id(o): i for i, o in enumerate(obs)}
    next_from = np.fromiter(map(row_of.get, map(id, next_obs), itertools.repeat(-1)),
                            np.int64, len(obs))
    if not (next_from >= 0).any():
        return _rows(next_obs), None
    values = np.zeros((len(obs), *first.shape), first.dtype)
    for i in np.flatnonzero(next_from < 0).tolist():
        values[i] = next_obs[i]
    return values, next_from


def feed(lock: threading.Lock, run: GameRun) -> list[tuple[TransitionBatch, np.ndarray]]:
    """The waiting rows of ``run`` as batches, for the writer's time-based flush (see
    `Recorder.feeder`); none when the game's ``lock`` is busy (the stepping thread holds it,
    and may wait for the writer: the next tick takes them)."""
    if not run.rows or not lock.acquire(blocking=False):
        return []
    try:
        return run.take()
    finally:
        lock.release()


def _stack(*leaves: Any) -> np.ndarray:
    # np.array stacks equal shapes as np.stack does (same dtype promotion, ValueError for
    # unequal ones), in one C call instead of a Python-level pass per leaf.
    return np.array(leaves)


def _row_view(leaf: Any) -> np.ndarray:
    return np.asarray(leaf)[None]


def _rows(values: Sequence[Any]) -> Any:
    """Owned values of one space (possibly nested) as one batch."""
    if len(values) == 1:
        return map_leaves(_row_view, values[0])
    return map_leaves(_stack, values[0], *values[1:])
