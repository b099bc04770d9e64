"""Column codecs: one Gymnasium space <-> numpy column buffers <-> one Arrow column.

Observations and actions must round-trip exactly, so every leaf keeps its numpy dtype and shape:
a Box of shape ``S`` is a ``fixed_size_list<dtype>[prod(S)]`` column whose field metadata carries
``S`` (plain pyarrow, pandas and DuckDB read it without this package); Discrete is ``int64``;
MultiDiscrete and MultiBinary are fixed-size lists; Dict and Tuple are structs of their parts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.errors import UnsupportedSpaceError

__all__ = ["Codec", "DictCodec", "LeafCodec", "TupleCodec", "arrow_to_numpy", "codec_for",
           "numpy_dtype", "numpy_to_arrow", "strings_to_arrow"]


def strings_to_arrow(values: Sequence[str | None]) -> pa.Array:
    """A list of str (or None) as an Arrow string array, without ``pa.array``'s pandas probe."""
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    validity = None
    if any(v is None for v in values):
        validity = pa.py_buffer(np.packbits([v is not None for v in values], bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def numpy_to_arrow(values: np.ndarray, arrow_type: pa.DataType | None = None) -> pa.Array:
    """A 1-D numeric/bool numpy array as an Arrow array, zero-copy where the layout allows.

    Unlike ``pa.array(ndarray)`` this never probes for pandas (which imports it, on the writer
    thread, holding the GIL for a second).
    """
    values = np.ascontiguousarray(values)
    if arrow_type is None:
        arrow_type = pa.from_numpy_dtype(values.dtype)
    if values.dtype == np.bool_:
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
    else:
        data = pa.py_buffer(values)
    return pa.Array.from_buffers(arrow_type, len(values), [None, data])


_NUMPY_TYPES = {pa.from_numpy_dtype(np.dtype(t)): np.dtype(t) for t in (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
    "float32", "float64")}


def numpy_dtype(arrow_type: pa.DataType) -> np.dtype:
    """The numpy dtype of a numeric or bool Arrow type."""
    if pa.types.is_boolean(arrow_type):
        return np.dtype(np.bool_)
    found = _NUMPY_TYPES.get(arrow_type)
    if found is None:
        raise TypeError(f"no numpy dtype for Arrow type {arrow_type}")
    return found


def arrow_to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric/bool/timestamp Arrow array without nulls as numpy, without ``to_numpy``'s
    pandas probe (timestamps come back as int64).

    >>> arrow_to_numpy(pa.array([True, False, True])).tolist()
    [True, False, True]
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    n, offset = len(array), array.offset
    if array.null_count or not (pa.types.is_primitive(array.type)):
        return np.asarray(array.to_numpy(zero_copy_only=False))
    data = array.buffers()[1]
    if pa.types.is_boolean(array.type):
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return bits[offset : offset + n].view(np.bool_)
    dtype = np.int64 if pa.types.is_timestamp(array.type) else _NUMPY_TYPES.get(array.type)
    if dtype is None:
        return np.asarray(array.to_numpy(zero_copy_only=False))
    return np.frombuffer(data, dtype)[offset : offset + n]


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

    def to_arrow(self, buf: np.ndarray, n: int) -> pa.Array:
        rows = np.ascontiguousarray(buf[:n], dtype=self.dtype)  # never reinterpret bytes
        if not self.shape:
            return numpy_to_arrow(rows, self.arrow_type)
        flat = numpy_to_arrow(rows.reshape(-1), self.arrow_type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, self.size)

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> np.ndarray:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks else pa.array([], self.arrow_type)
        if not self.shape:
            return np.asarray(arrow_to_numpy(array), dtype=self.dtype)
        flat = arrow_to_numpy(array.flatten())
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

    def to_arrow(self, buf: dict[str, Any], n: int) -> pa.Array:
        arrays = [c.to_arrow(buf[k], n) for k, c in self.children.items()]
        return pa.StructArray.from_arrays(arrays, fields=list(self.arrow_type))

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> dict[str, Any]:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        parts = array.flatten()
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

    def to_arrow(self, buf: tuple[Any, ...], n: int) -> pa.Array:
        arrays = [c.to_arrow(part, n) for c, part in zip(self.children, buf)]
        return pa.StructArray.from_arrays(arrays, fields=list(self.arrow_type))

    def from_arrow(self, array: pa.Array | pa.ChunkedArray) -> tuple[Any, ...]:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        return tuple(c.from_arrow(p) for c, p in zip(self.children, array.flatten()))



Codec = LeafCodec | DictCodec | TupleCodec


def codec_for(space: spaces.Space) -> Codec:
    """Returns the codec of a space, or raises `UnsupportedSpaceError` naming the space."""
    if isinstance(space, spaces.Box | spaces.MultiDiscrete | spaces.MultiBinary):
        return LeafCodec(space.shape, space.dtype)
    if isinstance(space, spaces.Discrete):
        return LeafCodec((), space.dtype)
    if isinstance(space, spaces.Dict):
        return DictCodec({k: codec_for(s) for k, s in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return TupleCodec([codec_for(s) for s in space.spaces])
    raise UnsupportedSpaceError(
        f"cannot record a {type(space).__name__} space ({space}); supported spaces are Box, "
        "Discrete, MultiDiscrete, MultiBinary, Dict and Tuple of those. Pass sink=None to run "
        "without recording."
    )
