"""Recognising PettingZoo envs without importing PettingZoo for everyone else."""

from __future__ import annotations

import sys
from typing import Any

from relayrl_gym.errors import missing_extra

__all__ = ["is_aec", "is_parallel", "is_pettingzoo", "require_pettingzoo"]


def require_pettingzoo() -> Any:
    """The ``pettingzoo`` module, or a `MissingDependencyError` naming the extra to install."""
    try:
        import pettingzoo
    except ImportError as err:
        raise missing_extra("pettingzoo", "pettingzoo") from err
    return pettingzoo


def is_pettingzoo(obj: Any) -> bool:
    """Whether ``obj`` is a PettingZoo `ParallelEnv` or `AECEnv` (a class from a module that
    was not imported cannot be an instance: PettingZoo is only imported when already loaded).

    >>> is_pettingzoo("CartPole-v1")
    False
    """
    if "pettingzoo" not in sys.modules:
        return False
    return is_parallel(obj) or is_aec(obj)


def is_parallel(obj: Any) -> bool:
    """Whether ``obj`` is a PettingZoo `ParallelEnv`."""
    from pettingzoo.utils.env import ParallelEnv

    return isinstance(obj, ParallelEnv)


def is_aec(obj: Any) -> bool:
    """Whether ``obj`` is a PettingZoo `AECEnv`."""
    from pettingzoo.utils.env import AECEnv

    return isinstance(obj, AECEnv)
