"""`AgentTracker`: the transitions in flight of the agents of one game copy, recorded once
what followed each agent's action is known."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from relayrl_gym.schema.batches import copy_batch
from relayrl_gym.schema.infos import RecordedInfo, recorded_info
from relayrl_gym.wrappers.pettingzoo.observations import action_mask

if TYPE_CHECKING:
    from relayrl_gym.wrappers.pettingzoo.recording import GameRecording

__all__ = ["AgentTracker", "AgentTransition"]


class AgentTransition(NamedTuple):
    """One finished transition, owned (nobody modifies its values)."""

    run: int  # index in GameRecording.runs
    slot: int
    first: bool  # the agent's first transition since its episode started (a new episode)
    obs: Any
    action: Any
    reward: float
    next_obs: Any
    terminated: bool
    truncated: bool
    version: int
    info: RecordedInfo | None  # kept as `recorded_info` gives it
    mask: np.ndarray | None
    data: dict[str, Any] | None
    stamp: int  # when it finished (ns since the epoch, whole microseconds)


class AgentTracker:
    """The transitions in flight of the agents of one game copy.

    An agent's transition begins when it acts (`begin`: what it last saw, what it did) and
    finishes when what followed is known (`finish_many`: its next observation, reward and
    flags). Each observation is copied once, when it is seen: the env may reuse its arrays,
    and the copy is both the next observation of the transition it finishes and the
    observation of the one the agent begins next. Only finished transitions are recorded: an
    agent whose transition never finishes (a reset in between) leaves no row. An agent's
    episode starts at its first action and ends when it is terminated or truncated.
    """

    def __init__(self, recording: GameRecording | None,
                 slots: dict[Any, tuple[int, int]], copy: int = 0) -> None:
        """Args:
        recording: the runs rows go to (None: track nothing).
        slots: each agent's run (an index in ``recording.runs``) and slot (actor) in it.
        copy: the game copy tracked (rows are committed in copy order).
        """
        self._recording = recording
        self._slots = slots
        self._copy = copy
        # agent -> (owned obs, info): what it saw last, until it acts on it
        self._seen: dict[Any, tuple[Any, dict[str, Any] | None]] = {}
        # agent -> (obs, action, mask, version, data): its transition in flight
        self._pending: dict[Any, tuple[Any, Any, np.ndarray | None, int,
                                       dict[str, Any] | None]] = {}
        self._playing: set[Any] = set()  # agents in an episode (they have a recorded row)

    def waiting(self) -> list[Any]:
        """Agents whose transition has begun and not finished."""
        return list(self._pending)

    def reset(self) -> None:
        """A new game: transitions in flight are dropped, every agent starts a new episode."""
        self._seen.clear()
        self._pending.clear()
        self._playing.clear()

    def see(self, agent: Any, obs: Any, info: dict[str, Any] | None) -> None:
        """``agent`` observes ``obs`` (and ``info``), on which its next action is taken."""
        if self._recording is not None:
            self._seen[agent] = (copy_batch(obs), info)

    def forget(self, agent: Any) -> None:
        """``agent`` will not act on what it saw last (it is done)."""
        self._seen.pop(agent, None)

    def begin(self, agent: Any, action: Any, version: int = -1,
              data: dict[str, Any] | None = None) -> None:
        """``agent`` takes ``action`` (chosen by a model of ``version``, or the caller: -1) on
        what it saw last (nothing begins if it saw nothing since its last action). The action
        is copied: the caller may reuse its arrays."""
        seen = self._seen.pop(agent, None)
        if seen is None:
            return
        obs, info = seen
        self._pending[agent] = (obs, copy_batch(action), action_mask(obs, info),
                                version, data)

    def drop(self, agent: Any) -> None:
        self._pending.pop(agent, None)

    def finish_many(self, outcomes: list[tuple[Any, Any, float, bool, bool,
                                               dict[str, Any] | None]],
                    only_these: bool = False) -> None:
        """``(agent, next_obs, reward, terminated, truncated, info)`` of several agents after
        a step: each agent sees ``next_obs`` (`see`), and its transition in flight, if any, is
        recorded with what followed its action (one batch for all). ``only_these``: the
        other agents saw nothing (what they saw before is forgotten)."""
        recording = self._recording
        if recording is None:
            return
        if only_these:
            self._seen = {}
        pending, seen, playing = self._pending, self._seen, self._playing
        rows = []
        stamp = time.time_ns() // 1000 * 1000
        for agent, next_obs, reward, terminated, truncated, info in outcomes:
            mine = copy_batch(next_obs)
            seen[agent] = (mine, info)
            began = pending.pop(agent, None)
            if began is None:
                continue
            run, slot = self._slots[agent]
            first = agent not in playing  # an agent's episode starts at its first row
            if terminated or truncated:
                playing.discard(agent)
            else:
                playing.add(agent)
            obs, action, mask, version, data = began
            rows.append(AgentTransition(
                run, slot, first, obs, action, float(reward), mine, bool(terminated),
                bool(truncated), version,
                recorded_info(info) if recording.record_info and info else None,
                mask, data, stamp))
        if rows:
            recording.stage(rows, self._copy)
