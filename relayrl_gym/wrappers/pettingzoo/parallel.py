"""`RecordedParallelEnv`: a PettingZoo `ParallelEnv` that records every agent's transitions."""

from __future__ import annotations

from typing import Any

from pettingzoo.utils.env import ActionType, AgentID, ObsType, ParallelEnv
from pettingzoo.utils.wrappers.base_parallel import BaseParallelWrapper
from typing_extensions import override

from relayrl_gym.wrappers.pettingzoo.recording import GameRecording, RunOwner
from relayrl_gym.wrappers.pettingzoo.tracker import AgentTracker

__all__ = ["RecordedParallelEnv"]


class RecordedParallelEnv(RunOwner, BaseParallelWrapper[AgentID, ObsType, ActionType]):
    """A `ParallelEnv` that returns exactly what the wrapped one returns and records, for every
    agent that acts, the transition ``(obs it saw, its action, its reward, its next obs, its
    terminated/truncated flags)`` with its action mask (from ``obs["action_mask"]`` or
    ``info["action_mask"]``) when the env gives one.

    Agents are the run's actors (``agent_id`` = the agent's name). An agent that appears late
    starts its episode at its first action; one that is done before the others ends its episode
    with its last step and is not recorded again. A step's transition is recorded only when the
    env returns the agent's next observation (PettingZoo envs do, for every agent they step).

    >>> import relayrl_gym, tempfile
    >>> from pettingzoo.classic import rps_v2
    >>> env = relayrl_gym.wrap(rps_v2.parallel_env(), sink=tempfile.mkdtemp())
    >>> obs, infos = env.reset(seed=0)
    >>> _ = env.step({"player_0": 0, "player_1": 1})
    >>> env.close()
    >>> relayrl_gym.load(env.run_path).table.column("agent_id").to_pylist()
    ['player_0', 'player_1']
    """

    def __init__(self, env: ParallelEnv[AgentID, ObsType, ActionType],
                 tracker: AgentTracker | None = None,
                 recording: GameRecording | None = None) -> None:
        """Wraps ``env`` (use `relayrl_gym.wrap`).

        Args:
            env: the game.
            tracker: this game's bookkeeping in a run (None: nothing recorded).
            recording: the run this env owns and closes with itself (None: owned elsewhere).
        """
        super().__init__(env)
        self.metadata = env.metadata
        self.possible_agents = env.possible_agents
        self._own_run(tracker, recording)
        self._sources: dict[Any, tuple[int, dict[str, Any] | None]] = {}

    @property
    def agents(self) -> list[AgentID]:
        return self.env.agents

    @property
    def render_mode(self) -> Any:
        return getattr(self.env, "render_mode", None)

    def acted_by(self, agent: AgentID, version: int, data: dict[str, Any] | None = None
                 ) -> None:
        """Marks ``agent``'s action in the next step as chosen by a model of ``version``."""
        self._sources[agent] = (version, data)

    @override
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[AgentID, ObsType], dict[AgentID, dict[str, Any]]]:
        obs, infos = self.env.reset(seed=seed, options=options)
        tracker = self.tracker
        tracker.reset()
        self._sources.clear()
        for agent, agent_obs in obs.items():
            tracker.see(agent, agent_obs, infos.get(agent))
        return obs, infos

    @override
    def step(self, actions: dict[AgentID, ActionType]) -> tuple[
            dict[AgentID, ObsType], dict[AgentID, float], dict[AgentID, bool],
            dict[AgentID, bool], dict[AgentID, dict[str, Any]]]:
        tracker = self.tracker
        sources, self._sources = self._sources, {}
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        for agent, action in actions.items():  # moves the game took (a refusal raised above)
            version, data = sources.get(agent, (-1, None))
            tracker.begin(agent, action, version, data)
        outcomes = []
        for agent, agent_obs in obs.items():
            outcomes.append((agent, agent_obs, rewards.get(agent, 0.0),
                             terminated.get(agent, False), truncated.get(agent, False),
                             infos.get(agent)))
        for agent in actions:
            if agent not in obs:
                tracker.drop(agent)  # no next observation: no transition to record
        tracker.finish_many(outcomes, only_these=True)
        return obs, rewards, terminated, truncated, infos

    def __str__(self) -> str:
        return f"RecordedParallelEnv<{self.env!s}>"
