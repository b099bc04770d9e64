"""`EnvAgent`: the agent behind a wrapped env (``envs.agent``), whose actors the env steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from relayrl_gym.errors import StateError
from relayrl_gym.runtime.agent import AgentCore

if TYPE_CHECKING:
    from relayrl_gym.recording.pipeline import RunRecording
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.processes import ProcessRouter
    from relayrl_gym.runtime.router import Router

__all__ = ["ClientCallError", "EnvAgent"]

class ClientCallError(StateError, AttributeError):
    """A RelayRL client call on the agent of a wrapped env (an `AttributeError` too, so
    ``hasattr(envs.agent, "request_action")`` is False)."""


#: The RelayRL client's calls, which an env's agent refuses with a clear error.
_CLIENT_CALLS = frozenset({"request_action", "flag_last_action", "new_actor", "new_actors",
                           "remove_actor", "set_actor_id", "start"})


class EnvAgent(AgentCore):
    """The actors of a wrapped env, each owning one env copy, their router and their recording.

    Offers what makes sense where the env steps the actors: actor ids and model versions,
    ``scale_throughput``, ``update_model`` (the env's policy), ``flush`` and ``shutdown``.
    The RelayRL client's calls (``request_action``...) belong to an agent from
    `relayrl_gym.AgentBuilder`.

    >>> import relayrl_gym
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None)
    >>> len(envs.agent.get_actor_ids())
    2
    >>> envs.close()
    """

    def __init__(self, actors: Sequence[Actor], router: Router | ProcessRouter,
                 runs: Sequence[RunRecording], *, on_shutdown: Callable[[], None],
                 on_update_model: Callable[..., int]) -> None:
        """Args:
        actors: the actors, in slot order.
        router: the router serving them.
        runs: the runs their transitions are recorded to (none: nothing recorded).
        on_shutdown: called first by `shutdown` (closes the environments on their threads).
        on_update_model: what `update_model` does (swaps the env's policy).
        """
        super().__init__(actors, runs, running=True)
        self.router = router
        self._on_shutdown = on_shutdown
        self._on_update_model = on_update_model

    def __getattr__(self, name: str) -> Any:
        if name in _CLIENT_CALLS:
            raise ClientCallError(f"this agent belongs to a wrapped env, which steps its actors "
                             f"itself; {name} and the other RelayRL client calls need an agent "
                             "from AgentBuilder().build() and agent.start(params)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def router_scale(self) -> int | str:
        """0 when actors run inline on the caller's thread, else how many may run at once."""
        return self.router.scale

    def _scale(self, n: int) -> None:
        self.router.scale_throughput(n)  # threaded router only; see `Router`

    def update_model(self, model: Any, ids: Any = None) -> int:
        """Hot-swaps the env's policy between steps; returns the version it runs as."""
        self._check_running()
        return self._on_update_model(model, ids)

    def _closing_steps(self, timeout: float) -> list[Callable[[], Any]]:
        return [self._on_shutdown, lambda: self.router.close(timeout)]
