"""Column codecs: one Gymnasium space <-> numpy column buffers <-> one Arrow column.

Observations and actions must round-trip exactly, so every leaf keeps its numpy dtype and shape:
a Box of shape ``S`` is a ``fixed_size_list<dtype>[prod(S)]`` column whose field metadata carries
``S`` (plain pyarrow, pandas and DuckDB read it without this package); Discrete is an integer
column of its dtype; MultiDiscrete and MultiBinary are fixed-size lists; Dict and Tuple are
structs of their parts. Spaces whose values vary in size per step (Text, Sequence, Graph, OneOf)
have codecs of their own, in `relayrl_gym.schema.ragged_codecs`.

A codec's *batch* is what Gymnasium's vector envs hold for ``n`` values of its space: an array
with a leading axis of ``n`` for a leaf, a dict or tuple of batches for Dict and Tuple, and a
sequence of ``n`` values for the spaces of varying size (read back as a 1-D object array).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.schema.arrow_arrays import (
    arrow_to_numpy,
    numpy_dtype,
    numpy_to_arrow,
    strings_to_arrow,
)
from relayrl_gym.schema.ragged_codecs import (
    GraphCodec,
    OneOfCodec,
    SequenceCodec,
    TextCodec,
    one_array,
)
from relayrl_gym.schema.spaces import unsupported_space

__all__ = ["Codec", "DictCodec", "GraphCodec", "LeafCodec", "OneOfCodec", "SequenceCodec",
           "TextCodec", "TupleCodec", "arrow_to_numpy", "codec_for", "numpy_dtype",
           "numpy_to_arrow", "strings_to_arrow"]


class Codec(Protocol):
    """The column codec of one space: its Arrow type, and batches of its values (whose form
    follows the space, see above) to and from Arrow arrays."""

    arrow_type: pa.DataType
    #: Bytes of one value (a guess for the spaces of varying size), to size record batches.
    row_bytes: int

    def field(self, name: str, nullable: bool = False) -> pa.Field: ...
    def alloc(self, capacity: int) -> Any: ...
    def put(self, buf: Any, start: int, values: Any) -> None: ...
    def concat(self, parts: Sequence[Any]) -> Any: ...
    def stack(self, values: Sequence[Any]) -> Any: ...
    def rows(self, batch: Any) -> list[Any]: ...
    def take(self, batch: Any, start: int, stop: int) -> Any: ...
    def length(self, batch: Any) -> int: ...
    def replace_row(self, batch: Any, i: int, value: Any) -> Any: ...
    def to_arrow(self, batch: Any, n: int) -> pa.Array: ...
    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> Any: ...


class LeafCodec:
    """Codec of one array-valued leaf of a space (Box, Discrete, MultiDiscrete, MultiBinary).

    >>> codec = codec_for(spaces.Box(0, 255, (2, 2), np.uint8))
    >>> buf = codec.alloc(4)
    >>> codec.put(buf, 0, np.arange(8, dtype=np.uint8).reshape(2, 2, 2))
    >>> codec.from_arrow(codec.to_arrow(buf, 2))[1]
    array([[4, 5],
           [6, 7]], dtype=uint8)
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.size = math.prod(self.shape)
        value_type = pa.from_numpy_dtype(self.dtype)
        self.arrow_type = value_type if not self.shape else pa.list_(value_type, self.size)
        self.row_bytes: int = self.dtype.itemsize * max(self.size, 1)

    def field_metadata(self) -> dict[bytes, bytes]:
        return {b"shape": json.dumps(list(self.shape)).encode(), b"dtype": self.dtype.str.encode()}

    def field(self, name: str, nullable: bool = False) -> pa.Field:
        return pa.field(name, self.arrow_type, nullable=nullable, metadata=self.field_metadata())

    def alloc(self, capacity: int) -> np.ndarray:
        return np.empty((capacity, *self.shape), dtype=self.dtype)

    def put(self, buf: np.ndarray, start: int, values: Any) -> None:
        """Writes a batch of rows at ``start``; ``values`` has a leading batch axis."""
        buf[start : start + len(values)] = values

    def concat(self, parts: Sequence[Any]) -> np.ndarray:
        """The batches joined along their first axis; a part may also be a list of single
        rows (stacked here, in one copy)."""
        if list in map(type, parts):  # one C-level pass
            return np.stack([row for part in parts for row in part])
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def stack(self, values: Sequence[Any]) -> np.ndarray:
        """One batch of single values (Gymnasium's ``concatenate``)."""
        if not len(values):
            return np.empty((0, *self.shape), self.dtype)
        return np.asarray(values, dtype=self.dtype).reshape(len(values), *self.shape)

    def rows(self, batch: np.ndarray) -> list[Any]:
        """A batch as single values (Gymnasium's ``iterate``): numpy scalars or arrays."""
        return list(batch)

    def take(self, batch: np.ndarray, start: int, stop: int) -> np.ndarray:
        return batch[start:stop]

    def replace_row(self, batch: np.ndarray, i: int, value: Any) -> np.ndarray:
        """``batch`` with row ``i`` set to ``value``: arrays are written in place, the
        sequences of varying-size spaces (immutable tuples in Gymnasium) copied. Use the
        result.

        >>> codec = codec_for(spaces.Dict({"n": spaces.Discrete(3), "s": spaces.Text(4)}))
        >>> codec.replace_row({"n": np.array([0, 1]), "s": ("ab", "cd")}, 1, {"n": 2, "s": "x"})
        {'n': array([0, 2]), 's': ['ab', 'x']}
        """
        batch[i] = value
        return batch

    def length(self, batch: np.ndarray) -> int:
        return len(batch)

    def to_arrow(self, buf: np.ndarray, n: int) -> pa.Array:
        rows = np.ascontiguousarray(buf[:n], dtype=self.dtype)  # never reinterpret bytes
        if not self.shape:
            return numpy_to_arrow(rows, self.arrow_type)
        flat = numpy_to_arrow(rows.reshape(-1), self.arrow_type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, self.size)

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> np.ndarray:
        array = one_array(array, self.arrow_type)
        if not self.shape:
            return np.asarray(arrow_to_numpy(array), dtype=self.dtype)
        if array.null_count:
            flat = arrow_to_numpy(array.flatten())
        else:  # the child values of these rows, without a compute call
            flat = arrow_to_numpy(array.values.slice(array.offset * self.size,
                                                     len(array) * self.size))
        return np.asarray(flat, dtype=self.dtype).reshape(len(array), *self.shape)


