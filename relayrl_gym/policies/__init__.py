"""Exported policies (ModelModules): ONNX and TorchScript models that act for actors.

>>> from relayrl_gym.policies import ModelModule
>>> ModelModule.load_from_path  # doctest: +ELLIPSIS
<bound method ModelModule.load_from_path of <class '...ModelModule'>>
"""

from __future__ import annotations

from relayrl_gym.policies.backends import ModelBackend, ModelSignature
from relayrl_gym.policies.heads import HEADS
from relayrl_gym.policies.metadata import ModelMetadata
from relayrl_gym.policies.module import ModelModule

__all__ = ["HEADS", "ModelBackend", "ModelMetadata", "ModelModule", "ModelSignature"]
