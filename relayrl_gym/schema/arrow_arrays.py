"""Numpy and Python values to and from Arrow arrays, without the pandas probe of ``pa.array``
and ``to_numpy`` (which imports pandas, on the writer thread, holding the GIL for a second)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

__all__ = ["arrow_to_numpy", "numpy_dtype", "numpy_to_arrow", "pooled_array", "strings_to_arrow",
           "tiled_strings"]

#: Arrays this large come from Arrow's memory pool (see `pooled_array`).
POOLED_FROM_BYTES = 256 * 1024


def pooled_array(shape: tuple[int, ...], dtype: np.dtype, zero: bool = False) -> np.ndarray:
    """An uninitialized (or, with ``zero``, zeroed) writable array; a large one in memory of
    Arrow's pool, which keeps freed memory for the next request.

    A block's worth of observations is megabytes allocated and freed again and again. From
    the C library each one is likely fresh pages, whose first touch faults page by page
    (several times the cost of the copy into them, in a virtual machine); the pool hands the
    same warm pages back.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize < POOLED_FROM_BYTES:
        return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
    array = np.frombuffer(pa.allocate_buffer(count * dtype.itemsize), dtype).reshape(shape)
    if zero:
        array.fill(0)
    return array


def strings_to_arrow(values: Sequence[str | None]) -> pa.Array:
    """A list of str (or None) as an Arrow string array, without ``pa.array``'s pandas probe."""
    if all(v is None for v in values):
        return pa.nulls(len(values), pa.string())
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    validity = None
    if any(v is None for v in values):
        validity = pa.py_buffer(np.packbits([v is not None for v in values], bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def tiled_strings(values: Sequence[str], times: int) -> pa.Array:
    """``values`` one after the other, ``times`` over, as an Arrow string array (built from
    buffers: the same few keys of every row of a column, without a Python object each).

    >>> tiled_strings(["a", "bc"], 2).to_pylist()
    ['a', 'bc', 'a', 'bc']
    """
    encoded = [v.encode() for v in values]
    lengths = np.tile(np.array([len(b) for b in encoded], np.int64), times)
    if int(lengths.sum()) >= 2**31:  # past int32 offsets: let Arrow pick the layout
        return pa.array(list(values) * times, pa.string())
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded) * times)
    return pa.Array.from_buffers(pa.string(), len(lengths), [None, pa.py_buffer(offsets), data])


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
