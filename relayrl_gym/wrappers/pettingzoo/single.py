"""`PettingZooAgentEnv`: one agent of a PettingZoo game as a plain `gymnasium.Env`, the other
agents played by policies, every agent recorded."""

from __future__ import annotations

import contextlib
from typing import Any

import gymnasium as gym

from relayrl_gym.errors import StateError
from relayrl_gym.wrappers.pettingzoo.games import Games
from relayrl_gym.wrappers.pettingzoo.recording import run_names

__all__ = ["PettingZooAgentEnv"]


class PettingZooAgentEnv(gym.Env):
    """The one agent left to the caller by ``relayrl_gym.wrap(game, policies={...})``, as a
    `gymnasium.Env` (trainable by SB3 as is).

    ``reset`` starts a game and returns the agent's first observation (the other agents moving
    first, when it is their turn); ``step(action)`` plays the agent's action, then the other
    agents until the agent's next turn (turn-based games) or the next joint step (parallel
    games), and returns what the agent observed and received in between. The episode ends when
    the agent is terminated or truncated. Its observation is exactly the agent's PettingZoo
    observation; the legal actions, when the game gives them, are also in
    ``info["action_mask"]``. ``reset(seed=s)`` seeds the game and the sampling of ModelModule
    policies, so a seed replays a game. Every agent's transitions are recorded, in one run
    (``run_path``) or, when the agents' spaces differ, one run per group of agents with the
    same spaces (several runs: see ``run_paths``, agent -> run directory; ``run_path`` is
    None).

    >>> import numpy as np, relayrl_gym
    >>> from pettingzoo.classic import rps_v2
    >>> env = relayrl_gym.wrap(rps_v2.parallel_env(), policies={"player_1": lambda obs: 0},
    ...                        sink=None)
    >>> obs, info = env.reset(seed=0)
    >>> _, reward, terminated, truncated, _ = env.step(1)  # paper beats rock
    >>> reward
    1.0
    >>> env.close()
    """

    def __init__(self, games: Games, env_id: str | None = None) -> None:
        """Args:
        games: one game copy with one caller-played slot; closed with this env.
        env_id: the game's name.
        """
        self.games = games
        self.agent_name = games.agents[0]
        self.observation_space = games.observation_space
        self.action_space = games.action_space
        first = games.envs[0]
        self.metadata = dict(first.metadata)
        self.render_mode = getattr(first, "render_mode", None)
        self.env_id = env_id
        self.run_id, self.run_path, self.run_ids, self.run_paths = run_names(games.recording)
        self.closed = False
        self._running = False

    def update_policy(self, agent: Any, policy: Any) -> int:
        """Hot-swaps the policy of a policy-played ``agent`` (ModelModule, path or callable)
        from the next step on; returns the version its transitions are recorded with."""
        self._check_open()
        return self.games.policies.update(agent, policy)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self._check_open()
        ((obs, infos),) = self.games.reset([0], [seed], options)
        self._running = True
        return obs[0], infos[0]

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._check_open()
        if not self._running:
            raise StateError(f"the game is over for agent {self.agent_name!r} (or was never "
                             "started); call env.reset() before stepping")
        (result,) = self.games.step([0], [[action]])
        if result.over:
            self._running = False
        return (result.obs[0], result.rewards[0], result.terminated[0], result.truncated[0],
                result.infos[0])

    def render(self) -> Any:
        return self.games.render()[0]

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks (and waits for it)."""
        if self.games.recording is not None:
            self.games.recording.flush()

    def close(self) -> None:
        """Closes the game, flushes and closes the sinks; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.games.close()

    def __del__(self) -> None:
        # Dropped without close(): its run's writer thread must not outlive it.
        if not getattr(self, "closed", True):
            with contextlib.suppress(Exception):
                self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise StateError("this env is closed; create a new one with relayrl_gym.wrap(...)")

    def __repr__(self) -> str:
        return (f"PettingZooAgentEnv({self.env_id or 'game'}, agent={self.agent_name!r}, "
                f"run_id={self.run_id!r})")
