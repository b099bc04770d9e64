"""The agent behind a wrapped env: its actors, their router, and the recording pipeline."""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from relayrl_gym._version import __version__
from relayrl_gym.core.options import RecordingOptions
from relayrl_gym.errors import ConfigError, RelayRLError, StateError
from relayrl_gym.lifecycle import close_at_exit, forget_at_exit
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.policies.fitting import VersionCounter, model_data_type
from relayrl_gym.recording.pipeline import open_recording
from relayrl_gym.runtime.client import AgentParams, ClientAPI
from relayrl_gym.runtime.trajectories import TrajectoryTable
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.transport.model_source import ZMQModelSource
from relayrl_gym.transport.sink import ZMQSink

if TYPE_CHECKING:
    from relayrl_gym.recording.recorder import Recorder
    from relayrl_gym.recording.writer import BackgroundWriter
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.processes import ProcessRouter
    from relayrl_gym.runtime.router import Router

__all__ = ["RelayRLAgent", "new_run_id"]

#: `AgentParams.sink` when the builder was not given one: the config file's targets apply.
_UNSET: Any = object()


def new_run_id(env_id: str | None) -> str:
    """``<env id>-<UTC time>-<8 hex>``: sortable by time, unique, safe as a directory name."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in (env_id or "env"))
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stem}-{now}-{uuid.uuid4().hex[:8]}"

log = logging.getLogger(__name__)


class RelayRLAgent(ClientAPI):
    """A multi-actor agent: actors served by one shared router, transitions sent to the sinks.

    Two ways to get one. Behind a `RelayRLVectorEnv` (``envs.agent``) each actor owns one
    environment copy, and the agent offers the calls that make sense there (actor ids, model
    versions, ``scale_throughput``, ``flush``, ``shutdown``). From ``AgentBuilder().build()``
    and ``agent.start(params)`` it is the RelayRL client: the caller owns the environments and
    asks for actions with ``request_action`` (see `relayrl_gym.runtime.client`).

    >>> import relayrl_gym
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None)
    >>> len(envs.agent.get_actor_ids())
    2
    >>> envs.close()
    """

    def __init__(self, actors: Sequence[Actor] = (), router: Router | ProcessRouter | None = None,
                 recorder: Recorder | None = None, writer: BackgroundWriter | None = None,
                 on_shutdown: Callable[[], None] | None = None,
                 on_update_model: Callable[..., int] | None = None) -> None:
        """Creates the agent over already-built parts (`RelayRLVectorEnv` builds them), or,
        with no arguments, an agent to `start` (what `AgentBuilder.build` returns).

        Args:
            actors: the actors, in slot order.
            router: the router serving them.
            recorder: the recorder of their transitions, if recording.
            writer: the background writer behind ``recorder``.
            on_shutdown: called first by `shutdown` (closes the environments on their threads).
            on_update_model: what `update_model` does for a wrapped env (swaps its policy).
        """
        self.actors = list(actors)
        self.router = router
        self.recorder = recorder
        self.writer = writer
        self.run_id: str | None = None
        self.run_path: Path | None = None
        self._on_shutdown = on_shutdown
        self._on_update_model = on_update_model
        self._running = router is not None
        self._started = router is not None
        self._lock = threading.RLock()
        self._by_id = {actor.id: actor for actor in self.actors}
        self._table = None
        self._default_model = None
        self._default_version = -1
        self._default_device = DeviceType.DEFAULT
        self._data_type = pa.null()
        self._workers = None
        self._next_slot = len(self.actors)
        self._generation = 0
        self._resolved = None
        self._versions = VersionCounter()
        self._worker_count = 0
        #: Where new models come from (`follow_models`); closed first by `shutdown`.
        self.model_sources: list[ZMQModelSource] = []
        # Closed at interpreter exit while its threads still run (see relayrl_gym.lifecycle).
        self._exit_key = close_at_exit(self, RelayRLAgent.shutdown) if self._running else None

    def start(self, params: AgentParams) -> None:
        """Starts a built agent: loads its model, opens its sinks, creates its actors."""
        if self._started:
            raise StateError("the agent is already started (or was shut down); build a new one")
        if params.default_model is None:
            raise ConfigError("the agent needs a model: AgentBuilder().default_model(module or "
                              "path)")
        self._default_device = params.default_device
        self._default_model = self._checked_model(params.default_model, params.default_device)
        self._default_version = self._versions.version_of(self._default_model)
        self._data_type = model_data_type(self._default_model)
        config = params.config
        # Checks the spaces before anything is opened (a failed start leaves nothing behind).
        table = TrajectoryTable(self._default_model.observation_space,
                                self._default_model.action_space, None,
                                config.trajectory.max_length)
        self.run_id = params.run_id or new_run_id("agent")
        model = self._default_model
        sink = params.sink if params.sink is not _UNSET else [
            *config.sink.targets, *config.transport.sink_urls()]
        if sink is not None:
            meta = {"run_id": self.run_id, "source": "agent", "relayrl_gym_version": __version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    "env_id": None, "model_version": self._default_version,
                    "router_scale": params.router_scale, "config": config.to_dict()}
            options = RecordingOptions(sink=sink, run_id=self.run_id,
                                       flush_interval=config.sink.flush_interval,
                                       spill_dir=config.sink.spill_dir or None)
            self.recorder, self.writer, self.run_path = open_recording(
                options, self.run_id,
                lambda sinks: TransitionSchema.build(
                    model.observation_space, model.action_space,
                    metadata={**meta, "sinks": [type(s).__name__ for s in sinks]},
                    data_type=self._data_type),
                [])
        table.attach(self.recorder)
        self._table = table
        self._started = self._running = True
        self._exit_key = close_at_exit(self, RelayRLAgent.shutdown)
        self._resize_workers(params.router_scale)
        if params.actor_count:
            self.new_actors(params.actor_count)
        self.follow_models()

    def follow_models(self) -> None:
        """Follows the model publisher of each ZMQ sink's collector (unless ``models=off``):
        each newer model published there is swapped in through `update_model`. Models travel
        on their own path (`ZMQModelSource`), not through the sinks."""
        for sink in self.writer.sinks if self.writer is not None else []:
            if isinstance(sink, ZMQSink):
                source = ZMQModelSource.following(sink, self.update_model)
                if source is not None:
                    self.model_sources.append(source)

    def _resize_workers(self, n: int) -> None:
        old, self._workers = self._workers, (
            concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="relayrl-infer")
            if n > 0 else None)
        self._worker_count = n
        if old is not None:
            old.shutdown(wait=True)

    @property
    def router_scale(self) -> int | str:
        """0 when actors run inline on the caller's thread, else how many may run at once
        (for a started client agent: inference worker threads, 0 = the caller's thread)."""
        return self.router.scale if self.router is not None else self._worker_count

    @property
    def running(self) -> bool:
        return self._running

    def get_actor_ids(self) -> list[uuid.UUID]:
        """The actor ids, in slot (env index) order."""
        self._check_running()
        return [actor.id for actor in self.actors]

    def get_model_version(self, ids: Sequence[uuid.UUID] | None = None) -> list[int]:
        """The model version each actor acts with (-1: actions come from the caller)."""
        self._check_running()
        by_id = {actor.id: actor for actor in self.actors}
        wanted = self.get_actor_ids() if ids is None else list(ids)
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            raise ConfigError(f"unknown actor id(s) {unknown}; known ids: get_actor_ids()")
        return [by_id[i].model_version for i in wanted]

    def scale_throughput(self, n: int) -> None:
        """Sets how many actors may run at once (threaded router only; see `Router`)."""
        self._check_running()
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"`n` must be an int >= 0, got {n!r}")
        if self.router is not None:
            self.router.scale_throughput(n)
        else:
            with self._lock:  # between requests, never during one
                self._resize_workers(n)

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks."""
        if self.recorder is not None:
            self.recorder.flush()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Closes the environments, flushes every sink and joins every thread; idempotent.

        A client agent's actions still waiting for their reward are not recorded.
        """
        if not self._running:
            return
        with self._lock:  # a request in flight finishes (and is recorded) first
            self._running = False
        forget_at_exit(self._exit_key)
        errors: list[BaseException] = []
        steps: list[Callable[[], Any]] = [source.close for source in self.model_sources]
        if self._on_shutdown is not None:
            steps.append(self._on_shutdown)
        if self.router is not None:
            steps.append(lambda: self.router.close(timeout))  # type: ignore[union-attr]
        if self._workers is not None:
            steps.append(lambda: self._resize_workers(0))
        if self.recorder is not None:
            steps.append(self.recorder.close)
        if self.writer is not None:
            steps.append(lambda: self.writer.close(timeout))  # type: ignore[union-attr]
        for step in steps:  # every part gets closed even if an earlier one fails
            try:
                step()
            except Exception as err:
                log.exception("shutdown step failed")
                errors.append(err)
        if errors:
            if isinstance(errors[0], RelayRLError):
                raise errors[0]
            raise StateError(f"shutdown did not complete cleanly: {errors[0]}") from errors[0]

    def _check_running(self) -> None:
        if not self._running:
            if not self._started:
                raise StateError("the agent is not started; call agent.start(params) with the "
                                 "params AgentBuilder().build() returned")
            raise StateError("the agent is shut down; create a new env or agent")
