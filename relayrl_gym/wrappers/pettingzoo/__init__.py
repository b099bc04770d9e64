"""PettingZoo front ends: recorded ParallelEnv / AECEnv wrappers, policy-played agents, a
Gymnasium view of the one agent left to the caller, and parameter sharing.

Importing this package does not import PettingZoo; its classes are loaded (with PettingZoo) on
first access, and `relayrl_gym.wrap` loads them only when it is given a PettingZoo game.
"""

from __future__ import annotations

import importlib
from typing import Any

from relayrl_gym.wrappers.detect import require_pettingzoo

__all__ = ["PettingZooAgentEnv", "PettingZooVectorEnv", "RecordedAECEnv",
           "RecordedParallelEnv"]

_HOMES = {"PettingZooAgentEnv": "single", "PettingZooVectorEnv": "vector",
          "RecordedAECEnv": "aec", "RecordedParallelEnv": "parallel"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_pettingzoo()
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
