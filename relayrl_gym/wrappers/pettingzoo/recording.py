"""Recording PettingZoo games: one actor per agent of each game copy, each agent's own
transitions, written to one run."""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa

from relayrl_gym._version import __version__
from relayrl_gym.errors import UnsupportedSpaceError
from relayrl_gym.recording.buffer import info_to_json
from relayrl_gym.recording.pipeline import open_recording
from relayrl_gym.runtime.agent import new_run_id
from relayrl_gym.schema.batches import map_leaves
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.wrappers.pettingzoo.observations import one_row

__all__ = ["AgentTracker", "GameRecording", "shared_spaces"]


def shared_spaces(env: Any, agents: list[str], why: str, fix: str
                  ) -> tuple[gym.Space, gym.Space]:
    """The observation and action space every agent in ``agents`` shares.

    Raises:
        UnsupportedSpaceError: the agents' spaces differ (``why`` says what needs them equal,
            ``fix`` how to do without).
    """
    obs_space, act_space = env.observation_space(agents[0]), env.action_space(agents[0])
    for agent in agents[1:]:
        if env.observation_space(agent) != obs_space or env.action_space(agent) != act_space:
            raise UnsupportedSpaceError(
                f"{why} needs agents with the same spaces: agent {agents[0]!r} has "
                f"({obs_space}, {act_space}), agent {agent!r} has "
                f"({env.observation_space(agent)}, {env.action_space(agent)}); {fix}")
    return obs_space, act_space


class GameRecording:
    """The recorded run of ``copies`` copies of a game: slot ``copy * K + k`` is agent ``k``
    of ``possible_agents`` in that copy (its own actor id; ``agent_id`` is the agent's name).

    Every agent must share one observation and one action space (the run has one schema).
    """

    def __init__(self, sink: Any, env: Any, copies: int, *, run_id: str | None,
                 kind: str, data_type: pa.DataType | None = None, flush_interval: float = 1.0,
                 record_info: bool = True, batch_rows: int | None = None,
                 spill_dir: str | Path | None = None) -> None:
        """Opens the run's sinks.

        Args:
            sink: a directory, URL, `Sink`, or a list of those.
            env: one copy of the game (its agents and spaces describe the run).
            copies: game copies recorded into the run.
            run_id: the run's name (default: the env's name, UTC time and a random suffix).
            kind: "parallel" or "aec" (recorded in the run description).
            data_type: Arrow type of the policies' extra outputs (null: none).
            flush_interval: seconds between time-based flushes.
            record_info: record each agent's info dict as JSON.
            batch_rows: rows per recorded batch.
            spill_dir: where rows wait while a sink is down.
        """
        self.agents = list(env.possible_agents)
        self.observation_space, self.action_space = shared_spaces(
            env, self.agents, "recording a game (one schema per run)",
            "pass sink=None to play it unrecorded")
        self.record_info = record_info
        self.env_id = str(env.metadata.get("name") or type(env.unwrapped).__name__)
        self.run_id = run_id or new_run_id(self.env_id)
        k = len(self.agents)
        self.actor_ids = [str(uuid.uuid4()) for _ in range(copies * k)]
        agent_ids = [self.agents[i % k] for i in range(copies * k)]
        meta = {"run_id": self.run_id, "source": "pettingzoo", "pettingzoo_api": kind,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "relayrl_gym_version": __version__, "gymnasium_version": gym.__version__,
                "env_id": self.env_id, "env_spec": None, "num_envs": copies,
                "agents": self.agents, "actor_ids": self.actor_ids,
                "render_mode": getattr(env, "render_mode", None)}
        self.recorder, self.writer, self.run_path = open_recording(
            sink, self.run_id,
            lambda sinks: TransitionSchema.build(
                self.observation_space, self.action_space,
                metadata={**meta, "sinks": [type(s).__name__ for s in sinks]},
                data_type=data_type),
            self.actor_ids, flush_interval=flush_interval, spill_dir=spill_dir,
            batch_rows=batch_rows)
        self.recorder.agent_ids = agent_ids
        self.closed = False

    def tracker(self, copy: int) -> AgentTracker:
        """The bookkeeping of game copy ``copy``."""
        k = len(self.agents)
        return AgentTracker(self, {agent: copy * k + i for i, agent in enumerate(self.agents)})

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks (and waits for it)."""
        self.recorder.flush()

    def close(self, timeout: float = 30.0) -> None:
        """Flushes and closes the sinks; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.recorder.close()
        self.writer.close(timeout)


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

    def __init__(self, recording: GameRecording | None, slots: dict[str, int]) -> None:
        """Args:
        recording: the run rows go to (None: track nothing).
        slots: each agent's slot (actor) in the run.
        """
        self._recording = recording
        self._slots = slots
        self._pending: dict[str, _Pending] = {}
        self._episodes: dict[str, list[int]] = {}  # agent -> [episode id, step]

    def pending(self, agent: str) -> bool:
        return agent in self._pending

    def waiting(self) -> list[str]:
        """Agents whose transition has begun and not finished."""
        return list(self._pending)

    def reset(self) -> None:
        """A new game: transitions in flight are dropped, every agent starts a new episode."""
        self._pending.clear()
        self._episodes.clear()

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
        pending = self._pending.pop(agent, None)
        if pending is None or self._recording is None:
            return
        recording = self._recording
        recorder = recording.recorder
        episode = self._episodes.get(agent)
        if episode is None:
            episode = self._episodes[agent] = [recorder.new_episode_id(), 0]
        infos = None
        if recording.record_info and info:
            text = info_to_json(info)
            infos = {0: text} if text is not None else None
        recorder.record(
            np.array([self._slots[agent]], np.int32), np.array([episode[0]], np.int64),
            np.array([episode[1]], np.int64), one_row(pending.obs, copy=False),
            one_row(pending.action, copy=False),
            (float(reward),), one_row(next_obs), (bool(terminated),), (bool(truncated),),
            model_version=pending.version, infos=infos,
            masks=None if pending.mask is None else {0: pending.mask.tolist()},
            data=None if not pending.data else {0: pending.data})
        episode[1] += 1
        if terminated or truncated:
            del self._episodes[agent]
