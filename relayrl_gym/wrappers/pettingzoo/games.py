"""What the Gymnasium front ends need from copies of a game: slots to reset and step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

from gymnasium import spaces

from relayrl_gym.wrappers.pettingzoo.policies import AgentPolicies
from relayrl_gym.wrappers.pettingzoo.recording import GameRecording

__all__ = ["GameStep", "Games", "close_copies"]


class GameStep(NamedTuple):
    """One game copy's step, one entry per slot (a caller-played agent) in each list."""

    obs: list[Any]
    rewards: list[float]
    terminated: list[bool]
    truncated: list[bool]
    infos: list[dict[str, Any]]
    over: bool  # no caller-played agent is left in the game: it must be reset


class Games(Protocol):
    """Copies of a game whose caller-played agents are slots (``copies * slots`` in all) and
    whose other agents are played by `policies`."""

    copies: int
    slots: int
    agents: list[Any]  # the caller-played agents, slot order
    observation_space: spaces.Space
    action_space: spaces.Space
    policies: AgentPolicies
    recording: GameRecording | None
    envs: list[Any]

    def reset(self, copies: list[int], seeds: list[int | None],
              options: dict[str, Any] | None = None
              ) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        """Resets the given copies; for each, the observation and info of each of its slots."""
        ...

    def step(self, copies: list[int], actions: list[list[Any]]) -> list[GameStep]:
        """Steps the given copies, each with one action per slot."""
        ...

    def close(self) -> None:
        """Closes every copy and the run's sinks."""
        ...


def close_copies(envs: Iterable[Any], recording: GameRecording | None) -> None:
    """Closes every game copy, then flushes and closes the run, whatever fails on the way.

    A copy whose ``close`` raises must not keep the other copies open or the run's writer
    thread alive with its rows unwritten: everything is closed first, then the first error
    is raised.
    """
    error: BaseException | None = None
    for env in envs:
        try:
            env.close()
        except Exception as err:
            error = error or err
    try:
        if recording is not None:
            recording.close()
    finally:
        if error is not None:
            raise error
