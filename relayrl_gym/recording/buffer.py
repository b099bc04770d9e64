"""Preallocated column buffers that the stepping thread fills and the writer turns into Arrow."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from relayrl_gym.schema.transitions import MASK_TYPE, TransitionSchema

__all__ = ["ColumnBuffer", "info_to_json"]

_TIMESTAMP = pa.timestamp("ns", tz="UTC")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def info_to_json(info: dict[str, Any]) -> str | None:
    """Serialises one env's info dict (numpy values as lists); ``None`` for an empty info."""
    if not info:
        return None
    return json.dumps(info, default=_json_default)


class ColumnBuffer:
    """A fixed-capacity block of transition rows, one numpy array per column.

    Sparse columns (info, mask, data) are dicts keyed by row, since most steps have none.
    """

    __slots__ = ("action", "capacity", "data", "env_index", "episode_id", "info", "mask",
                 "model_version", "n", "next_obs", "obs", "reward", "step", "terminated",
                 "timestamp", "truncated")

    def __init__(self, schema: TransitionSchema, capacity: int) -> None:
        self.capacity = capacity
        self.n = 0
        self.env_index = np.empty(capacity, np.int32)
        self.episode_id = np.empty(capacity, np.int64)
        self.step = np.empty(capacity, np.int64)
        self.obs = schema.obs.alloc(capacity)
        self.action = schema.action.alloc(capacity)
        self.reward = np.empty(capacity, np.float64)
        self.next_obs = schema.obs.alloc(capacity)
        self.terminated = np.empty(capacity, np.bool_)
        self.truncated = np.empty(capacity, np.bool_)
        self.model_version = np.empty(capacity, np.int64)
        self.timestamp = np.empty(capacity, np.int64)
        self.info: dict[int, str] = {}
        self.mask: dict[int, np.ndarray] = {}
        self.data: dict[int, dict[str, Any]] = {}

    def to_record_batch(
        self, schema: TransitionSchema, run_id: str, actor_ids: list[str], agent_ids: list[str]
    ) -> pa.RecordBatch:
        """Builds the Arrow batch of the first ``n`` rows; ``actor_ids``/``agent_ids`` by env index."""
        n = self.n
        env_index = self.env_index[:n]
        indices = pa.array(env_index, type=pa.int32())
        actor = pa.DictionaryArray.from_arrays(indices, pa.array(actor_ids, pa.string()))
        agent = pa.DictionaryArray.from_arrays(indices, pa.array(agent_ids, pa.string()))
        columns = [
            pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                           pa.array([run_id], pa.string())).cast(pa.string()),
            actor.cast(pa.string()),
            agent.cast(pa.string()),
            indices,
            pa.array(self.episode_id[:n]),
            pa.array(self.step[:n]),
            schema.obs.to_arrow(self.obs, n),
            schema.action.to_arrow(self.action, n),
            pa.array(self.reward[:n]),
            schema.obs.to_arrow(self.next_obs, n),
            pa.array(self.terminated[:n]),
            pa.array(self.truncated[:n]),
            pa.array(self.model_version[:n]),
            pa.array(self.timestamp[:n]).cast(_TIMESTAMP),
            self._sparse(self.mask, n, MASK_TYPE),
            self._sparse(self.data, n, schema.data_type),
            self._sparse(self.info, n, pa.string()),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=schema.arrow)

    @staticmethod
    def _sparse(values: dict[int, Any], n: int, arrow_type: pa.DataType) -> pa.Array:
        if not values:
            return pa.nulls(n, arrow_type)
        column: list[Any] = [None] * n
        for row, value in values.items():
            column[row] = value
        return pa.array(column, type=arrow_type)
