"""Blocks of recorded steps that the stepping thread appends to and the writer turns into Arrow."""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from relayrl_gym.schema.codecs import (
    numpy_dtype,
    numpy_to_arrow,
    strings_to_arrow,
)
from relayrl_gym.schema.transitions import MASK_TYPE, TransitionSchema

__all__ = ["StepBlock", "info_to_json"]

_BLOCK_SEQ = itertools.count()
_TIMESTAMP = pa.timestamp("ns", tz="UTC")
_FIELDS = ("env_index", "episode_id", "step", "obs", "action", "reward", "next_obs",
           "terminated", "truncated", "model_version", "timestamp", "valid")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


#: Non-finite floats as JSON strings, as the protobuf JSON mapping writes them.
_NON_FINITE = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def info_to_json(info: dict[str, Any]) -> str | None:
    """Serialises one env's info dict as standard JSON; ``None`` for an empty info.

    numpy values become lists and numbers; NaN and infinities (not JSON) become the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; keys become strings.

    >>> info_to_json({"x": np.array([1.0, np.nan]), 3: np.float32(np.inf)})
    '{"x": [1.0, "NaN"], "3": "Infinity"}'
    """
    if not info:
        return None
    try:  # the common case: one C-accelerated pass
        return json.dumps(info, default=_json_default, allow_nan=False)
    except (TypeError, ValueError):  # keys JSON cannot hold, non-finite floats, cycles
        try:
            return json.dumps(_plain(info), allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return json.dumps({"__unserializable__": repr(info)})


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data: str keys, lists, finite floats or their names."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return _plain(value.tolist())
    if isinstance(value, float):
        return value if value == value and value not in _NON_FINITE else \
            _NON_FINITE.get(value, "NaN")
    if value is None or isinstance(value, str | int | bool):
        return value
    return repr(value)


def _flat(parts: Sequence[Any], dtype: Any, total: int, rows: np.ndarray) -> np.ndarray:
    """One column from per-call parts: arrays, tuples of per-env scalars (cheaper to keep on
    the stepping thread than array copies, and read here in one C loop), or one Python float
    for every row of its call (``rows[i]`` rows)."""
    kinds = set(map(type, parts))
    if kinds == {float}:  # e.g. one reward for every actor of each request
        return np.repeat(np.asarray(parts, dtype), rows)
    if float in kinds:
        parts = [np.full(k, p, dtype) if type(p) is float else p
                 for p, k in zip(parts, rows.tolist())]
        kinds = set(map(type, parts))
    if tuple in kinds:
        return np.fromiter(itertools.chain.from_iterable(parts), dtype, count=total)
    return np.concatenate(parts).astype(dtype, copy=False)


def _repeated(value: str, n: int) -> pa.Array:
    """``n`` copies of one string, built from buffers (a gather would index n times)."""
    data = value.encode()
    if n * len(data) >= 2**31:  # past int32 offsets: let Arrow pick the layout
        return pa.array([value] * n, pa.string())
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(data))
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(data * n)])


@functools.lru_cache(maxsize=16)
def _names_array(names: tuple[str, ...]) -> pa.Array:
    # A run's actor ids rarely change: built once, not for every batch.
    return strings_to_arrow(names)


def _gathered(names: list[str], indices: pa.Array) -> pa.Array:
    """``names[i]`` for each index: one name for every row when they are all the same."""
    if len(set(names)) == 1:
        return _repeated(names[0], len(indices))
    return _names_array(tuple(names)).take(indices)


