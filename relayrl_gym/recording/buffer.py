"""Blocks of recorded steps that the stepping thread appends to and the writer turns into Arrow."""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from relayrl_gym.core.transitions import TransitionBatch
from relayrl_gym.recording.slab import ZeroRows, joined, split_point
from relayrl_gym.schema.arrow_arrays import pooled_array
from relayrl_gym.schema.codecs import (
    LeafCodec,
    numpy_dtype,
    numpy_to_arrow,
    strings_to_arrow,
)
from relayrl_gym.schema.infos import infos_column
from relayrl_gym.schema.transitions import MASK_TYPE, TransitionSchema
from relayrl_gym.storage.obs_layout import next_rows

__all__ = ["StepBlock"]

#: Blocks of observations this large (bytes a row) are cut around dropped rows (see `_kept`)...
CUT_ROWS_FROM = 1024
#: ...and so are blocks that drop fewer rows than this, in slices of this many rows on
#: average (a MuJoCo block of 8192 rows drops a few: a handful of slices costs less than a
#: filter's copy of the whole block, while many small batches would cost more than it).
CUT_FEWER_THAN = 16
CUT_SLICE_ROWS = 256

_BLOCK_SEQ = itertools.count()
_TIMESTAMP = pa.timestamp("ns", tz="UTC")


def _spread(parts: Sequence[Any], rows: np.ndarray) -> np.ndarray:
    """One int64 column from per-batch values, each one int for all of its batch's ``rows``
    or an array of one per row (timestamps, model versions)."""
    kinds = set(map(type, parts))
    if kinds <= {int}:
        return np.repeat(np.asarray(parts, np.int64), rows)
    if kinds == {np.ndarray}:  # one per row already
        return np.concatenate(parts).astype(np.int64, copy=False)
    return np.concatenate([np.broadcast_to(np.asarray(v, np.int64), (k,))
                           for v, k in zip(parts, rows.tolist())])


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


def _present(parts: Sequence[Any], starts: list[int]) -> list[tuple[int, Any]]:
    """``(first row, part)`` of the batches whose part is not None (a block of none: one
    C-level pass, where a comprehension would visit every batch)."""
    if not any(map(operator.is_not, parts, itertools.repeat(None))):
        return []
    return [(start, part) for start, part in zip(starts, parts) if part is not None]


