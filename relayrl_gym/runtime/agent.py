"""`AgentCore`: what every agent has, whoever drives it: actors, the recording pipeline, the
model sources, shutdown. Two agents build on it: `EnvAgent` (behind a wrapped env, which steps
its actors) and `RelayRLAgent` (the RelayRL client, asked for actions by the caller)."""

from __future__ import annotations

import datetime as _dt
import functools
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayrl_gym.errors import ConfigError, StateError, run_all
from relayrl_gym.lifecycle import close_at_exit, forget_at_exit
from relayrl_gym.models.nats_source import NatsModelSource
from relayrl_gym.models.zmq_source import ZMQModelSource
from relayrl_gym.transport.nats.sink import NatsSink
from relayrl_gym.transport.sender.sink import ZMQSink

if TYPE_CHECKING:
    from relayrl_gym.recording.pipeline import RunRecording
    from relayrl_gym.recording.recorder import Recorder
    from relayrl_gym.recording.writer import BackgroundWriter
    from relayrl_gym.runtime.actor import Actor

__all__ = ["AgentCore", "new_run_id"]


def new_run_id(env_id: str | None) -> str:
    """``<env id>-<UTC time>-<8 hex>``: sortable by time, unique, safe as a directory name."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in (env_id or "env"))
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stem}-{now}-{uuid.uuid4().hex[:8]}"


class AgentCore:
    """Actors, the recorded runs of their transitions, the model sources that feed them, and
    one shutdown that closes it all (registered with the exit hook while running).

    Subclasses say what else shutdown closes (`_closing_steps`) and how a new model is taken
    (`update_model`).
    """

    def __init__(self, actors: Sequence[Actor] = (), runs: Sequence[RunRecording] = (), *,
                 running: bool) -> None:
        """Args:
        actors: the actors, in slot order.
        runs: the runs their transitions are recorded to (none: nothing recorded; a game
            whose agents have different spaces records several).
        running: True: running now (registered with the exit hook); False: started later.
        """
        self.actors = list(actors)
        self.runs = list(runs)
        self.run_id: str | None = None
        self.run_path: Path | None = None
        #: Where new models come from (`follow_models`); closed first by `shutdown`.
        self.model_sources: list[Any] = []
        self._lock = threading.RLock()
        self._running = self._started = False
        self._exit_key: int | None = None
        if running:
            self._mark_running()

    def _mark_running(self) -> None:
        self._started = self._running = True
        # Closed at interpreter exit while its threads still run (see relayrl_gym.lifecycle).
        self._exit_key = close_at_exit(self, AgentCore.shutdown)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def recorder(self) -> Recorder | None:
        """The recorder of the run (None: nothing recorded, or several runs: see `runs`)."""
        return self.runs[0].recorder if len(self.runs) == 1 else None

    @property
    def writer(self) -> BackgroundWriter | None:
        """The background writer of the run (None: nothing recorded, or several runs)."""
        return self.runs[0].writer if len(self.runs) == 1 else None

    def update_model(self, model: Any, ids: Any = None) -> int:
        """Hot-swaps the model; returns the version it runs as."""
        raise NotImplementedError

    def scale_throughput(self, n: int) -> None:
        """Sets how many actors may run at once: a wrapped env's actor threads (threaded
        router only; see `Router`), a client agent's inference threads (0: the caller's)."""
        self._check_running()
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"`n` must be an int >= 0, got {n!r}")
        self._scale(n)

    def _scale(self, n: int) -> None:
        raise NotImplementedError

    def follow_models(self) -> None:
        """Follows the model publisher of each ZMQ sink's collector, and the model bucket of
        each NATS sink's stream (unless the sink says ``models=off``): each newer model
        published there is swapped in through `update_model`. Models travel on their own
        path (`ZMQModelSource`, `NatsModelSource`), not through the sinks."""
        for sink in [sink for run in self.runs for sink in run.writer.sinks]:
            source: Any = None
            if isinstance(sink, ZMQSink):
                source = ZMQModelSource.following(sink, self.update_model)
            elif isinstance(sink, NatsSink) and not sink.models_off:
                source = NatsModelSource(sink.target, self.update_model,
                                         name=f"relayrl-nats-models-{sink.sender_id}")
            if source is not None:
                self.model_sources.append(source)

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

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks."""
        for run in self.runs:
            run.flush()

    def _closing_steps(self, timeout: float) -> list[Callable[[], Any]]:
        """What shutdown closes between the model sources and the recording (in order)."""
        return []

    def shutdown(self, timeout: float = 30.0) -> None:
        """Closes the environments, flushes every sink and joins every thread; idempotent.

        Every part is closed even if an earlier one fails; then the first error is raised as
        itself (an env's own exception from its ``close`` reaches the caller unchanged, with a
        note). A client agent's actions still waiting for their reward are not recorded.
        """
        if not self._running:
            return
        with self._lock:  # a request in flight finishes (and is recorded) first
            self._running = False
        forget_at_exit(self._exit_key)
        run_all([*(source.close for source in self.model_sources),
                 *self._closing_steps(timeout),
                 *(functools.partial(run.close, timeout) for run in self.runs)])

    def _check_running(self) -> None:
        if not self._running:
            if not self._started:
                raise StateError("the agent is not started; call agent.start(params) with the "
                                 "params AgentBuilder().build() returned")
            raise StateError("the agent is shut down; create a new env or agent")
