"""`TurnGames`: copies of a turn-based (AEC) game in which the caller plays one agent and
policies play the others, batched across copies."""

from __future__ import annotations

import copy
from typing import Any

from gymnasium import spaces

from relayrl_gym.errors import StateError
from relayrl_gym.runtime.actor import Actor
from relayrl_gym.wrappers.pettingzoo.aec import RecordedAECEnv
from relayrl_gym.wrappers.pettingzoo.games import GameCopies, GameStep
from relayrl_gym.wrappers.pettingzoo.observations import action_mask
from relayrl_gym.wrappers.pettingzoo.policies import AgentPolicies, Move
from relayrl_gym.wrappers.pettingzoo.recording import GameRecording

__all__ = ["TurnGames"]

#: Policy turns in a row after which a game that never comes back to the caller is an error.
_MAX_TURNS = 100_000


class TurnGames(GameCopies):
    """Copies of an AEC game seen from one agent: a caller's step is its move followed by every
    other agent's moves until its next turn (or the end of its game). An agent that joins the
    game late gets its first observation from ``reset`` once it has its first turn.

    The caller's observation is what ``last()`` gives it at its turn, its reward everything it
    received since its move (PettingZoo's ``_cumulative_rewards``). Other agents move with
    their policies: in each round, the copies waiting for the same model share one call. When
    the caller's agent is done, the agents already done take their dead steps, so that their
    last transitions end and are recorded; the game is then over for the caller.
    """

    def __init__(self, envs: list[Any], agent: Any,
                 policies: AgentPolicies, recording: GameRecording | None,
                 router_scale: int = 0) -> None:
        """Takes the copies over (closed with this object).

        Args:
            envs: the copies of the AEC game.
            agent: the agent the caller plays.
            policies: the policies of every other agent.
            recording: the run (None: nothing recorded).
            router_scale: 0 steps the copies on the calling thread, n >= 1 each on its own
                actor thread (see `GameCopies`).
        """
        self.copies, self.slots, self.agents = len(envs), 1, [agent]
        self.agent, self.policies = agent, policies
        self.observation_space: spaces.Space = envs[0].observation_space(agent)
        self.action_space: spaces.Space = envs[0].action_space(agent)
        if recording is not None:
            recording.batching = True  # one recorded batch per step of all copies
        super().__init__([RecordedAECEnv(env, recording.tracker(c) if recording else None)
                          for c, env in enumerate(envs)], recording, router_scale)
        self._last: list[tuple[Any, dict[str, Any]] | None] = [None] * self.copies
        # Whether the caller's agent has been in the game since its reset (it may join late).
        self._joined = [False] * self.copies

    def reset(self, copies: list[int], seeds: list[int | None],
              options: dict[str, Any] | None = None
              ) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        if seeds and seeds[0] is not None:
            self.policies.seed(seeds[0])
        self.run(lambda actor, seed: actor.env.reset(seed=seed, options=options), copies, seeds)
        for c in copies:
            self._last[c], self._joined[c] = None, False
        self._play(copies)
        out = []
        for c in copies:
            obs, _, terminated, truncated, info = self._view(c)
            if terminated or truncated:
                raise StateError(f"the game ended before agent {self.agent!r} had a turn; the "
                                 "caller's agent must play at least once per game")
            out.append(([obs], [info]))
        self._commit()
        return out

    def step(self, copies: list[int], actions: list[list[Any]]) -> list[GameStep]:
        for c in copies:
            turn = self.actors[c].env.turn()
            if turn is None or turn[0] != self.agent or turn[3] or turn[4]:
                raise StateError(f"game copy {c} is over for agent {self.agent!r}; reset it "
                                 "before stepping again")
        self.run(_step, copies, [(action, None) for (action,) in actions])
        self._play(copies)
        out = []
        for c in copies:
            obs, reward, terminated, truncated, info = self._view(c)
            out.append(GameStep([obs], [reward], [terminated], [truncated], [info],
                                terminated or truncated))
        ended = [c for c, result in zip(copies, out) if result.over]
        if ended:
            self.run(_end, ended, [None] * len(ended))
        self._commit()
        return out

    def _commit(self) -> None:
        if self.recording is not None:
            self.recording.commit()

    def _waiting(self, c: int) -> bool:
        # The others play while the caller's agent is in the game and it is not its turn, or
        # while it has not joined yet; not once it has been removed.
        env = self.actors[c].env
        present = self.agent in env.agents
        self._joined[c] = self._joined[c] or present
        turn = env.turn()
        if turn is None or turn[0] == self.agent:
            return False
        return present or not self._joined[c]

    def _play(self, copies: list[int]) -> None:
        """Moves the other agents of ``copies`` until the caller's turn, one model call per
        model per round."""
        active = [c for c in copies if self._waiting(c)]
        for _ in range(_MAX_TURNS):
            if not active:
                return
            requests, movers, dead = [], [], []
            for c in active:
                turn = self.actors[c].env.turn()
                agent, obs, _, terminated, truncated, info = turn
                if terminated or truncated:
                    dead.append(c)  # its dead step: no move to ask for
                    continue
                requests.append((agent, obs, info))
                movers.append(c)
            if dead:
                self.run(_step, dead, [(None, None)] * len(dead))
            if movers:
                self.run(_step, movers, [(move.action, move) for move in
                                         self.policies.act(requests)])
            active = [c for c in active if self._waiting(c)]
        raise StateError(f"the other agents played {_MAX_TURNS} turns without agent "
                         f"{self.agent!r} getting one")

    def _view(self, c: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        turn = self.actors[c].env.turn()
        if turn is None or turn[0] != self.agent:
            # Removed without a turn of its own: nothing more to observe or receive.
            last = self._last[c]
            obs, info = copy.deepcopy(last) if last is not None else (None, {})
            return obs, 0.0, True, False, info
        _, obs, reward, terminated, truncated, info = turn
        info = dict(info)
        mask = action_mask(obs, info)
        if mask is not None:
            info["action_mask"] = mask
        self._last[c] = (obs, info)
        return obs, float(reward), bool(terminated), bool(truncated), info



def _step(actor: Actor, arg: tuple[Any, Move | None]) -> None:
    """One move in a copy, where it lives (``move``: the policy's answer it comes from)."""
    action, move = arg
    if move is not None:
        actor.env.acted_by(move.version, move.data)
    actor.env.step(action)


def _end(actor: Actor, _: Any) -> None:
    """The caller's dead step, then the other dead agents': their last transitions end."""
    env = actor.env
    turn = env.turn()
    while turn is not None and (turn[3] or turn[4]):
        env.step(None)
        turn = env.turn()
