"""Small real torch policies shared by the ModelModule tests."""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

FORMATS = ["onnx", "torchscript"]
OBS_SPACE = spaces.Box(-3.0, 3.0, (4,), np.float32)


class ActorCritic(torch.nn.Module):
    """Logits (or means) and a value, like an actor-critic policy."""

    def __init__(self, n_out: int, scale: float = 1.0) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh())
        self.pi = torch.nn.Linear(32, n_out)
        self.v = torch.nn.Linear(32, 1)
        self.scale = scale

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.body(obs)
        return self.pi(latent) * self.scale, self.v(latent)


def mlp(n_out: int, scale: float = 1.0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, n_out))
    with torch.no_grad():
        net[2].weight.mul_(scale)
    return net


def torch_out(net: torch.nn.Module, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = net(torch.as_tensor(obs, dtype=torch.float32))
    return (out[0] if isinstance(out, tuple) else out).numpy()
