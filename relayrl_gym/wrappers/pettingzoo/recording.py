"""Recording PettingZoo games: one actor per agent of each game copy, each agent's own
transitions, written to one run."""

from __future__ import annotations

import contextlib
import datetime as _dt
import uuid
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa

from relayrl_gym._version import __version__
from relayrl_gym.errors import UnsupportedSpaceError
from relayrl_gym.recording.pipeline import open_recording
from relayrl_gym.runtime.agent import new_run_id
from relayrl_gym.schema.batches import map_leaves
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.wrappers.pettingzoo.tracker import AgentTracker, AgentTransition

__all__ = ["GameRecording", "RunOwner", "shared_spaces"]


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
        #: Hold finished transitions until `commit` (game copies stepped together record one
        #: batch per step); False: every transition goes to the recorder at once.
        self.batching = False
        self._staged: list[AgentTransition] = []

    def tracker(self, copy: int) -> AgentTracker:
        """The bookkeeping of game copy ``copy``."""
        k = len(self.agents)
        return AgentTracker(self, {agent: copy * k + i for i, agent in enumerate(self.agents)})

    def stage(self, rows: list[AgentTransition]) -> None:
        """Takes finished transitions: recorded now, or at the next `commit` when batching."""
        self._staged.extend(rows)
        if not self.batching:
            self.commit()

    def commit(self) -> None:
        """Hands the staged transitions to the recorder as one batch."""
        rows, self._staged = self._staged, []
        if not rows:
            return
        infos = {i: r.info for i, r in enumerate(rows) if r.info is not None}
        masks = {i: r.mask.tolist() for i, r in enumerate(rows) if r.mask is not None}
        data = {i: r.data for i, r in enumerate(rows) if r.data}
        self.recorder.record(
            np.array([r.slot for r in rows], np.int32),
            np.array([r.episode for r in rows], np.int64),
            np.array([r.step for r in rows], np.int64),
            _rows([r.obs for r in rows]), _rows([r.action for r in rows]),
            tuple(r.reward for r in rows), _rows([r.next_obs for r in rows]),
            tuple(r.terminated for r in rows), tuple(r.truncated for r in rows),
            model_version=(rows[0].version if len(rows) == 1 else
                           np.array([r.version for r in rows], np.int64)),
            infos=infos or None, masks=masks or None, data=data or None)

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks (and waits for it)."""
        self.commit()
        self.recorder.flush()

    def close(self, timeout: float = 30.0) -> None:
        """Flushes and closes the sinks; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.commit()
        self.recorder.close()
        self.writer.close(timeout)


def _stack(*leaves: Any) -> np.ndarray:
    return np.stack([np.asarray(leaf) for leaf in leaves])


def _row_view(leaf: Any) -> np.ndarray:
    return np.asarray(leaf)[None]


def _rows(values: list[Any]) -> Any:
    """Owned values of one space (possibly nested) as one batch."""
    if len(values) == 1:
        return map_leaves(_row_view, values[0])
    return map_leaves(_stack, values[0], *values[1:])


class RunOwner:
    """The lifecycle of a recorded game wrapper (parallel or turn-based): closing it closes the
    game, then flushes and closes the run it owns; a wrapper dropped without `close` still
    flushes, so its writer thread never outlives it.

    Mixed in before the PettingZoo wrapper base, whose ``close`` it replaces; the wrapper sets
    ``env``, ``recording`` (None when nothing is recorded) and ``closed``.
    """

    env: Any
    recording: GameRecording | None
    closed: bool

    def _own_run(self, tracker: AgentTracker | None, recording: GameRecording | None) -> None:
        """Takes this game's bookkeeping in a run (None: nothing recorded) and the run it
        owns and closes with itself (None: owned elsewhere)."""
        self.tracker = tracker or AgentTracker(None, {})
        self.recording = recording
        self.run_id = recording.run_id if recording is not None else None
        self.run_path = recording.run_path if recording is not None else None
        self.closed = False

    def close(self) -> None:
        """Closes the game, then flushes and closes the run it owns; idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.env.close()
        finally:
            if self.recording is not None:
                self.recording.close()

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks."""
        if self.recording is not None:
            self.recording.flush()

    def __del__(self) -> None:
        if not getattr(self, "closed", True) and getattr(self, "recording", None) is not None:
            with contextlib.suppress(Exception):
                self.close()
