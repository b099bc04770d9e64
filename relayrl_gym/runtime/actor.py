"""Actors: one agent slot each (an env copy of a vector env, or one agent of one game copy)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from relayrl_gym.policies.device import DeviceType

__all__ = ["Actor"]


@dataclass(eq=False)
class Actor:
    """One agent slot: its id, the env it owns (if any), its model and the model's version."""

    index: int
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    env: Any = None
    model: Any = None
    model_version: int = -1
    device: DeviceType = DeviceType.DEFAULT
