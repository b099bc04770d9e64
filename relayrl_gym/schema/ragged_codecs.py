"""Codecs of the spaces whose values vary in size from step to step: Text, Sequence, Graph, OneOf.

Their batches are what Gymnasium's vector envs hold for them: a sequence of ``n`` values, one per
env (reading back gives a 1-D object array, which slices and concatenates like any other leaf).
Each value comes back as Gymnasium builds it, so ``space.contains`` accepts it:

- ``Text`` -> ``string``; a ``str``.
- ``Sequence(F)`` -> ``list<F's column type>``; a tuple of F's values, or with ``stack=True``
  one batch of F (an array with a leading axis of the sequence's length, for a Box).
- ``Graph(N, E)`` -> ``struct<nodes: list<N>, edges: list<E>, edge_links: list<int32[2]>>``
  (no edge columns when E is None); a `gymnasium.spaces.GraphInstance`, with ``None`` where the
  env gave ``None``, and int32 edge links (what ``Graph.sample`` makes).
- ``OneOf(S0, S1, ...)`` -> ``struct<index: int64, 0: S0, 1: S1, ...>``, child ``i`` null
  unless ``index == i``; an ``(index, value)`` tuple.

Converting them is per-value Python work, on the writer thread; spaces of fixed size never come
here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from gymnasium.spaces import GraphInstance

from relayrl_gym.schema.arrow_arrays import arrow_to_numpy, numpy_to_arrow, strings_to_arrow

if TYPE_CHECKING:
    from relayrl_gym.schema.codecs import Codec, LeafCodec

__all__ = ["GraphCodec", "OneOfCodec", "RaggedCodec", "SequenceCodec", "TextCodec", "one_array"]


def one_array(array: pa.Array | pa.ChunkedArray, arrow_type: pa.DataType) -> pa.Array:
    """A column as one array: the chunks of a chunked array combined."""
    if not isinstance(array, pa.ChunkedArray):
        return array
    if array.num_chunks == 1:
        return array.chunk(0)
    return array.combine_chunks() if array.num_chunks else pa.array([], arrow_type)


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array of ``values``; tuples stay whole (``np.array`` would unpack them)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _list_array(arrow_type: pa.DataType, lengths: Sequence[int], values: pa.Array,
                valid: np.ndarray | None = None) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    mask = None if valid is None or valid.all() else numpy_to_arrow(~valid)
    return pa.ListArray.from_arrays(numpy_to_arrow(offsets), values, type=arrow_type, mask=mask)


def _list_parts(array: pa.ListArray) -> tuple[list[int], pa.Array, np.ndarray | None]:
    """Offsets counted from 0, the values they index and the validity of a (sliced) list
    array (None: no nulls)."""
    if not len(array):  # may have no offsets buffer at all
        return [0], array.values.slice(0, 0), None
    # The buffers, not ``.offsets``: they mean the same whatever the pyarrow version.
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset:][: len(array) + 1]
    first = int(offsets[0])
    values = array.values.slice(first, int(offsets[-1]) - first)
    valid = arrow_to_numpy(array.is_valid()) if array.null_count else None
    return (offsets - first).tolist(), values, valid


class RaggedCodec:
    """What the codecs of varying-size spaces share: their batches are sequences of values."""

    arrow_type: pa.DataType
    #: A guess at the bytes of one value, to size the recorder's blocks.
    row_bytes: int

    def field(self, name: str, nullable: bool = False) -> pa.Field:
        return pa.field(name, self.arrow_type, nullable=nullable)

    def alloc(self, capacity: int) -> list[Any]:
        return [None] * capacity

    def put(self, buf: list[Any], start: int, values: Sequence[Any]) -> None:
        buf[start : start + len(values)] = list(values)

    def concat(self, parts: Sequence[Sequence[Any]]) -> list[Any]:
        return list(itertools.chain.from_iterable(parts))

    def stack(self, values: Sequence[Any]) -> list[Any]:
        return list(values)

    def rows(self, batch: Sequence[Any]) -> list[Any]:
        return list(batch)

    def take(self, batch: Sequence[Any], start: int, stop: int) -> tuple[Any, ...]:
        # A tuple: what Gymnasium's ``concatenate`` makes of these spaces' values.
        return tuple(batch[start:stop])

    def length(self, batch: Sequence[Any]) -> int:
        return len(batch)

    def replace_row(self, batch: Sequence[Any], i: int, value: Any) -> list[Any]:
        out = list(batch)
        out[i] = value
        return out


class TextCodec(RaggedCodec):
    """Codec of a Text space: a string column.

    >>> codec = TextCodec(8)
    >>> codec.from_arrow(codec.to_arrow(("go", "stop"), 2))
    array(['go', 'stop'], dtype=object)
    """

    def __init__(self, max_length: int) -> None:
        self.arrow_type = pa.string()
        self.row_bytes = int(max_length) + 4

    def to_arrow(self, batch: Sequence[str], n: int) -> pa.Array:
        return strings_to_arrow(list(batch[:n]))

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> np.ndarray:
        return np.array(one_array(array, self.arrow_type).to_pylist(), dtype=object)


class SequenceCodec(RaggedCodec):
    """Codec of a Sequence space: a list column of its feature space's column type.

    >>> from relayrl_gym.schema.codecs import codec_for
    >>> from gymnasium import spaces
    >>> codec = codec_for(spaces.Sequence(spaces.Discrete(4)))
    >>> codec.from_arrow(codec.to_arrow([(1, 3), ()], 2))[0]
    (np.int64(1), np.int64(3))
    """

    def __init__(self, feature: Codec, stack: bool) -> None:
        self.feature = feature
        self.stacked = bool(stack)
        self.arrow_type = pa.list_(feature.field("item"))
        self.row_bytes = 8 * feature.row_bytes + 4

    def to_arrow(self, batch: Sequence[Any], n: int) -> pa.Array:
        values, feature = batch[:n], self.feature
        if self.stacked:  # each value is one batch of the feature space
            lengths = [feature.length(v) for v in values]
            flat = feature.concat(values) if len(values) else feature.stack([])
        else:
            lengths = [len(v) for v in values]
            flat = feature.stack(list(itertools.chain.from_iterable(values)))
        return _list_array(self.arrow_type, lengths, feature.to_arrow(flat, sum(lengths)))

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> np.ndarray:
        offsets, values, _ = _list_parts(one_array(array, self.arrow_type))
        flat = self.feature.from_arrow(values)
        bounds = itertools.pairwise(offsets)
        if self.stacked:
            return _objects([self.feature.take(flat, a, b) for a, b in bounds])
        items = self.feature.rows(flat)
        return _objects([tuple(items[a:b]) for a, b in bounds])


class GraphCodec(RaggedCodec):
    """Codec of a Graph space: a struct of the nodes, edges and edge links lists."""

    def __init__(self, nodes: Codec, edges: Codec | None, links: LeafCodec) -> None:
        self.parts: list[Codec] = [nodes] if edges is None else [nodes, edges, links]
        names = ("nodes", "edges", "edge_links")
        self.arrow_type = pa.struct([pa.field(name, pa.list_(c.field("item")))
                                     for name, c in zip(names, self.parts)])
        self.row_bytes = 16 * sum(c.row_bytes for c in self.parts) + 12

    def to_arrow(self, batch: Sequence[Any], n: int) -> pa.Array:
        values = batch[:n]
        children = [self._lists(field.type, codec, [v[i] for v in values])
                    for i, (field, codec) in enumerate(zip(self.arrow_type, self.parts))]
        return pa.StructArray.from_arrays(children, fields=list(self.arrow_type))

    @staticmethod
    def _lists(arrow_type: pa.DataType, codec: Codec, parts: list[Any]) -> pa.Array:
        valid = np.fromiter((p is not None for p in parts), np.bool_, len(parts))
        present = [p for p in parts if p is not None]
        lengths = [0 if p is None else codec.length(p) for p in parts]
        flat = codec.concat(present) if present else codec.stack([])
        return _list_array(arrow_type, lengths, codec.to_arrow(flat, sum(lengths)), valid)

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> np.ndarray:
        array = one_array(array, self.arrow_type)
        columns = [self._split(codec, lists) for codec, lists in zip(self.parts, array.flatten())]
        while len(columns) < 3:  # no edge space: no edges
            columns.append([None] * len(array))
        return _objects([GraphInstance(*parts) for parts in zip(*columns)])

    @staticmethod
    def _split(codec: Codec, lists: pa.Array) -> list[Any]:
        offsets, values, valid = _list_parts(lists)
        flat = codec.from_arrow(values)
        return [codec.take(flat, a, b) if valid is None or valid[i] else None
                for i, (a, b) in enumerate(itertools.pairwise(offsets))]


class OneOfCodec(RaggedCodec):
    """Codec of a OneOf space: the index of the value's space, and one nullable child per space
    that holds the values of that space (null in the other rows).

    Nullable children rather than an Arrow union: pandas, Polars and DuckDB read them, and
    pyarrow's struct ``flatten`` aborts on a union that went through ``take`` (pyarrow 26).

    >>> from relayrl_gym.schema.codecs import codec_for
    >>> from gymnasium import spaces
    >>> codec = codec_for(spaces.OneOf([spaces.Discrete(3), spaces.Text(4)]))
    >>> codec.to_arrow([(1, "ab"), (0, 2)], 2).to_pylist()
    [{'index': 1, '0': None, '1': 'ab'}, {'index': 0, '0': 2, '1': None}]
    """

    def __init__(self, children: list[Codec]) -> None:
        self.children = children
        self.arrow_type = pa.struct([pa.field("index", pa.int64(), nullable=False)]
                                    + [c.field(str(i), nullable=True)
                                       for i, c in enumerate(children)])
        self.row_bytes = max((c.row_bytes for c in children), default=0) + 9

    def to_arrow(self, batch: Sequence[Any], n: int) -> pa.Array:
        values = batch[:n]
        index = np.fromiter((v[0] for v in values), np.int64, n)
        if n and not 0 <= index.min() <= index.max() < len(self.children):
            bad = index[(index < 0) | (index >= len(self.children))][0]
            raise ValueError(f"a OneOf value's index must be in [0, {len(self.children)}), "
                             f"got {bad}")
        arrays = [numpy_to_arrow(index)]
        for j, codec in enumerate(self.children):
            mine = index == j
            rows = np.flatnonzero(mine)
            members = codec.to_arrow(codec.stack([values[i][1] for i in rows.tolist()]),
                                     len(rows))
            # Each row's place among this space's values; null (so a null row) elsewhere.
            place = np.zeros(n, np.int32)
            place[rows] = np.arange(len(rows), dtype=np.int32)
            validity = pa.py_buffer(np.packbits(mine, bitorder="little"))
            arrays.append(members.take(pa.Array.from_buffers(
                pa.int32(), n, [validity, pa.py_buffer(place)])))
        return pa.StructArray.from_arrays(arrays, fields=list(self.arrow_type))

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> np.ndarray:
        array = one_array(array, self.arrow_type)
        index = arrow_to_numpy(array.field(0))
        out = np.empty(len(array), dtype=object)
        for j, codec in enumerate(self.children):
            child = array.field(j + 1)
            values = child.filter(child.is_valid()) if child.null_count else child
            rows = np.flatnonzero(index == j)
            for i, value in zip(rows.tolist(), codec.rows(codec.from_arrow(values))):
                out[i] = (np.int64(j), value)
        return out