class DictCodec:
    """Codec of a Dict space: a struct column with one child per key."""

    def __init__(self, children: dict[str, Codec]) -> None:
        self.children = children
        self.arrow_type = pa.struct([c.field(k) for k, c in children.items()])
        self.row_bytes: int = sum(c.row_bytes for c in children.values())

    def field(self, name: str, nullable: bool = False) -> pa.Field:
        return pa.field(name, self.arrow_type, nullable=nullable)

    def alloc(self, capacity: int) -> dict[str, Any]:
        return {k: c.alloc(capacity) for k, c in self.children.items()}

    def put(self, buf: dict[str, Any], start: int, values: dict[str, Any]) -> None:
        for key, codec in self.children.items():
            codec.put(buf[key], start, values[key])

    def concat(self, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {k: c.concat([p[k] for p in parts]) for k, c in self.children.items()}

    def stack(self, values: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {k: c.stack([v[k] for v in values]) for k, c in self.children.items()}

    def rows(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        keys = list(self.children)
        columns = [c.rows(batch[k]) for k, c in self.children.items()]
        return [dict(zip(keys, values)) for values in zip(*columns)]

    def take(self, batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
        return {k: c.take(batch[k], start, stop) for k, c in self.children.items()}

    def replace_row(self, batch: dict[str, Any], i: int, value: dict[str, Any]
                    ) -> dict[str, Any]:
        return {k: c.replace_row(batch[k], i, value[k]) for k, c in self.children.items()}

    def length(self, batch: dict[str, Any]) -> int:
        return next((c.length(batch[k]) for k, c in self.children.items()), 0)

    def to_arrow(self, buf: dict[str, Any], n: int) -> pa.Array:
        arrays = [c.to_arrow(buf[k], n) for k, c in self.children.items()]
        return pa.StructArray.from_arrays(arrays, fields=list(self.arrow_type))

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> dict[str, Any]:
        parts = one_array(array, self.arrow_type).flatten()
        return {k: c.from_arrow(p) for (k, c), p in zip(self.children.items(), parts)}


class TupleCodec:
    """Codec of a Tuple space: a struct column with children named "0", "1", ..."""

    def __init__(self, children: list[Codec]) -> None:
        self.children = children
        self.arrow_type = pa.struct([c.field(str(i)) for i, c in enumerate(children)])
        self.row_bytes: int = sum(c.row_bytes for c in children)

    def field(self, name: str, nullable: bool = False) -> pa.Field:
        return pa.field(name, self.arrow_type, nullable=nullable)

    def alloc(self, capacity: int) -> tuple[Any, ...]:
        return tuple(c.alloc(capacity) for c in self.children)

    def put(self, buf: tuple[Any, ...], start: int, values: tuple[Any, ...]) -> None:
        for codec, part, value in zip(self.children, buf, values):
            codec.put(part, start, value)

    def concat(self, parts: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
        return tuple(c.concat([p[i] for p in parts]) for i, c in enumerate(self.children))

    def stack(self, values: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
        return tuple(c.stack([v[i] for v in values]) for i, c in enumerate(self.children))

    def rows(self, batch: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return list(zip(*(c.rows(part) for c, part in zip(self.children, batch))))

    def take(self, batch: tuple[Any, ...], start: int, stop: int) -> tuple[Any, ...]:
        return tuple(c.take(part, start, stop) for c, part in zip(self.children, batch))

    def replace_row(self, batch: tuple[Any, ...], i: int, value: tuple[Any, ...]
                    ) -> tuple[Any, ...]:
        return tuple(c.replace_row(part, i, v)
                     for c, part, v in zip(self.children, batch, value))

    def length(self, batch: tuple[Any, ...]) -> int:
        return self.children[0].length(batch[0]) if self.children else 0

    def to_arrow(self, buf: tuple[Any, ...], n: int) -> pa.Array:
        arrays = [c.to_arrow(part, n) for c, part in zip(self.children, buf)]
        return pa.StructArray.from_arrays(arrays, fields=list(self.arrow_type))

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> tuple[Any, ...]:
        parts = one_array(array, self.arrow_type).flatten()
        return tuple(c.from_arrow(p) for c, p in zip(self.children, parts))


#: Gymnasium's edge links: (edges, 2) node indices, int32 as `spaces.Graph.sample` makes them.
_EDGE_LINKS = LeafCodec((2,), np.dtype(np.int32))


def codec_for(space: spaces.Space) -> Codec:
    """Returns the codec of a space, or raises `UnsupportedSpaceError` naming the space.

    >>> codec_for(spaces.Sequence(spaces.Discrete(4))).arrow_type
    ListType(list<item: int64 not null>)
    """
    if isinstance(space, spaces.Box | spaces.MultiDiscrete | spaces.MultiBinary):
        return LeafCodec(space.shape, space.dtype)
    if isinstance(space, spaces.Discrete):
        return LeafCodec((), space.dtype)
    if isinstance(space, spaces.Dict):
        return DictCodec({k: codec_for(s) for k, s in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return TupleCodec([codec_for(s) for s in space.spaces])
    if isinstance(space, spaces.Text):
        return TextCodec(space.max_length)
    if isinstance(space, spaces.Sequence):
        return SequenceCodec(codec_for(space.feature_space), stack=space.stack)
    if isinstance(space, spaces.Graph):
        edges = None if space.edge_space is None else codec_for(space.edge_space)
        return GraphCodec(codec_for(space.node_space), edges, _EDGE_LINKS)
    if isinstance(space, spaces.OneOf):
        return OneOfCodec([codec_for(s) for s in space.spaces])
    raise unsupported_space(space)
