"""Fixtures of the PettingZoo tests: a small ParallelEnv of our own whose agents join late and
die early, and small real policies for tictactoe."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("pettingzoo")

from pettingzoo.utils.env import ParallelEnv

TTT_OBS = spaces.Box(0, 1, (3, 3, 2), np.int8)  # tictactoe's "observation" entry
TTT_ACT = spaces.Discrete(9)


class ToyGame(ParallelEnv):
    """Three agents: ``a0`` and ``a1`` start, ``a2`` joins after the first step, ``a0`` is
    terminated at step 2, the others are truncated at ``max_steps``. Observations and rewards
    carry seeded noise (so seeding is visible); the legal actions are in ``info``."""

    metadata = {"name": "toy_game_v0", "render_modes": []}

    def __init__(self, max_steps: int = 4, odd_agent: bool = False) -> None:
        self.possible_agents = ["a0", "a1", "a2"]
        self.max_steps = max_steps
        self.render_mode = None
        box = spaces.Box(0.0, 100.0, (2,), np.float32)
        self._obs_spaces = {a: box for a in self.possible_agents}
        if odd_agent:
            self._obs_spaces["a2"] = spaces.Box(0.0, 100.0, (3,), np.float32)
        self._act = spaces.Discrete(3)
        self.agents: list[str] = []
        self._rng = np.random.default_rng()
        self.t = 0

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._act

    def _obs(self, agent: str) -> np.ndarray:
        shape = self._obs_spaces[agent].shape
        out = np.full(shape, self.t, np.float32)
        out[1] = self._rng.uniform(0, 1)
        return out

    def _info(self) -> dict[str, Any]:
        return {"action_mask": np.array([1, 1, self.t % 2], np.int8)}

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:  # as Gymnasium envs do: None keeps the generator going
            self._rng = np.random.default_rng(seed)
        self.t = 0
        self.agents = ["a0", "a1"]
        return ({a: self._obs(a) for a in self.agents}, {a: self._info() for a in self.agents})

    def step(self, actions: dict[str, Any]):
        self.t += 1
        acting = [a for a in self.agents if a in actions]
        rewards = {a: float(actions[a]) + round(float(self._rng.uniform()), 3) for a in acting}
        terminated = {a: a == "a0" and self.t >= 2 for a in acting}
        truncated = {a: self.t >= self.max_steps for a in acting}
        obs = {a: self._obs(a) for a in acting}
        infos = {a: self._info() for a in acting}
        self.agents = [a for a in acting if not (terminated[a] or truncated[a])]
        if self.t == 1:
            self.agents.append("a2")
            obs["a2"], infos["a2"] = self._obs("a2"), self._info()
            rewards["a2"], terminated["a2"], truncated["a2"] = 0.0, False, False
        return obs, rewards, terminated, truncated, infos


@pytest.fixture
def toy_game() -> type[ToyGame]:
    return ToyGame


def first_legal(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def random_legal(seed: int = 0):
    """A callable opponent: a uniformly random legal move."""
    rng = np.random.default_rng(seed)

    def play(obs: Any) -> int:
        return int(rng.choice(np.flatnonzero(obs["action_mask"])))

    return play


@pytest.fixture
def ttt_module(tmp_path):
    """A tictactoe policy exported with ModelModule.from_torch (format and seed chosen)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from relayrl_gym.policies import ModelModule

    def make(fmt: str = "onnx", seed: int = 0, name: str | None = None, **kwargs: Any):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(18, 16), torch.nn.Tanh(),
                                  torch.nn.Linear(16, 9))
        return ModelModule.from_torch(net, TTT_OBS, TTT_ACT, format=fmt,
                                      path=tmp_path / (name or f"{fmt}-{seed}"), **kwargs)

    return make


@pytest.fixture(scope="session")
def pz_helpers():
    return {"first_legal": first_legal, "random_legal": random_legal,
            "TTT_OBS": TTT_OBS, "TTT_ACT": TTT_ACT}
