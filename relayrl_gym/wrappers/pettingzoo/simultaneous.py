"""`SimultaneousGames`: copies of a parallel game whose caller-played agents are slots, the
other agents played by policies, batched across copies."""

from __future__ import annotations

from typing import Any

from gymnasium import spaces

from relayrl_gym.errors import UnsupportedSpaceError
from relayrl_gym.runtime.actor import Actor
from relayrl_gym.wrappers.pettingzoo.games import GameCopies, GameStep
from relayrl_gym.wrappers.pettingzoo.observations import action_mask, zeros_like
from relayrl_gym.wrappers.pettingzoo.parallel import RecordedParallelEnv
from relayrl_gym.wrappers.pettingzoo.policies import AgentPolicies
from relayrl_gym.wrappers.pettingzoo.recording import GameRecording

__all__ = ["SHARING", "SimultaneousGames", "shared_spaces"]

#: What needs the caller's agents to share their spaces, and how to do without.
SHARING = ("parameter sharing (agents as slots of one vector env)",
           "play the other agents with policies={agent: model}, or keep the ParallelEnv API "
           "(relayrl_gym.wrap(env) without actors or api)")


def shared_spaces(env: Any, agents: list[Any], why: str, fix: str
                  ) -> tuple[spaces.Space, spaces.Space]:
    """The observation and action space every agent in ``agents`` shares.

    Raises:
        UnsupportedSpaceError: the agents' spaces differ (``why`` says what needs them equal,
            ``fix`` how to do without).
    """
    obs_space, act_space = env.observation_space(agents[0]), env.action_space(agents[0])
    for agent in agents[1:]:
        if env.observation_space(agent) != obs_space or env.action_space(agent) != act_space:
            raise UnsupportedSpaceError(
                f"{why} needs agents with the same spaces: agent {agents[0]!r} has "
                f"({obs_space}, {act_space}), agent {agent!r} has "
                f"({env.observation_space(agent)}, {env.action_space(agent)}); {fix}")
    return obs_space, act_space


class SimultaneousGames(GameCopies):
    """Copies of a `ParallelEnv` seen as ``copies x len(agents)`` slots (slot ``c * K + k`` is
    caller agent ``k`` of copy ``c``); the env's other agents move with their policies, every
    request for one model in a step answered by one batched call.

    A slot whose agent is not in the game (done before the others, or not joined yet) is
    padded: its action is ignored (the agent is never stepped and nothing is recorded for it),
    its observation is all zeros, its reward 0 and its flags False, and its info says
    ``active=False``. A copy is over when none of the caller's agents is left in it.
    """

    def __init__(self, envs: list[Any], agents: list[Any],
                 policies: AgentPolicies, recording: GameRecording | None,
                 router_scale: int = 0) -> None:
        """Takes the copies over (closed with this object).

        Args:
            envs: the copies of the parallel game.
            agents: the caller-played agents (the slots of each copy), sharing their spaces.
            policies: the policies of every other agent.
            recording: the run (None: nothing recorded).
            router_scale: 0 steps the copies on the calling thread, n >= 1 each on its own
                actor thread (see `GameCopies`).
        """
        self.copies, self.slots, self.agents = len(envs), len(agents), list(agents)
        self.policies = policies
        self.observation_space: spaces.Space
        self.action_space: spaces.Space
        self.observation_space, self.action_space = shared_spaces(envs[0], self.agents,
                                                                  *SHARING)
        if recording is not None:
            recording.batching = True  # one recorded batch per step of all copies
        super().__init__([RecordedParallelEnv(env, recording.tracker(c) if recording else None)
                          for c, env in enumerate(envs)], recording, router_scale)
        self._obs: list[dict[Any, Any]] = [{} for _ in range(self.copies)]
        self._infos: list[dict[Any, dict[str, Any]]] = [{} for _ in range(self.copies)]

    def _slot_info(self, agent: Any, obs: Any, info: dict[str, Any] | None) -> dict[str, Any]:
        out = dict(info or {})
        mask = action_mask(obs, info)
        if mask is not None:
            out["action_mask"] = mask
        out["active"] = True
        return out

    def _slots_of(self, c: int, alive: set[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
        obs, infos = self._obs[c], self._infos[c]
        out_obs, out_infos = [], []
        for agent in self.agents:
            if agent in alive and agent in obs:
                out_obs.append(obs[agent])
                out_infos.append(self._slot_info(agent, obs[agent], infos.get(agent)))
            else:
                out_obs.append(zeros_like(self.observation_space))  # the caller's to keep
                out_infos.append({"active": False})
        return out_obs, out_infos

    def reset(self, copies: list[int], seeds: list[int | None],
              options: dict[str, Any] | None = None
              ) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        if seeds and seeds[0] is not None:
            self.policies.seed(seeds[0])
        return self.run(lambda actor, seed: self._reset_one(actor, seed, options), copies,
                        seeds)  # a reset finishes no transition: nothing to commit

    def _reset_one(self, actor: Actor, seed: int | None, options: dict[str, Any] | None
                   ) -> tuple[list[Any], list[dict[str, Any]]]:
        c, env = actor.index, actor.env
        obs, infos = env.reset(seed=seed, options=options)
        self._obs[c], self._infos[c] = dict(obs), dict(infos)
        return self._slots_of(c, set(env.agents))

    def step(self, copies: list[int], actions: list[list[Any]]) -> list[GameStep]:
        joint: list[dict[Any, Any]] = []
        requests, askers = [], []
        sources: list[dict[Any, tuple[int, Any]]] = []
        for c, slot_actions in zip(copies, actions):
            env, seen, seen_infos = self.actors[c].env, self._obs[c], self._infos[c]
            alive = env.agents
            moves = {agent: action for agent, action in zip(self.agents, slot_actions)
                     if agent in alive}
            for agent in alive:
                if agent in self.policies:
                    requests.append((agent, seen[agent], seen_infos.get(agent)))
                    askers.append((c, len(joint), agent))
            joint.append(moves)
            sources.append({})
        if requests:
            for (_, j, agent), move in zip(askers, self.policies.act(requests)):
                joint[j][agent] = move.action
                sources[j][agent] = (move.version, move.data)
        out = self.run(self._step_one, copies, list(zip(joint, sources)))
        if self.recording is not None:
            self.recording.commit()
        return out

    def _step_one(self, actor: Actor, arg: tuple[dict[Any, Any], dict[Any, tuple[int, Any]]]
                  ) -> GameStep:
        c, env = actor.index, actor.env
        moves, sources = arg
        for agent, (version, data) in sources.items():
            env.acted_by(agent, version, data)
        obs, rewards, terminated, truncated, infos = env.step(moves)
        self._obs[c] = {**self._obs[c], **obs}
        self._infos[c] = {**self._infos[c], **infos}
        now = set(env.agents)
        slot_obs, slot_infos = self._slots_of(c, now | (set(moves) & set(obs)))
        return GameStep(
            slot_obs,
            [float(rewards.get(a, 0.0)) if a in moves else 0.0 for a in self.agents],
            [bool(terminated.get(a, False)) if a in moves else False for a in self.agents],
            [bool(truncated.get(a, False)) if a in moves else False for a in self.agents],
            slot_infos,
            not any(agent in now for agent in self.agents))

