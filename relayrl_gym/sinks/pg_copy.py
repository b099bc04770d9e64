"""PostgreSQL binary COPY payloads built with numpy: a whole batch without a Python loop per row.

A binary COPY tuple is a 16-bit field count, then per field a 32-bit length (-1 for NULL) and
the value's bytes, all big-endian. Columns whose values have the same width in every row of a
batch (numbers, timestamps, fixed-size observation bytes, an all-NULL column) become fields of
one numpy structured array; the rest (e.g. JSON info of varying length) are joined per row.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["CopyColumn", "copy_payload"]

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
_PG_EPOCH_US = 946_684_800_000_000
_NUMERIC = {"int4": ">i4", "int8": ">i8", "float8": ">f8", "bool": "u1"}


class CopyColumn(NamedTuple):
    """One column: ``kind`` is int4, int8, float8, bool, timestamptz_ns (int64 ns since the
    Unix epoch), bytes (a ``(rows, width)`` uint8 array: bytea or text of fixed width), var
    (a list of ``bytes`` or None per row) or null (every row NULL; ``values`` unused)."""

    name: str
    kind: str
    values: Any


def _constant_width(values: Sequence[bytes | None]) -> int | None:
    widths = {-1 if v is None else len(v) for v in values}
    return widths.pop() if len(widths) == 1 else None


def copy_payload(columns: list[CopyColumn], rows: int) -> tuple[list[str], bytes]:
    """The binary COPY data of ``rows`` rows and the column order it uses.

    >>> names, data = copy_payload([CopyColumn("x", "int8", np.array([1, 2]))], 2)
    >>> names, len(data) == 19 + 2 * (2 + 4 + 8) + 2
    (['x'], True)
    """
    fixed: list[tuple[CopyColumn, str, int]] = []  # column, numpy dtype, constant width
    tails: list[CopyColumn] = []
    for col in columns:
        if col.kind in _NUMERIC:
            fixed.append((col, _NUMERIC[col.kind], np.dtype(_NUMERIC[col.kind]).itemsize))
        elif col.kind == "timestamptz_ns":
            fixed.append((col, ">i8", 8))
        elif col.kind == "bytes":
            fixed.append((col, f"V{col.values.shape[1]}", col.values.shape[1]))
        elif col.kind == "null":
            fixed.append((col, "V0", -1))
        else:
            width = _constant_width(col.values)
            if width is None:
                tails.append(col)
            else:
                fixed.append((col, f"V{max(width, 0)}", width))
    layout: list[tuple[str, Any]] = [("count", ">i2")]
    for i, (_, dtype, width) in enumerate(fixed):
        layout.append((f"l{i}", ">i4"))
        if width > 0:
            layout.append((f"v{i}", dtype))
    records = np.empty(rows, dtype=np.dtype(layout))
    records["count"] = len(columns)
    for i, (col, _, width) in enumerate(fixed):
        records[f"l{i}"] = width
        if width <= 0:
            continue
        if col.kind == "timestamptz_ns":
            records[f"v{i}"] = np.asarray(col.values, np.int64) // 1000 - _PG_EPOCH_US
        elif col.kind == "bytes":
            records[f"v{i}"] = np.ascontiguousarray(col.values).view(f"V{width}").ravel()
        elif col.kind == "var":
            joined = np.frombuffer(b"".join(col.values), np.uint8).reshape(rows, width)
            records[f"v{i}"] = joined.view(f"V{width}").ravel()
        else:
            records[f"v{i}"] = col.values
    names = [col.name for col, _, _ in fixed] + [col.name for col in tails]
    if not tails:
        return names, _HEADER + records.tobytes() + _TRAILER
    pack = struct.Struct(">i").pack
    tail_rows = [
        b"".join(pack(-1) if v is None else pack(len(v)) + v for v in values)
        for values in zip(*(col.values for col in tails))]
    heads = records.view(f"V{records.dtype.itemsize}").tolist()
    return names, b"".join(
        itertools.chain((_HEADER,), itertools.chain.from_iterable(zip(heads, tail_rows)),
                        (_TRAILER,)))
