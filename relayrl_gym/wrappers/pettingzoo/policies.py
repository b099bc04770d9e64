"""The agents a wrapped game plays itself: one policy per agent, batched across game copies."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.errors import ConfigError
from relayrl_gym.models.runner import PolicyRunner, act_with
from relayrl_gym.policies.fitting import VersionCounter
from relayrl_gym.wrappers.pettingzoo.observations import action_mask, policy_input, policy_space

__all__ = ["AgentPolicies", "Move"]


class Move(NamedTuple):
    """A policy's answer for one agent of one game copy."""

    action: Any
    version: int
    data: dict[str, Any] | None


def _is_model(policy: Any) -> bool:
    return isinstance(policy, str | Path) or (hasattr(policy, "step") and
                                              hasattr(policy, "version"))


class AgentPolicies:
    """Plays the agents given in ``policies={agent: ModelModule | path | callable}``.

    A ModelModule (or a path to one) gets the agent's observation (the ``"observation"``
    entry when the observation is a dict with an ``"action_mask"``) and its action mask; every
    request for the same model in a round, across agents and game copies, is one batched
    ``model.step`` call. A callable is called as ``policy(obs)`` with the agent's whole
    observation, once per request, and is recorded with ``model_version`` -1 (or its integer
    ``version`` attribute). `update` hot-swaps an agent's policy between steps; steps after it
    record the new version.

    >>> from pettingzoo.classic import rps_v2
    >>> players = AgentPolicies({"player_1": lambda obs: 0}, rps_v2.parallel_env())
    >>> players.act([("player_1", np.int64(3), {})])
    [Move(action=0, version=-1, data=None)]
    """

    def __init__(self, policies: dict[Any, Any], env: Any) -> None:
        """Loads and checks every policy against its agent's spaces.

        Args:
            policies: agent name -> ModelModule, path to one, or callable ``obs -> action``.
            env: one copy of the game (its agents and spaces).

        Raises:
            ConfigError: an agent the env does not have, a policy of the wrong kind, spaces or
                extra outputs that do not fit.
        """
        if not isinstance(policies, dict):
            raise ConfigError(f"`policies` must be a dict {{agent name: ModelModule, path or "
                              f"callable}}, got {type(policies).__name__}")
        agents = list(env.possible_agents)
        unknown = [agent for agent in policies if agent not in agents]
        if unknown:
            raise ConfigError(f"`policies` names agent(s) {unknown} that the env does not have; "
                              f"its agents are {agents}. Use names from env.possible_agents")
        self._env = env
        self._lock = threading.Lock()
        self._versions = VersionCounter()  # shared: the game's versions only move forward
        #: The agents ModelModules play, each model and its version held by its runner.
        self._runners: dict[Any, PolicyRunner] = {}
        #: The agents callables play: (callable, version it is recorded with).
        self._callables: dict[Any, tuple[Callable[[Any], Any], int]] = {}
        self._agents = list(policies)
        self.data_type: pa.DataType = pa.null()
        for agent, policy in policies.items():
            if _is_model(policy):
                # The spaces are checked by wrap, with a message about the agent (build.py);
                # the first model's outputs type the run's `data` column.
                runner = self._runner(agent, policy, None, None,
                                      self.data_type if self._runners else None)
                if not self._runners:
                    self.data_type = runner.data_type
                self._runners[agent] = runner
            elif callable(policy):
                self._callables[agent] = (policy, int(getattr(policy, "version", -1)))
            else:
                raise ConfigError(f"the policy of agent {agent!r} must be a ModelModule, a path "
                                  f"to one, or a callable obs -> action; got "
                                  f"{type(policy).__name__}")

    def _runner(self, agent: Any, model: Any, obs_space: spaces.Space | None,
                act_space: spaces.Space | None, data_type: pa.DataType | None,
                replacing: bool = False) -> PolicyRunner:
        return PolicyRunner(model, obs_space, act_space, what=f"policy of agent {agent!r}",
                            owner=f"agent {agent!r}", data_type=data_type,
                            versions=self._versions, replacing=replacing)

    @property
    def agents(self) -> list[Any]:
        """The agents played by a policy."""
        return list(self._agents)

    def __contains__(self, agent: Any) -> bool:
        return agent in self._runners or agent in self._callables

    def model_of(self, agent: Any) -> Any:
        """``agent``'s ModelModule, or None when a callable plays it."""
        runner = self._runners.get(agent)
        return runner.model if runner is not None else None

    def version(self, agent: Any) -> int:
        """The version ``agent``'s policy runs as (-1 for a callable without ``version``)."""
        with self._lock:
            runner = self._runners.get(agent)
            return runner.version if runner is not None else self._callables[agent][1]

    def update(self, agent: Any, policy: Any) -> int:
        """Swaps ``agent``'s policy (between steps); returns the version it runs as.

        Raises:
            ConfigError: ``agent`` has no policy, or the new one does not fit: other spaces,
                or other extra outputs than the run records (the old one keeps running).
        """
        if agent not in self:
            raise ConfigError(f"agent {agent!r} is not played by a policy; the policy-played "
                              f"agents are {self.agents}")
        if _is_model(policy):
            # Null included: the run's `data` column was typed at wrap time, and rows with
            # outputs it cannot hold would fail in the writer, taking their batch with them.
            runner = self._runners.get(agent)
            if runner is not None:
                module = runner.checked(policy)
                with self._lock:
                    return runner.swap(module)
            new = self._runner(agent, policy, policy_space(self._env.observation_space(agent)),
                                  self._env.action_space(agent), self.data_type, replacing=True)
            with self._lock:
                runner = self._runners.get(agent)
                if runner is not None:  # another update made one meanwhile: swap into it
                    runner.adopt(new)
                    return runner.swap(new.model)
                self._runners[agent] = new
                self._callables.pop(agent, None)
                return new.version
        if not callable(policy):
            raise ConfigError(f"the policy of agent {agent!r} must be a ModelModule, a path to "
                              f"one, or a callable obs -> action; got {type(policy).__name__}")
        version = int(getattr(policy, "version", -1))
        with self._lock:
            old = self._runners.pop(agent, None)
            self._callables[agent] = (policy, version)
        if old is not None:
            old.close()
        return version

    def close(self) -> None:
        """Closes the connections to inference servers the policies opened; idempotent."""
        for runner in list(self._runners.values()):
            runner.close()

    def seed(self, seed: int | None) -> None:
        """Seeds the sampling of every ModelModule policy (a reset with a seed replays)."""
        for model in {id(r.model): r.model for r in self._runners.values()}.values():
            if hasattr(model, "seed"):
                model.seed(seed)

    def act(self, requests: Sequence[tuple[Any, Any, dict[str, Any] | None]]) -> list[Move]:
        """Moves for ``(agent, obs, info)`` requests: one batched call per model."""
        with self._lock:
            chosen: list[tuple[tuple[Any, int], bool]] = [
                (self._runners[agent].current(), True) if agent in self._runners
                else (self._callables[agent], False) for agent, _, _ in requests]
        moves: list[Move | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, ((policy, version), is_model) in enumerate(chosen):
            if is_model:
                groups.setdefault(id(policy), []).append(i)
            else:
                moves[i] = Move(_as_action(policy, requests[i][1]), version, None)
        for rows in groups.values():
            model, version = chosen[rows[0]][0]
            obs = np.stack([np.asarray(policy_input(requests[i][1])) for i in rows])
            masks = [action_mask(requests[i][1], requests[i][2]) for i in rows]
            known = [m for m in masks if m is not None]
            mask = (np.stack(known) if len(known) == len(masks) and
                    isinstance(model.action_space, spaces.Discrete) else None)
            actions, data, version = act_with(model, version, obs, mask)
            for j, i in enumerate(rows):
                row_data = ({key: np.asarray(value[j]).tolist() for key, value in data.items()}
                            if data else None)
                moves[i] = Move(actions[j], version, row_data)
        return moves  # type: ignore[return-value]


def _as_action(policy: Callable[[Any], Any], obs: Any) -> Any:
    return policy(obs)