def _joined_index(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The block's ``env_index`` column: the vector env hands the same array every step."""
    first = parts[0]
    if all(map(operator.is_, parts, itertools.repeat(first))):
        return np.tile(first.astype(np.int32, copy=False), len(parts))
    return np.concatenate(parts).astype(np.int32, copy=False)


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
    """Recorded batches awaiting conversion: the `TransitionBatch` objects the block owns.

    A batch may carry a ``valid`` row mask: rows it marks False (e.g. NEXT_STEP reset
    pseudo-steps) are dropped at conversion, which is cheaper than selecting rows per step.

    Appending is a list append (the stepping thread's whole recording cost, besides the copies
    that give the block ownership); concatenating the columns, placing the sparse ones and
    building Arrow arrays happens on the writer thread.
    """

    __slots__ = ("arrow", "batches", "build_seconds", "first", "n", "offered", "seq", "stamps")

    def __init__(self) -> None:
        self.seq = next(_BLOCK_SEQ)  # creation order = row order, across recorders
        self.batches: list[tuple[Any, ...]] = []  # TransitionBatch columns, as plain tuples
        self.stamps: list[Any] = []  # each batch's timestamp (ns), or its rows' (an array)
        self.n = 0
        self.first = 0  # time.time_ns() of the first row: a block is handed over by age too
        #: The block's rows as Arrow batches, once built (then ``batches`` is let go of).
        self.arrow: list[pa.RecordBatch] | None = None
        #: Seconds the recording thread took to build ``arrow``: part of the rows' way to the
        #: sinks, which the writer's pacing counts with its own work.
        self.build_seconds = 0.0
        #: Whether the block has gone to the sinks (or begun to).
        self.offered = False

    def append(self, batch: TransitionBatch, timestamp_ns: int | np.ndarray) -> None:
        """Takes ``batch`` (recorded at ``timestamp_ns``, or each row at its own) as the
        block's next rows."""
        # An exact tuple of arrays and scalars, which the garbage collector stops tracking
        # (a NamedTuple it would traverse at every collection while the block waits).
        self.batches.append(tuple(batch))
        self.stamps.append(timestamp_ns)
        self.n += len(batch.env_index)

    def to_record_batches(
        self, schema: TransitionSchema, run_id: str, actor_ids: list[str], agent_ids: list[str],
        once_schema: pa.Schema | None = None, zeros: ZeroRows | None = None,
        cut: bool = False,
    ) -> list[pa.RecordBatch]:
        """Builds the Arrow batches of the block's rows; ``actor_ids``/``agent_ids`` are by env
        index. One batch, except with ``cut`` where rows marked invalid are dropped from large
        observations, or are few: the batch is then cut around them (zero-copy slices) instead
        of copying every other row (see `_kept`); and where the block's observations lie in two
        arrays of a slab, each part is built as a block of its own (no copy to join them).

        With ``once_schema`` (the run's `stored_schema`) the batch is in the ``once``
        observation layout: a row's ``next_obs`` is null where the block holds it as the obs of
        the same slot's next step (see `_next_obs_once`), whose zeroed rows ``zeros`` gives.
        """
        n = self.n
        col = dict(zip(TransitionBatch._fields, zip(*self.batches)))  # one C-level transpose
        obs = joined(col["obs"])
        if obs is None and cut:
            at = split_point(col["obs"])
            if at is not None:  # two spans of slab arrays: two batches, neither copied
                return [batch for half in self._halves(at) for batch in half.to_record_batches(
                    schema, run_id, actor_ids, agent_ids, once_schema, zeros, cut)]
        env_index_parts = col["env_index"]
        env_index = _joined_index(env_index_parts)
        k_rows = np.fromiter(map(len, env_index_parts), np.int64, len(self.batches))
        starts = np.concatenate([[0], np.cumsum(k_rows)[:-1]]).astype(np.int64).tolist()
        timestamps = _spread(self.stamps, k_rows)
        versions = _spread(col["model_version"], k_rows)
        indices = numpy_to_arrow(env_index)
        if obs is None:
            obs = schema.obs.concat(col["obs"])
        episode_ids = np.concatenate(col["episode_id"]).astype(np.int64)
        steps = np.concatenate(col["step"]).astype(np.int64)
        masked = _present(col["valid"], starts)
        keep = None
        if masked:
            keep = np.ones(n, np.bool_)
            for start, valid in masked:
                keep[start : start + len(valid)] = valid
        codec = schema.obs
        # Large rows, or few rows dropped: the batch is cut around dropped rows, so a row's
        # next row is in its part.
        part = None
        if keep is not None and cut:
            dropped = np.cumsum(~keep)
            if codec.row_bytes >= CUT_ROWS_FROM or dropped[-1] < min(
                    CUT_FEWER_THAN, n // CUT_SLICE_ROWS):
                part = dropped
        if once_schema is not None and isinstance(codec, LeafCodec) and codec.shape:
            values, missing = _next_obs_once(codec, col, starts, obs, env_index, episode_ids,
                                             steps, keep, zeros, part)
            next_obs_array: pa.Array = pa.FixedSizeListArray.from_arrays(
                codec.to_arrow(values, n).values, codec.size, mask=numpy_to_arrow(missing))
        else:
            next_values = codec.concat(col["next_obs"])
            named = _present(col["next_from"], starts)  # rows another row's obs fills
            if named:
                next_values = np.array(next_values)  # never into arrays a batch handed over
            for start, following in named:
                rows = np.flatnonzero(following >= 0)
                next_values[start + rows] = obs[start + following[rows]]
            next_obs_array = codec.to_arrow(next_values, n)
        action = schema.action.concat(col["action"])
        columns = [
            _repeated(run_id, n),
            _gathered(actor_ids, indices),
            _gathered(agent_ids, indices),
            indices,
            numpy_to_arrow(episode_ids),
            numpy_to_arrow(steps),
            schema.obs.to_arrow(obs, n),
            schema.action.to_arrow(action, n),
            numpy_to_arrow(_flat(col["reward"], np.float64, n, k_rows)),
            next_obs_array,
            numpy_to_arrow(_flat(col["terminated"], np.bool_, n, k_rows)),
            numpy_to_arrow(_flat(col["truncated"], np.bool_, n, k_rows)),
            numpy_to_arrow(versions),
            numpy_to_arrow(timestamps, _TIMESTAMP),
            _masks(col, starts, n),
            _outputs(col, starts, n, schema.data_type),
            infos_column(col["infos"], starts, k_rows.tolist(), n),
        ]
        batch = pa.RecordBatch.from_arrays(
            columns, schema=schema.arrow if once_schema is None else once_schema)
        return _kept(batch, keep, cut=part is not None)


    def _halves(self, at: int) -> tuple[StepBlock, StepBlock]:
        """The block's batches before ``at`` and from it on, as two blocks."""
        halves = (StepBlock(), StepBlock())
        for half, batches, stamps in zip(halves, (self.batches[:at], self.batches[at:]),
                                         (self.stamps[:at], self.stamps[at:])):
            half.batches, half.stamps = batches, stamps
            half.n = sum(len(batch[0]) for batch in batches)
        return halves


def _kept(batch: pa.RecordBatch, keep: np.ndarray | None, cut: bool) -> list[pa.RecordBatch]:
    """The batch's rows that ``keep`` marks (None: all): filtered (a copy of every kept row),
    or, with ``cut``, as slices between the rows dropped (no copy: for large observations,
    where a block of images is megabytes to copy and a few more batches cost nothing, and for
    blocks that drop few rows)."""
    if keep is None:
        return [batch]
    if not cut:
        return [batch.filter(numpy_to_arrow(keep))]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.view(np.int8), [0]])))
    return [batch.slice(start, stop - start)
            for start, stop in zip(edges[::2].tolist(), edges[1::2].tolist())]


