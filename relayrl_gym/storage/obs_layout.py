"""Large observations stored once: the ``once`` layout of the ``next_obs`` column on disk.

A transition's ``next_obs`` is, except where an episode ends, the ``obs`` of the same agent's
next transition. Under the ``once`` layout a record batch stores ``next_obs`` only where the
batch does not hold that next transition with the same observation (episode ends, an agent's
last row in the batch, any row where the two differ); elsewhere it is null, its bytes zero
(free to compress). `restore` fills it back from the next transition's ``obs``, batch by
batch, so every batch stays readable on its own (a crash, a torn file) and readers return
whole transitions as before. Rows are matched by (env_index, agent_id, episode_id, step + 1)
and the bytes compared, so nothing is ever filled with a value that was not recorded.

The trade-off: about half the bytes (and the compression and disk time) for image
observations, against readers that must restore the column; other tools (DuckDB, Polars,
pyarrow.dataset) reading the files directly see nulls in ``next_obs`` and can join on
``step + 1`` themselves. Only array observations (Box, MultiBinary, MultiDiscrete) can be
stored once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relayrl_gym.errors import ConfigError, DatasetError
from relayrl_gym.schema.arrow_arrays import arrow_to_numpy, numpy_dtype, numpy_to_arrow

__all__ = ["LAYOUTS", "LAYOUT_KEY", "ONCE_FROM_BYTES", "check_layout", "compact", "is_once",
           "logical_schema", "next_rows", "obs_row_bytes", "resolve", "restore",
           "stored_schema"]

#: ``pairs``: every row stores obs and next_obs; ``once``: see the module; ``auto``: ``once``
#: for array observations of at least `ONCE_FROM_BYTES` bytes, else ``pairs``.
LAYOUTS = ("auto", "once", "pairs")
#: Observations this large (bytes a row) or larger are stored once under ``auto``: images.
ONCE_FROM_BYTES = 4096
#: Schema metadata of the files written in the ``once`` layout.
LAYOUT_KEY = b"relayrl.obs_layout"


def _obs_width(schema: pa.Schema) -> int | None:
    """Values per observation when ``obs`` is one fixed-size array column, else None."""
    if "obs" not in schema.names or "next_obs" not in schema.names:
        return None
    kind = schema.field("obs").type
    if pa.types.is_fixed_size_list(kind) and (pa.types.is_integer(kind.value_type)
                                              or pa.types.is_floating(kind.value_type)):
        return int(kind.list_size)
    return None


def obs_row_bytes(schema: pa.Schema) -> int | None:
    """Bytes of one row's ``obs`` value when its type is of fixed width (arrays, structs of
    them), else None (no ``obs`` column, or lists, strings, unions of variable width).

    >>> obs_row_bytes(pa.schema([("obs", pa.list_(pa.float32(), 4))]))
    16
    >>> obs_row_bytes(pa.schema([("obs", pa.list_(pa.float32()))])) is None
    True
    """
    index = schema.get_field_index("obs")
    return _value_bytes(schema.field(index).type) if index >= 0 else None


def _value_bytes(arrow_type: pa.DataType) -> int | None:
    if pa.types.is_fixed_size_list(arrow_type):
        inner = _value_bytes(arrow_type.value_type)
        return None if inner is None else inner * arrow_type.list_size
    if pa.types.is_struct(arrow_type):
        sizes = [_value_bytes(field.type) for field in arrow_type]
        return None if None in sizes else sum(s for s in sizes if s is not None)
    try:
        return max(arrow_type.bit_width // 8, 1)
    except ValueError:  # variable width
        return None


def check_layout(layout: str) -> None:
    """Raises `ConfigError` unless ``layout`` is one of `LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ConfigError(f"`obs_layout` must be one of {', '.join(LAYOUTS)}; got {layout!r}")


def resolve(layout: str, schema: pa.Schema) -> str:
    """``once`` or ``pairs``: what ``layout`` (one of `LAYOUTS`) means for runs of ``schema``.

    >>> image = pa.list_(pa.uint8(), 84 * 84)
    >>> box = pa.schema([("obs", image), ("next_obs", image)])
    >>> resolve("auto", box), resolve("pairs", box)
    ('once', 'pairs')
    """
    check_layout(layout)
    width = _obs_width(schema)
    if layout == "once" and width is None:
        raise ConfigError(f"obs_layout='once' stores array observations (Box, MultiBinary, "
                          f"MultiDiscrete); this run's obs column is "
                          f"{schema.field('obs').type if 'obs' in schema.names else 'missing'}. "
                          "Use obs_layout='pairs' (or 'auto')")
    if layout == "auto":
        size = obs_row_bytes(schema) if width is not None else None
        return "once" if size is not None and size >= ONCE_FROM_BYTES else "pairs"
    return layout


def stored_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of files in the ``once`` layout: ``next_obs`` nullable, the layout noted."""
    index = schema.get_field_index("next_obs")
    schema = schema.set(index, schema.field(index).with_nullable(True))
    return schema.with_metadata({**(schema.metadata or {}), LAYOUT_KEY: b"once"})


def is_once(schema: pa.Schema) -> bool:
    """Whether batches of ``schema`` are in the ``once`` layout (need `restore`)."""
    return (schema.metadata or {}).get(LAYOUT_KEY) == b"once"


def next_rows(slot: np.ndarray, episode: np.ndarray, step: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, next rows): the pairs of rows where the second is the first's slot's next
    transition in the same episode (step + 1).

    >>> rows, following = next_rows(np.array([0, 1, 0]), np.array([5, 6, 5]), np.array([0, 0, 1]))
    >>> rows.tolist(), following.tolist()
    ([0], [2])
    """
    order = np.lexsort((step, episode, slot))
    first, second = order[:-1], order[1:]
    same = ((slot[first] == slot[second]) & (episode[first] == episode[second])
            & (step[second] == step[first] + 1))
    return first[same], second[same]


def _successors(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """`next_rows` of a batch, a slot being an (env_index, agent_id) pair."""
    env = arrow_to_numpy(batch.column("env_index")).astype(np.int64)
    agent = arrow_to_numpy(pc.dictionary_encode(batch.column("agent_id")).indices)
    slot = env * (int(agent.max(initial=0)) + 1) + agent
    return next_rows(slot, arrow_to_numpy(batch.column("episode_id")),
                     arrow_to_numpy(batch.column("step")))


def _rows_as_bytes(column: pa.Array, width: int) -> np.ndarray:
    """A fixed-size-list column's values as one row of bytes per transition (a view)."""
    values = column.values.slice(column.offset * width, len(column) * width)
    flat = arrow_to_numpy(values)
    return flat.view(np.uint8).reshape(len(column), -1)


def _with_next_obs(batch: pa.RecordBatch, values: np.ndarray, missing: np.ndarray | None,
                   schema: pa.Schema) -> pa.RecordBatch:
    kind = schema.field("next_obs").type
    flat = numpy_to_arrow(values.reshape(-1).view(numpy_dtype(kind.value_type)),
                          kind.value_type)
    mask = numpy_to_arrow(missing) if missing is not None else None
    column = pa.FixedSizeListArray.from_arrays(flat, kind.list_size, mask=mask)
    columns = list(batch.columns)
    columns[batch.schema.get_field_index("next_obs")] = column
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def compact(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` in the ``once`` layout (``schema``: its `stored_schema`)."""
    width = _obs_width(batch.schema)
    if width is None or batch.num_rows < 2:
        return pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    obs = _rows_as_bytes(batch.column("obs"), width)
    next_obs = _rows_as_bytes(batch.column("next_obs"), width)
    rows, following = _successors(batch)
    same = rows[(next_obs[rows] == obs[following]).all(axis=1)]
    if not len(same):
        return pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    kept = next_obs.copy()
    kept[same] = 0
    missing = np.zeros(batch.num_rows, np.bool_)
    missing[same] = True
    return _with_next_obs(batch, kept, missing, schema)


def restore(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch of the ``once`` layout with every ``next_obs`` back (``schema``: the run's
    logical schema, next_obs not nullable)."""
    column = batch.column("next_obs")
    if not column.null_count:
        return pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    width = _obs_width(batch.schema)
    if width is None:
        raise DatasetError(f"a batch marked as stored in the 'once' layout has an obs column "
                           f"of {batch.schema.field('obs').type}, which that layout never "
                           "stores; the file was not written by relayrl-gym or was altered")
    missing = np.flatnonzero(arrow_to_numpy(column.is_null()))
    rows, following = _successors(batch)
    source = np.full(batch.num_rows, -1, np.int64)
    source[rows] = following
    found = source[missing]
    if (found < 0).any():
        raise DatasetError(f"{int((found < 0).sum())} rows of a batch stored in the 'once' "
                           "layout have no next_obs and no next transition to take it from; "
                           "the file was not written by relayrl-gym or has been altered")
    values = _rows_as_bytes(column, width).copy()
    values[missing] = _rows_as_bytes(batch.column("obs"), width)[found]
    return _with_next_obs(batch, values, None, schema)


def logical_schema(schema: pa.Schema) -> pa.Schema:
    """The run's schema of a file schema in the ``once`` layout (next_obs not nullable)."""
    index = schema.get_field_index("next_obs")
    meta = {k: v for k, v in (schema.metadata or {}).items() if k != LAYOUT_KEY}
    return schema.set(index, schema.field(index).with_nullable(False)).with_metadata(meta)
