"""Where a model runs: the RelayRL client's ``DeviceType``."""

from __future__ import annotations

import enum

__all__ = ["DeviceType"]


class DeviceType(enum.Enum):
    """Where an actor's model runs (the RelayRL client's ``DeviceType``)."""

    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"
    DEFAULT = "default"
