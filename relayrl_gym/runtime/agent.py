"""The agent behind a wrapped env: its actors, their router, and the recording pipeline."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from relayrl_gym.errors import ConfigError, RelayRLError, StateError

if TYPE_CHECKING:
    from relayrl_gym.recording.recorder import Recorder
    from relayrl_gym.recording.writer import BackgroundWriter
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.probe import ProbeResult
    from relayrl_gym.runtime.router import Router

__all__ = ["RelayRLAgent"]

log = logging.getLogger(__name__)


class RelayRLAgent:
    """A multi-actor agent: actors served by one shared router, transitions sent to the sinks.

    Behind a `RelayRLVectorEnv` each actor owns one environment copy; ``envs.agent`` exposes
    the actor-management calls that make sense there.
    """

    def __init__(self, actors: Sequence[Actor], router: Router, recorder: Recorder | None = None,
                 writer: BackgroundWriter | None = None, probe: ProbeResult | None = None,
                 on_shutdown: Callable[[], None] | None = None) -> None:
        """Creates the agent over already-built parts (`RelayRLVectorEnv` builds them).

        Args:
            actors: the actors, in slot order.
            router: the router serving them.
            recorder: the recorder of their transitions, if recording.
            writer: the background writer behind ``recorder``.
            probe: the measurement that chose the router scale, when it was chosen automatically.
            on_shutdown: called first by `shutdown` (closes the environments on their threads).
        """
        self.actors = list(actors)
        self.router = router
        self.recorder = recorder
        self.writer = writer
        self.probe = probe
        self._on_shutdown = on_shutdown
        self._running = True

    @property
    def router_scale(self) -> int:
        """0 when actors run inline on the caller's thread, else how many may run at once."""
        return self.router.scale

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
        self.router.scale_throughput(n)

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks."""
        if self.recorder is not None:
            self.recorder.flush()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Closes the environments, flushes every sink and joins every thread; idempotent."""
        if not self._running:
            return
        self._running = False
        errors: list[BaseException] = []
        steps: list[Callable[[], Any]] = []
        if self._on_shutdown is not None:
            steps.append(self._on_shutdown)
        steps.append(lambda: self.router.close(timeout))
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
            raise StateError("the agent is shut down; create a new env or agent")