class StepBlock:
    """Recorded calls awaiting conversion: each call is a tuple of batch arrays the block owns.

    A call may carry a ``valid`` row mask: rows it marks False (e.g. NEXT_STEP reset
    pseudo-steps) are dropped at conversion, which is cheaper than selecting rows per step.

    Appending is a list append (the stepping thread's whole recording cost, besides the copies
    that give the block ownership); concatenating the columns and building Arrow arrays happens
    on the writer thread. Sparse columns (info, mask, data) map a row of the block to its value.
    """

    __slots__ = ("calls", "data", "dense", "info", "mask", "n", "seq")

    def __init__(self) -> None:
        self.seq = next(_BLOCK_SEQ)  # creation order = row order, across recorders
        self.calls: list[tuple[Any, ...]] = []
        self.n = 0
        self.info: dict[int, str] = {}
        self.mask: dict[int, Any] = {}
        self.data: dict[int, dict[str, Any]] = {}
        # (first row, data batch, mask batch) of calls that pass whole batches (the agent API)
        self.dense: list[tuple[int, dict[str, np.ndarray] | None, np.ndarray | None]] = []

    def to_record_batch(
        self, schema: TransitionSchema, run_id: str, actor_ids: list[str], agent_ids: list[str]
    ) -> pa.RecordBatch:
        """Builds the Arrow batch of every row; ``actor_ids``/``agent_ids`` are by env index."""
        n = self.n
        columns_by_name = dict(zip(_FIELDS, zip(*self.calls)))  # one C-level transpose
        env_index = np.concatenate(columns_by_name["env_index"]).astype(np.int32, copy=False)
        k_rows = np.fromiter(map(len, columns_by_name["env_index"]), np.int64, len(self.calls))
        timestamps = np.repeat(np.asarray(columns_by_name["timestamp"], np.int64), k_rows)
        versions_by_call = columns_by_name["model_version"]
        kinds = set(map(type, versions_by_call))
        if kinds <= {int}:
            versions = np.repeat(np.asarray(versions_by_call, np.int64), k_rows)
        elif kinds == {np.ndarray}:  # one version per row already (the agent API)
            versions = np.concatenate(versions_by_call).astype(np.int64, copy=False)
        else:
            versions = np.concatenate([np.broadcast_to(np.asarray(v, np.int64), (k,))
                                       for v, k in zip(versions_by_call, k_rows.tolist())])
        indices = numpy_to_arrow(env_index)
        obs = schema.obs.concat(columns_by_name["obs"])
        next_obs = schema.obs.concat(columns_by_name["next_obs"])
        action = schema.action.concat(columns_by_name["action"])
        columns = [
            _repeated(run_id, n),
            _gathered(actor_ids, indices),
            _gathered(agent_ids, indices),
            indices,
            numpy_to_arrow(np.concatenate(columns_by_name["episode_id"]).astype(np.int64)),
            numpy_to_arrow(np.concatenate(columns_by_name["step"]).astype(np.int64)),
            schema.obs.to_arrow(obs, n),
            schema.action.to_arrow(action, n),
            numpy_to_arrow(_flat(columns_by_name["reward"], np.float64, n, k_rows)),
            schema.obs.to_arrow(next_obs, n),
            numpy_to_arrow(_flat(columns_by_name["terminated"], np.bool_, n, k_rows)),
            numpy_to_arrow(_flat(columns_by_name["truncated"], np.bool_, n, k_rows)),
            numpy_to_arrow(versions),
            numpy_to_arrow(timestamps, _TIMESTAMP),
            self._dense_mask(n) if self.dense else self._sparse(self.mask, n, MASK_TYPE),
            (self._dense_data(n, schema.data_type) if self.dense
             else self._sparse(self.data, n, schema.data_type)),
            self._sparse(self.info, n, pa.string()),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=schema.arrow)
        masked = [(i, v) for i, v in enumerate(columns_by_name["valid"]) if v is not None]
        if masked:
            keep = np.ones(n, np.bool_)
            starts = np.concatenate([[0], np.cumsum(k_rows)[:-1]]).tolist()
            for i, valid in masked:
                keep[starts[i] : starts[i] + len(valid)] = valid
            batch = batch.filter(numpy_to_arrow(keep))
        return batch

    def _dense_mask(self, n: int) -> pa.Array:
        """list<bool> masks from whole (rows, actions) batches; rows without one are null."""
        lengths = np.zeros(n, np.int32)
        valid = np.zeros(n, np.bool_)
        parts = []
        for start, _, mask in self.dense:
            if mask is not None:
                rows, width = mask.shape
                lengths[start : start + rows] = width
                valid[start : start + rows] = True
                parts.append(np.asarray(mask, np.bool_).reshape(-1))
        if not parts:
            return pa.nulls(n, MASK_TYPE)
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = numpy_to_arrow(np.concatenate(parts))
        return pa.ListArray.from_arrays(numpy_to_arrow(offsets), values,
                                        mask=numpy_to_arrow(~valid))

    def _dense_data(self, n: int, arrow_type: pa.DataType) -> pa.Array:
        """The struct column of policy outputs from whole per-call batches."""
        if not pa.types.is_struct(arrow_type):
            return pa.nulls(n, arrow_type)
        valid = np.zeros(n, np.bool_)
        children = []
        for field in arrow_type:
            fixed = pa.types.is_fixed_size_list(field.type)  # an output with several values
            leaf = field.type.value_type if fixed else field.type
            width = field.type.list_size if fixed else 1
            column = np.zeros((n, width), numpy_dtype(leaf))
            for start, data, _ in self.dense:
                if data is not None and field.name in data:
                    values = np.asarray(data[field.name]).reshape(len(data[field.name]), -1)
                    column[start : start + len(values)] = values
                    valid[start : start + len(values)] = True
            flat = numpy_to_arrow(column.reshape(-1), leaf)
            children.append(pa.FixedSizeListArray.from_arrays(flat, width) if fixed else flat)
        return pa.StructArray.from_arrays(children, fields=list(arrow_type),
                                          mask=numpy_to_arrow(~valid))

    @staticmethod
    def _sparse(values: dict[int, Any], n: int, arrow_type: pa.DataType) -> pa.Array:
        if not values:
            return pa.nulls(n, arrow_type)
        column: list[Any] = [None] * n
        for row, value in values.items():
            column[row] = value
        if arrow_type == pa.string():
            return strings_to_arrow(column)
        return pa.array(column, type=arrow_type)
