"""`RecordedAECEnv`: a PettingZoo `AECEnv` that records every agent's transitions, turn to turn."""

from __future__ import annotations

from typing import Any

from pettingzoo.utils.env import ActionType, AECEnv, AgentID, ObsType
from pettingzoo.utils.wrappers.base import BaseWrapper
from typing_extensions import override

from relayrl_gym.wrappers.pettingzoo.recording import GameRecording, RunOwner
from relayrl_gym.wrappers.pettingzoo.state import STATE, StateHolder
from relayrl_gym.wrappers.pettingzoo.tracker import AgentTracker

__all__ = ["RecordedAECEnv"]


class RecordedAECEnv(RunOwner, BaseWrapper[AgentID, ObsType, ActionType]):
    """An `AECEnv` that behaves exactly as the wrapped one and records each agent's transitions.

    A transition of an agent spans from its turn to its next turn: ``obs`` is what
    ``last()`` gave it when it acted, ``action`` what it played; ``reward``, ``next_obs``,
    ``terminated`` and ``truncated`` are what ``last()`` gives it at its next turn, so the
    reward is everything it received in between (PettingZoo's ``_cumulative_rewards``). An
    agent's final transition ends at the turn where it is selected dead (the turn whose only
    valid action is None); that dead step itself is not a transition and is never recorded.
    A transition that has not reached its next turn when the game is reset, or whose agent is
    removed without being selected again, is dropped (never recorded with made-up values).

    >>> import relayrl_gym, tempfile
    >>> from pettingzoo.classic import tictactoe_v3
    >>> env = relayrl_gym.wrap(tictactoe_v3.env(), sink=tempfile.mkdtemp())
    >>> env.reset(seed=0)
    >>> for move in (0, 3, 1, 4, 2):  # player_1 completes the top row
    ...     env.step(move)
    >>> while env.agents:
    ...     env.step(None)  # the dead steps that end the game
    >>> env.close()
    >>> ds = relayrl_gym.load(env.run_path)
    >>> ds.table.column("agent_id").to_pylist().count("player_1"), ds.table.column("reward")[-1]
    (3, <pyarrow.DoubleScalar: 1.0>)
    """

    def __init__(self, env: AECEnv[AgentID, ObsType, ActionType],
                 tracker: AgentTracker | None = None,
                 recording: GameRecording | None = None) -> None:
        """Wraps ``env`` (use `relayrl_gym.wrap`).

        Args:
            env: the game.
            tracker: this game's bookkeeping in a run (None: nothing recorded).
            recording: the run this env owns and closes with itself (None: owned elsewhere).
        """
        super().__init__(env)
        self._own_run(tracker, recording)
        self._source: tuple[int, dict[str, Any] | None] | None = None
        # (agent, obs, reward, terminated, truncated, info): last() of the selected agent,
        # read once per turn (nothing changes it until the next step or reset)
        self._turn: tuple[Any, ...] | None = None
        # Where the game's state (agent_selection, agents, rewards, ...) is read once reset,
        # and whether last() is PettingZoo's own; None before reset.
        self._holder: StateHolder | None = None
        self._state: Any = None
        self._plain_last = type(env).last is AECEnv.last

    @override
    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("_state")
        if state is not None and name in STATE:
            return getattr(state, name)  # one read instead of one per wrapper below
        return super().__getattr__(name)

    def acted_by(self, version: int, data: dict[str, Any] | None = None) -> None:
        """Marks the next step's action as chosen by a model of ``version``."""
        self._source = (version, data)

    @override
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        self.env.reset(seed=seed, options=options)
        self._holder = StateHolder(self.env)  # read from at the turn below
        self.tracker.reset()
        self._source = None
        self._at_turn()

    @override
    def step(self, action: ActionType) -> None:
        state = self._state or self.env
        agent = state.agent_selection
        source, self._source = self._source, None
        alive = not (state.terminations.get(agent) or state.truncations.get(agent))
        self.env.step(action)
        if alive:  # a move the game took (one it refused raised above: no transition)
            version, data = source or (-1, None)
            self.tracker.begin(agent, action, version, data)
        self._at_turn()

    def turn(self) -> tuple[Any, ...] | None:
        """``(agent, obs, reward, terminated, truncated, info)`` of the selected agent, as
        ``last()`` gives them; None when no agent is left."""
        return self._turn

    @override
    def last(self, observe: bool = True) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        turn = self._turn
        if turn is None or not observe:
            return self.env.last(observe)
        return turn[1], turn[2], turn[3], turn[4], turn[5]

    def _at_turn(self) -> None:
        # Runs whenever an agent may have been selected: its transition in flight ends here.
        env, tracker = self.env, self.tracker
        if self._holder is not None:
            self._state = self._holder.get()
        state = self._state or env
        agents = state.agents
        self._turn = None
        for waiting in tracker.waiting():
            if waiting not in agents:
                tracker.drop(waiting)
        if not agents:
            return
        agent = state.agent_selection
        if agent not in agents:
            return
        if self._plain_last:  # last() itself, without its reads through every wrapper
            turn = (agent, env.observe(agent), state._cumulative_rewards[agent],  # noqa: SLF001
                    state.terminations[agent], state.truncations[agent], state.infos[agent])
        else:
            turn = (agent, *env.last())
        self._turn = turn
        tracker.finish_many([turn])
        if turn[3] or turn[4]:
            tracker.forget(agent)

    @override
    def __str__(self) -> str:
        return f"RecordedAECEnv<{self.env!s}>"
