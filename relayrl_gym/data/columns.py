"""Record batches of transitions as numpy: the columns a training loop reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.errors import DatasetError
from relayrl_gym.schema.arrow_arrays import arrow_to_numpy
from relayrl_gym.schema.batches import concat, map_leaves
from relayrl_gym.schema.transitions import TransitionSchema

__all__ = ["COLUMNS", "TRAINING_COLUMNS", "check_columns", "decode", "join", "length", "take",
           "writable"]

#: Every column of a transition row, in the order of the data schema (whatever the spaces).
COLUMNS = tuple(TransitionSchema.build(spaces.Discrete(1), spaces.Discrete(1)).arrow.names)
#: What a training loop reads by default.
TRAINING_COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


def check_columns(columns: Sequence[str] | None) -> list[str]:
    """``columns`` as a list (None: `TRAINING_COLUMNS`); an unknown name is a `DatasetError`."""
    if columns is None:
        return list(TRAINING_COLUMNS)
    if isinstance(columns, str):
        columns = [columns]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise DatasetError(f"`columns` names {unknown}, which transitions do not have; choose "
                           f"from {', '.join(COLUMNS)}")
    if not columns:
        raise DatasetError("`columns` is empty; name at least one column, e.g. ['obs', 'action']")
    return list(dict.fromkeys(columns))


def _plain(column: pa.Array | pa.ChunkedArray) -> Any:
    kind = column.type
    if pa.types.is_struct(kind):  # policy outputs: one array per output
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        return {kind.field(i).name: _plain(column.field(i)) for i in range(kind.num_fields)}
    if pa.types.is_null(kind):
        return np.full(len(column), None, object)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return arrow_to_numpy(column)
    return column.to_numpy(zero_copy_only=False)


def decode(batch: pa.RecordBatch | pa.Table, schema: TransitionSchema) -> dict[str, Any]:
    """Each column of ``batch`` as numpy: observations and actions with their spaces' shapes
    and dtypes (dicts / tuples for Dict / Tuple spaces), strings and masks as object arrays,
    policy outputs as a dict of arrays. Arrays may be read-only views of Arrow's buffers
    (`writable` makes them the caller's)."""
    out: dict[str, Any] = {}
    for name in batch.column_names:
        column = batch.column(name)
        if name in ("obs", "next_obs"):
            out[name] = schema.obs.from_arrow(column)
        elif name == "action":
            out[name] = schema.action.from_arrow(column)
        else:
            out[name] = _plain(column)
    return out


def writable(columns: dict[str, Any]) -> dict[str, Any]:
    """``columns`` with every array that is a view copied: arrays that are the caller's, to
    write into, shared with nothing (not Arrow's buffers, not a cached run's)."""
    def own(leaf: Any) -> Any:
        return leaf if not isinstance(leaf, np.ndarray) or leaf.base is None else leaf.copy()
    return {name: map_leaves(own, value) for name, value in columns.items()}


def length(columns: dict[str, Any]) -> int:
    """Rows in a decoded batch."""
    found: list[int] = []
    map_leaves(lambda leaf: found.append(len(leaf)), next(iter(columns.values())))
    return found[0]


def take(columns: dict[str, Any], rows: Any) -> dict[str, Any]:
    """The rows ``rows`` (a slice or indices) of a decoded batch."""
    return {name: map_leaves(lambda leaf: leaf[rows], value) for name, value in columns.items()}


def join(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Decoded batches one after another."""
    if len(parts) == 1:
        return parts[0]
    return {name: concat([p[name] for p in parts]) for name in parts[0]}
