"""Actors: one agent slot each (an env copy of a vector env, or one agent of one game copy)."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Actor", "DeviceType"]


class DeviceType(enum.Enum):
    """Where an actor's model runs (the RelayRL client's ``DeviceType``)."""

    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"
    DEFAULT = "default"


@dataclass(eq=False)
class Actor:
    """One agent slot: its id, the env it owns (if any), its model and the model's version."""

    index: int
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    env: Any = None
    model: Any = None
    model_version: int = -1
    device: DeviceType = DeviceType.DEFAULT
