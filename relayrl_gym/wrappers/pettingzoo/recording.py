"""Recording PettingZoo games: one actor per agent of each game copy, each agent's own
transitions, written to one run per group of agents with the same spaces."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import threading
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import pyarrow as pa

from relayrl_gym._version import __version__
from relayrl_gym.core.options import RecordingOptions
from relayrl_gym.errors import ConfigError, run_all
from relayrl_gym.recording.pipeline import open_recording
from relayrl_gym.runtime.agent import new_run_id
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.sinks.base import Sink
from relayrl_gym.wrappers.pettingzoo.runs import GameRun, feed
from relayrl_gym.wrappers.pettingzoo.tracker import AgentTracker, AgentTransition

__all__ = ["GameRecording", "RunOwner", "SpaceGroup", "run_names", "space_groups"]


class SpaceGroup(NamedTuple):
    """Agents of a game that share one observation space and one action space."""

    observation_space: gym.Space
    action_space: gym.Space
    agents: list[Any]


def space_groups(env: Any, agents: list[Any]) -> list[SpaceGroup]:
    """``agents`` grouped by their (observation space, action space) pair (space equality);
    the groups, and the agents in each, in ``agents`` order."""
    groups: list[SpaceGroup] = []
    for agent in agents:
        obs_space, act_space = env.observation_space(agent), env.action_space(agent)
        for group in groups:
            if group.observation_space == obs_space and group.action_space == act_space:
                group.agents.append(agent)
                break
        else:
            groups.append(SpaceGroup(obs_space, act_space, [agent]))
    return groups


def _dir_safe(name: Any) -> str:
    # The characters new_run_id keeps in a run id: the id names the run's directory.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _run_ids(base: str, groups: list[SpaceGroup]) -> list[str]:
    """One run id per group: ``base`` for a single group, else ``base.<first agent>``."""
    if len(groups) == 1:
        return [base]
    ids: list[str] = []
    for group in groups:
        run_id = stem = f"{base}.{_dir_safe(group.agents[0])}"
        n = 1
        while run_id in ids:  # agent names equal once made safe ("a b", "a_b")
            n += 1
            run_id = f"{stem}-{n}"
        ids.append(run_id)
    return ids


def _check_sinks_for(sink: Any, groups: list[SpaceGroup]) -> None:
    """A `Sink` object holds one run: refuses one for a game recorded as several runs."""
    if len(groups) == 1:
        return
    specs = list(sink) if isinstance(sink, list | tuple) else [sink]
    objects = [s for s in specs if isinstance(s, Sink)]
    if objects:
        agents = [[str(a) for a in g.agents] for g in groups]
        raise ConfigError(
            f"`sink` holds a {type(objects[0]).__name__} object, which records one run, and "
            f"this game records {len(groups)} runs, one per group of agents with the same "
            f"spaces ({agents}); pass a directory or URL string instead (e.g. "
            "sink='relayrl_runs' or sink='sqlite:///runs.db'), which opens one sink per run")


class GameRecording:
    """The recorded runs of ``copies`` copies of a game.

    The game's agents are grouped by their (observation space, action space) pair, and each
    group is one run with its own schema: all agents share their spaces in most games, and
    the game is one run, ``run_id``. Otherwise (MPE's simple_adversary, say) each group is
    the run ``f"{run_id}.{its first agent}"``, whose description lists its ``agents``, the
    ``game_agents`` and the ``game_runs`` (agent -> run id) so a reader of one run finds the
    others; ``run_id`` is then their common stem and ``run_path`` None (see ``run_paths``).

    In a run, slot ``copy * K + k`` is agent ``k`` of the run's ``K`` agents in that copy (its
    own actor id; ``agent_id`` is the agent's name); episode ids are unique within the run.
    """

    def __init__(self, options: RecordingOptions, env: Any, copies: int, *, kind: str,
                 data_type: pa.DataType | None = None) -> None:
        """Opens the runs' sinks.

        Args:
            options: what is recorded and where: ``options.sink`` may hold a `Sink` object
                only when the game is one run (directories and URLs open one sink per run);
                ``options.run_id`` is the run's name, or the stem of the runs' names
                (default: the env's name, UTC time and a random suffix).
            env: one copy of the game (its agents and spaces describe the runs).
            copies: game copies recorded into the runs.
            kind: "parallel" or "aec" (recorded in the run description).
            data_type: Arrow type of the policies' extra outputs (null: none).

        Raises:
            ConfigError: ``sink`` holds a `Sink` object and the game is several runs (checked
                before any sink is opened).
        """
        self.agents = list(env.possible_agents)
        groups = space_groups(env, self.agents)
        _check_sinks_for(options.sink, groups)
        self.record_info = options.record_info
        self.env_id = str(env.metadata.get("name") or type(env.unwrapped).__name__)
        self.run_id = options.run_id or new_run_id(self.env_id)
        ids = _run_ids(self.run_id, groups)
        #: The run of every agent (agent -> run id).
        self.run_ids = {a: rid for rid, g in zip(ids, groups) for a in g.agents}
        # run_id, agents and actor_ids are each run's own (filled in by _open_run)
        meta = {"run_id": None, "source": "pettingzoo", "pettingzoo_api": kind,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "relayrl_gym_version": __version__, "gymnasium_version": gym.__version__,
                "env_id": self.env_id, "env_spec": None, "num_envs": copies,
                "agents": None, "actor_ids": None,
                "render_mode": getattr(env, "render_mode", None)}
        if len(groups) > 1:
            meta.update(game_agents=self.agents, game_runs=self.run_ids)
        self.runs: list[GameRun] = []
        try:
            for rid, group in zip(ids, groups):
                self.runs.append(_open_run(options, rid, group, copies, meta, data_type))
        except BaseException:
            opened = [functools.partial(run.close, 10.0) for run in self.runs]
            with contextlib.suppress(Exception):  # the opening error is the one to see
                run_all(opened)
            raise
        #: The local Arrow directory of every agent's run (agent -> path; None: no local one).
        self.run_paths = {a: run.run_path for run in self.runs for a in run.agents}
        self.run_path = self.runs[0].run_path if len(self.runs) == 1 else None
        # agent -> (run index, slot of its actor in game copy 0, agents in its run)
        self._places = {a: (r, k, len(run.agents)) for r, run in enumerate(self.runs)
                        for k, a in enumerate(run.agents)}
        self.closed = False
        #: Hold finished transitions until `commit` (game copies stepped together record one
        #: batch per step); False: every transition goes to the recorder at once.
        self.batching = False
        #: Held while finished transitions are staged: the copies of a game may step on
        #: actor threads.
        self.lock = threading.Lock()
        for run in self.runs:
            run.recorder.feeder = functools.partial(feed, self.lock, run)
        # (phase, copy, arrival, rows): a commit orders rows by phase (a round of copies
        # stepped together), then copy, as stepping the copies one after another would.
        self._staged: list[tuple[int, int, int, list[AgentTransition]]] = []
        self._phase = 0

    def tracker(self, copy: int) -> AgentTracker:
        """The bookkeeping of game copy ``copy``."""
        return AgentTracker(self, {agent: (r, copy * n + k)
                                   for agent, (r, k, n) in self._places.items()}, copy)

    def next_phase(self) -> None:
        """Starts a new round of copies stepped together (rows of a later round come later)."""
        self._phase += 1

    def stage(self, rows: list[AgentTransition], copy: int = 0) -> None:
        """Takes finished transitions of game copy ``copy``: recorded now, or at the next
        `commit` when batching."""
        with self.lock:
            if self.batching:
                self._staged.append((self._phase, copy, len(self._staged), rows))
            elif rows:  # one game stepped by the caller: nothing to order
                self._record(rows)

    def commit(self) -> None:
        """Orders the staged transitions after those recorded before (batches of rows go to
        the recorders as they fill up)."""
        with self.lock:
            self._commit_locked()

    def _commit_locked(self) -> None:
        staged, self._staged = self._staged, []
        if not staged:
            return
        staged.sort(key=lambda entry: entry[:3])
        self._record([row for entry in staged for row in entry[3]])

    def _record(self, rows: list[AgentTransition]) -> None:
        if len(self.runs) == 1:
            self.runs[0].add(rows)
            return
        by_run: dict[int, list[AgentTransition]] = {}
        for row in rows:
            by_run.setdefault(row.run, []).append(row)
        for r, mine in by_run.items():
            self.runs[r].add(mine)

    def hand_over(self) -> None:
        """Hands every finished transition to the recorders."""
        with self.lock:
            self._commit_locked()
            for run in self.runs:
                run.hand_over()

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks (and waits for it)."""
        self.hand_over()
        run_all([run.flush for run in self.runs])

    def close(self, timeout: float = 30.0) -> None:
        """Flushes and closes every run's sinks, whatever fails on the way (then raises the
        first error); idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.hand_over()
        finally:
            run_all([functools.partial(run.close, timeout) for run in self.runs])


def _open_run(options: RecordingOptions, run_id: str, group: SpaceGroup, copies: int,
              meta: dict[str, Any], data_type: pa.DataType | None) -> GameRun:
    """Opens the run of ``group``'s agents in ``copies`` game copies."""
    agents = group.agents
    k = len(agents)
    actor_ids = [str(uuid.uuid4()) for _ in range(copies * k)]
    description = {**meta, "run_id": run_id, "agents": agents, "actor_ids": actor_ids}
    recording = open_recording(
        options, run_id,
        lambda sinks: TransitionSchema.build(
            group.observation_space, group.action_space,
            metadata={**description, "sinks": [type(s).__name__ for s in sinks]},
            data_type=data_type),
        actor_ids)
    recording.recorder.agent_ids = [agents[i % k] for i in range(copies * k)]
    return GameRun(recording, agents)


def run_names(recording: GameRecording | None
              ) -> tuple[str | None, Path | None, dict[str, str], dict[str, Path | None]]:
    """``run_id``, ``run_path``, ``run_ids`` and ``run_paths`` of a wrapper recording to
    ``recording`` (None: nothing recorded): see `RunOwner`."""
    if recording is None:
        return None, None, {}, {}
    return (recording.run_id, recording.run_path, dict(recording.run_ids),
            dict(recording.run_paths))


class RunOwner:
    """The lifecycle of a recorded game wrapper (parallel or turn-based): closing it closes the
    game, then flushes and closes the run it owns; a wrapper dropped without `close` still
    flushes, so its writer thread never outlives it.

    Mixed in before the PettingZoo wrapper base, whose ``close`` it replaces; the wrapper sets
    ``env``, ``recording`` (None when nothing is recorded) and ``closed``.

    ``run_id`` and ``run_path`` name the run (None: nothing recorded). A game whose agents
    have different spaces is several runs, one per group of agents with the same spaces:
    ``run_id`` is then the stem of their ids and ``run_path`` None (several runs: see
    ``run_paths``). ``run_ids`` and ``run_paths`` map every agent to its run's id and local
    Arrow directory (empty when nothing is recorded).
    """

    env: Any
    recording: GameRecording | None
    closed: bool
    run_id: str | None
    run_path: Path | None
    run_ids: dict[str, str]
    run_paths: dict[str, Path | None]

    def _own_run(self, tracker: AgentTracker | None, recording: GameRecording | None) -> None:
        """Takes this game's bookkeeping in a run (None: nothing recorded) and the run it
        owns and closes with itself (None: owned elsewhere)."""
        self.tracker = tracker or AgentTracker(None, {})
        self.recording = recording
        self.run_id, self.run_path, self.run_ids, self.run_paths = run_names(recording)
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
