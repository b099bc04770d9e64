"""`RelayRLAgent`: the RelayRL client, whose actors act with ModelModules on request.

The caller owns the environments; it asks the agent for actions (``request_action``), tells it
the rewards, and flags the end of each trajectory. The agent keeps one pending half-step per
actor, answers every request with one batched model call per model, and records each completed
transition (``obs, action, reward, next_obs``, the model version that acted and the model's extra
outputs) to its sinks.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from relayrl_gym._version import __version__
from relayrl_gym.core.options import RecordingOptions
from relayrl_gym.errors import ConfigError, StateError
from relayrl_gym.models.runner import PolicyRunner, act_with
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.recording.pipeline import open_recording
from relayrl_gym.runtime.actor import Actor
from relayrl_gym.runtime.agent import AgentCore, new_run_id
from relayrl_gym.runtime.trajectories import TrajectoryTable
from relayrl_gym.schema.transitions import TransitionSchema

if TYPE_CHECKING:
    from relayrl_gym.runtime.config import AgentConfig

__all__ = ["UNSET", "AgentParams", "RelayRLAgent"]

#: `AgentParams.sink` when the builder was not given one: the config file's targets apply.
UNSET: Any = object()


@dataclass(frozen=True)
class AgentParams:
    """What `AgentBuilder.build` hands to `RelayRLAgent.start`: the agent's start-up settings."""

    actor_count: int
    default_model: Any
    router_scale: int
    default_device: DeviceType
    config: AgentConfig
    sink: Any
    run_id: str | None = None
    config_path: Path | None = None


def _per_row(value: Any, rows: int, name: str) -> np.ndarray:
    """A scalar or one value per row, as a new float64 array of ``rows`` values (owned: the
    recorder may keep it)."""
    if isinstance(value, float | int):
        return np.full(rows, value, np.float64)
    array = np.array(value, np.float64)
    if array.shape == (rows,):
        return array
    if array.ndim == 0:
        return np.full(rows, array, np.float64)
    raise ConfigError(f"`{name}` must be one number or one per id ({rows}), got shape "
                      f"{array.shape}")


class _Resolved(NamedTuple):
    """A list of actor ids resolved to actors, slots, versions and models."""

    generation: int
    ids: list[Any]
    actors: list[Actor]
    slots: np.ndarray
    versions: np.ndarray
    models: list[Any]
    one_model: bool
    #: The first actor's model version, as a Python int (the one-model case reads it per call).
    first_version: int


