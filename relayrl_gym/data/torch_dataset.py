"""A dataset's transitions as a map-style `torch.utils.data.Dataset`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from relayrl_gym.data.replay import Replay
from relayrl_gym.schema.batches import map_leaves

__all__ = ["TorchTransitions"]


def _tensor(value: Any) -> Any:
    """Numbers and booleans as a tensor of their own (a copy: the caller may write into it,
    the files stay as they are), times as int64 nanoseconds since the epoch; anything else
    (strings, Python objects) as it is."""
    if not isinstance(value, np.ndarray | np.generic):
        return value
    if value.dtype.kind == "M":
        return torch.tensor(value.astype("datetime64[ns]").astype(np.int64))
    if value.dtype.kind not in "biufc":
        return value
    return torch.from_numpy(np.array(value))


class TorchTransitions(TorchDataset[dict[str, Any]]):
    """Item ``i``: row ``i`` as a dict of tensors (``timestamp`` as int64 nanoseconds since
    the epoch; strings and other objects as they are); picklable for `DataLoader` workers,
    which map the same files."""

    def __init__(self, replay: Replay) -> None:
        """Wraps decoded columns; use `Dataset.to_torch`."""
        self.replay = replay

    def __len__(self) -> int:
        return len(self.replay)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self.replay) <= index < len(self.replay):
            raise IndexError(f"row {index} is out of range for {len(self.replay)} rows")
        return {name: map_leaves(lambda leaf: _tensor(leaf[index]), value)
                for name, value in self.replay.columns.items()}
