"""Plain records a dataset hands out: transitions, episodes, summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ActorSummary", "Episode", "Summary", "Transitions"]


class Transitions(NamedTuple):
    """Every recorded transition as numpy batches (Dict/Tuple spaces as dicts/tuples of them)."""

    obs: Any
    action: Any
    reward: np.ndarray
    next_obs: Any
    terminated: np.ndarray
    truncated: np.ndarray


@dataclass(frozen=True)
class Episode:
    """One episode of one actor; ``observations`` has one more entry than ``actions``."""

    episode_id: int
    actor_id: str
    agent_id: str
    env_index: int
    observations: Any
    actions: Any
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    model_versions: np.ndarray

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass(frozen=True)
class ActorSummary:
    """Counts and return statistics of one actor (over its finished episodes)."""

    actor_id: str
    agent_id: str
    steps: int
    episodes: int
    mean_return: float
    std_return: float


@dataclass(frozen=True)
class Summary:
    """What a recorded run holds: steps, episodes and return statistics, overall and per actor.

    ``episodes`` counts finished episodes (ended by termination or truncation); the returns are
    over those. ``unfinished_episodes`` were cut off by a reset or by the end of recording.
    """

    run_id: str
    env_id: str | None
    steps: int
    episodes: int
    unfinished_episodes: int
    mean_return: float
    std_return: float
    min_return: float
    max_return: float
    mean_length: float
    actors: list[ActorSummary] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"run {self.run_id} ({self.env_id or 'unknown env'})",
            f"  steps {self.steps}  episodes {self.episodes} (+{self.unfinished_episodes} "
            f"unfinished)  mean length {self.mean_length:.1f}",
            f"  return mean {self.mean_return:.3f}  std {self.std_return:.3f}  "
            f"min {self.min_return:.3f}  max {self.max_return:.3f}",
        ]
        if self.actors:
            lines.append(f"  {'actor':36}  {'agent':>10}  {'steps':>9}  {'episodes':>8}  "
                         f"{'mean return':>11}  {'std':>9}")
            for a in self.actors:
                lines.append(f"  {a.actor_id:36}  {a.agent_id or '-':>10}  {a.steps:>9}  "
                             f"{a.episodes:>8}  {a.mean_return:>11.3f}  {a.std_return:>9.3f}")
        return "\n".join(lines)
