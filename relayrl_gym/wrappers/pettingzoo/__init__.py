"""PettingZoo front ends: recorded ParallelEnv / AECEnv wrappers, policy-played agents, a
Gymnasium view of the one agent left to the caller, and parameter sharing.

Importing this package does not import PettingZoo; `relayrl_gym.wrap` imports the modules that
need it only when it is given a PettingZoo env.
"""

from __future__ import annotations

__all__: list[str] = []
