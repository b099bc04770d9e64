"""`AgentTracker`: the transitions in flight of the agents of one game copy, recorded once
what followed each agent's action is known."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from relayrl_gym.schema.batches import map_leaves
from relayrl_gym.schema.infos import RecordedInfo, recorded_info

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


@dataclass
class _Pending:
    obs: Any
    action: Any
    mask: np.ndarray | None
    version: int
    data: dict[str, Any] | None


class AgentTracker:
    """The transitions in flight of the agents of one game copy.

    ``begin`` when an agent acts (what it saw, what it did); ``finish`` when what followed is
    known (its next observation, reward and flags). Only finished transitions are recorded: an
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
        self._pending: dict[str, _Pending] = {}
        self._playing: set[Any] = set()  # agents in an episode (they have a recorded row)

    def pending(self, agent: str) -> bool:
        return agent in self._pending

    def waiting(self) -> list[str]:
        """Agents whose transition has begun and not finished."""
        return list(self._pending)

    def reset(self) -> None:
        """A new game: transitions in flight are dropped, every agent starts a new episode."""
        self._pending.clear()
        self._playing.clear()

    def begin(self, agent: str, obs: Any, action: Any, mask: np.ndarray | None = None,
              version: int = -1, data: dict[str, Any] | None = None) -> None:
        """``agent`` saw ``obs`` and took ``action`` (chosen by a model of ``version``, or the
        caller: -1). Both are copied: the env may reuse its arrays."""
        if self._recording is None:
            return
        self._pending[agent] = _Pending(map_leaves(np.array, obs), map_leaves(np.array, action),
                                        mask, version, data)

    def drop(self, agent: str) -> None:
        self._pending.pop(agent, None)

    def finish(self, agent: str, next_obs: Any, reward: float, terminated: bool,
               truncated: bool, info: dict[str, Any] | None) -> None:
        """Records ``agent``'s transition in flight, if any, with what followed its action."""
        self.finish_many([(agent, next_obs, reward, terminated, truncated, info)])

    def finish_many(self, outcomes: list[tuple[str, Any, float, bool, bool,
                                               dict[str, Any] | None]]) -> None:
        """`finish` for several agents at once (one recorded batch): ``outcomes`` holds
        ``(agent, next_obs, reward, terminated, truncated, info)`` tuples."""
        if self._recording is None:
            return
        done = [(self._pending.pop(o[0]), o) for o in outcomes if o[0] in self._pending]
        if not done:
            return
        recording = self._recording
        rows = []
        for pending, (agent, next_obs, reward, terminated, truncated, info) in done:
            run, slot = self._slots[agent]
            first = agent not in self._playing  # an agent's episode starts at its first row
            if terminated or truncated:
                self._playing.discard(agent)
            else:
                self._playing.add(agent)
            text = recorded_info(info) if recording.record_info and info else None
            rows.append(AgentTransition(
                run, slot, first, pending.obs, pending.action, float(reward),
                map_leaves(np.array, next_obs), bool(terminated), bool(truncated),
                pending.version, text, pending.mask, pending.data))
        recording.stage(rows, self._copy)