class RelayRLAgent(AgentCore):
    """The RelayRL client: actors that act with ModelModules when the caller asks.

    Built with ``AgentBuilder().build()`` and started with ``agent.start(params)``; the caller
    owns the environments and asks for actions with ``request_action`` (see the module
    docstring). Actors can be added, removed and renamed, and models swapped, while requests
    run, from any thread.

    >>> agent = RelayRLAgent()
    >>> agent.running
    False
    """

    def __init__(self) -> None:
        """An agent to `start` (what `AgentBuilder.build` returns)."""
        super().__init__(running=False)
        self._by_id: dict[uuid.UUID, Actor] = {}
        self._table: TrajectoryTable | None = None
        #: The agent's model (what new actors and ``update_model`` without ids use).
        self._policy: PolicyRunner | None = None
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._worker_count = 0
        self._next_slot = 0
        self._generation = 0
        self._resolved: _Resolved | None = None

    def start(self, params: AgentParams) -> None:
        """Starts a built agent: loads its model, opens its sinks, creates its actors."""
        if self._started:
            raise StateError("the agent is already started (or was shut down); build a new one")
        if params.default_model is None:
            raise ConfigError("the agent needs a model: AgentBuilder().default_model(module or "
                              "path)")
        policy = PolicyRunner(params.default_model, device=params.default_device)
        self._policy = policy
        try:
            self._start(params, policy)
        except BaseException:
            policy.close()  # a connection to an inference server it opened
            raise

    def _start(self, params: AgentParams, policy: PolicyRunner) -> None:
        config = params.config
        # Checks the spaces before anything is opened (a failed start leaves nothing behind).
        table = TrajectoryTable(policy.observation_space, policy.action_space, None,
                                config.trajectory.max_length)
        self.run_id = params.run_id or new_run_id("agent")
        model = policy.model
        sink = params.sink if params.sink is not UNSET else [
            *config.sink.targets, *config.transport.sink_urls()]
        if sink is not None:
            meta = {"run_id": self.run_id, "source": "agent", "relayrl_gym_version": __version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    "env_id": None, "model_version": policy.version,
                    "router_scale": params.router_scale, "config": config.to_dict()}
            options = RecordingOptions(sink=sink, run_id=self.run_id,
                                       flush_interval=config.sink.flush_interval,
                                       spill_dir=config.sink.spill_dir or None)
            recording = open_recording(
                options, self.run_id,
                lambda sinks: TransitionSchema.build(
                    model.observation_space, model.action_space,
                    metadata={**meta, "sinks": [type(s).__name__ for s in sinks]},
                    data_type=policy.data_type),
                [])
            # The client's callers wait on model runs that let the GIL go for long stretches:
            # the writer thread writes in them, beside the caller, cheaper than the caller
            # writing a block itself (request_action for 64 actors: 1.5x against 1.9x the raw
            # model call; see `Recorder.writes_here`).
            recording.recorder.writes_here = False
            self.runs, self.run_path = [recording], recording.run_path
        table.attach(self.recorder)
        self._table = table
        self._mark_running()
        self._resize_workers(params.router_scale)
        if params.actor_count:
            self.new_actors(params.actor_count)
        if not policy.remote:  # an inference server follows the models itself
            self.follow_models()

    def _resize_workers(self, n: int) -> None:
        old, self._workers = self._workers, (
            concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="relayrl-infer")
            if n > 0 else None)
        self._worker_count = n
        if old is not None:
            old.shutdown(wait=True)

    @property
    def router_scale(self) -> int:
        """Inference worker threads (0: requests run on the caller's thread)."""
        return self._worker_count

    def _scale(self, n: int) -> None:
        # Inference threads serving actors with different models at once.
        with self._lock:  # between requests, never during one
            self._resize_workers(n)

    def _closing_steps(self, timeout: float) -> list[Any]:
        steps = [lambda: self._resize_workers(0)] if self._workers is not None else []
        return [*steps, *([self._policy.close] if self._policy is not None else [])]

    def _client(self) -> TrajectoryTable:
        self._check_running()
        assert self._table is not None  # set by start
        return self._table

    def _slots(self, ids: Sequence[uuid.UUID] | uuid.UUID) -> _Resolved:
        if isinstance(ids, uuid.UUID | str):
            ids = [ids]
        elif type(ids) is not list:
            ids = list(ids)
        cached = self._resolved
        # The same ids as last time (compared by identity first, so a reused list is a C loop),
        # and no actor or model changed since: reuse the lookup.
        if cached is not None and cached.generation == self._generation and cached.ids == ids:
            return cached
        if not ids:
            raise ConfigError("`ids` is empty; pass the ids of the actors to act for "
                              "(agent.get_actor_ids())")
        try:
            actors = [self._by_id[i if isinstance(i, uuid.UUID) else uuid.UUID(str(i))]
                      for i in ids]
        except (KeyError, ValueError) as err:
            raise ConfigError(f"unknown actor id {err}; known ids: agent.get_actor_ids()"
                              ) from None
        if len({a.index for a in actors}) != len(actors):
            raise ConfigError("`ids` names an actor twice; request one action per actor")
        models = [a.model for a in actors]
        resolved = _Resolved(
            self._generation, list(ids), actors,
            np.fromiter((a.index for a in actors), np.int64, len(actors)),
            np.fromiter((a.model_version for a in actors), np.int64, len(actors)),
            models, all(m is models[0] for m in models), int(actors[0].model_version))
        self._resolved = resolved
        return resolved

    def _changed(self) -> None:
        """Actors or models changed: resolved id lists are stale."""
        self._generation += 1
        self._resolved = None

    # -- acting ------------------------------------------------------------------------------
    def request_action(self, ids: Sequence[uuid.UUID] | uuid.UUID, obs: Any, mask: Any = None,
                       reward: float | Sequence[float] | np.ndarray = 0.0) -> np.ndarray:
        """Actions for ``obs`` (one row per id), from each actor's model, batched per model.

        ``reward`` (one value, or one per id) is the reward of each actor's previous action;
        with it that transition is complete and recorded. ``mask`` is an optional action
        mask, one row per id (True / nonzero = allowed).
        """
        table = self._client()
        # A copy: the table and the recorder keep it (the caller may reuse its array).
        obs = np.array(obs, dtype=table.obs_dtype)
        with self._lock:
            self._check_running()  # shutdown may have happened while this call waited
            found = self._slots(ids)
            slots = found.slots
            # One float stays one float: the recorder spreads it over the rows on its thread.
            rewards: np.ndarray | float = (
                float(reward) if isinstance(reward, float | int)
                else _per_row(reward, len(slots), "reward"))
            if obs.shape != (len(slots), *table.obs_shape):
                raise ConfigError(f"`obs` must have one row per id: shape "
                                  f"{(len(slots), *table.obs_shape)}, got {obs.shape}")
            if mask is not None:
                mask = np.asarray(mask)
                if mask.ndim != 2 or len(mask) != len(slots):
                    raise ConfigError(f"`mask` must have one row per id (shape "
                                      f"({len(slots)}, n)), got {mask.shape}")
            versions = found.versions
            if found.one_model:  # the common case: one model, one call
                # (Python ints: a numpy scalar's conversion and comparison cost a few µs a call)
                actions, data, answered = act_with(found.models[0], found.first_version, obs,
                                                   mask)
                if answered != found.first_version:  # a served policy: its answer names it
                    versions = np.full(len(slots), answered, np.int64)
            else:
                actions, data, versions = self._infer(found.models, versions, obs, mask)
            table.request(found, slots, obs, actions, versions, data,
                          None if mask is None else mask.astype(np.bool_), rewards)
        return actions.copy()  # the table keeps `actions`: the caller gets its own

    def _infer(self, models: list[Any], versions: np.ndarray, obs: np.ndarray,
               mask: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        groups: dict[int, list[int]] = {}
        for row, model in enumerate(models):
            groups.setdefault(id(model), []).append(row)
        by_key = {id(m): m for m in models}
        versions = versions.copy()

        def run(key: int) -> tuple[list[int], Any]:
            rows = groups[key]
            actions, data, versions[rows] = act_with(
                by_key[key], int(versions[rows[0]]), obs[rows],
                None if mask is None else mask[rows])
            return rows, (actions, data)

        if self._workers is not None:
            outcomes = list(self._workers.map(run, groups))
        else:
            outcomes = [run(key) for key in groups]
        actions = np.empty((len(obs), *outcomes[0][1][0].shape[1:]), outcomes[0][1][0].dtype)
        data: dict[str, np.ndarray] = {}
        for rows, (part_actions, part_data) in outcomes:
            actions[rows] = part_actions
            for key, values in part_data.items():
                if key not in data:
                    data[key] = np.zeros((len(obs), *np.shape(values)[1:]),
                                         np.asarray(values).dtype)
                data[key][rows] = values
        return actions, data, versions

    def flag_last_action(self, ids: Sequence[uuid.UUID] | uuid.UUID,
                         reward: float | Sequence[float] | np.ndarray | None = None, *,
                         final_obs: Any = None, truncated: bool = False) -> None:
        """Ends each actor's trajectory: its last action gets ``reward`` (0 when None) and is
        recorded as the episode's final transition (terminated, or truncated if
        ``truncated``). ``final_obs`` (one row per id) is the observation after it; without
        it the last observation is repeated as ``next_obs``. The next request starts a new
        trajectory."""
        table = self._client()
        following = None
        if final_obs is not None:
            following = np.array(final_obs, table.obs_dtype)  # a copy: the recorder keeps it
        with self._lock:  # one critical section: no actor may change in between
            self._check_running()
            slots = self._slots(ids).slots
            rewards = _per_row(0.0 if reward is None else reward, len(slots), "reward")
            if following is not None and following.shape != (len(slots), *table.obs_shape):
                raise ConfigError(f"`final_obs` must have one row per id: shape "
                                  f"{(len(slots), *table.obs_shape)}, got {following.shape}")
            table.complete(slots, rewards, following, terminated=not truncated,
                           truncated=truncated)

    # -- actors ------------------------------------------------------------------------------
    def new_actor(self, device: DeviceType = DeviceType.DEFAULT, model: Any = None) -> uuid.UUID:
        """Adds an actor (acting with ``model``, default: the agent's) and returns its id."""
        return self.new_actors(1, device, model)[0]

    def new_actors(self, count: int, device: DeviceType = DeviceType.DEFAULT,
                   model: Any = None) -> list[uuid.UUID]:
        """Adds ``count`` actors; returns their ids."""
        table = self._client()
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"`count` must be an int >= 1, got {count!r}")
        policy = self._policy
        assert policy is not None  # set by start
        module = None if model is None else policy.checked(model, device)
        version = -1 if module is None else policy.version_of(module)
        with self._lock:
            if module is None:  # read here: an update_model in between is not missed
                module, version = policy.current()
            added = []
            for _ in range(count):
                actor = Actor(self._next_slot, model=module, model_version=version,
                              device=device if device is not DeviceType.DEFAULT
                              else policy.device)
                self._add_slot(actor)
                added.append(actor.id)
            table.grow(self._next_slot)
            self._changed()
        return added

    def _add_slot(self, actor: Actor, at: int | None = None) -> None:
        """Registers ``actor`` in a new slot; listed last, or in place of the one at ``at``."""
        self._next_slot = actor.index + 1
        if at is None:
            self.actors.append(actor)
        else:
            self.actors[at] = actor
        self._by_id[actor.id] = actor
        if self.recorder is not None:
            self.recorder.actor_ids.append(str(actor.id))
            self.recorder.agent_ids.append("")

    def remove_actor(self, actor_id: uuid.UUID) -> None:
        """Removes an actor; an action of it still waiting for its reward is not recorded."""
        table = self._client()
        with self._lock:
            (actor,) = self._slots([actor_id]).actors
            table.drop(actor.index)
            self.actors.remove(actor)
            del self._by_id[actor.id]
            self._changed()

    def set_actor_id(self, old: uuid.UUID, new: uuid.UUID) -> None:
        """Renames an actor; rows recorded before keep the old id, later ones get the new."""
        table = self._client()
        new = new if isinstance(new, uuid.UUID) else uuid.UUID(str(new))
        with self._lock:
            (actor,) = self._slots([old]).actors
            if new in self._by_id:
                raise ConfigError(f"actor id {new} is already in use")
            renamed = Actor(self._next_slot, id=new, model=actor.model,
                            model_version=actor.model_version, device=actor.device)
            self._add_slot(renamed, at=self.actors.index(actor))
            table.move(actor.index, renamed.index)
            del self._by_id[actor.id]
            self._changed()

    # -- models ------------------------------------------------------------------------------
    def update_model(self, model: Any, ids: Sequence[uuid.UUID] | uuid.UUID | None = None
                     ) -> int:
        """Hot-swaps the model of every actor (or of ``ids``) between requests; returns the
        version they now run. Each new model object gets a version above all earlier ones
        (its own ``version`` if higher); one used before keeps its version. A model whose
        spaces or outputs do not fit is refused and the old one keeps running."""
        self._client()
        policy = self._policy
        assert policy is not None  # set by start
        module = policy.checked(model)
        with self._lock:
            targets = self.actors if ids is None else self._slots(ids).actors
            version = policy.swap(module) if ids is None else policy.version_of(module)
            for actor in targets:
                actor.model = module
                actor.model_version = version
            self._changed()
        return version
