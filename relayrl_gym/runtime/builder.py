"""`AgentBuilder`: the RelayRL client's way to configure an agent before starting it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relayrl_gym.errors import ConfigError
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.runtime.client import UNSET, AgentParams, RelayRLAgent
from relayrl_gym.runtime.config import load_config

__all__ = ["AgentBuilder"]


class AgentBuilder:
    """Collects an agent's settings; `build` returns ``(agent, params)`` for ``agent.start``.

    ``config_path`` names a TOML or JSON file with sink, trajectory and transport settings
    (created with the defaults when missing, see `relayrl_gym.runtime.config`); what is set on
    the builder wins over the file.

    >>> builder = AgentBuilder().actor_count(4).router_scale(0)
    >>> builder.build()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    relayrl_gym.errors.ConfigError: the agent needs a model: ...
    """

    def __init__(self) -> None:
        self._actor_count = 1
        self._model: Any = None
        self._router_scale = 0
        self._device = DeviceType.DEFAULT
        self._config_path: Path | None = None
        self._sink: Any = UNSET
        self._run_id: str | None = None

    def actor_count(self, count: int) -> AgentBuilder:
        """Actors created at start (more with ``new_actor``); default 1."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"`actor_count` must be an int >= 0, got {count!r}")
        self._actor_count = count
        return self

    def default_model(self, model: Any) -> AgentBuilder:
        """The ModelModule (or a path to one, or an inference server's URL) every actor acts
        with unless given its own."""
        self._model = model
        return self

    def router_scale(self, n: int) -> AgentBuilder:
        """Inference worker threads (0: model calls run on the calling thread; n: groups of
        actors with different models are served by n threads at once)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"`router_scale` must be an int >= 0, got {n!r}")
        self._router_scale = n
        return self

    def default_device(self, device: DeviceType | str) -> AgentBuilder:
        """Where models given as paths are loaded (CPU, CUDA, MPS or DEFAULT)."""
        try:
            self._device = device if isinstance(device, DeviceType) else DeviceType(
                str(device).lower())
        except ValueError as err:
            raise ConfigError(f"`device` must be one of {[d.value for d in DeviceType]}, got "
                              f"{device!r}") from err
        return self

    def config_path(self, path: str | Path) -> AgentBuilder:
        """The agent's config file (TOML, or JSON for a ``.json`` name)."""
        self._config_path = Path(path)
        return self

    def sink(self, sink: Any) -> AgentBuilder:
        """Where transitions go (as ``wrap(sink=...)``); overrides the config file's targets."""
        self._sink = sink
        return self

    def run_id(self, run_id: str) -> AgentBuilder:
        """The run's name (default: ``agent-<UTC time>-<random>``)."""
        self._run_id = run_id
        return self

    def build(self) -> tuple[RelayRLAgent, AgentParams]:
        """The agent (not started yet) and the params to start it with."""
        if self._model is None:
            raise ConfigError("the agent needs a model: AgentBuilder().default_model(module or "
                              "path)")
        params = AgentParams(
            actor_count=self._actor_count, default_model=self._model,
            router_scale=self._router_scale, default_device=self._device,
            config=load_config(self._config_path), sink=self._sink, run_id=self._run_id,
            config_path=self._config_path)
        return RelayRLAgent(), params