def _next_obs_once(codec: LeafCodec, col: dict[str, tuple[Any, ...]], starts: list[int],
                   obs: np.ndarray, env_index: np.ndarray, episode_ids: np.ndarray,
                   steps: np.ndarray, keep: np.ndarray | None, zeros: ZeroRows | None = None,
                   part: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``next_obs`` rows of the ``once`` layout and the mask of those left null (zero,
    free to compress): the rows whose value the block holds as the obs of the same slot's
    next step in the same episode (a row that is kept).

    A batch whose ``next_obs`` is the very array the following batch holds as ``obs``, for the
    same slots in the same order (the vector env hands one copy over as both), is not even
    copied: each row's next observation is the following batch's row for its slot. Neither
    are the rows a batch's ``next_from`` names (a game agent's next obs, handed over as the
    obs of its next row). The rows of other batches (the client API, game agents whose next
    row is in a later batch) are copied and compared with their next step's obs, found by
    slot, episode and step. With ``part`` (each row's part of a batch to be cut), a row's
    next_obs is left null only where its next row is in the same part.
    """
    obs_parts, next_parts, env_parts = col["obs"], col["next_obs"], col["env_index"]
    n = len(obs)
    values = (zeros.take(n) if zeros is not None
              else pooled_array((n, *codec.shape), codec.dtype, zero=True))
    shared = np.zeros(n, np.bool_)
    partner = np.full(n, -1, np.int64)
    last = len(next_parts) - 1
    for b, (start, following, from_row) in enumerate(zip(starts, next_parts, col["next_from"])):
        rows = len(env_parts[b])
        if b < last and following is obs_parts[b + 1] and (
                env_parts[b] is env_parts[b + 1] or np.array_equal(env_parts[b], env_parts[b + 1])):
            shared[start : start + rows] = True
            partner[start : start + rows] = np.arange(start + rows, start + 2 * rows)
        elif from_row is None:
            values[start : start + rows] = following
        else:  # rows whose next obs is the obs of a row named: only the others are copied
            named = from_row >= 0
            own = np.flatnonzero(~named)
            values[start + own] = following[own]
            shared[start : start + rows] = named
            partner[start : start + rows] = np.where(named, start + from_row, -1)
    if not shared.all():  # rows copied: find each one's next step by slot, episode and step
        first, second = next_rows(env_index, episode_ids, steps)
        copied_rows = ~shared[first]
        first, second = first[copied_rows], second[copied_rows]
        # Bytes, not values: -0.0 and 0.0 (or two NaNs) are told apart as the env gave them.
        value_bytes = values.reshape(n, -1).view(np.uint8)
        obs_bytes = np.ascontiguousarray(obs).reshape(n, -1).view(np.uint8)
        equal = (value_bytes[first] == obs_bytes[second]).all(axis=1)
        partner[first[equal]] = second[equal]
    candidates = np.flatnonzero(partner >= 0)
    to = partner[candidates]
    same = (episode_ids[to] == episode_ids[candidates]) & (steps[to] == steps[candidates] + 1)
    if keep is not None:
        same &= keep[to]
    if part is not None:  # the batch is cut there: a row's next row must be in its own part
        same &= part[to] == part[candidates]
    copied = candidates[~same & shared[candidates]]
    values[copied] = obs[partner[copied]]
    missing = np.zeros(n, np.bool_)
    missing[candidates[same]] = True
    values[missing & ~shared] = 0  # compared equal: stored once, as the next row's obs
    if zeros is not None:
        zeros.written(values, ~missing)
    return values, missing


def _by_row(parts: tuple[dict[int, Any] | None, ...], starts: list[int]) -> dict[int, Any]:
    """Block row -> value of a sparse column, from each batch's own row -> value dict."""
    found: dict[int, Any] = {}
    if not any(parts):  # the common case: no batch of the block has one (one C-level pass)
        return found
    for values, start in zip(parts, starts):
        if values:
            found.update({start + row: value for row, value in values.items()})
    return found


def _masks(col: dict[str, tuple[Any, ...]], starts: list[int], n: int) -> pa.Array:
    """The list<bool> action-mask column: from whole ``(rows, actions)`` batches (``mask_batch``)
    and from per-row values (``masks``), in any mix; rows without one are null."""
    dense = _present(col["mask_batch"], starts)
    sparse = _by_row(col["masks"], starts)
    if not dense and not sparse:
        return pa.nulls(n, MASK_TYPE)
    lengths = np.zeros(n, np.int32)
    pieces: list[tuple[int, np.ndarray]] = []  # (first row, its rows' masks, flattened)
    for start, mask in dense:
        rows, width = mask.shape
        lengths[start : start + rows] = width
        pieces.append((start, np.asarray(mask, np.bool_).reshape(-1)))
    for row, mask in sparse.items():
        values = np.asarray(mask, np.bool_).reshape(-1)
        lengths[row] = len(values)
        pieces.append((row, values))
    if len(dense) + len(sparse) > 1:
        pieces.sort(key=lambda piece: piece[0])
    valid = np.zeros(n, np.bool_)
    for start, mask in dense:
        valid[start : start + len(mask)] = True
    if sparse:
        valid[np.fromiter(sparse, np.int64, len(sparse))] = True
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = numpy_to_arrow(np.concatenate([piece for _, piece in pieces]))
    return pa.ListArray.from_arrays(numpy_to_arrow(offsets), values,
                                    mask=numpy_to_arrow(~valid))


def _outputs(col: dict[str, tuple[Any, ...]], starts: list[int], n: int,
             arrow_type: pa.DataType) -> pa.Array:
    """The struct column of policy outputs: from whole per-call batches (``output_batch``) and
    from per-row values (``outputs``), in any mix; rows without any are null."""
    dense = _present(col["output_batch"], starts)
    sparse = _by_row(col["outputs"], starts)
    if not dense:
        return _sparse(sparse, n, arrow_type)
    if sparse:  # both forms in one block (rare): every row as a value
        for start, data in dense:
            rows = len(next(iter(data.values()))) if data else 0
            for i in range(rows):
                sparse[start + i] = {name: np.asarray(v[i]).tolist() for name, v in data.items()}
        return _sparse(sparse, n, arrow_type)
    if not pa.types.is_struct(arrow_type):
        return pa.nulls(n, arrow_type)
    valid = np.zeros(n, np.bool_)
    children = []
    for field in arrow_type:
        fixed = pa.types.is_fixed_size_list(field.type)  # an output with several values
        leaf = field.type.value_type if fixed else field.type
        width = field.type.list_size if fixed else 1
        column = np.zeros((n, width), numpy_dtype(leaf))
        for start, data in dense:
            if field.name in data:
                values = np.asarray(data[field.name]).reshape(len(data[field.name]), -1)
                column[start : start + len(values)] = values
                valid[start : start + len(values)] = True
        flat = numpy_to_arrow(column.reshape(-1), leaf)
        children.append(pa.FixedSizeListArray.from_arrays(flat, width) if fixed else flat)
    return pa.StructArray.from_arrays(children, fields=list(arrow_type),
                                      mask=numpy_to_arrow(~valid))


def _sparse(values: dict[int, Any], n: int, arrow_type: pa.DataType) -> pa.Array:
    if not values:
        return pa.nulls(n, arrow_type)
    column: list[Any] = [None] * n
    for row, value in values.items():
        column[row] = value
    if arrow_type == pa.string():
        return strings_to_arrow(column)
    return pa.array(column, type=arrow_type)
